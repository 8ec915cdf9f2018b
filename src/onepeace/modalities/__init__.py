"""Registered modalities. Importing this package registers text, image, audio and video."""

from . import audio, image, text, video  # noqa: F401  (registration side effect)
from .base import (
    AdapterOutput,
    Modality,
    get_modality,
    parse_options,
    register_modality,
    registered_modalities,
)
from .processor import Processor

__all__ = [
    "AdapterOutput",
    "Modality",
    "Processor",
    "get_modality",
    "parse_options",
    "register_modality",
    "registered_modalities",
]
