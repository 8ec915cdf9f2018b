"""Which model built an index: re-exports ``onepeace.checkpoints.fingerprint`` (its home since issue 25,
so the checkpoints layer can check an adapter's base model without importing search)."""

from __future__ import annotations

from ..checkpoints.fingerprint import (
    IN_MEMORY,
    fingerprint_dir,
    model_fingerprint,
    model_name,
    split_adapted_name,
)

__all__ = ["IN_MEMORY", "fingerprint_dir", "model_fingerprint", "model_name", "split_adapted_name"]
