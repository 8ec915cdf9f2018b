"""The ONE-PEACE network: modality adapters -> shared encoder -> per-modality norms/projections/heads.

:class:`OnePeaceNetwork` is the ``nn.Module`` and nothing else: construction and init, the
forward pass on processed tensors (:meth:`~OnePeaceNetwork.encode`, :meth:`~OnePeaceNetwork.project`,
:meth:`~OnePeaceNetwork.embed_batch`, :meth:`~OnePeaceNetwork.classify_batch`) and the network's
own bookkeeping (dtype, device, precision, drop path, compiling, growing by a head or a branch).
It imports nothing above it (no checkpoints, no inference, no search).

Raw inputs (files, texts, waveforms), ``embed``/``classify``/``ground``/``segment``, loading,
saving and the Hub live above: :mod:`onepeace.inference` (whose :class:`onepeace.OnePeace`
subclasses this class and adds those entry points) and :mod:`onepeace.checkpoints`. Build models
with :func:`onepeace.create_model` or :meth:`onepeace.OnePeace.from_pretrained`, which give the
public class; :meth:`OnePeaceNetwork.build` builds whichever class it is called on.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..modalities import Processor, get_modality, parse_options
from ..modalities.base import deferred_init, trunc_normal_
from .encoder import Encoder, EncoderOutput, drop_path_rates
from .heads import ClassifyHead, LinearHead, build_head
from .packing import embed_scheduled
from .precision import resolve_dtype

log = logging.getLogger(__name__)

#: torch dtype -> the name ``OnePeaceNetwork.precision`` gives it (the ``--dtype`` spelling)
_PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def _unit(z: torch.Tensor) -> torch.Tensor:
    """``z`` L2-normalised along its last axis in float32 (float64 stays float64)."""
    return F.normalize(z if z.dtype == torch.float64 else z.float(), dim=-1)


class OnePeaceNetwork(nn.Module):
    """The ONE-PEACE ``nn.Module`` (the network alone; see the module docstring).

    ``encode(text={"tokens": ...}, image={"pixels": ...})`` takes processed tensors and fuses the
    given modalities into one sequence (text first) when more than one is given. Users get the
    subclass :class:`onepeace.OnePeace` (``model.embed(text=[...])`` and the other entry points).
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


    @classmethod
    def build(cls, config: ModelConfig, *, device: str | torch.device = "cpu",
              dtype: torch.dtype | str | None = None, init: bool = True):
        """An instance of ``cls`` for ``config`` in eval mode. On ``device="meta"`` no memory is
        allocated; ``init=False`` skips the official init (weights to be loaded) and leaves the
        embedding tables uninitialised rather than drawing torch's default init for them."""
        dt = resolve_dtype(dtype)
        device = torch.device(device)
        skip_module_init = not init or device.type == "meta"  # values to be loaded, or none at all
        with torch.device(device), (deferred_init() if skip_module_init else contextlib.nullcontext()):
            model = cls(config)
        if init and device.type != "meta":
            model.reset_parameters()
        if dt is not None:
            model.to(dt)
        return model.eval()

    # ------------------------------------------------------------------ construction helpers
    def reset_parameters(self, only: Callable[[str], bool] | None = None) -> None:
        """The official from-scratch init (``init_one_peace_params`` in
        one_peace/models/one_peace/one_peace_base.py of github.com/OFA-Sys/ONE-PEACE: Linear
        weights and embeddings truncated normal, std 0.02 cut at +-0.02; zero biases, pad row and
        relative tables; unit LayerNorms; layer scales 1e-6). With ``only`` (a predicate on
        parameter names), just the parameters it accepts are initialised (a model grown from a
        trained one: new head, new modality branch); an adapter is re-initialised only when all of
        it is new."""
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
              allow_missing: Callable[[str], bool] = lambda name: False) -> OnePeaceNetwork:
        """A model of ``config`` holding this model's weights (or ``state``) without copying them:
        built on the meta device, the tensors assigned, and only the parameters the state lacks
        allocated and given the official init (zeros where that init leaves a tensor alone, e.g.
        type embeddings). ``allow_missing(name)`` must accept every such parameter; anything
        else missing, or any unexpected key, is a :class:`ConfigError`. Peak memory stays about
        one model, which matters when growing a 4B model by a head."""
        new = type(self).build(config, device="meta", init=False)
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

    def compile_layers(self, **options: Any) -> OnePeaceNetwork:
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


    def _schedulable(self, name: str) -> bool:
        """Whether ``name``'s batches may be cut by length: its processor tells lengths and its
        adapter is batch-invariant (with ``official_padding_leak`` the official batching is kept)."""
        adapter = self.adapters[name] if name in self.adapters else None
        return (hasattr(self.processor.get(name), "lengths") and adapter is not None
                and getattr(adapter, "batch_invariant", True))



def __getattr__(name: str) -> Any:
    if name == "OnePeace":
        raise ImportError("onepeace.model.onepeace.OnePeace is now onepeace.OnePeace (from onepeace import OnePeace; "
                          "defined in onepeace.inference); the bare network is onepeace.model.onepeace.OnePeaceNetwork")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OnePeaceNetwork"]
