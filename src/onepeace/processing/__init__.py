"""Raw inputs -> model tensors, per modality (each modality plug-in names its processor).

This package sits below :mod:`onepeace.modalities` and never imports it; the per-config
:class:`onepeace.modalities.Processor` (one processor per modality of a model) lives there.
"""

from __future__ import annotations

from typing import Any

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


def __getattr__(name: str) -> Any:
    if name == "Processor":
        raise ImportError("onepeace.processing.Processor moved to onepeace.modalities.Processor")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
