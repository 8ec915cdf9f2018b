"""onepeace: a clean PyTorch implementation of ONE-PEACE (vision, audio and language in one space)."""

from __future__ import annotations

import sys as _sys

from . import modalities  # noqa: F401  (registers the built-in modalities)
from ._version import __version__ as __version__
from .config import HeadConfig, ModelConfig, get_preset, list_presets
from .errors import CheckpointError, ConfigError, InputError, OnePeaceError
from .inference import OnePeace, create_model, get_processor, get_tokenizer
from .modalities import Modality, register_modality, registered_modalities
from .model.precision import resolve_dtype

__all__ = [
    "CheckpointError",
    "ConfigError",
    "HeadConfig",
    "InputError",
    "Modality",
    "ModelConfig",
    "OnePeace",
    "OnePeaceError",
    "create_model",
    "get_preset",
    "get_processor",
    "get_tokenizer",
    "list_presets",
    "register_modality",
    "registered_modalities",
    "resolve_dtype",
]

# LanceDB has no plugin entry points: where lancedb is already imported, register the "onepeace"
# embedding function now (lancedb itself is never imported here; otherwise import
# onepeace.search.lancedb_fn, see there, which also reports a LanceDB too old for it). This package
# file is the top of every layer: no module of onepeace imports it, so this makes no import circle.
if "lancedb" in _sys.modules:
    try:
        from .search import lancedb_fn as _lancedb_fn  # noqa: F401
    except ImportError:
        pass
