"""Reading a request's inputs: files sent as base64 or ``data:`` URIs, decoded as the model's
processors would decode them, and the fields of a /search request (JSON or a form)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ..processing.inputs import NamedBytes
from .errors import ServeError
from .schemas import SearchRequest

_DATA_URI = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def decode_base64_input(value: Any, modality: str, where: str) -> bytes:
    """The bytes of a base64 string or a ``data:`` URI; ``where`` names the input in errors."""
    if not isinstance(value, str):
        raise ServeError(400, f"{where}: a {modality} input must be a base64 string or a data: URI, "
                              f"got {type(value).__name__}", param=where)
    text = value.strip()
    if text.lower().startswith(("http://", "https://", "file:")):  # (base64 may start with "/": JPEG's "/9j/")
        raise ServeError(400, f"{where}: this server does not fetch URLs or read paths; send the {modality} "
                              "file itself as base64 or a data: URI (data:<type>;base64,...)", param=where)
    found = _DATA_URI.match(text)
    if found:
        kind = (found.group("type") or "").lower()
        if not found.group("b64"):
            raise ServeError(400, f"{where}: only base64 data: URIs are accepted (data:<type>;base64,...)", param=where)
        major = kind.split("/")[0]
        if major in ("image", "audio", "video", "text") and major != modality and modality in ("image", "audio", "video"):
            raise ServeError(400, f"{where}: a data: URI of type {kind} was sent as {modality}; set \"modality\" to "
                                  f"the kind of file you send", param=where)
        text = text[found.end():]
    text = re.sub(r"\s+", "", text)
    try:
        if "-" in text or "_" in text:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        else:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"{where}: not valid base64; send the {modality} file as base64 or a data: URI",
                         param=where) from None
    if not data:
        raise ServeError(400, f"{where}: the {modality} input is empty", param=where)
    return data


def decode_media(model: Any, modality: str, data: bytes, name: str) -> Any:
    """Decode one uploaded file for ``modality`` (raises InputError naming ``name`` if it cannot)
    with its processor's ``load``: images become RGB PIL images, audio a waveform at the model's
    rate, videos their sampled frames (and sound) — what the processors would make of the bytes,
    so embedding the decoded input gives the same rows. A modality whose processor has no
    ``load`` gets the bytes, decoded by its processor inside the batch (a failure there fails
    only this request: the batcher retries the batch's requests one by one)."""
    load = getattr(model.processor.get(modality), "load", None)
    return data if load is None else load(NamedBytes(data, name))


def validate_search(fields: dict) -> SearchRequest:
    """The search request of a JSON object or form fields; pydantic's errors become a 400 listing
    them, and nothing else raised while validating becomes a 500."""
    try:
        return SearchRequest.model_validate(fields)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    except (ValueError, TypeError, RecursionError) as e:
        raise ServeError(400, f"invalid request: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None


def refuse_where(fields: dict) -> None:
    """The network API takes no raw SQL: a ``where`` key is refused (400), naming the way to filter."""
    if "where" in fields:
        raise ServeError(400, "where: raw SQL filters are not accepted over the network; send a structured "
                              "filter instead, e.g. \"filter\": {\"column\": \"text\", \"op\": \"contains\", "
                              "\"value\": \"dog\"}", param="where", code="raw_sql_refused")


def parse_filter_field(value: str) -> Any:
    """A form's ``filter`` field: the JSON of a structured filter."""
    text = value.strip()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ServeError(400, f"filter: {text[:100]!r} is not a JSON filter ({e if isinstance(e, json.JSONDecodeError) else 'nested too deeply'}); "
                              "e.g. {\"column\": \"text\", \"op\": \"contains\", \"value\": \"dog\"}",
                         param="filter") from None


def parse_weights(value: Any) -> Any:
    """Form weights: JSON (``{"text": 1, "image": 0.5}`` or ``[1, 0.5]``) or ``text=1,image=0.5``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ServeError(400, f"weights: not valid JSON ({e})", param="weights") from None
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, number = part.partition("=")
        try:
            out[key.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not math.isfinite(out.get(key.strip(), 0.0)):
            raise ServeError(400, f"weights: {part!r} is not NAME=NUMBER (e.g. text=1,image=0.5)", param="weights")
    return out

