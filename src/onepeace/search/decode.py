"""An index build's **mapper** stage: read, hash and decode batches of items, then embed them.

:func:`decode_batch` runs in DataLoader workers (the local engine, :func:`embed_local`) or in Ray
tasks (:mod:`onepeace.search.ray_engine`), both through :class:`DecodeDataset`; a file that cannot
be read or decoded (an :class:`~onepeace.errors.InputError`) is set aside with its reason, any
other error stops the build. :func:`embed_decoded` runs the model and makes the rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, OnePeaceError, not_the_input, stop_in_worker
from .reader import Item


# ---------------------------------------------------------------------------------- mapper
@dataclass
class Batch:
    """Items of one modality to decode and embed; ``known``: id -> content hash already indexed."""

    modality: str
    items: list[Item]
    known: dict[str, str] = field(default_factory=dict)


@dataclass
class Decoded:
    """A decoded batch: the model inputs for ``items`` (in order) and what was set aside."""

    modality: str
    items: list[Item]
    hashes: list[str]
    inputs: dict[str, Any] | None
    skipped: list[tuple[Item, str]] = field(default_factory=list)
    unchanged: list[Item] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Result:
    """Rows (with vectors) ready for the writer, and what was set aside."""

    modality: str
    rows: list[dict[str, Any]]
    skipped: list[tuple[Item, str]] = field(default_factory=list)
    unchanged: list[Item] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(item: Item) -> bytes:
    """The file's bytes; its size and mtime (taken before reading) go into the item's metadata,
    so a file changed while being read is re-read by the next build."""
    try:
        with open(item.uri, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        item.metadata["file_size"], item.metadata["file_mtime_ns"] = st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        raise InputError(f"file not found: {item.uri}") from None
    except IsADirectoryError:
        raise InputError(f"is a directory: {item.uri}") from None
    except OSError as e:
        if not_the_input(e):  # too many open files, ...: the machine's fault, the build stops
            raise
        raise InputError(f"cannot read {item.uri}: {e.strerror or e}") from None
    if not data:
        raise InputError(f"file is empty: {item.uri}")
    return data


def _reason(e: BaseException) -> str:
    if isinstance(e, OnePeaceError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def decode_batch(batch: Batch, processor: Any) -> Decoded:
    """Read, hash and decode a batch (a DataLoader worker runs this): files whose content hash is
    already indexed come back as ``unchanged``; unreadable or undecodable ones as ``skipped``."""
    from ..processing.inputs import NamedBytes

    proc = processor.get(batch.modality)
    items, hashes, payloads = [], [], []
    skipped: list[tuple[Item, str]] = []
    unchanged: list[Item] = []
    for item in batch.items:
        if item.error:
            skipped.append((item, item.error))
            continue
        if item.uri:
            try:
                data = _read(item)
            except InputError as e:
                skipped.append((item, str(e)))
                continue
            except Exception as e:  # too many open files, ...: not the file's fault, the build stops
                stop_in_worker(e, item.name)
                raise
            digest = hashlib.sha256(data).hexdigest()
            payload: Any = NamedBytes(data, item.uri)
        else:
            digest, payload = sha256_text(item.text), item.text
        if batch.known.get(item.id) == digest:
            unchanged.append(item)
            continue
        items.append(item)
        hashes.append(digest)
        payloads.append(payload)
    caught: list[str] = []
    inputs = None
    if items:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                inputs = proc([_rewind(p) for p in payloads])
            except InputError:  # find the culprits one by one
                keep = []
                for i, (item, p) in enumerate(zip(items, payloads)):
                    try:
                        proc([_rewind(p)])
                        keep.append(i)
                    except InputError as e:  # the file's fault: set it aside
                        skipped.append((item, _reason(e)))
                    except Exception as e:  # a missing module, a bug: not the file's, the build stops
                        stop_in_worker(e, item.name)
                        raise
                items = [items[i] for i in keep]
                hashes = [hashes[i] for i in keep]
                payloads = [payloads[i] for i in keep]
                if items:
                    inputs = proc([_rewind(p) for p in payloads])
            caught = [str(x.message) for x in w]
    return Decoded(batch.modality, items, hashes, inputs, skipped, unchanged, caught)


def _rewind(p: Any) -> Any:
    if hasattr(p, "seek"):
        p.seek(0)
    return p


def make_row(item: Item, content_hash: str, vector: np.ndarray) -> dict[str, Any]:
    """The index row of an embedded item."""
    return {"id": item.id, "modality": item.modality, "uri": item.uri, "text": item.text,
            "metadata": dict(item.metadata), "content_hash": content_hash, "vector": vector}


def embed_decoded(model: Any, decoded: Decoded) -> Result:
    """Run the model on a decoded batch: rows with L2-normalised float32 vectors."""
    import torch

    rows = []
    if decoded.items:
        with torch.inference_mode():
            # bucket: a batch of captions or clips of mixed lengths skips its padding
            z = model.embed_batch(decoded.modality, decoded.inputs, bucket=True).float().cpu().numpy()
        rows = [make_row(it, h, v) for it, h, v in zip(decoded.items, decoded.hashes, z)]
    return Result(decoded.modality, rows, decoded.skipped, decoded.unchanged, decoded.warnings)


class DecodeDataset:
    """Map-style dataset whose "indices" are the planned batches themselves (a DataLoader with
    ``sampler=plan`` and ``batch_size=None`` streams them to its workers without a full list).
    It travels to the workers as the model config (JSON) and Pillow's pixel limit; each worker
    builds its own processors."""

    def __init__(self, config_json: str):
        from PIL import Image

        self.config_json = config_json
        self.max_pixels = Image.MAX_IMAGE_PIXELS  # --max-pixels, which a fresh worker would not see
        self._processor = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config_json": self.config_json, "max_pixels": self.max_pixels, "_processor": None}

    def __getitem__(self, batch: Batch) -> Decoded:
        if self._processor is None:
            from PIL import Image

            from ..config import ModelConfig
            from ..modalities import Processor

            Image.MAX_IMAGE_PIXELS = self.max_pixels
            self._processor = Processor(ModelConfig.from_dict(json.loads(self.config_json)))
        try:
            return decode_batch(batch, self._processor)
        except Exception as e:  # not an input's fault (those are set aside): the build stops
            first = batch.items[0].name if batch.items else "?"
            stop_in_worker(e, f"a batch of {len(batch.items)} {batch.modality} item(s) from {first}")
            raise


def embed_local(model: Any, batches: Iterable[Batch], *, workers: int = 2) -> Iterator[Result]:
    """The in-process engine: decoding in ``workers`` DataLoader processes (0: in this one),
    overlapping the model; results in plan order."""
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    if workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers tokenize too
    # fork (where there is one): no start-up cost, and unlike spawn/forkserver it never re-runs
    # the caller's script in the workers (a script without a __main__ guard would run again).
    # LanceDB and Lance warn about forking a process that uses them; the workers only read and
    # decode files and never call into either, so those two warnings are silenced here.
    context = "fork" if workers > 0 and "fork" in mp.get_all_start_methods() else None
    loader = DataLoader(DecodeDataset(model.config.to_json()), sampler=_Once(batches), batch_size=None,
                        num_workers=workers, collate_fn=_identity, multiprocessing_context=context,
                        prefetch_factor=2 if workers > 0 else None,
                        pin_memory=str(model.device).startswith("cuda"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"lance is not fork-safe")
        warnings.filterwarnings("ignore", message=r"lancedb fork support is experimental")
        it = iter(loader)  # the workers are forked here
    for decoded in it:
        yield embed_decoded(model, decoded)


class _Once:
    """An iterable over a one-shot iterator (the DataLoader asks for ``iter(sampler)`` once)."""

    def __init__(self, it: Iterable[Batch]):
        self.it = it

    def __iter__(self):
        return iter(self.it)


def _identity(x: Any) -> Any:
    return x
