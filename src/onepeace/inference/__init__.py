"""The inference layer: raw inputs in, embeddings, logits, boxes and maps out; the public model class.

* :class:`~onepeace.inference.onepeace.OnePeace` (``onepeace.OnePeace``): the network
  (:class:`onepeace.model.onepeace.OnePeaceNetwork`) plus the entry points users call
  (``from_pretrained``, ``save_pretrained``, ``push_to_hub``, ``embed``, ``embed_fused``,
  ``encode_text``/``encode_image``/``encode_audio``/``encode_<modality>``, ``classify``,
  ``ground``, ``segment``), each a thin call into the functions below or into
  :mod:`onepeace.checkpoints`;
* :mod:`~onepeace.inference.embedding`: :func:`embed`, :func:`embed_fused`, :func:`encode_media`
  (bucketing, long texts and audio in windows, fused segments), taking the model as an argument;
* :mod:`~onepeace.inference.moments`: :func:`embed_windows`, :func:`iter_window_batches` (timestamped
  window embeddings of long audio and video, streamed);
* :mod:`~onepeace.inference.predict`: :func:`classify`, :func:`ground`, :func:`segment`;
* :mod:`~onepeace.inference.factory`: :func:`create_model`, :func:`get_processor`, :func:`get_tokenizer`.

Layers (lower never imports higher): ... -> model -> checkpoints -> inference -> data, tasks -> search -> ...
"""

from __future__ import annotations

from .embedding import embed, embed_fused, encode_media
from .factory import DEFAULT_PROCESSOR_MODEL, create_model, get_processor, get_tokenizer
from .moments import WindowEmbeddings, embed_windows, iter_window_batches
from .onepeace import OnePeace
from .predict import classify, ground, segment

__all__ = ["DEFAULT_PROCESSOR_MODEL", "OnePeace", "WindowEmbeddings", "classify", "create_model", "embed", "embed_fused",
           "embed_windows", "encode_media", "get_processor", "get_tokenizer", "ground", "iter_window_batches", "segment"]
