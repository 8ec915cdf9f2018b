"""Raw inputs -> model tensors, per modality (each modality plug-in names its processor)."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..errors import InputError


class Processor:
    """Holds one processor per modality of a model config; ``processor.get("image")([...])``."""

    def __init__(self, config: ModelConfig):
        from ..modalities import get_modality, parse_options

        self._procs = {
            m: get_modality(m).make_processor(parse_options(m, opts))
            for m, opts in config.modalities.items()
        }

    def get(self, name: str) -> Any:
        if name not in self._procs:
            raise InputError(f"this model has no {name} branch; it has {sorted(self._procs)}")
        return self._procs[name]

    def __call__(self, **inputs: Any) -> dict[str, dict]:
        return {k: self.get(k)(v) for k, v in inputs.items() if v is not None}
