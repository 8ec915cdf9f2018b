"""Training data: manifests, tar shards, augmentation and the bundled demo set."""

# manifests, shards, augmentation, the streaming pair dataset
from .augment import random_resized_crop  # noqa: E402,F401
from .dataset import PairDataset, collate_pairs, make_loader  # noqa: E402,F401
from .manifest import read_manifest, write_manifest  # noqa: E402,F401
from .shards import iter_shard, write_shards, write_shards_from_samples  # noqa: E402,F401
