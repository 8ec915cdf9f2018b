"""One family of errors, each naming the input that failed and what to do about it.

Skipping input: data loaders and index builds skip an input that raises :class:`InputError` (a
:class:`DecodeError` or any other fault of the input: missing, empty, corrupt, truncated, not a
format a decoder reads), count it and go on. Everything else -- a missing module, a bug, out of
memory, too many open files, a full disk -- is not the input's fault and stops the run with one
line naming the cause (:func:`not_the_input`, :func:`stop_in_worker`). A run that skips more than
:data:`MAX_SKIP_SHARE` of the inputs it has seen (once it has seen :data:`MIN_SKIP_SEEN`) stops
too, with a :class:`SkipLimitError` (:class:`SkipGuard`).
"""

from __future__ import annotations

import errno
import re

#: a run stops when it has skipped more than this share of the inputs it has seen ...
MAX_SKIP_SHARE = 0.5
#: ... once it has seen at least this many (a few bad files among the first ones do not stop it)
MIN_SKIP_SEEN = 20


class OnePeaceError(Exception):
    """Base class of every error raised on purpose by onepeace."""

    def __str__(self) -> str:
        s = super().__str__()
        # raised in a DataLoader worker, torch re-raises it as type(e)("Caught ... Original
        # Traceback ...\n<module>.<Name>: message"): the message alone, in one line
        if s.startswith("Caught ") and "\nOriginal Traceback" in s:
            last = s.rstrip().splitlines()[-1]
            found = re.match(rf"(?:[\w.]+\.)?{re.escape(type(self).__name__)}: (.*)$", last)
            if found:
                return found.group(1)
        return s


class InputError(OnePeaceError, ValueError):
    """An input (file, array, text) could not be used."""


class DecodeError(InputError):
    """An input's content could not be decoded (corrupt, truncated or empty, not a format the
    decoder reads): the input's fault, so a data loader or an index build skips and counts it."""


class CheckpointError(OnePeaceError):
    """A checkpoint could not be read, or does not fit the model."""


class ConfigError(OnePeaceError, ValueError):
    """A configuration value is invalid or unknown."""


class OutputError(OnePeaceError):
    """An output (file, directory, model) cannot be written: it exists and was not to be replaced,
    or its folder is missing or read-only."""


class MissingDependencyError(OnePeaceError, ImportError):
    """An optional package a feature needs is not installed (e.g. PyAV for video files): a setup
    error, never counted as a bad input."""


class DataError(OnePeaceError):
    """A data loader worker met an error that is not its input's fault (a missing module, a bug,
    out of memory): named in one line with the input it was reading, and the run stops."""


class SkipLimitError(OnePeaceError):
    """A run skipped more than :data:`MAX_SKIP_SHARE` of its input: it stops rather than train or
    index on what little is left."""


class OnePeaceWarning(UserWarning):
    """Something was done that the user may not expect (e.g. a long clip truncated); the CLI
    prints these as one ``onepeace CMD: warning: ...`` line, with or without ``-v``."""


#: OSError numbers that say the machine ran out of something, not that an input is bad
_RESOURCE_ERRNOS = frozenset(
    n for n in (getattr(errno, name, None) for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOSPC", "EDQUOT", "ENOBUFS"))
    if n is not None
)


def not_the_input(e: BaseException) -> bool:
    """Whether ``e`` cannot be an input's fault: out of memory, a missing module, or an OSError
    that says the machine ran out of something (too many open files, no space left, over quota).
    Decoders that turn their library's many error types into :class:`DecodeError` let these pass."""
    return isinstance(e, (MemoryError, ImportError)) or (isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS)


def _cause(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory; try a smaller batch size or fewer workers"
    if isinstance(e, ImportError):
        return f"a module onepeace needs is missing: {e}; reinstall onepeace (pip install onepeace)"
    if isinstance(e, OSError):
        return f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
    return f"{type(e).__name__}: {e} (a bug in onepeace, not in the input: please report it)"


def stop_in_worker(e: BaseException, what: str) -> None:
    """For an ``except`` block that met ``e``, not an input's fault, while reading ``what``: in a
    DataLoader worker process (whose exceptions torch re-raises with the worker's whole traceback
    in the message) raise a :class:`DataError` naming ``what`` and the cause in one line; elsewhere
    return, and the caller re-raises ``e`` as it is (the CLI names it in one line)."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        raise DataError(f"stopped at {what}: {_cause(e)}") from e


class SkipGuard:
    """Counts the inputs a run has used (:meth:`ok`) and skipped (:meth:`skip`); once it has seen
    ``min_seen``, skipping more than ``share`` of them raises :class:`SkipLimitError` naming
    ``what``. ``share=None`` never stops (e.g. ``onepeace data check``, which lists every bad input)."""

    def __init__(self, what: str, share: float | None = MAX_SKIP_SHARE, min_seen: int = MIN_SKIP_SEEN):
        if share is not None and not 0.0 <= share <= 1.0:
            raise ConfigError(f"the share of skipped inputs that stops a run must be in [0, 1], got {share!r}")
        self.what, self.share, self.min_seen = what, share, int(min_seen)
        self.used = 0
        self.skipped = 0

    def ok(self, n: int = 1) -> None:
        self.used += n

    def skip(self, n: int = 1, *, counted: bool = False) -> None:
        """``n`` inputs skipped; ``counted``: they were counted as used before they failed (an index
        build plans an item before its file is decoded)."""
        if counted:
            self.used -= n
        self.skipped += n
        seen = self.used + self.skipped
        if self.share is not None and seen >= self.min_seen and self.skipped > self.share * seen:
            raise SkipLimitError(
                f"{self.what}: {self.skipped} of the first {seen} inputs could not be used (more than "
                f"{self.share:.0%}), so the run stops; fix or remove the bad inputs (each is named in a "
                "warning or the report)")
