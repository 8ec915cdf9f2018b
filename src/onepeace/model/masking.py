"""The pretraining masks live in :mod:`onepeace.modalities.masking`, beside the adapters that draw
them (modalities sit below the model); their names stay importable from here."""

from ..modalities.masking import keep_to_positions, random_keep, span_keep, word_keep

__all__ = ["keep_to_positions", "random_keep", "span_keep", "word_keep"]
