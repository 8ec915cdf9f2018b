"""The modality plug-in contract.

A modality is one class, registered under its name, that owns everything specific to it:

* its options (a dataclass, stored under ``ModelConfig.modalities[name]``),
* its adapter (this module's ``forward``: processed tensors -> token embeddings + padding mask),
* its relative-position scheme (``bucket_table`` and the learned ``rel_tables``),
* its processor (raw inputs -> the tensors ``forward`` takes), via ``make_processor``.

The encoder gives every registered modality its own FFN in every layer, its own final norm and
projection; it never branches on a modality's name. A new modality is one more file that subclasses
:class:`Modality` and calls :func:`register_modality`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..config import ModelConfig
from ..errors import ConfigError
from .masking import random_keep


@dataclass
class AdapterOutput:
    """What an adapter hands the shared encoder."""

    name: str
    x: torch.Tensor  # [B, N, D], CLS first
    padding_mask: torch.Tensor | None  # [B, N] bool, True = padding; None = no padding
    rel_bias: Callable[[int], torch.Tensor] | None  # table index -> [H,N,N] or [B,H,N,N]
    num_tables: int = 1


class Modality(nn.Module):
    name: ClassVar[str]
    Options: ClassVar[type]
    #: keys of the processed batch that ``forward`` takes, in order
    input_keys: ClassVar[tuple[str, ...]]
    #: lower-case file name extensions (with the dot) of the files its processor reads; the command
    #: line picks these out of folders. Empty: the modality is not read from files.
    file_extensions: ClassVar[tuple[str, ...]] = ()
    #: zero-shot classification prompts, a ``{}`` for the class name (empty: the bare class name)
    prompt_templates: ClassVar[tuple[str, ...]] = ()
    #: True when a sequence's adapter output and relative bias are the leading part of those it
    #: gets padded into any longer batch (relative positions, padding that changes nothing): the
    #: encoder may then pack several sequences into one row (onepeace.model.packing)
    packable: ClassVar[bool] = False
    #: False when an item's output depends on its batch-mates (embed() then keeps plain padded batches)
    batch_invariant: bool = True

    def __init__(self, config: ModelConfig, options: Any):
        super().__init__()
        self.config = config
        self.options = options
        d, h = config.dim, config.heads
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, d))
        n_tables = config.layers if config.per_layer_rel_tables else 1
        n_buckets = self.num_buckets()
        self.rel_tables = nn.ModuleList(
            [embedding(n_buckets, h) for _ in range(n_tables)] if n_buckets else []
        )
        self._buckets: dict[torch.device, torch.Tensor] = {}

    # ---- memoising expensive stems within one training step ----------------------------
    @contextlib.contextmanager
    def caching(self):
        """Within this block, ``cached(x, fn)`` computes ``fn(x)`` once per input tensor: a
        pretraining step encodes the same batch several times (unmasked, masked, joint), and the
        stem's output is the same each time. Gradients flow through every use."""
        self._cache = {}
        try:
            yield self
        finally:
            self._cache = None

    def cached(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        cache = getattr(self, "_cache", None)
        if cache is None:
            return fn(x)
        hit = cache.get(id(x))
        # reuse only the same tensor, and never a no-grad result where a gradient is needed
        if hit is not None and hit[0] is x and (hit[1].requires_grad or not torch.is_grad_enabled()):
            return hit[1]
        out = fn(x)
        cache[id(x)] = (x, out)
        return out

    # ---- relative positions -------------------------------------------------------------
    def num_buckets(self) -> int:
        """Rows of each relative-position table (0: the modality uses no relative bias)."""
        return 0

    def bucket_table(self) -> torch.Tensor:
        """int64 [M, M] bucket index for every (query, key) pair of a CLS-prefixed sequence."""
        raise NotImplementedError

    def buckets(self, n: int, device: torch.device) -> torch.Tensor:
        table = self._buckets.get(device)
        if table is None:
            with torch.inference_mode(False):  # a cached table must stay usable under autograd
                table = self.bucket_table().to(device)
            self._buckets[device] = table
        if n > table.shape[0]:
            raise ValueError(
                f"{self.name}: sequence of {n} tokens exceeds the {table.shape[0]} positions of "
                "its relative-position table"
            )
        return table[:n, :n]

    def relative_bias(self, n: int, table: int = 0, positions: torch.Tensor | None = None):
        """[H, n, n] additive attention bias from table ``table``.

        With ``positions`` ([B, n] original indices of kept tokens) the bias is gathered at the
        tokens' true positions: [B, H, n, n].

        The lookup is ``F.embedding``, not ``weight[idx]``: on a multi-threaded CPU the backward
        of advanced indexing accumulates with atomic adds (one of the nondeterministic ops listed
        by ``torch.use_deterministic_algorithms``), so the table's gradient (many (query, key)
        pairs share a bucket) changed in its last bits from run to run; the CPU embedding
        backward sums each row in a fixed order.
        """
        weight = self.rel_tables[table].weight
        if positions is None:
            idx = self.buckets(n, weight.device)
            return F.embedding(idx, weight).permute(2, 0, 1)
        full = self.buckets(int(positions.max()) + 1, weight.device)
        idx = full[positions[:, :, None], positions[:, None, :]]  # B, n, n
        return F.embedding(idx, weight).permute(0, 3, 1, 2)

    # ---- masking (pretraining) ------------------------------------------------------------
    def valid_mask(self, *inputs: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: True for real tokens (CLS included) of the processed inputs."""
        raise NotImplementedError

    def sample_keep(self, inputs: tuple, ratio: float, gen: torch.Generator,
                    complement: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] bool keep-mask hiding ``ratio`` of the tokens; with ``complement`` (another keep
        mask of the same inputs) kept tokens come from those it hid. Default: uniform tokens."""
        allowed = None if complement is None else ~complement
        return random_keep(self.valid_mask(*inputs), ratio, gen, allowed)

    def max_tokens(self) -> int:
        """Longest sequence (CLS included) the modality produces; sizes decoder positions."""
        raise NotImplementedError

    def forward_kept(self, positions: torch.Tensor, *inputs: torch.Tensor) -> AdapterOutput:
        """Only the tokens at ``positions`` ([B, K] sorted kept indices, -1 = padding), with their
        relative bias gathered at their true positions (MAE-style encoder input)."""
        x, _ = self.embed(*inputs)
        return self.gather_output(x, positions)

    def gather_output(self, x: torch.Tensor, positions: torch.Tensor) -> AdapterOutput:
        pad = positions.lt(0)
        idx = positions.clamp(min=0)
        x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
        rel = (lambda t: self.relative_bias(idx.shape[1], t, idx)) if len(self.rel_tables) else None
        return AdapterOutput(self.name, x, pad if bool(pad.any()) else None, rel, max(1, len(self.rel_tables)))

    def output(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> AdapterOutput:
        n = x.shape[1]
        if padding_mask is not None and not bool(padding_mask.any()):
            padding_mask = None
        rel = (lambda t: self.relative_bias(n, t)) if len(self.rel_tables) else None
        return AdapterOutput(self.name, x, padding_mask, rel, max(1, len(self.rel_tables)))

    # ---- processing ---------------------------------------------------------------------
    @classmethod
    def make_processor(cls, options: Any) -> Any:
        raise NotImplementedError

    # ---- init ---------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Official init for the adapter's own tensors (``init_one_peace_params`` in the official
        one_peace/models/one_peace/one_peace_base.py): CLS trunc-normal, relative tables zero."""
        trunc_normal_(self.cls_embedding)
        for t in self.rel_tables:
            nn.init.zeros_(t.weight)

    @classmethod
    def donor(cls, options: Any) -> str | None:
        """The trained branch a new branch of this modality starts from when it is added to a
        trained model (``OnePeace.grown``, e.g. ``model.add_modalities`` of a training recipe): its
        FFN in every layer, its final norm and projection are copied, and :meth:`inherit` fills the
        adapter from the donor's. ``None`` (the default): the official fresh init."""
        return None

    def inherit(self, donor: Modality) -> None:
        """Initialise this new adapter from the trained adapter ``donor`` (see :meth:`donor`)."""
        raise NotImplementedError(f"{self.name} names a donor branch but does not implement inherit()")


_DEFER_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("onepeace_defer_init", default=False)


class _SkipInit(TorchFunctionMode):
    """Turns every ``torch.nn.init`` function into a no-op (they dispatch through
    ``__torch_function__`` while a mode is active); every other function runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


@contextlib.contextmanager
def deferred_init():
    """Within this block modules skip their own parameter init: ``nn.Linear``, ``nn.Conv*``,
    ``nn.LayerNorm`` and :func:`embedding` tables are left as allocated.

    For models whose weights are about to be loaded, or built on the meta device: the init is
    thrown away, and on the meta device it is not free either (each ``kaiming_uniform_`` goes
    through a decomposition, about 1 s for a base model, and the first ``normal_`` imports
    ``torch._dynamo``). Outside it nothing changes, so a model built with the official init draws
    exactly the same random numbers as before.
    """
    token = _DEFER_INIT.set(True)
    try:
        with _SkipInit():
            yield
    finally:
        _DEFER_INIT.reset(token)


def embedding(num: int, dim: int) -> nn.Embedding:
    """``nn.Embedding(num, dim)``; inside :func:`deferred_init` its weight is left uninitialised."""
    if _DEFER_INIT.get():
        return nn.Embedding(num, dim, _weight=torch.empty(num, dim))
    return nn.Embedding(num, dim)


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """The official init: normal(0, std) truncated at ±std (one sigma).

    Sampled by redrawing the out-of-range values (exactly the truncated distribution); about 30x
    faster on the CPU than ``nn.init.trunc_normal_``'s inverse-CDF path, which matters at 4B.
    """
    with torch.no_grad():
        t.normal_(0.0, std)
        flat = t.view(-1) if t.is_contiguous() else None
        if flat is None:
            return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-std, b=std)
        bad = flat.abs().gt(std).nonzero().squeeze(1)
        while bad.numel():
            flat[bad] = torch.empty(bad.numel(), dtype=t.dtype, device=t.device).normal_(0.0, std)
            bad = bad[flat[bad].abs().gt(std)]
    return t


_REGISTRY: dict[str, type[Modality]] = {}
#: the entry-point group through which installed packages register their modality plug-ins
ENTRY_POINT_GROUP = "onepeace.modalities"
_PLUGINS_LOADED = False


def register_modality(cls: type[Modality]) -> type[Modality]:
    """Class decorator: make a modality available to configs under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_plugins() -> None:
    """Import the modality plug-ins installed packages declare (once, on first need): in a
    package's pyproject.toml, ``[project.entry-points."onepeace.modalities"] imu = "my_pkg.imu"``;
    importing the module registers its modality, so the command line, the loaders and saved models
    know it. A plug-in that fails to import is a warning naming it, never the end of the program."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    import warnings
    from importlib.metadata import entry_points

    from ..errors import OnePeaceWarning

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken third-party plug-in must not break onepeace
            warnings.warn(f"the modality plug-in {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}",
                          OnePeaceWarning, stacklevel=2)


def registered_modalities() -> list[str]:
    _load_plugins()
    return list(_REGISTRY)


def get_modality(name: str) -> type[Modality]:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown modality {name!r}; registered: {registered_modalities()} (a modality of "
                          f"your own: import its module first, or declare it in the entry-point group "
                          f"{ENTRY_POINT_GROUP!r} of its package)")
    return _REGISTRY[name]


def parse_options(name: str, data: dict[str, Any] | Any) -> Any:
    cls = get_modality(name).Options
    if isinstance(data, cls):
        return data
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data or {}) - known)
    if unknown:
        raise ConfigError(f"unknown {name} options {unknown}; known: {sorted(known)}")
    return cls(**(data or {}))
