"""The bodies of the API: the requests it reads (pydantic models, as the OpenAPI schema documents
them) and the search answer it writes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


# ------------------------------------------------------------------------------- request models
class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus ``modality`` for images and audio (base64 or data URIs)."""

    model_config = ConfigDict(extra="ignore")

    input: Any = Field(..., description="a string or a list of strings: texts, or base64/data: URIs of files")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    modality: str = Field("text", description="text, image, audio (or another branch of the model)")


class SearchRequest(BaseModel):
    """A composed query: at least one of text / image / audio (files as base64 or data: URIs), or
    a file of any other modality of the model under its name (``"video": ...``)."""

    model_config = ConfigDict(extra="allow")

    text: str | list[str] | None = None
    image: str | None = None
    audio: str | None = None
    weights: dict[str, float] | list[float] | None = None
    modality: str | None = Field(None, description="the modality of the results (default: all)")
    model: str | None = Field(None, description="the served model to embed the query with (GET /v1/models); only "
                                                "the model that built the index can search it (default: that one)")
    k: int = 10
    filter: dict[str, Any] | None = Field(
        None, description="a structured filter: {\"column\": C, \"op\": OP, \"value\": V} with C one of id, modality, "
                          "text, name and OP one of eq, ne, in, not_in, contains, starts_with, ends_with; combined with "
                          "{\"and\": [...]}, {\"or\": [...]}, {\"not\": {...}}. Raw SQL (a \"where\" key) is refused.",
        examples=[{"and": [{"column": "text", "op": "contains", "value": "dog"},
                           {"column": "name", "op": "ends_with", "value": ".jpg"}]}])
    moments: bool = Field(False, description="find time ranges in the long audio and video of the index (built by "
                                             "`onepeace index build`): each hit then has start and end (seconds)")
    per_file: int | None = Field(None, description="with moments: at most this many ranges of one file (default 1)")


#: the version of the search result schema (``{"schema_version", "hits": [...]}``), shared with
#: ``onepeace search --json``
SEARCH_SCHEMA_VERSION = 1


class SearchHit(BaseModel):
    """One hit: the fields ``onepeace search --json`` prints too (id, modality, text, metadata,
    score, prob), plus the file's name and URLs instead of its path on the server."""

    id: str
    modality: str
    text: str = ""
    metadata: dict[str, Any] = {}
    score: float = Field(..., description="cosine similarity of the query and the row, in [-1, 1]")
    prob: float | None = Field(None, description="softmax of the temperature-scaled scores over the hits")
    name: str = ""
    media_url: str | None = None
    media_type: str | None = None
    thumb_url: str | None = None
    start: float | None = Field(None, description="a moment's start in the file, in seconds (moments only)")
    end: float | None = Field(None, description="a moment's end in the file, in seconds (moments only)")


class SearchResponse(BaseModel):
    """The answer of /search: ``hits`` best first (the name ``onepeace search --json`` uses).
    ``results`` holds the same list under its old name, kept for a deprecation period."""

    schema_version: int = SEARCH_SCHEMA_VERSION
    hits: list[SearchHit]
    results: list[SearchHit] = Field(..., deprecated=True, description="deprecated: the same list as hits")
    k: int
    modality: str | None = None
    inputs: list[str]
    took_ms: float
    model: str | None = Field(None, description="the served model that embedded the query")
    moments: bool = Field(False, description="true when the hits are time ranges (moments; absent otherwise)")


def search_body_schema(file_modalities: set[str]) -> dict:
    """The JSON body of /search as the OpenAPI schema documents it: SearchRequest's fields and a
    base64 field per file modality of the served models, nothing else (other keys are refused)."""
    schema = SearchRequest.model_json_schema()
    for m in sorted(file_modalities - set(schema["properties"])):
        schema["properties"][m] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                                   "description": f"a {m} file as base64 or a data: URI"}
    schema["additionalProperties"] = False
    return schema
