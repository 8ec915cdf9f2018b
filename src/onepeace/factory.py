"""Former home of :func:`create_model`, :func:`resolve_dtype`, :func:`get_processor` and
:func:`get_tokenizer`, kept so that ``from onepeace.factory import ...`` still works.

They now live in :mod:`onepeace.inference.factory` (``create_model``, ``get_processor``,
``get_tokenizer``) and :mod:`onepeace.model.precision` (``resolve_dtype``); import them from
``onepeace`` itself. This module belongs to the inference layer: nothing below it imports it.
"""

from __future__ import annotations

from .inference.factory import DEFAULT_PROCESSOR_MODEL, create_model, get_processor, get_tokenizer
from .model.precision import resolve_dtype

__all__ = ["DEFAULT_PROCESSOR_MODEL", "create_model", "get_processor", "get_tokenizer", "resolve_dtype"]
