"""The ONE-PEACE model: modality adapters -> shared encoder -> per-modality norms/projections/heads."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..modalities import get_modality, parse_options
from .encoder import Encoder, EncoderOutput, drop_path_rates
from .heads import ClassifyHead, LinearHead, build_head

log = logging.getLogger(__name__)

#: torch dtype -> the name ``OnePeace.precision`` gives it (the ``--dtype`` spelling)
_PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}

#: with bucketing, ``embed`` sorts up to this many batches' worth of items at a time
SORT_WINDOW = 8


def _unit(z: torch.Tensor) -> torch.Tensor:
    """``z`` L2-normalised along its last axis in float32 (float64 stays float64)."""
    return F.normalize(z if z.dtype == torch.float64 else z.float(), dim=-1)


class OnePeace(nn.Module):
    """ONE-PEACE. Build with :func:`onepeace.create_model` or :meth:`from_pretrained`.

    ``model.embed(text=[...], image=[...], audio=[...])`` is the everyday entry point; the lower
    level ``encode(text={"tokens": ...}, image={"pixels": ...})`` takes processed tensors and fuses
    the given modalities into one sequence (text first) when more than one is given.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.modality_names = list(config.modalities)
        self.options = {m: parse_options(m, config.modalities[m]) for m in self.modality_names}
        self.adapters = nn.ModuleDict(
            {m: get_modality(m)(config, self.options[m]) for m in self.modality_names}
        )
        self.encoder = Encoder(config, self.modality_names)
        self.proj = nn.ModuleDict(
            {m: nn.Linear(config.dim, config.dim) for m in self.modality_names} if config.projection else {}
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07))) if config.logit_scale else None
        self.head = None
        if config.head is not None:
            if config.head.feature_source not in self.modality_names:
                raise ConfigError(
                    f"head feature_source {config.head.feature_source!r} is not one of the "
                    f"model's modalities {self.modality_names}"
                )
            self.head = build_head(config.dim, config.heads, config.head, config.norm_eps)
        self._processor = None

    # ------------------------------------------------------------------ construction helpers
    def reset_parameters(self, only: Callable[[str], bool] | None = None) -> None:
        """The official from-scratch init (``init_one_peace_params`` in
        one_peace/models/one_peace/one_peace_base.py of github.com/OFA-Sys/ONE-PEACE: Linear
        weights and embeddings truncated normal, std 0.02 cut at +-0.02; zero biases, pad row and
        relative tables; unit LayerNorms; layer scales 1e-6). With ``only`` (a predicate on
        parameter names), just the parameters it accepts are initialised (a model grown from a
        trained one: new head, new modality branch); an adapter is re-initialised only when all of
        it is new."""
        from ..modalities.base import trunc_normal_

        keep = only or (lambda name: True)

        def pre(name: str) -> str:
            return f"{name}." if name else ""

        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and keep(pre(name) + "weight"):
                trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine and keep(pre(name) + "weight"):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for i, layer in enumerate(self.encoder.layers):
            if layer.gamma_1 is not None and keep(f"encoder.layers.{i}.gamma_1"):
                nn.init.constant_(layer.gamma_1, self.config.layer_scale_init)
                nn.init.constant_(layer.gamma_2, self.config.layer_scale_init)
        for name, a in self.adapters.items():
            if all(keep(f"adapters.{name}.{n}") for n, _ in a.named_parameters()):
                a.reset_parameters()
        if self.logit_scale is not None and keep("logit_scale"):
            with torch.no_grad():
                self.logit_scale.fill_(math.log(1 / 0.07))
        if isinstance(self.head, ClassifyHead) and self.head.pool is not None and keep("head.pool.q"):
            trunc_normal_(self.head.pool.q)
        if isinstance(self.head, LinearHead) and keep("head.fc.weight"):  # official init_scale 0.001
            with torch.no_grad():
                self.head.fc.weight.mul_(1e-3)

    def grown(self, config: ModelConfig, state: dict[str, torch.Tensor] | None = None,
              allow_missing: Callable[[str], bool] = lambda name: False) -> OnePeace:
        """A model of ``config`` holding this model's weights (or ``state``) without copying them:
        built on the meta device, the tensors assigned, and only the parameters the state lacks
        allocated and given the official init (zeros where that init leaves a tensor alone, e.g.
        type embeddings). ``allow_missing(name)`` must accept every such parameter; anything
        else missing, or any unexpected key, is a :class:`ConfigError`. Peak memory stays about
        one model, which matters when growing a 4B model by a head."""
        from ..factory import create_model

        new = create_model(config, device="meta", init=False)
        state = self.state_dict() if state is None else state
        try:
            missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as e:  # shape mismatches
            detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
            raise ConfigError(f"the weights do not fit the new model: {detail}") from None
        stray = [k for k in missing if not allow_missing(k)]
        if stray or unexpected:
            raise ConfigError(f"the weights do not fit the new model: missing {stray[:5]}, unexpected {unexpected[:5]}")
        dtype = self.dtype
        for name in missing:
            owner, _, attr = name.rpartition(".")
            mod = new.get_submodule(owner) if owner else new
            old = getattr(mod, attr)
            setattr(mod, attr, nn.Parameter(torch.zeros(old.shape, dtype=dtype), requires_grad=old.requires_grad))
        new.reset_parameters(only=set(missing).__contains__)
        new._inherit_new_branches(set(missing))
        return new.train(self.training)

    @torch.no_grad()
    def _inherit_new_branches(self, missing: set[str]) -> None:
        """New branches (every adapter tensor in ``missing``) whose modality names a trained donor
        branch (``Modality.donor``, e.g. video -> image) start as a copy of it: the adapter via the
        modality's ``inherit``, and its FFN in every layer, final norm and projection copied."""
        for m in self.modality_names:
            adapter = self.adapters[m]
            own = [f"adapters.{m}.{n}" for n, _ in adapter.named_parameters()]
            donor = type(adapter).donor(self.options[m])
            if not own or not all(k in missing for k in own) or donor is None or donor == m:
                continue
            if donor not in self.adapters or any(k.startswith(f"adapters.{donor}.") for k in missing):
                log.warning("the new %s branch starts from a fresh init: the model has no trained %s branch "
                            "to inherit from", m, donor)
                continue
            adapter.inherit(self.adapters[donor])
            pairs = [(layer.ffns[m], layer.ffns[donor]) for layer in self.encoder.layers]
            for table in (self.encoder.norms, self.proj):
                if m in table and donor in table:
                    pairs.append((table[m], table[donor]))
            for dst, src in pairs:
                for (_, p), (_, q) in zip(dst.named_parameters(), src.named_parameters()):
                    p.copy_(q)

    def compile_layers(self, **options: Any) -> OnePeace:
        """Compile every encoder layer with ``torch.compile`` (in place; ``options`` go to it, default
        ``dynamic=True`` so that new batch sizes and lengths reuse the compiled code). Opt-in: the
        first forward compiles (tens of seconds on a CPU), after which the layers' elementwise work
        (norms, GELU, layer scale, residuals) runs fused. The layers share one compiled graph; the
        adapters, bias building and projections stay eager. Returns the model."""
        options.setdefault("dynamic", True)
        for layer in self.encoder.layers:
            layer.compile(**options)
        return self

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth ``rate`` at the last layer, ramped linearly from 0 (the official
        schedule, as a model built with ``drop_path_rate`` has it)."""
        if not 0 <= rate < 1:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {rate}")
        for layer, r in zip(self.encoder.layers, drop_path_rates(rate, len(self.encoder.layers))):
            layer.drop_path = r
        self.config.drop_path_rate = rate

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def precision(self) -> str:
        """The precision the model computes in: ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"`` (its
        encoder's linear layers quantised, see :mod:`onepeace.model.quant`) or ``"fp64"`` — what
        ``dtype="auto"`` chose, once loaded. Embeddings are float32 unit vectors whatever it is."""
        if getattr(self, "int8", False):
            return "int8"
        return _PRECISION_NAMES.get(self.dtype, str(self.dtype).removeprefix("torch."))

    @property
    def processor(self):
        if self._processor is None:
            from ..modalities import Processor

            self._processor = Processor(self.config)
        return self._processor

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ tensor-level API
    def _to_model(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            if torch.is_floating_point(v):
                v = v.to(device=self.device, dtype=self.dtype)
            else:
                v = v.to(self.device)
            out[k] = v
        return out

    def adapt(self, name: str, batch: dict[str, torch.Tensor]):
        if name not in self.adapters:
            raise InputError(f"this model has no {name} branch; it has {self.modality_names}")
        a = self.adapters[name]
        batch = self._to_model(batch)
        return a(*[batch.get(k) for k in a.input_keys])

    def encode(self, return_layer_states: bool = False, **inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """Run the encoder on processed inputs; several modalities are fused (model order)."""
        names = [m for m in self.modality_names if inputs.get(m) is not None]
        names.sort(key=lambda m: m != "text")  # text first in fused sequences, as upstream
        unknown = sorted(set(k for k, v in inputs.items() if v is not None) - set(names))
        if unknown:
            raise InputError(f"this model has no {unknown} branch; it has {self.modality_names}")
        if not names:
            raise InputError("nothing to encode: give at least one modality")
        parts = [self.adapt(m, inputs[m]) for m in names]
        sizes = {p.x.shape[0] for p in parts}
        if len(sizes) > 1:
            raise InputError(f"fused inputs need equal batch sizes, got {sorted(sizes)}")
        return self.encoder(parts, return_layer_states=return_layer_states)

    forward = encode

    def project(self, name: str, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Retrieval embedding from final features: proj(CLS), L2-normalised.

        The normalisation runs in (at least) float32 after the projection, the last low-precision
        op: a bf16/fp16 model's rows are float32 unit vectors to float32 rounding (normalised in
        bf16 their norms were off by up to ~4e-3). ``normalize=False`` returns the model dtype."""
        if name not in self.proj:
            raise ConfigError(
                "this model has no embedding projections (a classification or vision-branch "
                "checkpoint); use classify() or encode() instead"
            )
        z = self.proj[name](features[:, 0])
        return _unit(z) if normalize else z

    def embed_batch(self, name: str, batch: dict[str, torch.Tensor], normalize: bool = True, *,
                    bucket: bool = False, max_tokens: int | None = None) -> torch.Tensor:
        """Retrieval embeddings of one processed batch. With ``bucket=True`` a variable-length
        batch (text, audio) is computed without its padding (:mod:`onepeace.model.packing`), at
        most ``max_tokens`` tokens per forward pass (default: the padded batch's size); the rows
        are the same up to float rounding."""
        if bucket and self._schedulable(name):
            from .packing import embed_scheduled

            return embed_scheduled(self, name, batch, normalize=normalize, max_tokens=max_tokens)
        out = self.encode(**{name: batch})
        return self.project(name, out.features[name], normalize)

    def classify_batch(self, **inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the classification head on processed (possibly fused) inputs."""
        if self.head is None:
            raise ConfigError("this model has no classification head; convert a fine-tuned checkpoint")
        src = self.config.head.feature_source
        second = inputs.pop("image2", None)
        if self.config.head.two_inputs and second is None:
            raise InputError("this head (NLVR2) classifies a text with two images: give image= and image2=")
        if second is not None and not self.config.head.two_inputs:
            raise InputError("image2= is only for two-image (NLVR2) heads")
        out = self.encode(**inputs)
        if src not in out.features:
            raise InputError(f"the head pools {src} tokens: give a {src} input")
        if second is None:
            return self.head(out.features[src], out.padding_masks[src])
        second = dict(second)
        second["second"] = torch.ones(len(second["pixels"]), dtype=torch.bool)
        two = self.encode(**{**inputs, "image": second})
        return self.head(out.features[src], out.padding_masks[src], two.features[src])

    def logit_scale_exp(self) -> torch.Tensor:
        """exp(logit_scale) clamped to [1, 100], as in training."""
        return self.logit_scale.clamp(0, math.log(100)).exp()

    # ------------------------------------------------------------------ raw-input API
    def _batches(self, items: Sequence[Any], batch_size: int):
        if batch_size < 1:
            raise InputError("batch_size must be at least 1")
        for i in range(0, len(items), batch_size):
            yield items[i : i + batch_size]

    @torch.inference_mode()
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
        mean of L2-normalised window embeddings, renormalised. Both are batch-invariant.

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
        from ..processing.audio import check_long_audio
        from ..processing.text import check_long_text
        from ..progress import progress_bar

        if positional:
            raise InputError(self._positional_message(positional))
        check_long_audio(long_audio)
        check_long_text(long_text)
        given = {"text": text, "image": image, "audio": audio, **others}
        given = {name: [items] if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence)
                 else list(items) for name, items in given.items() if items is not None}
        if "text" in given and "text" in self.modality_names:
            self._check_texts(given["text"], long_text)
        result = {}
        with progress_bar(progress, total=sum(map(len, given.values())), desc="embedding") as bar:
            for name, items in given.items():
                proc = self.processor.get(name)
                scheduled = bucket and self._schedulable(name)
                if (name == "audio" and long_audio == "chunk") or (name == "text" and long_text == "chunk"):
                    result[name] = self._embed_windows(proc, items, batch_size, normalize,
                                                       scheduled, max_tokens, name=name)
                    bar.update(len(items))
                    continue
                rows = []
                for chunk in self._batches(items, batch_size * (SORT_WINDOW if scheduled else 1)):
                    if scheduled:
                        rows.append(self._embed_sorted(name, proc(chunk), normalize, batch_size, max_tokens,
                                                       bar.update).float().cpu())
                    else:
                        rows.append(self.embed_batch(name, proc(chunk), normalize).float().cpu())
                        bar.update(len(chunk))
                result[name] = torch.cat(rows) if rows else torch.empty(0, self.config.dim)
        if not result:
            raise InputError("nothing to embed: pass text=, image= or audio=")
        return result

    # ------------------------------------------------------------------ CLIP-style API
    def encode_media(self, modality: str, items: Sequence[Any] | Any, *, normalize: bool = True,
                     batch_size: int = 16, **options: Any) -> torch.Tensor:
        """Embeddings [N, D] (float32, CPU; unit rows when ``normalize``) of ``items`` of
        ``modality``: ``model.encode_media("video", clips)``, as :meth:`embed` computes them
        (``options`` go to it: ``long_audio=``, ``long_text=``, ``progress=``...). One item (a
        string, a path) gives one row. ``encode_text``/``encode_image``/``encode_audio`` and
        ``encode_<modality>`` for any other branch of the model call this."""
        if not isinstance(modality, str) or modality not in self.modality_names:
            raise InputError(f"this model has no {modality} branch; it has {', '.join(self.modality_names)}")
        return self.embed(**{modality: items}, normalize=normalize, batch_size=batch_size, **options)[modality]

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

    def _schedulable(self, name: str) -> bool:
        """Whether ``name``'s batches may be cut by length: its processor tells lengths and its
        adapter is batch-invariant (with ``official_padding_leak`` the official batching is kept)."""
        adapter = self.adapters[name] if name in self.adapters else None
        return (hasattr(self.processor.get(name), "lengths") and adapter is not None
                and getattr(adapter, "batch_invariant", True))

    def _embed_sorted(self, name: str, batch: dict[str, torch.Tensor], normalize: bool, batch_size: int,
                      max_tokens: int | None, on_step=None) -> torch.Tensor:
        """A processed batch embedded without its padding (see :meth:`embed`, ``bucket``)."""
        from .packing import embed_scheduled

        if max_tokens is None:
            max_tokens = batch_size * max(self.processor.get(name).lengths(batch))
        return embed_scheduled(self, name, batch, normalize=normalize, max_tokens=max_tokens, on_step=on_step)

    def _positional_message(self, positional: tuple) -> str:
        first = positional[0]
        shown = first if isinstance(first, (str, bytes, os.PathLike)) or not isinstance(first, Sequence) else \
            (list(first)[:2] + ["..."] if len(first) > 2 else list(first))
        example = ", ".join(f"embed({m}=[...])" for m in self.modality_names)
        return (f"embed() takes its inputs by modality, not by position (got {str(shown)[:80]}): "
                f"name what they are, e.g. {example}")

    def _check_texts(self, texts: list[Any], long_text: str) -> None:
        """Warn about texts that are not what they seem: the name of a media file (embedded as the
        words of the name), or over the token limit under ``long_text="truncate"``."""
        import warnings

        from ..errors import OnePeaceWarning
        from ..modalities import get_modality
        from ..processing.text import shorten

        exts = {e.lower(): m for m in self.modality_names if m != "text"
                for e in getattr(get_modality(m), "file_extensions", ()) or ()}
        for t in texts:
            if isinstance(t, str) and len(t) < 4096 and "\n" not in t \
                    and os.path.splitext(t)[1].lower() in exts and os.path.isfile(t):
                m = exts[os.path.splitext(t)[1].lower()]
                warnings.warn(f"the text {shorten(t)} is the name of an existing {m} file; it is embedded as text "
                              f"(the words of the name). To embed the file, pass it as {m}: embed({m}=[...])",
                              OnePeaceWarning, stacklevel=4)
                break
        if long_text != "truncate":
            return
        proc = self.processor.get("text")
        cap = getattr(proc, "context_length", None)
        if cap is None or not hasattr(proc, "count"):
            return
        long = [(t, n) for t in texts if isinstance(t, str) and len(t.encode("utf-8")) >= cap for n in [proc.count(t)] if n > cap]
        if long:
            t, n = long[0]
            more = f" (and {len(long) - 1} more text{'s' * (len(long) > 2)} over the limit)" if len(long) > 1 else ""
            warnings.warn(f"text {shorten(t)} is {n} tokens long; only its first {cap} are used (the model's "
                          f"limit){more}. To use all of it, average {cap}-token windows: embed/zeroshot "
                          "--long-text chunk (Python: long_text='chunk')", OnePeaceWarning, stacklevel=4)

    def _embed_windows(self, proc, items: list[Any], batch_size: int, normalize: bool,
                       bucket: bool = False, max_tokens: int | None = None, name: str = "audio") -> torch.Tensor:
        """Audio in 15 s windows (texts in windows of the token limit, ``name="text"``): up to
        ``batch_size`` windows (from any items) per forward pass (with ``bucket``, up to
        ``SORT_WINDOW * batch_size`` windows sorted by length, see :meth:`embed`), each item's
        window embeddings averaged with their weights (seconds, tokens), then renormalised."""
        if batch_size < 1:
            raise InputError("batch_size must be at least 1")
        if not items:
            return torch.empty(0, self.config.dim)
        parts: list[list[tuple[torch.Tensor, float]]] = [[] for _ in items]
        pending: list[tuple[int, float, torch.Tensor]] = []

        def flush() -> None:
            batch = proc.collate([w for _, _, w in pending])
            if bucket:
                z = self._embed_sorted(name, batch, normalize, batch_size, max_tokens)
            else:
                z = self.embed_batch(name, batch, normalize)
            for (i, weight, _), row in zip(pending, z.float().cpu()):
                parts[i].append((row, weight))
            pending.clear()

        def combine(rows: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
            if len(rows) == 1:  # a clip within the cap: its truncate embedding, untouched
                return rows[0][0]
            z = sum(r.double() * w for r, w in rows) / sum(w for _, w in rows)
            return (F.normalize(z, dim=-1) if normalize else z).float()

        for i, item in enumerate(items):
            for w, weight in zip(*proc.windows(item, "chunk")):
                pending.append((i, weight, w))
                if len(pending) == batch_size * (SORT_WINDOW if bucket else 1):
                    flush()
        if pending:
            flush()
        return torch.stack([combine(rows) for rows in parts])

    @torch.inference_mode()
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
        from ..processing import split_companions
        from ..progress import progress_bar

        given = {k: ([v] if isinstance(v, (str, bytes, os.PathLike)) or not isinstance(v, Sequence) else list(v))
                 for k, v in inputs.items() if v is not None}
        if not given:
            raise InputError("nothing to embed: give the segments to fuse, e.g. video=[...] (with its sound), "
                             "or text=[...] and image=[...]")
        lengths = {len(v) for v in given.values()}
        if len(lengths) > 1:
            raise InputError("fused inputs need the same number of items per modality, got "
                             + ", ".join(f"{len(v)} {k}" for k, v in given.items()))
        n = lengths.pop()
        if batch_size < 1:
            raise InputError("batch_size must be at least 1")
        if fusion not in ("joint", "late"):
            raise InputError(f"fusion must be 'joint' (one sequence) or 'late' (separate passes), got {fusion!r}")
        rows = []
        with progress_bar(progress, total=n, desc="embedding") as bar:
            for i in range(0, n, batch_size):
                segments: dict[str, dict] = {}
                for m, items in given.items():
                    proc = self.processor.get(m)
                    extra = [c for c in getattr(proc, "companions", ()) if companions
                             and c in self.modality_names and c not in given]
                    own, carried = split_companions(proc(items[i : i + batch_size], companions=extra) if extra
                                                    else proc(items[i : i + batch_size]))
                    segments[m] = own
                    segments.update(carried)
                if len(segments) < 2:
                    raise InputError(f"a fused embedding needs two segments or more; {', '.join(segments)} alone "
                                     "is one (give two modalities, or a video with its sound on a model with an "
                                     "audio branch)")
                if fusion == "joint":
                    out = self.encode(**segments)
                    z = torch.stack([self.project(m, out.features[m], normalize=True) for m in segments]).mean(0)
                else:
                    z = torch.stack([self.embed_batch(m, b, normalize=True) for m, b in segments.items()]).mean(0)
                rows.append((F.normalize(z, dim=-1) if normalize else z).float().cpu())
                bar.update(len(rows[-1]))
        return torch.cat(rows)

    @torch.inference_mode()
    def classify(self, *, batch_size: int = 16, **inputs: Sequence[Any] | None) -> torch.Tensor:
        """Head logits for raw inputs; several modalities given together are fused pairwise."""
        inputs = {k: ([v] if isinstance(v, (str, bytes, os.PathLike)) else list(v)) for k, v in inputs.items() if v is not None}
        if not inputs:
            raise InputError("nothing to classify")
        lengths = {len(v) for v in inputs.values()}
        if len(lengths) > 1:
            raise InputError("fused inputs need the same number of items per modality")
        n = lengths.pop()
        out = []
        for i in range(0, n, batch_size):
            batch = {k: self.processor.get("image" if k == "image2" else k)(v[i : i + batch_size])
                     for k, v in inputs.items()}
            out.append(self.classify_batch(**batch).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def ground(self, image: Sequence[Any], text: Sequence[str]) -> torch.Tensor:
        """Boxes (x0, y0, x1, y1) in original pixels for (image, text) pairs (grounding models)."""
        image = [image] if not isinstance(image, (list, tuple)) else list(image)
        text = [text] if isinstance(text, str) else list(text)
        if len(image) != len(text):
            raise InputError(f"ground() needs one text per image, got {len(image)} images and {len(text)} texts")
        if self.head is None or self.config.head.num_classes != 4:
            raise ConfigError("ground() needs a grounding checkpoint (a 4-output head)")
        img = self.processor.get("image")(image)
        logits = self.classify_batch(text=self.processor.get("text")(text), image=img).float().cpu()
        wh = img["sizes"].float()
        scale = torch.stack([wh[:, 0], wh[:, 1], wh[:, 0], wh[:, 1]], dim=1)
        return logits.sigmoid() * scale

    @torch.inference_mode()
    def segment(self, image: Sequence[Any], batch_size: int = 8) -> list[torch.Tensor]:
        """Class maps [H, W] (long) at each image's original size (segmentation models)."""
        image = [image] if not isinstance(image, (list, tuple)) else list(image)
        if self.head is None or self.config.head.type != "dense":
            raise ConfigError("segment() needs a segmentation model (a dense head)")
        out = []
        for chunk in self._batches(image, batch_size):
            img = self.processor.get("image")(chunk)
            logits = self.classify_batch(image=img).float()
            for lg, (w, h) in zip(logits, img["sizes"].tolist()):
                up = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)
                out.append(up[0].argmax(0).cpu())
        return out

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                        compile: bool = False) -> OnePeace:
        """Load a model directory, or a Hugging Face Hub id ``org/name`` (``org/name@rev`` or
        ``revision=`` pins a branch, tag or commit), snapshotted into the standard Hub cache
        (``cache_dir``); with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` the cache alone.

        ``dtype``: ``None`` (as stored), ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"`` (fp32 weights,
        the encoder's linear layers quantised to int8; CPU only, see :mod:`onepeace.model.quant`) or
        ``"auto"`` (what the device computes natively, see :mod:`onepeace.model.precision`).
        ``compile=True``: :meth:`compile_layers` (opt-in; the first call of each new shape compiles)."""
        from ..checkpoints.format import load_pretrained
        from .precision import resolve_runtime

        target = resolve_runtime(dtype, device)
        model = load_pretrained(path, dtype=torch.float32 if target == "int8" else target, device=device,
                                revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        if target == "int8":
            from .quant import quantize_int8

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
        from ..checkpoints.format import save_pretrained

        if getattr(self, "int8", False):
            raise ConfigError("an int8 model cannot be saved: save the fp32 model and load it with dtype='int8'")
        save_pretrained(self, path, dtype=dtype, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
        if not push_to_hub:
            return None
        from ..checkpoints import hub

        hub.write_model_card(self, path, repo_id=repo_id)
        return hub.push_to_hub(path, repo_id or os.path.basename(os.path.abspath(path)), private=private, token=token,
                    commit_message=commit_message)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, metrics: dict | None = None,
                    trained_on: str | Sequence[str] | None = None) -> str:
        """Upload this model with a generated model card to the Hub repository ``repo_id``;
        returns the commit URL (see :func:`onepeace.checkpoints.hub.push_to_hub`)."""
        from ..checkpoints.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                           metrics=metrics, trained_on=trained_on)
