"""What the handlers work with, held in one object: :class:`ServeState` (the served models with
their micro-batchers, the index, the limits, the API key, the metrics). ``create_app`` builds one
and puts it on ``app.state.serve``; each handler receives it explicitly (the FastAPI dependency
:func:`get_state`), so a test can build one and call a handler as a plain coroutine, no HTTP.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from ..modalities import get_modality
from ..search.fingerprint import IN_MEMORY, model_fingerprint, split_adapted_name
from ..search.fingerprint import model_name as fingerprint_model_name
from ..search.store import ModelMismatchError
from .batching import MicroBatcher
from .errors import ServeError
from .metrics import make_metrics

log = logging.getLogger("onepeace.serve")


# ------------------------------------------------------------------------------------- names
def served_name(model: Any) -> str:
    """The model's name as the server knows it (a local path, a hub id or ``onepeace``)."""
    name = fingerprint_model_name(model)
    return "onepeace" if name == IN_MEMORY else name


def public_name(name: str) -> str:
    """What the API calls a model or index: a local path becomes its last component (the server's
    disk layout is not the client's business); a hub id (``org/name``) stays as it is. A model with
    a LoRA adapter is ``BASE+adapter ADAPTER``, each part so shortened."""
    if not name:
        return name
    base, adapter = split_adapted_name(name)
    if adapter is not None:
        return f"{public_name(base)}+adapter {public_name(adapter)}"
    if os.path.isabs(name) or name.startswith(("." + os.sep, ".." + os.sep, "~")) or os.path.exists(name):
        return os.path.basename(os.path.normpath(os.path.expanduser(name))) or name
    return name


def redactor(paths: list[str]) -> Callable[[str], str]:
    """A function replacing each of ``paths`` (absolute, longest first) in a message by its last
    component: error messages from the library name files the client must not see."""
    spelled = sorted({os.path.normpath(os.path.abspath(p)) for p in paths if p}, key=len, reverse=True)

    def redact(message: str) -> str:
        for p in spelled:
            if p in message:
                message = message.replace(p, os.path.basename(p) or "<server>")
        return message

    return redact


# ------------------------------------------------------------------------------- one model
class ServedModel:
    """One model a server serves: its names, modalities and micro-batcher (each model has its own
    worker and queue), and its fingerprint (which index it may search)."""

    def __init__(self, label: str | None, model: Any, several: bool, **batching: Any):
        model.eval()
        self.model = model
        self.known = served_name(model)
        self.name = label or public_name(self.known)
        self.aliases = {self.name, self.known, public_name(self.known), os.path.basename(self.known.rstrip("/"))}
        if not several:
            self.aliases.add("onepeace")
        self.modalities = list(model.modality_names)
        self.dim = int(model.config.dim)
        #: modality -> the file name extensions its processor reads (the page's uploads, the form's fields)
        self.file_types = {m: list(get_modality(m).file_extensions) for m in self.modalities
                           if get_modality(m).file_extensions}
        self.file_modalities = set(self.file_types)
        #: modalities whose files have a still to show (images, the middle frame of a video)
        self.thumbs = {m for m in self.file_types if hasattr(model.processor.get(m), "thumbnail")}
        self._fingerprint: str | None = None

        def embed_rows(modality: str, items: list[Any]) -> np.ndarray:
            return model.embed(**{modality: items}, batch_size=max(1, len(items)))[modality].numpy()

        self.batcher = MicroBatcher(embed_rows, **batching)
        if self.precision == "int8":
            log.warning("serving an int8 model: its activations are quantised per forward pass, so a served row "
                        "depends on the other requests in its micro-batch; serve fp32 or bf16 for batch-invariant "
                        "rows")

    @property
    def precision(self) -> str | None:
        return getattr(self.model, "precision", None)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint


def merged_snapshot(batchers: list[MicroBatcher]) -> dict[str, Any]:
    """The batching counters of one batcher, or their sums over several models' batchers."""
    snaps = [b.snapshot() for b in batchers]
    if len(snaps) == 1:
        return snaps[0]
    out: dict[str, Any] = {key: sum(snap[key] for snap in snaps) for key in snaps[0]}
    out["largest_batch"] = max(snap["largest_batch"] for snap in snaps)
    out["mean_batch"] = round(out["items"] / out["batches"], 2) if out["batches"] else 0.0
    return out


def check_modality(modality: Any, param: str, modalities: list[str]) -> str:
    """``modality`` if it is one of ``modalities``, else a 400 naming ``param``."""
    if not isinstance(modality, str) or modality not in modalities:
        raise ServeError(400, f"{param}: unknown modality {modality!r}; this model has {', '.join(modalities)}",
                         param=param)
    return modality


def warm_up(batcher: MicroBatcher, modalities: list[str]) -> None:
    """One small input per built-in modality through the batcher (the first passes are slow)."""
    from PIL import Image

    samples = {"text": ["warm up"], "image": [Image.new("RGB", (64, 64), (128, 128, 128))],
               "audio": [(np.random.default_rng(0).standard_normal(16000) * 0.01).astype(np.float32)]}
    for modality in modalities:
        if modality in samples:
            batcher.embed_sync(modality, samples[modality])


# ----------------------------------------------------------------------------- the service
@dataclass(frozen=True)
class Limits:
    """The bounds of ``create_app``'s arguments of the same names."""

    max_request_bytes: int = 16 * 1024 * 1024
    timeout_s: float = 30.0
    max_inputs: int = 256
    max_text_chars: int = 8192
    max_k: int = 200
    max_in_flight: int | None = 256


class ServeState:
    """The served models (``served``; ``default`` the first), the ``index`` (or None) and the model
    that built it (``index_model``), the ``limits``, the ``api_key`` and the ``metrics`` (None
    without prometheus-client). Build it with :meth:`build`; its batchers run between
    :meth:`lifespan`'s start and end."""

    def __init__(self, served: list[ServedModel], index: Any = None, *, limits: Limits = Limits(),
                 api_key: str | None = None, metrics: Any = None, warmup: bool = False):
        if not served:
            raise InputError("create_app: no model to serve")
        self.served, self.index, self.limits = served, index, limits
        self.api_key, self.metrics, self.warmup = api_key, metrics, warmup
        self.default = served[0]
        self.by_alias: dict[str, ServedModel] = {}
        for s in served:  # the names given first, then the other spellings where still free
            self.by_alias.setdefault(s.name, s)
        for s in served:
            for alias in sorted(s.aliases):
                self.by_alias.setdefault(alias, s)
        self.by_alias.setdefault("onepeace", self.default)
        self.file_modalities: set[str] = set().union(*(s.file_modalities for s in served))
        #: the served model that built the index (its fingerprint), which searches it by default
        self.index_model: ServedModel | None = None
        if index is not None:
            self.index_model = next((s for s in served if s.fingerprint() == index.fingerprint), None)
            if self.index_model is None:
                raise ModelMismatchError(
                    f"no served model built the index {getattr(index, 'path', '')} (it was built with "
                    f"{getattr(index, 'model_name', '') or '?'}, fingerprint {index.fingerprint[:12]}); "
                    "serve that model")
        index_names = split_adapted_name(str(getattr(index, "model_name", "") or ""))
        self.redact = redactor([*(s.known for s in served if os.path.exists(s.known)),
                                *(str(getattr(s.model, "source_dir", "") or "") for s in served),
                                *(str(getattr(s.model, "adapter_dir", "") or "") for s in served),
                                str(getattr(index, "path", "") or ""),
                                *(n for n in index_names if n and os.path.isabs(n))])

    @classmethod
    def build(cls, model: Any, index: Any = None, *, model_name: str | None = None, max_batch: int = 16,
              max_wait_ms: float = 5.0, max_queue: int | None = 1024, model_load_s: float | None = None,
              **options: Any) -> ServeState:
        """The state of ``create_app``'s arguments: ``model`` one model (named ``model_name``) or a
        dict name -> model; ``options`` :class:`ServeState`'s keywords."""
        given = list(model.items()) if isinstance(model, dict) else [(model_name, model)]
        if not given:
            raise InputError("create_app: no model to serve")
        batchers: list[MicroBatcher] = []
        first_load = next((getattr(m, "load_seconds", None) for _, m in given), None)
        metrics = make_metrics(lambda: sum(b.depth for b in batchers),
                               model_load_s if model_load_s is not None else first_load)
        served = [ServedModel(label, m, len(given) > 1, max_batch=max_batch, max_wait_ms=max_wait_ms,
                              max_queue=max_queue, on_batch=metrics.observe_batch if metrics is not None else None)
                  for label, m in given]
        batchers.extend(s.batcher for s in served)
        return cls(served, index, metrics=metrics, **options)

    def start(self) -> None:
        """Start the batchers' workers (a no-op for those running)."""
        for s in self.served:
            s.batcher.start()

    def close(self) -> None:
        """Finish the queued work, then stop the batchers' workers."""
        for s in self.served:
            s.batcher.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None):
        """The batchers' workers run (and the models are warmed up, if asked) inside this."""
        self.start()
        if self.warmup:
            for s in self.served:
                await run_in_threadpool(warm_up, s.batcher, s.modalities)
        yield
        self.close()

    def attach(self, app: FastAPI) -> None:
        """Put this state on ``app.state`` (``serve``), with the names the app has always had there."""
        app.state.serve = self
        app.state.model, app.state.index, app.state.batcher = self.default.model, self.index, self.default.batcher
        app.state.timeout_s = float(self.limits.timeout_s)  # the request heads' deadline too (head_deadline_protocol)
        app.state.metrics, app.state.models = self.metrics, {s.name: s.model for s in self.served}
        app.state.redact = self.redact

    # ------------------------------------------------------------------------- what a request names
    def key_ok(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the API key (always, with no key)."""
        if self.api_key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def authorize(self, authorization: str | None) -> None:
        """A 401 unless the ``Authorization`` header value carries the API key."""
        if not self.key_ok(authorization):
            raise ServeError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def pick(self, requested: str | None) -> ServedModel:
        """The served model a request names (OpenAI's ``model`` field; None: the default)."""
        if requested is None:
            return self.default
        if not isinstance(requested, str) or requested not in self.by_alias:
            raise ServeError(404, f"model {requested!r} is not served here; this server serves "
                                  f"{', '.join(repr(s.name) for s in self.served)} (GET /v1/models)",
                             param="model", code="model_not_found")
        return self.by_alias[requested]

    def pick_for_search(self, requested: str | None) -> ServedModel:
        """The model to search the index with: the one that built it (its fingerprint); another
        named model is refused with 400, naming the index's."""
        index_model = self.index_model
        assert index_model is not None
        if requested is None:
            return index_model
        s = self.pick(requested)
        if s is not index_model:
            raise ServeError(400, f"model: the index was built with the model {index_model.name!r}, not "
                                  f"{s.name!r} (their fingerprints differ); search it with \"model\": "
                                  f"\"{index_model.name}\" or leave model out", param="model",
                             code="model_mismatch")
        return s

    def need_index(self) -> Any:
        """The index, or a 404 saying search is off."""
        if self.index is None:
            raise ServeError(404, "search is off: this server has no index and serves embeddings only "
                                  "(POST /v1/embeddings); start it with `onepeace serve DB` to search an index",
                             code="no_index")
        return self.index


# --------------------------------------------------------------------- FastAPI dependencies
def get_state(request: Request) -> ServeState:
    """The :class:`ServeState` of the app serving ``request``."""
    return request.app.state.serve


async def authorize(request: Request) -> None:
    """The API key check of every API route (a 401 without it, when the server has one)."""
    get_state(request).authorize(request.headers.get("authorization", ""))


#: a handler's parameter receiving the app's :class:`ServeState` (``state: State``)
State = Annotated[ServeState, Depends(get_state)]
