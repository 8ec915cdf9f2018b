"""Turning the many accepted input kinds into something a decoder can read, with clear errors."""

from __future__ import annotations

import io
import os
from typing import Any

from ..errors import DecodeError, InputError, not_the_input


def describe(item: Any) -> str:
    """A short name for an input, for error messages."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    name = getattr(item, "name", None)
    if isinstance(name, str):
        return name
    shape = getattr(item, "shape", None)
    if shape is not None:
        return f"<{type(item).__name__} of shape {tuple(shape)}>"
    return f"<{type(item).__name__}>"


class NamedBytes(io.BytesIO):
    """In-memory bytes that keep the name of the input they came from, so that a decoder's own
    error message (which shows the stream's ``repr``) names the file, not ``<_io.BytesIO ...>``."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return repr(self.name)


def check_file(item: str | os.PathLike, kind: str) -> str:
    """``item`` as a path to an existing, non-empty file; one clear error naming it otherwise (a
    missing file or a folder: :class:`InputError`; 0 bytes: :class:`DecodeError`)."""
    path = os.fspath(item)
    if not os.path.exists(path):
        raise InputError(f"{kind} file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"{kind} input is a directory, not a file: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"{kind} file is empty: {path}")
    return path


def open_binary(item: Any, kind: str) -> io.BytesIO:
    """A readable in-memory binary stream, named after the input, for a path, bytes or file
    object; clear error otherwise."""
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.exists(path):
            raise InputError(f"{kind} file not found: {path}")
        if os.path.isdir(path):
            raise InputError(f"{kind} input is a directory, not a file: {path}")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            if not_the_input(e):  # too many open files, ...: the machine's fault, the run stops
                raise
            raise InputError(f"cannot read {kind} file {path}: {e.strerror or e}") from None
        if not data:
            raise DecodeError(f"{kind} file is empty: {path}")
        return NamedBytes(data, path)
    if isinstance(item, (bytes, bytearray, memoryview)):
        if not len(item):
            raise InputError(f"{kind} input is empty (0 bytes)")
        return NamedBytes(bytes(item), describe(item))
    if hasattr(item, "read"):
        try:
            data = item.read()
        except Exception as e:  # noqa: BLE001 - any reader failure is the input's fault ...
            if not_the_input(e):  # ... but for running out of memory or file handles
                raise
            raise InputError(f"cannot read {kind} input {describe(item)}: {e}") from None
        if isinstance(data, str):
            raise InputError(f"{kind} file object {describe(item)} is open in text mode; open it with 'rb'")
        if not data:
            raise InputError(f"{kind} input {describe(item)} is empty")
        return NamedBytes(data, describe(item))
    raise InputError(
        f"unsupported {kind} input {describe(item)}: give a path, bytes, a binary file object, "
        "a numpy array or a torch tensor"
    )
