"""The network alone: :class:`onepeace.model.onepeace.OnePeaceNetwork` (the ``nn.Module``) and its parts.

* :mod:`~onepeace.model.onepeace`: the network (adapters -> encoder -> norms, projections, heads);
* :mod:`~onepeace.model.encoder`, :mod:`~onepeace.model.layer`, :mod:`~onepeace.model.attention`,
  :mod:`~onepeace.model.ffn`, :mod:`~onepeace.model.relpos`, :mod:`~onepeace.model.heads`: its parts;
* :mod:`~onepeace.model.packing`: variable-length batches without padding;
* :mod:`~onepeace.model.precision` (``dtype="auto"``, :func:`~onepeace.model.precision.resolve_dtype`)
  and :mod:`~onepeace.model.quant` (int8);
* :mod:`~onepeace.model.resize` (image size), :mod:`~onepeace.model.masking` (pretraining masks).

Nothing here imports the checkpoints, the inference layer or anything above them; the public
:class:`onepeace.OnePeace` (``embed``, ``from_pretrained``...) is defined in :mod:`onepeace.inference`.
This file imports nothing itself: the modality adapters import :mod:`~onepeace.model.relpos` and
:mod:`~onepeace.model.masking`, so importing the network from here would run before they are ready.
"""
