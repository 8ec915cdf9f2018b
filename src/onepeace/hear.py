"""The HEAR API (Holistic Evaluation of Audio Representations, hearbenchmark.com) for a onepeace
model's audio branch::

    from onepeace import hear
    model = hear.load_model("runs/demo/model")            # a model directory or hub id
    scene = hear.get_scene_embeddings(audio, model)        # [n_sounds, D]
    frames, ms = hear.get_timestamp_embeddings(audio, model)  # [n_sounds, T, D], [n_sounds, T]

``audio`` is a float tensor ``[n_sounds, n_samples]`` at ``model.sample_rate`` (16000 by default;
``load_model(path, sample_rate=44100)`` takes audio at any of the rates HEAR uses and resamples it to
the model's 16 kHz as :func:`onepeace.processing.audio.resample` does).

* **Scene embeddings** are the model's retrieval embeddings of the clips, as
  :meth:`OnePeace.embed` computes them with ``long_audio="chunk"``: a clip over 15 s is the
  duration-weighted mean of its 15 s windows' unit embeddings, renormalised.
* **Timestamp embeddings** are the audio encoder's own per-frame features: the final-layer token
  features (after the final norm) of the audio branch, one per frame of its conv stem (a hop of
  the product of the stem's strides, 320 samples = 20 ms for the official stem), CLS left out. A clip
  is normalised as a whole (as for embed) and cut into the same consecutive 15 s windows as
  ``long_audio="chunk"`` (:func:`onepeace.processing.stream.plan_windows`, the window plan of
  :mod:`onepeace.inference.moments`, with ``last="cut"``); each window is encoded alone and its
  frames follow one another. A frame's
  timestamp is the centre of the samples it reads (its receptive field, 400 samples = 25 ms for the
  official stem), in milliseconds from the clip's start; frames whose centre lies past the end of the
  clip (from tiling a clip under 1 s) are left out. Every clip of a call has the same length, so the
  same timestamps.

Bad input is one line (:class:`~onepeace.errors.InputError`): a rate HEAR does not use, audio that
is not ``[n_sounds, n_samples]``, a 0-length clip, NaN samples, ``sample_rate=`` given to a call
that differs from the model's. An empty batch (``n_sounds == 0``) gives empty tensors.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .processing.audio import stem_frames, stem_samples
from .processing.stream import plan_windows

#: the sampling rates HEAR allows a model to take
HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)


class HearModel(nn.Module):
    """A onepeace model seen through the HEAR API (``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size``); ``model`` is the :class:`~onepeace.OnePeace`."""

    def __init__(self, model: Any, sample_rate: int = 16000, batch_size: int = 16):
        super().__init__()
        if "audio" not in model.modality_names:
            raise InputError(f"HEAR needs a model with an audio branch; this one has "
                             f"{', '.join(model.modality_names)}")
        check_rate(sample_rate)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.sample_rate = int(sample_rate)
        self.batch_size = batch_size
        self.scene_embedding_size = int(model.config.dim)
        self.timestamp_embedding_size = int(model.config.dim)
        proc = model.processor.get("audio")
        self.model_rate = proc.sample_rate
        #: samples (at the model's rate) between consecutive frames, and the samples one frame reads
        self.hop = math.prod(s for _, _, s in proc.stem)
        self.receptive_field = stem_samples(1, proc.stem)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return get_scene_embeddings(audio, self)


def check_rate(sample_rate: Any) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or int(sample_rate) not in HEAR_SAMPLE_RATES:
        raise InputError(f"sample_rate {sample_rate!r} is not one HEAR uses: give one of "
                         f"{', '.join(map(str, HEAR_SAMPLE_RATES))} (audio is resampled to the model's 16000)")
    return int(sample_rate)


def load_model(model_file_path: str = "", *, sample_rate: int = 16000, device: str | None = None,
               dtype: Any = None, batch_size: int = 16) -> HearModel:
    """HEAR's ``load_model``: a onepeace model directory or hub id (``model_file_path``) taking audio
    at ``sample_rate`` (any rate HEAR uses; resampled to 16 kHz inside)."""
    from .inference import OnePeace

    if isinstance(model_file_path, OnePeace):
        model = model_file_path
    else:
        if not model_file_path:
            raise InputError("load_model needs a onepeace model directory or hub id (model_file_path), "
                             "e.g. runs/demo/model after `onepeace demo`")
        model = OnePeace.from_pretrained(os.fspath(model_file_path), device=device or "cpu", dtype=dtype)
    return HearModel(model.eval(), sample_rate=sample_rate, batch_size=batch_size)


def _clips(audio: Any, model: HearModel, sample_rate: int | None) -> np.ndarray:
    if not isinstance(model, HearModel):
        raise InputError(f"the model must come from onepeace.hear.load_model, got {type(model).__name__}")
    if sample_rate is not None and int(sample_rate) != model.sample_rate:
        raise InputError(f"audio at {sample_rate} Hz given to a model loaded for {model.sample_rate} Hz: load it "
                         f"with onepeace.hear.load_model(path, sample_rate={sample_rate})")
    a = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
    if a.ndim != 2:
        raise InputError(f"audio must be [n_sounds, n_samples], got shape {tuple(a.shape)}")
    if a.shape[0] and a.shape[1] == 0:
        raise InputError("audio clips of 0 samples: each clip needs at least one sample")
    if not np.isfinite(a).all():
        raise InputError("audio contains NaN or infinite samples")
    return a


def _device_of(audio: Any) -> torch.device:
    return audio.device if isinstance(audio, torch.Tensor) else torch.device("cpu")


def get_scene_embeddings(audio: torch.Tensor, model: HearModel, *, sample_rate: int | None = None) -> torch.Tensor:
    """[n_sounds, scene_embedding_size] float32: the model's unit audio embeddings (long clips: the
    mean of 15 s windows, as ``embed(long_audio="chunk")``)."""
    a = _clips(audio, model, sample_rate)
    if a.shape[0] == 0:
        return torch.zeros(0, model.scene_embedding_size, device=_device_of(audio))
    z = model.model.embed(audio=[(row, model.sample_rate) for row in a], batch_size=model.batch_size,
                          long_audio="chunk")["audio"]
    return z.float().to(_device_of(audio))


@torch.inference_mode()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel, *,
                             sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([n_sounds, T, timestamp_embedding_size], [n_sounds, T]): the audio encoder's per-frame
    features and each frame's centre in milliseconds (see the module's docstring)."""
    a = _clips(audio, model, sample_rate)
    dev = _device_of(audio)
    if a.shape[0] == 0:
        return (torch.zeros(0, 0, model.timestamp_embedding_size, device=dev), torch.zeros(0, 0, device=dev))
    om = model.model
    proc = om.processor.get("audio")
    cap = proc.max_samples
    windows, owner, starts, keep = [], [], [], []
    for i, row in enumerate(a):
        wav = proc.normalized((row, model.sample_rate))  # at the model's rate, normalised as a whole
        # consecutive cap-long windows, the last cut at the clip's end (the rule of timestamped windows)
        for s, e in plan_windows(wav.numel(), cap, cap, last="cut"):
            part = wav[s:e]
            fitted = proc._fit(part, f"clip {i}")
            frames = stem_frames(fitted.numel(), proc.stem)
            # frames whose centre lies within the clip's real samples (a tiled short window reads copies)
            real = sum(1 for f in range(frames) if f * model.hop + model.receptive_field / 2 <= part.numel())
            windows.append(fitted)
            owner.append(i)
            starts.append(s)
            keep.append(max(1, min(frames, real)))
    feats: list[torch.Tensor] = []
    for b in range(0, len(windows), model.batch_size):
        batch = proc.collate(windows[b : b + model.batch_size])
        out = om.encode(audio=batch).features["audio"][:, 1:].float().cpu()  # CLS left out
        feats.extend(out[j, : keep[b + j]] for j in range(out.shape[0]))
    per_clip: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(a.shape[0])]
    for i, s, f in zip(owner, starts, feats):
        centres = (s + torch.arange(f.shape[0], dtype=torch.float64) * model.hop + model.receptive_field / 2)
        per_clip[i].append((f, centres * 1000.0 / model.model_rate))
    emb = torch.stack([torch.cat([f for f, _ in parts]) for parts in per_clip])
    ms = torch.stack([torch.cat([t for _, t in parts]) for parts in per_clip]).float()
    return emb.to(dev), ms.to(dev)


__all__ = ["HEAR_SAMPLE_RATES", "HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
