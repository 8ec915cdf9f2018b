"""onepeace: a clean PyTorch implementation of ONE-PEACE (vision, audio and language in one space)."""

from __future__ import annotations

from . import modalities  # noqa: F401  (registers the built-in modalities)
from .config import HeadConfig, ModelConfig, get_preset, list_presets
from .errors import CheckpointError, ConfigError, InputError, OnePeaceError
from .factory import create_model, get_processor, get_tokenizer, resolve_dtype
from .modalities import Modality, register_modality, registered_modalities
from .model.onepeace import OnePeace

__version__ = "0.1.0"

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
# onepeace.search.lancedb_fn, see there, which also reports a LanceDB too old for it)
if "lancedb" in __import__("sys").modules:
    try:
        from .search import lancedb_fn as _lancedb_fn  # noqa: F401
    except ImportError:
        pass
