"""``onepeace adapt``: parameter-efficient alignment of a ONE-PEACE model to a user's own pairs.

LoRA adapters (the peft library, ``pip install 'onepeace[adapt]'``; imported only when a run
starts) on the branches of the pairs' two modalities, trained with the pretraining's aligning
contrast (:func:`onepeace_train.pretrain.losses.contrastive_loss`) while every other weight stays
frozen, the model's logit scale included (the adapter holds LoRA tensors only, so a tuned
temperature could not travel with it, and the base model's was learnt on far more data). The
held-out pairs are scored before and after; the run is resumable after a kill. See
:func:`run_adapt`, :mod:`.data` (what DATA may be), :mod:`.lora` (targets), :mod:`.output` (the
adapter directory) and docs/adapting.md.
"""

from __future__ import annotations

from .options import AdaptOptions
from .run import run_adapt

__all__ = ["AdaptOptions", "run_adapt"]
