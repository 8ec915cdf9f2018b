"""JSONL manifests: one training pair per line.

Each line is a JSON object with a caption and a media field named after a registered modality
(any whose plug-in reads files: ``image``, ``audio``, ``video``, or one of your own)::

    {"image": "images/cat.jpg", "text": "a cat on a mat"}
    {"audio": "clips/dog.flac", "text": "a dog barks", "label": 3, "id": "dog-0001"}
    {"video": "clips/dog.mp4", "audio": "clips/dog.wav", "text": "a dog barks"}

A line may hold several media fields (a clip and its soundtrack): each is decoded by its own
modality's processor. ``label`` (an int) and ``id`` (a string) are optional; any other field is
kept as metadata. Relative media paths are resolved against the manifest's own directory, so a
manifest and its files can be moved together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from ..errors import InputError


def media_modalities() -> tuple[str, ...]:
    """The registered modalities a data record can hold as a media field: those whose plug-in
    reads files (``file_extensions``), in registration order (text is the caption)."""
    from ..modalities import get_modality, registered_modalities

    return tuple(m for m in registered_modalities() if get_modality(m).file_extensions)


def media_fields(sample: dict[str, Any]) -> list[str]:
    """The media fields of a record (registered modality names), in registration order."""
    return [k for k in media_modalities() if k in sample]


def validate_sample(sample: Any, where: str) -> list[str]:
    """Check one manifest/shard record; returns its media fields. ``where`` names it in errors."""
    if not isinstance(sample, dict):
        raise InputError(f"{where}: a sample must be a JSON object, got {type(sample).__name__}")
    media = media_fields(sample)
    if not media:
        raise InputError(f"{where}: a sample needs a media field, one of {', '.join(repr(m) for m in media_modalities())}; it has none")
    for kind in media:
        path = sample[kind]
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise InputError(f"{where}: '{kind}' must be a non-empty path string, got {path!r}")
    if "text" not in sample:
        raise InputError(f"{where}: missing the 'text' field (the caption)")
    if not isinstance(sample["text"], str):
        raise InputError(f"{where}: 'text' must be a string, got {type(sample['text']).__name__}")
    if "label" in sample and (isinstance(sample["label"], bool) or not isinstance(sample["label"], int)):
        raise InputError(f"{where}: 'label' must be an integer, got {sample['label']!r}")
    if "id" in sample and not isinstance(sample["id"], str):
        raise InputError(f"{where}: 'id' must be a string, got {sample['id']!r}")
    return media


def iter_jsonl(path: str | os.PathLike, what: str = "manifest"):
    """``(where, record)`` per non-blank line of a JSONL file, ``where`` = ``file:line``.

    Raises :class:`InputError` for a missing file, bad JSON, a non-object line or non-UTF-8 text.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{what} not found: {path}" if not os.path.exists(path) else f"{what} is not a file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                yield where, record
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from None


def resolve_media(base: str, media: str | os.PathLike) -> str:
    """A manifest's media path, relative to the manifest's directory ``base``, made absolute."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(os.fspath(media))))


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL manifest; media paths come back absolute. Blank lines are ignored.

    Raises :class:`InputError` naming ``file:line`` for bad JSON or a missing/invalid field.
    Media files are *not* opened here (a missing file is the dataset's business: it is skipped).
    """
    base = os.path.dirname(os.path.abspath(os.fspath(path)))
    samples: list[dict[str, Any]] = []
    for where, sample in iter_jsonl(path):
        for kind in validate_sample(sample, where):
            sample[kind] = resolve_media(base, sample[kind])
        samples.append(sample)
    return samples


def write_manifest(path: str | os.PathLike, samples: Iterable[dict[str, Any]]) -> int:
    """Write samples as JSONL, atomically (temp file + ``os.replace``). Returns the line count.

    Samples are validated first (same rules as :func:`read_manifest`); paths are written as
    given, so relative ones are relative to the manifest's directory when read back.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"output directory does not exist: {parent}")
    lines = []
    for i, sample in enumerate(samples):
        row = dict(sample)
        for kind in validate_sample(sample, f"sample {i}"):
            row[kind] = os.fspath(row[kind])
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(lines)
