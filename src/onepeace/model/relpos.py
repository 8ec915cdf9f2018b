"""The relative-position buckets live in :mod:`onepeace.modalities.relpos`, beside the adapters that
build them (modalities sit below the model); their names stay importable from here."""

from ..modalities.relpos import grid_buckets, grid_num_buckets, token_buckets, token_num_buckets

__all__ = ["grid_buckets", "grid_num_buckets", "token_buckets", "token_num_buckets"]
