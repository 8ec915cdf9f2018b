"""One processor per modality of a model config (raw inputs -> model tensors).

It lives beside the modality registry, above :mod:`onepeace.processing`: each registered modality
names its processor (``make_processor``), and the processing package never imports the registry.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..errors import InputError
from .base import get_modality, parse_options


class Processor:
    """Holds one processor per modality of a model config; ``processor.get("image")([...])``."""

    def __init__(self, config: ModelConfig):
        self._procs = {
            m: get_modality(m).make_processor(parse_options(m, opts))
            for m, opts in config.modalities.items()
        }
        for proc in self._procs.values():  # a processor that hands companion segments to others'
            if hasattr(proc, "bind"):
                proc.bind(self)

    def get(self, name: str) -> Any:
        if name not in self._procs:
            raise InputError(f"this model has no {name} branch; it has {sorted(self._procs)}")
        return self._procs[name]

    def __call__(self, **inputs: Any) -> dict[str, dict]:
        return {k: self.get(k)(v) for k, v in inputs.items() if v is not None}
