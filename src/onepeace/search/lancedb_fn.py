"""ONE-PEACE as a LanceDB embedding function: ``get_registry().get("onepeace").create(model=...)``.

A LanceDB user declares a source column and a vector column, and LanceDB embeds the source on
``table.add`` and the query on ``table.search``::

    import lancedb
    import onepeace.search.lancedb_fn  # registers "onepeace" (see below)
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    fn = get_registry().get("onepeace").create(model="path/or/org-name", modality="image")

    class Photo(LanceModel):
        uri: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect("db").create_table("photos", schema=Photo)
    table.add([{"uri": "/data/cat.jpg"}, {"uri": "/data/dog.png"}])
    table.search("a dog on the grass").limit(5).to_pandas()      # text -> images
    table.search(Path("/data/bark.wav")).limit(5).to_pandas()    # sound -> images

Sources (``modality``): ``"text"``, ``"image"`` or ``"audio"`` embed every value of the column as
that modality (images and audio as paths, ``file://`` URIs or bytes); ``"auto"`` (the default)
decides per value: a string ending in an image or audio file extension is that file (it must
exist), any other string is a text, bytes are sniffed (an image Pillow recognises, else audio).
Queries are always decided per value like ``"auto"``: a text, a path (``str`` or ``Path``), bytes,
a PIL image, or a composed query as a dict (``{"audio": "bark.wav", "text": "grass",
"weights": [1, 0.5]}``, see :func:`onepeace.search.query.compose`).

Registration: LanceDB 0.40 has no plugin entry points; its registry knows "onepeace" once this
module is imported. ``import onepeace`` does that by itself when lancedb is already imported (it
never imports lancedb; ``onepeace/__init__.py`` is the top layer, which no module of onepeace
imports, so this is no import circle); a process that opens a table made with this function and
has not imported onepeace must ``import onepeace.search.lancedb_fn`` first (LanceDB reads the function's name and
arguments from the table's metadata and asks the registry for it).

One model is loaded per process for each (model, device, dtype) and shared by every instance.
A local model's failures do not go away on a retry: unlike LanceDB's API-backed functions this one
never retries, and a bad input raises :class:`onepeace.InputError` naming it — or, with
``on_error="null"``, warns naming it and gives that row no vector, so that the table's
``on_bad_vectors`` policy (``"error"``, ``"drop"``, ``"fill"``, ``"null"``) decides.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
from lancedb.embeddings import EmbeddingFunction, register
from pydantic import PrivateAttr

from ..checkpoints.format import load_config
from ..errors import InputError, OnePeaceWarning
from ..inference import OnePeace
from ..modalities import get_modality, registered_modalities
from .query import compose


def _file_modalities() -> dict[str, tuple[str, ...]]:
    """Registered modalities read from files (image, audio, video, ...) -> their extensions."""
    return {m: get_modality(m).file_extensions for m in registered_modalities() if get_modality(m).file_extensions}


def modalities() -> tuple[str, ...]:
    """The values ``modality=`` takes: auto, text and every registered file modality."""
    return ("auto", "text", *_file_modalities())


def _extension_modality() -> dict[str, str]:
    out: dict[str, str] = {}
    for m, exts in _file_modalities().items():
        for e in exts:
            out.setdefault(e.lower(), m)
    return out

_MODELS: dict[tuple[str, str, str | None], Any] = {}
_MODELS_LOCK = threading.Lock()


def load_model(model: str, device: str = "cpu", dtype: str | None = None):
    """The process-wide cached :class:`onepeace.OnePeace` for (model, device, dtype)."""
    key = (model, device, dtype)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = OnePeace.from_pretrained(model, dtype=dtype, device=device)
        return _MODELS[key]


def _resolve_device(device: str) -> str:
    import torch

    spec = device.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InputError(f"OnePeaceEmbeddings device={device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"OnePeaceEmbeddings device={device!r}: CUDA is not available here; use cpu or auto")
    return str(dev)


def _as_path(value: str | os.PathLike) -> str:
    """A local path from a path or a ``file://`` URI; other URI schemes are refused."""
    text = os.fspath(value)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme in ("http", "https", "s3", "gs", "az"):
        raise InputError(f"{text}: remote URIs are not read by the onepeace embedding function; "
                         "download the file and give its local path")
    return text


def _sniff_bytes(data: bytes) -> str:
    """'image' for bytes Pillow recognises, else 'audio'."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)):
            return "image"
    except (UnidentifiedImageError, OSError, ValueError):
        return "audio"


def detect_modality(value: Any) -> str:
    """The modality of one source or query value, as ``modality="auto"`` decides it."""
    if isinstance(value, os.PathLike):
        path = _as_path(value)
        modality = _extension_modality().get(Path(path).suffix.lower())
        if modality is None:
            known = "; ".join(f"{m} files end in {', '.join(exts)}" for m, exts in _file_modalities().items())
            raise InputError(f"{path}: unknown file extension; {known}")
        return modality
    if isinstance(value, str):
        modality = _extension_modality().get(Path(urlparse(value).path).suffix.lower()) if "\n" not in value else None
        return modality or "text"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _sniff_bytes(bytes(value))
    from PIL import Image

    if isinstance(value, Image.Image):
        return "image"
    raise InputError(f"cannot tell the modality of a {type(value).__name__}: give a text, a path, bytes or a "
                     "PIL image, or set modality= to text, image or audio")


def _prepare(value: Any, modality: str, auto: bool = False) -> Any:
    """A value as ``OnePeace.embed`` takes it for ``modality``: paths/URIs to checked local paths."""
    if modality == "text":
        if not isinstance(value, str):
            raise InputError(f"a text source must be a string, got a {type(value).__name__}")
        return value
    if isinstance(value, (str, os.PathLike)):
        path = _as_path(value)
        if not os.path.isfile(path):
            hint = " (set modality='text' to embed such strings as texts)" if auto and isinstance(value, str) else ""
            raise InputError(f"{modality} file not found: {path}{hint}")
        return path
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def _describe(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    return str(value) if isinstance(value, os.PathLike) else f"<{type(value).__name__}>"


def _values(source: Any) -> list[Any]:
    """A column (Arrow array, list, numpy array) or one value -> a list of Python values."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return [source]
    if hasattr(source, "to_pylist"):  # pa.Array / pa.ChunkedArray
        return source.to_pylist()
    if isinstance(source, np.ndarray):
        return source.tolist()
    return list(source)


@register("onepeace")
class OnePeaceEmbeddings(EmbeddingFunction):
    """ONE-PEACE embeddings of text, image and audio columns (and queries), in one space.

    ``model``: a model directory or Hugging Face Hub id, as ``OnePeace.from_pretrained`` takes it.
    ``modality``: how source values are read: ``"auto"``, ``"text"``, ``"image"``, ``"audio"`` or any
    other registered file modality (``"video"``).
    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; ``dtype``: ``None`` (as stored),
    ``"fp32"``, ``"bf16"`` or ``"fp16"``; ``batch_size``: items per forward pass;
    ``long_audio``: ``"truncate"`` or ``"chunk"`` (see ``OnePeace.embed``); ``on_error``: ``"raise"``
    or ``"null"`` (a row whose value cannot be embedded gets no vector, with a warning).
    """

    model: str
    modality: str = "auto"
    device: str = "cpu"
    dtype: Literal["fp32", "bf16", "fp16"] | None = None
    batch_size: int = 16
    long_audio: Literal["truncate", "chunk"] = "truncate"
    on_error: Literal["raise", "null"] = "raise"
    max_retries: int = 0  # a local model: failures are not transient (see the module docstring)

    _dim: int | None = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any):
        from pydantic import ValidationError

        try:
            super().__init__(**kwargs)
        except ValidationError as e:  # one line naming the argument, not pydantic's report
            err = e.errors()[0]
            name = ".".join(map(str, err["loc"])) or "arguments"
            given = f"={kwargs[name]!r}" if name in kwargs else ""
            raise InputError(f"OnePeaceEmbeddings {name}{given}: {err['msg']}") from None
        if self.batch_size < 1:
            raise InputError(f"OnePeaceEmbeddings batch_size must be at least 1, got {self.batch_size}")
        if self.modality not in modalities():
            raise InputError(f"OnePeaceEmbeddings modality={self.modality!r}: give one of {', '.join(modalities())}")
        if not self.model.strip():
            raise InputError("OnePeaceEmbeddings model= is empty: give a model directory or a Hub id")

    @classmethod
    def create(cls, **kwargs: Any) -> OnePeaceEmbeddings:
        """As LanceDB's ``create``; a local model directory is recorded by its absolute path (LanceDB
        stores these arguments in the table, to be used again from any working directory)."""
        model = kwargs.get("model")
        if isinstance(model, (str, os.PathLike)) and not str(model).startswith("$var:"):
            kwargs["model"] = os.path.abspath(model) if os.path.isdir(model) else os.fspath(model)
        return super().create(**kwargs)

    # ------------------------------------------------------------------ the model
    @property
    def embedding_model(self):
        """The cached :class:`onepeace.OnePeace` (loaded on first use, shared in the process)."""
        model = load_model(self.model, _resolve_device(self.device), self.dtype)
        if self._dim is None:
            self._dim = int(model.config.dim)
        return model

    def ndims(self) -> int:
        if self._dim is None:
            # a local directory: its config.json says it without loading the weights
            self._dim = int(load_config(self.model).dim) if os.path.isdir(self.model) else None
            if self._dim is None:
                self.embedding_model  # noqa: B018 - loads the model (a Hub id), which sets _dim
        return self._dim

    # ------------------------------------------------------------------ LanceDB's interface
    def compute_source_embeddings(self, source: Any, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        """One float32 L2-normalised vector per value of the source column (``None`` for a null)."""
        values = _values(source)
        return self._embed(values, self.modality)

    def compute_query_embeddings(self, query: Any, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """``[vector]`` for one query: a text, a path, bytes, a PIL image, or a composed-query dict."""
        if isinstance(query, dict):
            return [self._compose(query)]
        if isinstance(query, (list, tuple)) or query is None:
            raise InputError("a onepeace query is one value (a text, a path, bytes or a PIL image) or a dict "
                             "of them for a composed query")
        vector = self._embed([query], "auto")[0]
        if vector is None:  # on_error="null": a query has no row to leave empty
            raise InputError(f"cannot embed the query {_describe(query)}")
        return [vector]

    # LanceDB wraps these in retries with exponential backoff, right for a rate-limited web API and
    # wrong for a local model (a bad file would be retried for minutes, then reported as
    # "Maximum number of retries exceeded"): call straight through, so errors arrive as they are.
    def compute_source_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[np.ndarray | None]:
        return self.compute_source_embeddings(*args, **kwargs)

    def compute_query_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        return self.compute_query_embeddings(*args, **kwargs)

    # ------------------------------------------------------------------ internals
    def _embed(self, values: list[Any], modality: str) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = [None] * len(values)
        groups: dict[str, list[tuple[int, Any]]] = {}
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                m = detect_modality(value) if modality == "auto" else modality
                groups.setdefault(m, []).append((i, _prepare(value, m, auto=modality == "auto")))
            except InputError as e:
                self._failed(value, e)
        for m, items in groups.items():
            for (i, _), row in zip(items, self._embed_group(m, [v for _, v in items])):
                out[i] = row
        return out

    def _embed_group(self, modality: str, items: list[Any]) -> list[np.ndarray | None]:
        model = self.embedding_model
        model.processor.get(modality)  # a model without this branch: an error, whatever on_error says
        try:
            return self._forward(model, modality, items, self.batch_size)
        except InputError:
            if self.on_error == "raise":
                raise
        rows: list[np.ndarray | None] = []
        for item in items:  # on_error="null": find the bad values, one by one
            try:
                rows.extend(self._forward(model, modality, [item], 1))
            except InputError as e:
                self._failed(item, e)
                rows.append(None)
        return rows

    def _forward(self, model: Any, modality: str, items: list[Any], batch_size: int) -> list[np.ndarray]:
        z = model.embed(**{modality: items}, batch_size=batch_size, long_audio=self.long_audio)[modality]
        return list(z.float().numpy())

    def _failed(self, value: Any, error: InputError) -> None:
        if self.on_error == "raise":
            raise error
        warnings.warn(f"onepeace embedding: no vector for {_describe(value)}: {error}", OnePeaceWarning,
                      stacklevel=4)

    def _compose(self, query: dict[str, Any]) -> np.ndarray:
        query = dict(query)
        weights = query.pop("weights", None)
        inputs = {}
        for name, value in query.items():
            if value is None:
                continue
            inputs[name] = value if name == "text" else _prepare(value, name)
        return np.asarray(compose(self.embedding_model, weights=weights, **inputs), dtype=np.float32)
