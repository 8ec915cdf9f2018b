"""The public :class:`OnePeace`: the network plus every entry point users call.

Design: the network is :class:`onepeace.model.onepeace.OnePeaceNetwork` (the ``nn.Module`` alone).
:class:`OnePeace` subclasses it and adds the entry points, each a thin call into the layer that
does the work: ``embed``/``encode_*``/``embed_fused`` into :mod:`onepeace.inference.embedding`,
``embed_windows`` into :mod:`onepeace.inference.moments`, ``classify``/``ground``/``segment`` into
:mod:`onepeace.inference.predict`, and
``from_pretrained``/``save_pretrained``/``push_to_hub`` into :mod:`onepeace.checkpoints` (which
builds whatever class it is given: ``from_pretrained`` passes ``cls``). So
:func:`onepeace.create_model`, :meth:`OnePeace.from_pretrained` and :meth:`~OnePeaceNetwork.grown`
all return an :class:`OnePeace`, and ``isinstance(model, onepeace.OnePeace)`` holds for them.
The functions also take a bare network (``onepeace.inference.embedding(network, text=[...])``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..checkpoints import adapter as _adapter
from ..checkpoints import format as _format
from ..checkpoints import hub as _hub
from ..model.onepeace import OnePeaceNetwork
from ..model.precision import resolve_runtime
from ..model.quant import quantize_int8
from . import embedding as _embed
from . import moments as _moments
from . import predict as _predict


class OnePeace(OnePeaceNetwork):
    """ONE-PEACE. Build with :func:`onepeace.create_model` or :meth:`from_pretrained`.

    ``model.embed(text=[...], image=[...], audio=[...])`` is the everyday entry point; the lower
    level ``encode(text={"tokens": ...}, image={"pixels": ...})`` takes processed tensors and fuses
    the given modalities into one sequence (text first) when more than one is given. The network
    itself is :class:`~onepeace.model.onepeace.OnePeaceNetwork`; the entry points here call
    :mod:`onepeace.inference` and :mod:`onepeace.checkpoints`.
    """

    # ------------------------------------------------------------------ raw-input API
    def embed(
        self,
        *positional: Any,
        text: Sequence[str] | str | None = None,
        image: Sequence[Any] | None = None,
        audio: Sequence[Any] | None = None,
        batch_size: int = 16,
        normalize: bool = True,
        long_audio: str = "truncate",
        long_text: str = "truncate",
        progress: bool | None = False,
        bucket: bool = True,
        max_tokens: int | None = None,
        **others: Sequence[Any] | None,
    ) -> dict[str, torch.Tensor]:
        """L2-normalised embeddings per modality, rows in input order (float32, on the CPU).

        ``progress``: a progress bar on stderr (``None``: only when stderr is a terminal).

        ``long_audio`` decides what happens to clips over the 15 s cap: ``"truncate"`` (the
        official behaviour) embeds the first 15 s and warns; ``"chunk"`` embeds consecutive 15 s
        windows (a last remainder of at least 1 s included) and returns their duration-weighted
        mean of L2-normalised window embeddings, renormalised. Both are batch-invariant. To know
        *where* in a long recording (or video) something happens, embed it in timestamped windows
        instead: :meth:`embed_windows`.

        ``long_text`` does the same for texts over the model's token limit (70 tokens):
        ``"truncate"`` (the official behaviour) embeds the first 70 and warns, naming the text and
        its token count; ``"chunk"`` embeds consecutive 70-token windows and returns their
        token-weighted mean of L2-normalised embeddings, renormalised.

        Inputs are named by modality (``embed(image=["dog.jpg"])``): a positional argument is
        refused, and a text that is the name of an existing media file warns (it is embedded as
        the words of its name, which is rarely what was meant).

        ``bucket`` (default on): variable-length inputs (text, audio) cost what their real tokens
        cost. Up to ``SORT_WINDOW * batch_size`` items at a time are sorted by length and run in
        sub-batches padded only to their own longest (short ones many at a time, long ones few), or
        packed several to a row of the encoder with a block-diagonal attention bias, whichever is
        cheaper; rows come back in input order, each as it is alone (up to float rounding, about
        1e-7 in float32). ``max_tokens`` bounds the tokens (padding included) of one forward pass;
        by default ``batch_size`` times the longest item, the memory of one padded batch.
        ``bucket=False``: plain padded batches of ``batch_size`` items (the official way).
        """
        return _embed.embed(self, *positional, text=text, image=image, audio=audio, **others, batch_size=batch_size,
                            normalize=normalize, long_audio=long_audio, long_text=long_text, progress=progress,
                            bucket=bucket, max_tokens=max_tokens)

    def embed_fused(self, *, batch_size: int = 16, normalize: bool = True, companions: bool = True,
                    fusion: str = "joint", progress: bool | None = False,
                    **inputs: Sequence[Any] | None) -> torch.Tensor:
        """One embedding per item from ONE fused pass over its segments, [N, D] (float32, CPU).

        ``inputs`` are parallel lists, one per modality: item ``i`` fuses their ``i``-th entries
        (``text=captions, image=pictures``), as :meth:`classify` fuses. With ``companions`` an
        input also brings the segments its processor carries and no other input gives: a video
        its soundtrack, so ``embed_fused(video=clips)`` fuses every clip with its own sound (a
        clip without an audio track is an error naming it). Every segment attends to the others
        in every layer; the embedding is the mean of the segments' embeddings (each its projected
        CLS after the joint pass), L2-normalised when ``normalize``.

        ``fusion="late"`` encodes each segment in a pass of its own instead (the mean of the
        separate embeddings): better for retrieval with a model never trained on such fused
        sequences (see the README's measurement), where the joint pass mixes tokens it has not
        learnt to attend across.
        """
        return _embed.embed_fused(self, batch_size=batch_size, normalize=normalize, companions=companions,
                                  fusion=fusion, progress=progress, **inputs)

    def embed_windows(self, *, audio: Sequence[Any] | Any = None, video: Sequence[Any] | Any = None,
                      window: float | None = None, hop: float | None = None, segment: str = "fixed",
                      batch_size: int = 16, normalize: bool = True, progress: bool | None = False,
                      ) -> dict[str, list[_moments.WindowEmbeddings]]:
        """Timestamped embeddings of long audio and video: per modality given, one
        :class:`~onepeace.inference.moments.WindowEmbeddings` per file (in input order), whose
        ``embeddings[i]`` covers ``start[i]`` to ``end[i]`` seconds of the file::

            w = model.embed_windows(audio=["meeting.wav"], window=2.0, hop=1.0)["audio"][0]
            best = (w.embeddings @ model.encode_text(["a door slams"])[0]).argmax()
            print(w.start[best], w.end[best])

        A window's embedding is exactly what :meth:`embed` gives for the clip cut out over its
        range (normalised with its own statistics, tiled under a second as a short clip is; for
        video, the window's frames sampled and resized as a short video's), so it is comparable
        with any text, image or clip embedding.

        ``window``/``hop`` (seconds; defaults 2/1 for audio, 4/2 for video; a ``window`` alone
        hops half of it): fixed windows from 0, the last one ending at the file's end (unless
        that leaves at most 10 ms, ``moments.TAIL``, uncovered); a file
        shorter than a window is one window, the whole file. A window is at most what the branch
        takes in one pass (audio: 15 s for the official models), the hop at most the window.
        ``segment="onsets"``: windows that follow the sound instead, one per stretch of activity
        found by :mod:`onepeace.processing.activity` (long stretches cut into windows; video: of
        its sound track); ``"both"``: the two sets. Files are decoded as streams (a 1-hour file
        in bounded memory), and the windows of all files are batched as :meth:`embed` batches
        clips (no padding computed). A damaged file keeps the windows before the damage, and
        ``problems`` says where decoding stopped. See :mod:`onepeace.inference.moments`.
        """
        return _moments.embed_windows(self, audio=audio, video=video, window=window, hop=hop, segment=segment,
                                      batch_size=batch_size, normalize=normalize, progress=progress)

    def classify(self, *, batch_size: int = 16, **inputs: Sequence[Any] | None) -> torch.Tensor:
        """Head logits for raw inputs; several modalities given together are fused pairwise."""
        return _predict.classify(self, batch_size=batch_size, **inputs)

    def ground(self, image: Sequence[Any], text: Sequence[str]) -> torch.Tensor:
        """Boxes (x0, y0, x1, y1) in original pixels for (image, text) pairs (grounding models)."""
        return _predict.ground(self, image, text)

    def segment(self, image: Sequence[Any], batch_size: int = 8) -> list[torch.Tensor]:
        """Class maps [H, W] (long) at each image's original size (segmentation models)."""
        return _predict.segment(self, image, batch_size=batch_size)

    # ------------------------------------------------------------------ CLIP-style API
    def encode_media(self, modality: str, items: Sequence[Any] | Any, *, normalize: bool = True,
                     batch_size: int = 16, **options: Any) -> torch.Tensor:
        """Embeddings [N, D] (float32, CPU; unit rows when ``normalize``) of ``items`` of
        ``modality``: ``model.encode_media("video", clips)``, as :meth:`embed` computes them
        (``options`` go to it: ``long_audio=``, ``long_text=``, ``progress=``...). One item (a
        string, a path) gives one row. ``encode_text``/``encode_image``/``encode_audio`` and
        ``encode_<modality>`` for any other branch of the model call this."""
        return _embed.encode_media(self, modality, items, normalize=normalize, batch_size=batch_size, **options)

    def encode_text(self, texts: Sequence[str] | str, *, normalize: bool = True, batch_size: int = 16,
                    **options: Any) -> torch.Tensor:
        """Text embeddings [N, D], float32 unit rows (see :meth:`encode_media`)."""
        return self.encode_media("text", texts, normalize=normalize, batch_size=batch_size, **options)

    def encode_image(self, images: Sequence[Any] | Any, *, normalize: bool = True, batch_size: int = 16,
                     **options: Any) -> torch.Tensor:
        """Image embeddings [N, D] of paths, bytes, PIL images or arrays (see :meth:`encode_media`)."""
        return self.encode_media("image", images, normalize=normalize, batch_size=batch_size, **options)

    def encode_audio(self, clips: Sequence[Any] | Any, *, normalize: bool = True, batch_size: int = 16,
                     **options: Any) -> torch.Tensor:
        """Audio embeddings [N, D] of paths, bytes or waveforms (see :meth:`encode_media`)."""
        return self.encode_media("audio", clips, normalize=normalize, batch_size=batch_size, **options)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if not name.startswith("encode_"):
                raise
            modality = name[len("encode_"):]
            names = self.__dict__.get("modality_names") or []
            if modality in names:
                return functools.partial(self.encode_media, modality)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}: this model has no "
                                 f"{modality} branch (it has {', '.join(names)})") from None

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(f"encode_{m}" for m in self.__dict__.get("modality_names") or [])})

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                        compile: bool = False, adapter: str | os.PathLike | None = None) -> OnePeace:
        """Load a model directory, or a Hugging Face Hub id ``org/name`` (``org/name@rev`` or
        ``revision=`` pins a branch, tag or commit), snapshotted into the standard Hub cache
        (``cache_dir``); with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` the cache alone.

        ``dtype``: ``None`` (as stored), ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"`` (fp32 weights,
        the encoder's linear layers quantised to int8; CPU only, see :mod:`onepeace.model.quant`) or
        ``"auto"`` (what the device computes natively, see :mod:`onepeace.model.precision`).
        ``compile=True``: :meth:`compile_layers` (opt-in; the first call of each new shape compiles).

        ``adapter``: a LoRA adapter directory (``onepeace adapt --out DIR``) trained on this model,
        merged into its weights (see :mod:`onepeace.checkpoints.adapter`; needs ``pip install
        'onepeace[adapt]'``). The weights are loaded in fp32, the adapter merged, and only then cast
        to ``dtype`` or quantised to int8; the result is a plain model (no peft at inference) whose
        fingerprint and name (``BASE+adapter DIR``) are the adapted model's. An adapter trained on
        another model is refused in one line naming both."""
        target = resolve_runtime(dtype, device)
        load_as = torch.float32 if target == "int8" or adapter is not None else target
        model = _format.load_pretrained(path, dtype=load_as, device=device, revision=revision, cache_dir=cache_dir,
                                        local_files_only=local_files_only, model_class=cls)
        if adapter is not None:
            _adapter.load_adapter(model, adapter)
            final = _adapter.stored_dtype(model.source_dir) if target is None else target
            if final not in ("int8", torch.float32):
                model.to(dtype=final)
        if target == "int8":
            quantize_int8(model)
        if compile:
            model.compile_layers()
        return model

    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                        max_shard_bytes: int = 4 * 1024**3, overwrite: bool = False, push_to_hub: bool = False,
                        repo_id: str | None = None, private: bool | None = None, token: str | None = None,
                        commit_message: str | None = None) -> str | None:
        """Write ``config.json`` + safetensors weights to the new directory ``path``. A non-empty
        ``path`` is refused unless ``overwrite=True``, which replaces a previous model (never a
        folder holding other files) atomically: a crash leaves the old or the new model whole.

        With ``push_to_hub=True`` a model card (``README.md``) is added to ``path`` and the
        directory is uploaded to the Hub repository ``repo_id`` (default: the directory's name);
        returns the commit URL (see :func:`onepeace.checkpoints.hub.push_to_hub`)."""
        _format.save_pretrained(self, path, dtype=dtype, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
        if not push_to_hub:
            return None
        _hub.write_model_card(self, path, repo_id=repo_id)
        return _hub.push_to_hub(path, repo_id or os.path.basename(os.path.abspath(path)), private=private,
                                token=token, commit_message=commit_message)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, metrics: dict | None = None,
                    trained_on: str | Sequence[str] | None = None) -> str:
        """Upload this model with a generated model card to the Hub repository ``repo_id``;
        returns the commit URL (see :func:`onepeace.checkpoints.hub.push_to_hub`)."""
        return _hub.push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                                metrics=metrics, trained_on=trained_on)


__all__ = ["OnePeace"]
