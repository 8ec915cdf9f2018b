"""Reading an index build's sources into :class:`Item` records (the build's **reader** stage).

A folder is searched recursively for the files of the model's modalities (by extension: the image
and audio formats the processors read); a ``.jsonl`` manifest gives one item per line (a media path
with an optional caption, or a text alone, plus any other fields as metadata); a ``.txt`` file
gives one text item per non-blank line; a single media file is one item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError
from .store import item_id

MANIFEST_EXTENSIONS = (".jsonl",)
TEXT_EXTENSIONS = (".txt",)


# ---------------------------------------------------------------------------------- reader
@dataclass
class Item:
    """One thing to index: a file (``uri`` set) or a text (``uri`` empty)."""

    modality: str
    uri: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: set when the reader already knows the item is unusable (bad manifest line, odd file name)
    error: str = ""
    #: the error stopped the reading of its source (the source's remaining items are unknown)
    source_error: bool = False

    @property
    def id(self) -> str:
        return item_id(self.modality, self.uri, "" if self.uri else self.text)

    @property
    def name(self) -> str:
        """How reports and messages name the item."""
        return self.uri or (self.text if len(self.text) <= 80 else self.text[:79] + "…")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(**{k: d[k] for k in ("modality", "uri", "text", "metadata", "source", "error", "source_error")
                      if k in d})


def file_modalities(model_modalities: Iterable[str]) -> dict[str, str]:
    """Lower-case extension -> modality, for the model's modalities that are read from files."""
    from ..modalities import get_modality

    out: dict[str, str] = {}
    for m in model_modalities:
        for ext in get_modality(m).file_extensions:
            out.setdefault(ext.lower(), m)
    return out


def check_sources(sources: Sequence[str | os.PathLike]) -> list[str]:
    """The sources as absolute paths, each checked to exist (before any work)."""
    if not sources:
        raise InputError("nothing to index: give folders, .jsonl manifests or .txt files as sources")
    out = []
    for s in sources:
        p = os.path.expanduser(os.fspath(s))
        if not os.path.exists(p):
            raise InputError(f"source not found: {p}")
        if not os.path.isdir(p) and not os.path.isfile(p):
            raise InputError(f"source is not a folder or a file: {p}")
        if not os.access(p, os.R_OK):
            raise InputError(f"source is not readable: {p}")
        out.append(os.path.abspath(p))
    return out


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def iter_items(sources: Sequence[str], modalities: Iterable[str], *,
               left_out: Callable[[str], None] | None = None) -> Iterator[Item]:
    """The items of the sources, in order (folders walked sorted, hidden entries left out).
    ``left_out(path)`` is told of each file in a folder that no modality reads."""
    modalities = list(modalities)
    exts = file_modalities(modalities)
    for src in sources:
        src = os.path.abspath(os.fspath(src))
        if os.path.isdir(src):
            yield from _folder(src, exts, left_out)
        elif src.lower().endswith(MANIFEST_EXTENSIONS):
            yield from _manifest(src, exts, modalities)
        elif src.lower().endswith(TEXT_EXTENSIONS):
            yield from _text_file(src, modalities)
        elif os.path.splitext(src)[1].lower() in exts:
            yield _file_item(src, exts[os.path.splitext(src)[1].lower()], src, {})
        else:
            raise InputError(
                f"source {src} is not a folder, a .jsonl manifest, a .txt file (one text per line) or a "
                f"file this model reads ({', '.join(sorted(exts))})"
            )


def _file_item(path: str, modality: str, source: str, metadata: dict[str, Any]) -> Item:
    item = Item(modality, uri=path, metadata={**metadata, "source": source}, source=source)
    if not _utf8(path):
        item.uri = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        item.error = "the file name is not valid UTF-8; rename the file"
    return item


def _folder(root: str, exts: dict[str, str], left_out: Callable[[str], None] | None) -> Iterator[Item]:
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            modality = exts.get(os.path.splitext(f)[1].lower())
            if modality is None:
                if left_out is not None:
                    left_out(path)
                continue
            yield _file_item(path, modality, root, {})


def _jsonl_lines(path: str) -> Iterator[tuple[str, Any, str]]:
    """(``file:line``, record, error) per non-blank line; a bad line is an error for that line
    only (invalid JSON, not UTF-8); an unreadable file ends the listing with an error."""
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                where = f"{path}:{n}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield where, None, f"{where}: not UTF-8 text ({e.reason} at byte {e.start})"
                    continue
                if not line.strip():
                    continue
                try:
                    yield where, json.loads(line), ""
                except json.JSONDecodeError as e:
                    yield where, None, f"{where}: invalid JSON ({e.msg} at column {e.colno})"
    except OSError as e:
        yield path, None, f"cannot read {path}: {e.strerror or e} (the rest of this manifest is skipped)"


def _manifest(path: str, exts: dict[str, str], modalities: list[str]) -> Iterator[Item]:
    from ..data.manifest import resolve_media

    base = os.path.dirname(path)
    media_keys = [m for m in modalities if m in set(exts.values())]
    for where, rec, error in _jsonl_lines(path):
        if error:
            yield Item("?", text=where, source=path, error=error, source_error=where == path)
            continue
        if not isinstance(rec, dict):
            yield Item("?", text=where, source=path, error=f"{where}: a line must be a JSON object")
            continue
        line = int(where.rsplit(":", 1)[1])
        media = [k for k in rec if k in media_keys]
        caption = rec.get("text", "")
        meta = {k: v for k, v in rec.items() if k not in media and k != "text"}
        meta["line"] = line
        if len(media) > 1 or not isinstance(caption, str):
            what = (f"several media fields ({', '.join(media)})" if len(media) > 1
                    else f"'text' is not a string ({type(caption).__name__})")
            yield Item(media[0] if media else "text", text=where, source=path, error=f"{where}: {what}")
        elif media:
            value = rec[media[0]]
            if not isinstance(value, str) or not value:
                yield Item(media[0], text=where, source=path,
                           error=f"{where}: '{media[0]}' must be a non-empty path, got {value!r}")
                continue
            item = _file_item(resolve_media(base, value), media[0], path, meta)
            item.text = caption
            yield item
        elif caption.strip():
            yield Item("text", text=caption.strip(), metadata={**meta, "source": path}, source=path)
        else:
            yield Item("text", text=where, source=path,
                       error=f"{where}: no media field ({', '.join(media_keys)}) and no text")


def _text_file(path: str, modalities: list[str]) -> Iterator[Item]:
    if "text" not in modalities:
        raise InputError(f"{path}: this model has no text branch to embed texts with")
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                text = line.strip()
                if text:
                    yield Item("text", text=text, metadata={"source": path, "line": n}, source=path)
    except UnicodeDecodeError as e:
        yield Item("text", text=path, source=path, error=f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                   "the rest of this file is skipped", source_error=True)
    except OSError as e:
        yield Item("text", text=path, source=path, error=f"cannot read {path}: {e.strerror or e}", source_error=True)
