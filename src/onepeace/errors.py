"""One family of errors, each naming the input that failed and what to do about it."""

from __future__ import annotations


class OnePeaceError(Exception):
    """Base class of every error raised on purpose by onepeace."""


class InputError(OnePeaceError, ValueError):
    """An input (file, array, text) could not be used."""


class CheckpointError(OnePeaceError):
    """A checkpoint could not be read, or does not fit the model."""


class ConfigError(OnePeaceError, ValueError):
    """A configuration value is invalid or unknown."""


class OutputError(OnePeaceError):
    """An output (file, directory, model) cannot be written: it exists and was not to be replaced,
    or its folder is missing or read-only."""


class OnePeaceWarning(UserWarning):
    """Something was done that the user may not expect (e.g. a long clip truncated); the CLI
    prints these as one ``onepeace CMD: warning: ...`` line, with or without ``-v``."""
