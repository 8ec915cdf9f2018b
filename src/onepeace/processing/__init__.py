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
        for proc in self._procs.values():  # a processor that hands companion segments to others'
            if hasattr(proc, "bind"):
                proc.bind(self)

    def get(self, name: str) -> Any:
        if name not in self._procs:
            raise InputError(f"this model has no {name} branch; it has {sorted(self._procs)}")
        return self._procs[name]

    def __call__(self, **inputs: Any) -> dict[str, dict]:
        return {k: self.get(k)(v) for k, v in inputs.items() if v is not None}


#: a processed batch may carry other modalities' segments of the same items (a video's sound)
#: under the keys ``"<modality>.<key>"``, e.g. ``"audio.waveform"``; adapters ignore such keys
COMPANION_SEP = "."


def split_companions(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A processed batch -> (its own keys, {companion modality: its batch})."""
    own: dict[str, Any] = {}
    others: dict[str, dict[str, Any]] = {}
    for k, v in batch.items():
        m, sep, key = k.partition(COMPANION_SEP)
        if sep:
            others.setdefault(m, {})[key] = v
        else:
            own[k] = v
    return own, others
