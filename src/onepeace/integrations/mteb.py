"""onepeace models in MTEB (the Massive Text Embedding Benchmark, with its image, audio and video
tasks): :class:`OnePeaceEncoder` implements MTEB's encoder protocol (``encode`` over a DataLoader of
MTEB batches, ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``)::

    import mteb
    from onepeace.integrations.mteb import OnePeaceEncoder

    encoder = OnePeaceEncoder("runs/demo/model")
    results = mteb.evaluate(encoder, mteb.get_tasks(tasks=["ESC50ZeroShot"]))

Protocol (what differs from onepeace's own evaluation, see docs/harnesses.md):

* every input is embedded as :meth:`OnePeace.embed` embeds it: L2-normalised rows, cosine
  similarity. MTEB's batches are taken as they come: ``text`` (strings; MTEB joins titles, bodies
  and instructions into them), ``image`` (PIL images), ``audio`` (``{"array", "sampling_rate"}``
  at any rate, resampled to the model's 16 kHz here; also ``{"path"}`` / ``{"bytes"}`` and decoded
  ``datasets`` audio), ``video`` (bytes, paths or frame arrays) when the model has a video branch;
* a row with several modalities (a text query with an image) is one fused embedding
  (:meth:`OnePeace.embed_fused`, ``fusion="late"`` by default: the mean of the separate
  embeddings);
* no prompts or instructions are added: zero-shot tasks give their candidate labels as the task
  writes them (onepeace's own ``zeroshot`` formats each label with its templates and averages an
  image prompt ensemble);
* clips over 15 s are embedded whole as the mean of 15 s windows (``long_audio="chunk"``), texts
  over 70 tokens are truncated as the official model does (``long_text="truncate"``).

MTEB's own model loading (``ModelMeta.load_model``) asks for mteb's ``[image]``/``[audio]``
extras (torchvision, torchaudio) for any image or audio model; this encoder needs neither (it
decodes and resamples with onepeace's own processors), so its :class:`ModelMeta` skips that
check. :func:`register` puts a model into MTEB's registry under a name, for ``mteb.get_model``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from . import require

require("mteb", "mteb", "the MTEB encoder (onepeace.integrations.mteb)")

from mteb.models.abs_encoder import AbsEncoder  # noqa: E402
from mteb.models.model_meta import ModelMeta  # noqa: E402

logger = logging.getLogger(__name__)

#: the input modalities MTEB batches carry
MTEB_MODALITIES = ("text", "image", "audio", "video")


class OnePeaceModelMeta(ModelMeta):
    """MTEB's model metadata, without its check for mteb's ``[image]``/``[audio]``/``[video]``
    extras at load time: the encoder decodes, resamples and samples frames itself."""

    def _check_requirements(self) -> None:
        return None


def _name_of(source: Any) -> str:
    """An ``organization/model_name`` name (what MTEB requires) for a model source."""
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source).rstrip("/")
        if os.path.isdir(s):
            return f"onepeace/{os.path.basename(os.path.abspath(s)) or 'model'}"
        if "/" in s:
            return s.split("@", 1)[0]
        return f"onepeace/{s}"
    return "onepeace/model"


def _load(source: Any, revision: str | None, device: str | None, dtype: Any):
    from ..inference import OnePeace

    if isinstance(source, OnePeace):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"OnePeaceEncoder takes a OnePeace model, a model directory or a hub id, got "
                         f"{type(source).__name__}")
    return OnePeace.from_pretrained(source, revision=revision, device=device or "cpu", dtype=dtype)


def model_meta(model: Any, name: str | None = None, revision: str | None = None, **loader_kwargs: Any) -> ModelMeta:
    """MTEB's :class:`ModelMeta` for a loaded onepeace ``model``: its modalities are the model's
    branches that MTEB knows (text, image, audio, video), cosine similarity, no instructions."""
    text = model.processor.get("text") if "text" in model.modality_names else None
    mods = [m for m in MTEB_MODALITIES if m in model.modality_names]
    return OnePeaceModelMeta(
        loader=OnePeaceEncoder,
        loader_kwargs=dict(loader_kwargs),
        name=name or "onepeace/model",
        revision=revision,
        release_date=None,
        languages=["eng-Latn"],
        n_parameters=model.num_parameters(),
        memory_usage_mb=round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
        max_tokens=getattr(text, "context_length", None),
        embed_dim=model.config.dim,
        license="apache-2.0",
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        reference="https://github.com/OFA-Sys/ONE-PEACE",
        similarity_fn_name="cosine",
        use_instructions=False,
        training_datasets=None,
        modalities=mods,
    )


def _audio_item(a: Any) -> Any:
    """An MTEB audio value -> what :meth:`OnePeace.embed` takes (``(array, rate)``, bytes, a path)."""
    if isinstance(a, dict):
        if a.get("array") is not None:
            if a.get("sampling_rate") is None:
                raise InputError("an audio input {'array': ...} has no 'sampling_rate': give the rate of its samples")
            return np.asarray(a["array"], dtype=np.float32), int(a["sampling_rate"])
        if a.get("bytes"):
            return a["bytes"]
        if a.get("path"):
            return a["path"]
        raise InputError(f"an audio input has neither 'array' (with 'sampling_rate'), 'bytes' nor 'path': keys {sorted(a)}")
    if hasattr(a, "get_all_samples"):  # datasets' decoded audio (a torchcodec AudioDecoder)
        s = a.get_all_samples()
        return s.data.detach().cpu().numpy(), int(s.sample_rate)
    if isinstance(a, (str, bytes, os.PathLike)):
        return a
    raise InputError(f"an audio input of type {type(a).__name__} is not an MTEB audio item "
                     "({'array', 'sampling_rate'}, a path or bytes)")


def _video_item(v: Any) -> Any:
    if isinstance(v, dict):
        for key in ("bytes", "path", "frames", "array"):
            if v.get(key) is not None:
                v = v[key]
                break
        else:
            raise InputError(f"a video input has neither 'bytes', 'path' nor 'frames': keys {sorted(v)}")
    if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[1] in (1, 3) and v.shape[-1] not in (1, 3):
        v = v.permute(0, 2, 3, 1)  # [T, C, H, W] (torchvision) -> [T, H, W, C]
    return v


_CONVERT = {"audio": _audio_item, "video": _video_item}


class OnePeaceEncoder(AbsEncoder):
    """An MTEB encoder for a onepeace model (``model_or_path``: a :class:`OnePeace`, a model directory
    or a hub id ``org/name``).

    Options: ``device``, ``dtype`` (as :meth:`OnePeace.from_pretrained`), ``batch_size`` (items per
    forward pass, 16), ``long_audio`` (``"chunk"``), ``long_text`` (``"truncate"``), ``fusion``
    (``"late"``: rows with several modalities, see :meth:`OnePeace.embed_fused`), ``name`` (the
    name MTEB files results under; default ``onepeace/<directory name>`` or the hub id).
    """

    def __init__(self, model_or_path: Any, revision: str | None = None, *, device: str | None = None,
                 dtype: Any = None, batch_size: int = 16, long_audio: str = "chunk", long_text: str = "truncate",
                 fusion: str = "late", name: str | None = None, **kwargs: Any) -> None:
        from ..processing.audio import check_long_audio
        from ..processing.text import check_long_text

        if kwargs:
            logger.info("OnePeaceEncoder: options not used: %s", sorted(kwargs))
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if fusion not in ("joint", "late"):
            raise InputError(f"fusion must be 'joint' or 'late', got {fusion!r}")
        self.model = _load(model_or_path, revision, device, dtype)
        self.batch_size = batch_size
        self.long_audio = check_long_audio(long_audio)
        self.long_text = check_long_text(long_text)
        self.fusion = fusion
        self.mteb_model_meta = model_meta(self.model, name or _name_of(model_or_path), revision,
                                          batch_size=batch_size, long_audio=long_audio, long_text=long_text,
                                          fusion=fusion)

    @property
    def modalities(self) -> list[str]:
        return list(self.mteb_model_meta.modalities)

    def check_modalities(self, needed: Iterable[str], what: str) -> None:
        """An :class:`InputError` naming the first of ``needed`` the model has no branch for."""
        for m in needed:
            if m not in self.model.modality_names:
                raise InputError(f"{what} needs {m} inputs, but this model has no {m} branch (it has "
                                 f"{', '.join(self.model.modality_names)}): choose tasks of those modalities")

    def encode(self, inputs: Any, *, task_metadata: Any = None, hf_split: str = "", hf_subset: str = "",
               prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """[N, D] float32 unit rows for the N items of the DataLoader ``inputs`` (MTEB batches)."""
        what = f"MTEB task {task_metadata.name}" if task_metadata is not None else "the MTEB input"
        if task_metadata is not None:
            self.check_modalities(task_metadata.get_modalities(prompt_type) if prompt_type is not None
                                  else task_metadata.modalities, what)
        rows = []
        for batch in inputs:
            present = {m: list(batch[m]) for m in MTEB_MODALITIES if m in batch and batch[m] is not None}
            self.check_modalities(present, what)
            n = {len(v) for v in present.values()}
            if not present or n == {0}:
                continue
            if len(n) > 1:
                raise InputError(f"{what}: a batch has different numbers of items per modality "
                                 f"({', '.join(f'{len(v)} {m}' for m, v in present.items())})")
            items = {m: [_CONVERT.get(m, _same)(x) for x in v] for m, v in present.items()}
            rows.append(self._embed(items))
        if not rows:
            return np.zeros((0, self.model.config.dim), dtype=np.float32)
        return torch.cat(rows).numpy()

    def _embed(self, items: dict[str, list[Any]]) -> torch.Tensor:
        opts = dict(batch_size=self.batch_size, long_audio=self.long_audio, long_text=self.long_text)
        if len(items) == 1:
            (m, v), = items.items()
            return self.model.embed(**{m: v}, **opts)[m]
        if any(x is None for v in items.values() for x in v):
            raise InputError("a row with several modalities has one of them missing (None): MTEB rows that mix "
                             "modalities must give every one")
        return self.model.embed_fused(**items, batch_size=self.batch_size, fusion=self.fusion, companions=False)


def _same(x: Any) -> Any:
    return x


def get_model(model_or_path: Any, revision: str | None = None, **options: Any) -> OnePeaceEncoder:
    """:class:`OnePeaceEncoder` of a model directory or hub id (``mteb.get_model`` for onepeace)."""
    return OnePeaceEncoder(model_or_path, revision, **options)


def register(model_or_path: Any, name: str | None = None, revision: str | None = None, **options: Any) -> str:
    """Put a onepeace model into MTEB's model registry, so that ``mteb.get_model(name)`` and
    ``mteb.get_model_meta(name)`` find it (``name``: default ``onepeace/<directory name>`` or the
    hub id); returns the name. The model is loaded once here (for its metadata) and again by
    ``mteb.get_model``."""
    from mteb.models.model_implementations import MODEL_REGISTRY

    name = name or _name_of(model_or_path)
    model = _load(model_or_path, revision, options.get("device"), options.get("dtype"))
    source = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else model

    def loader(_name: str, revision: str | None = None, **kwargs: Any) -> OnePeaceEncoder:
        return OnePeaceEncoder(source, revision, name=name, **kwargs)

    loader.__name__ = "onepeace_encoder_loader"
    meta = model_meta(model, name, revision, **options).model_copy(update={"loader": loader})
    MODEL_REGISTRY[name] = meta
    return name


def check_tasks(encoder: OnePeaceEncoder, tasks: Sequence[Any]) -> None:
    """An :class:`InputError` naming the first task (and modality) the model has no branch for,
    before MTEB starts."""
    for task in tasks:
        encoder.check_modalities(task.metadata.modalities, f"MTEB task {task.metadata.name}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m onepeace.integrations.mteb --model DIR (--benchmark NAME | --tasks A,B | --esc10 DIR | --coco DIR)
    [--output results]``: score a model with MTEB, writing MTEB's standard results folder
    (``OUTPUT/results/<model>/<revision>/<task>.json``, a :class:`mteb.ResultCache`). A task's data
    comes from the Hugging Face cache (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1`` keep it
    offline: a task not in the cache is then one line naming it); ``--esc10`` adds the local ESC-10
    zero-shot task, ``--coco`` the local COCO retrieval tasks. Errors are one line, exit 2."""
    import argparse
    import sys

    from ..errors import OnePeaceError

    ap = argparse.ArgumentParser(prog="python -m onepeace.integrations.mteb", description=main.__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a onepeace model directory or hub id")
    ap.add_argument("--benchmark", help="an MTEB benchmark name (mteb.get_benchmark)")
    ap.add_argument("--tasks", help="MTEB task names, comma-separated (mteb.get_tasks)")
    ap.add_argument("--esc10", help="a local ESC-10 folder: adds its zero-shot task")
    ap.add_argument("--coco", help="a local COCO 2017-style folder: adds its val image-text retrieval tasks "
                                   "(image -> text and text -> image)")
    ap.add_argument("--output", default="results", help="the results folder (MTEB's ResultCache; default results)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    try:
        import mteb

        tasks: list[Any] = []
        if args.benchmark:
            try:
                tasks += list(mteb.get_benchmark(args.benchmark).tasks)
            except (KeyError, ValueError) as e:
                raise InputError(f"--benchmark {args.benchmark}: {str(e).splitlines()[0]}") from None
        if args.tasks:
            try:
                tasks += list(mteb.get_tasks(tasks=[t.strip() for t in args.tasks.split(",") if t.strip()]))
            except (KeyError, ValueError) as e:
                raise InputError(f"--tasks {args.tasks}: {str(e).splitlines()[0]}") from None
        if args.esc10:
            from .mteb_tasks import esc10_zeroshot

            tasks.append(esc10_zeroshot(args.esc10))
        if args.coco:
            from .mteb_tasks import coco_retrieval

            tasks += [coco_retrieval(args.coco, d) for d in ("i2t", "t2i")]
        if not tasks:
            raise InputError("no task to run: give --benchmark NAME, --tasks A,B, --esc10 DIR or --coco DIR")
        encoder = OnePeaceEncoder(args.model, batch_size=args.batch_size)
        check_tasks(encoder, tasks)
        res = mteb.evaluate(encoder, tasks, cache=mteb.ResultCache(args.output), show_progress_bar=False)
    except OnePeaceError as e:
        print(f"onepeace mteb: error: {e}", file=sys.stderr)
        return 2
    for r in res.task_results:
        print(f"{r.task_name}: {r.get_score():.4f}")
    for e in res.exceptions or []:
        print(f"onepeace mteb: error: {e.task_name}: {e.exception.strip().splitlines()[-1]}", file=sys.stderr)
    print(f"results in {os.path.abspath(args.output)}")
    return 2 if res.exceptions else 0


if __name__ == "__main__":
    raise SystemExit(main())
