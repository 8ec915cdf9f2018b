"""The network alone: :class:`~onepeace.model.onepeace.OnePeaceNetwork` (the ``nn.Module``) and its parts.

* :mod:`~onepeace.model.onepeace`: the network (adapters -> encoder -> norms, projections, heads);
* :mod:`~onepeace.model.encoder`, :mod:`~onepeace.model.layer`, :mod:`~onepeace.model.attention`,
  :mod:`~onepeace.model.ffn`, :mod:`~onepeace.model.heads`: its parts;
* :mod:`~onepeace.model.packing`: variable-length batches without padding;
* :mod:`~onepeace.model.precision` (``dtype="auto"``, :func:`~onepeace.model.precision.resolve_dtype`)
  and :mod:`~onepeace.model.quant` (int8);
* :mod:`~onepeace.model.resize` (image size); ``relpos`` and ``masking`` re-export what moved to
  :mod:`onepeace.modalities`.

Nothing here imports the checkpoints, the inference layer or anything above them; the public
:class:`onepeace.OnePeace` (``embed``, ``from_pretrained``...) subclasses the network in
:mod:`onepeace.inference`.
"""

from __future__ import annotations

from .onepeace import OnePeaceNetwork

__all__ = ["OnePeaceNetwork"]
