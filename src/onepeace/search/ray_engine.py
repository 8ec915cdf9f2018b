"""``onepeace index build --engine ray``: the embedding of an index build on Ray Data.

The build is the in-process one (:func:`onepeace.search.build_run.run_build`) with another embedding
stage: the same reader and planner (only new or changed items are embedded), the same decoder
(:func:`~onepeace.search.decode.decode_batch`: corrupt files are set aside with their reason), the
same row maker (:func:`~onepeace.search.decode.embed_decoded`), the same writer, pruning and
report. So both engines give the same rows: ids, content hashes and metadata equal, vectors equal
up to float32 rounding.

Pipeline, per chunk of planned batches (each planned batch is one single-modality batch of
``batch_size`` items)::

    ray.data.from_items(planned batches)
      .map_batches(decode_stage)                 # Ray tasks on free CPUs: read, hash, decode
      .map_batches(Embedder, ActorPoolStrategy)  # one model per actor, loaded once
      .iter_rows()  ->  IndexWriter on the driver (a Lance commit every commit_rows rows)

The decode tasks run beside GPU or multi-threaded actors; single-threaded CPU actors decode their
own batches (:func:`plan_resources`). The model travels as its name (each actor loads it with
``from_pretrained`` and checks its fingerprint), or as its weights when it has no files.

Why the rows come back to the driver instead of ``Dataset.write_lance``: Ray's Lance sink writes
fragments in its tasks and commits them all in **one** Lance commit when the whole dataset is
written, so a killed job loses everything (here a kill loses at most ``commit_rows`` rows, as in
the local engine, and a rerun embeds only those); it can only append (a changed file must replace
its row: the writer's merge-insert), it has no channel for the skipped files the report lists, and
it needs the table at a path every node can write (object storage or a shared disk). An embedding
row is ``4 * dim`` bytes plus a few hundred of text, so the driver's writer commits far more rows
per second than a cluster embeds them with a ONE-PEACE model (``benchmarks/bench_search_ray.py``
measures both); ``write_lance`` pays off for rows that are cheap to compute and costly to move,
which embeddings are not. (And as released, Ray 2.60's Lance sink does not run with pylance 14.0.2,
the current one: it passes ``storage_options_provider``, which pylance's ``write_fragments`` and
``LanceDataset`` do not take.) The schema
metadata (the model fingerprint) is kept either way: an append never rewrites the schema.

Ray is optional (``pip install 'onepeace[scale]'``) and imported only here, when the engine is
used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import pickle
import re
import socket
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError, OnePeaceError
from .build_run import DEFAULT_ANN_THRESHOLD, run_build
from .decode import Batch, Decoded, DecodeDataset, Result, embed_decoded
from .store import Index, ModelMismatchError, SearchIndexError, is_index

log = logging.getLogger(__name__)

#: items planned per Ray Data run: bounds the driver's memory for the plan (some 100 MB), whatever
#: the collection's size; the actors start again for each run, so each loads its model once per
#: this many items (seconds, against minutes of embedding)
DEFAULT_PLAN_ITEMS = 200_000


@dataclass(frozen=True)
class ModelSpec:
    """What a Ray worker needs to rebuild the driver's model and what the index records of it."""

    #: what each actor passes to ``OnePeace.from_pretrained`` (an absolute directory or a Hub id);
    #: None: the driver's model has no files, and its weights go to the actors through the object store
    load: str | None
    name: str
    fingerprint: str
    dim: int
    modalities: list[str]
    config_json: str = field(repr=False)
    dtype: str | None = None
    #: the LoRA adapter directory the actors merge into ``load`` (the driver's model carries one)
    adapter: str | None = None


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SearchIndexError("--engine ray needs Ray Data: pip install 'onepeace[scale]' "
                               "(or build with --engine local)") from None
    return ray


def model_spec(model: Any) -> tuple[ModelSpec, dict[str, Any] | None]:
    """The spec of ``model`` (an ``OnePeace``, a model directory or a Hub id) and the weights to
    ship to the actors (None when they load the model themselves). A path is not loaded here: the
    driver needs only its config and fingerprint."""
    from .fingerprint import IN_MEMORY, fingerprint_dir, model_fingerprint, model_name, split_adapted_name

    if isinstance(model, (str, os.PathLike)):
        from ..checkpoints.format import load_config
        from ..checkpoints.hub import resolve_model

        local = resolve_model(os.fspath(model))
        config = load_config(local)
        name = model_name(model)
        return ModelSpec(load=name, name=name, fingerprint=fingerprint_dir(local), dim=int(config.dim),
                         modalities=list(config.modalities), config_json=config.to_json()), None
    name = model_name(model)
    source = getattr(model, "source_dir", None)
    has_files = name != IN_MEMORY and bool(source) and os.path.isdir(source)
    base, adapter = split_adapted_name(name)  # an adapted model: the actors load its base and its adapter
    spec = ModelSpec(load=base if has_files else None, name=name, fingerprint=model_fingerprint(model),
                     adapter=adapter if has_files else None,
                     dim=int(model.config.dim), modalities=list(model.modality_names),
                     config_json=model.config.to_json(),
                     dtype="int8" if getattr(model, "int8", False) else str(model.dtype).removeprefix("torch."))
    return spec, (None if has_files else {k: v.detach().cpu() for k, v in model.state_dict().items()})


def open_index(db: str, spec: ModelSpec) -> Index:
    """The index in ``db`` for this model (created when absent; another model's is refused)."""
    if is_index(db):
        index = Index.open(db)
        index.check_model(spec.fingerprint, spec.name)
        return index
    return Index.create(db, fingerprint=spec.fingerprint, model_name=spec.name, dim=spec.dim)


# ------------------------------------------------------------------------------ the cluster
@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected: the session already open in this process if there is one, else the
    cluster at ``address`` (``auto``: the one this node belongs to; ``ray://host:10001``: Ray
    Client), else a new local cluster of this machine's CPUs (shut down on exit)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_address(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.ERROR}
    try:
        with warnings.catch_warnings():
            # Ray starts its processes with fork+exec: lance's at-fork warnings do not apply
            warnings.filterwarnings("ignore", message=r".*(fork-safe|fork support)", category=Warning)
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        hint = (" (start one with `ray start --head`, or leave out --address for a local cluster)"
                if address else "")
        raise SearchIndexError(f"cannot connect to {where}: {_summary(e)}{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address that nothing answers at (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return  # Ray finds (or says it cannot find) the cluster of this node at once
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"--address {address!r}: give host:port (the head node's GCS port, 6379 by default), "
                         "ray://host:port (Ray Client) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise SearchIndexError(f"cannot reach the Ray cluster at {address}: {e.strerror or e} (start one with "
                               "`ray start --head`, or leave out --address for a local cluster)") from None


@dataclass
class Resources:
    """How the embedding stage uses the cluster."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    decode_in_actor: bool


def plan_resources(cluster: dict[str, float], *, actors: int | None = None, cpus_per_actor: float | None = None,
                   gpus_per_actor: float | None = None, workers: int = 2) -> Resources:
    """Actors and their resources for a cluster's totals (``ray.cluster_resources()``).

    Defaults: one actor per GPU when the cluster has GPUs, decoding in Ray tasks on the CPUs
    meanwhile; on CPUs only, one single-threaded actor per CPU, each decoding its own batches
    (decoding and the model then share the same CPUs whichever process runs them, and decoded
    tensors need not travel). Multi-threaded CPU actors (``cpus_per_actor`` > 1) leave one CPU to
    the decode tasks. ``workers=0`` always decodes in the actors, and so does a plan that leaves
    no CPU free for decode tasks (they would wait forever)."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise InputError(f"the number of Ray actors must be a positive integer, got {actors!r}")
    for what, v, low in (("CPUs per actor", cpus_per_actor, 1), ("GPUs per actor", gpus_per_actor, 0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < low or v != v):
            raise InputError(f"{what} must be a number >= {low}, got {v!r}")
    gpa = float(gpus_per_actor) if gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    cpa = float(cpus_per_actor) if cpus_per_actor is not None else 1.0
    if actors is None:
        if gpa > 0:
            actors = int(gpus // gpa)
        else:
            actors = int(cpus // cpa) if cpa == 1 else int((cpus - 1) // cpa)
        actors = max(1, actors)
    need_cpus, need_gpus = actors * cpa, actors * gpa
    if need_cpus > cpus or need_gpus > gpus:
        raise InputError(
            f"{actors} Ray actor(s) with {cpa:g} CPU and {gpa:g} GPU each need {need_cpus:g} CPUs and "
            f"{need_gpus:g} GPUs; the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs (give fewer --actors)"
        )
    decode_in_actor = workers == 0 or (gpa == 0 and cpa == 1) or cpus - need_cpus < 1
    return Resources(actors, cpa, gpa, decode_in_actor)


# ------------------------------------------------------------------------------ the stages
_DECODERS: dict[tuple[str, int | None], DecodeDataset] = {}


def decode_stage(batch: dict[str, Any], *, decoder: DecodeDataset) -> dict[str, list[bytes]]:
    """Ray task: each row's planned batch read, hashed and decoded, by the local engine's decoder
    (the model's processors and Pillow's pixel limit), built once per worker process."""
    decoder = _DECODERS.setdefault((decoder.config_json, decoder.max_pixels), decoder)
    return {"batch": [pickle.dumps(decoder[pickle.loads(b)]) for b in batch["batch"]]}


class Embedder:
    """Ray actor: one model, loaded once; decoded batches in, rows out (pickled ``Result``)."""

    def __init__(self, spec: ModelSpec, decoder: DecodeDataset, shipped: dict[str, Any] | None = None,
                 device: str = "cpu", threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.decoder = decoder  # for batches not decoded by decode tasks
        # a model that cannot be loaded fails the first batch rather than the actor: Ray prints a
        # dead actor's traceback on the driver's terminal, while a task's error comes back to
        # the build, which reports it in one line
        self.failure: BaseException | None = None
        try:
            self.model = self._load(spec, shipped, device)
        except Exception as e:  # noqa: BLE001 - re-raised by __call__
            self.failure = e

    @staticmethod
    def _load(spec: ModelSpec, shipped: dict[str, Any] | None, device: str) -> Any:
        import torch

        if shipped is not None:  # the weights of a model that has no files
            from ..config import ModelConfig
            from ..factory import create_model

            model = create_model(ModelConfig.from_dict(json.loads(spec.config_json)), device="meta", init=False)
            model.load_state_dict(shipped, assign=True)
            from ..model.precision import resolve_runtime

            target = resolve_runtime(spec.dtype, device)  # "auto" is resolved on the actor's own machine
            if target == "int8":
                from ..model.quant import quantize_int8

                return quantize_int8(model.to(device=device, dtype=torch.float32))
            return model.to(device=device, dtype=target).eval()
        from ..inference import OnePeace
        from .fingerprint import model_fingerprint

        model = OnePeace.from_pretrained(spec.load, dtype=spec.dtype, device=device, adapter=spec.adapter)
        fp = model_fingerprint(model)
        if fp != spec.fingerprint:  # another node sees other files under the same name
            raise ModelMismatchError(
                f"the Ray worker on {socket.gethostname()} loaded {spec.load} with fingerprint {fp[:12]}, "
                f"but the driver's model has {spec.fingerprint[:12]}; every node must see the same model files"
            )
        return model

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        if self.failure is not None:
            raise self.failure
        out = []
        for blob in batch["batch"]:
            work = pickle.loads(blob)
            decoded = work if isinstance(work, Decoded) else self.decoder[work]
            out.append(pickle.dumps(embed_decoded(self.model, decoded)))
        return {"result": out}


def embed_ray(batches: Iterable[Batch], spec: ModelSpec, shipped: Any, res: Resources, *,
              plan_items: int = DEFAULT_PLAN_ITEMS) -> Iterator[Result]:
    """The engine: planned batches -> results, batches of ``plan_items`` items per Ray Data run
    (in completion order, not plan order: the writer keys rows by id)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # the build shows its own bar
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.CRITICAL)  # a failure is raised here as one line, not logged with Ray's traces
    decoder = DecodeDataset(spec.config_json)
    it = iter(batches)
    try:
        while True:
            chunk, n = [], 0
            for b in it:
                chunk.append(b)
                n += len(b.items)
                if n >= plan_items:
                    break
            if not chunk:
                return
            ds = ray.data.from_items([{"batch": pickle.dumps(b)} for b in chunk], override_num_blocks=len(chunk))
            if not res.decode_in_actor:
                ds = ds.map_batches(decode_stage, batch_size=1, fn_kwargs={"decoder": decoder}, num_cpus=1)
            ds = ds.map_batches(
                Embedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(res.actors, len(chunk))),
                fn_constructor_kwargs={"spec": spec, "decoder": decoder, "shipped": shipped,
                                       "device": "cuda" if res.gpus_per_actor > 0 else "cpu",
                                       "threads": int(res.cpus_per_actor)},
                # resources unlike the decode tasks' (1 CPU), so Ray does not fuse the two stages
                num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor or None,
            )
            try:
                for row in ds.iter_rows():
                    yield pickle.loads(row["result"])
            except Exception as e:  # noqa: BLE001 - Ray wraps a worker's error in its own types
                raise _unwrap(e) from None
    finally:
        ctx.enable_progress_bars = saved
        data_log.setLevel(level)


def _unwrap(e: BaseException) -> OnePeaceError:
    """A worker's own error (e.g. a model mismatch on one node) with its class and message alone,
    else the last line of Ray's error. Ray Data passes a worker's exception on as text (the worker's
    traceback, ending with ``onepeace.module.SomeError: message``) inside its own exception types."""
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OnePeaceError) and type(cur).__module__.startswith("onepeace"):
            return cur  # raised on the driver itself
        seen.add(id(cur))
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    found = re.findall(r"^\s*(onepeace(?:\.\w+)+)\.(\w+): (.+)$", str(e), flags=re.M)
    if found:
        module, name, message = found[-1]
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, OnePeaceError)):
            cls = SearchIndexError
        return cls(message)
    return SearchIndexError(f"the Ray job failed: {_summary(e)}")


def _summary(e: BaseException) -> str:
    """The last non-blank line of an error (Ray puts the worker's traceback before it)."""
    text = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return text[-1][:300] if text else type(e).__name__


# ------------------------------------------------------------------------------ the build
def build_ray(db: str, model: Any, sources: list[str], *, batch_size: int = 32, workers: int = 2,
              prune: bool = False, report_path: str | None = None, progress: bool | None = None,
              address: str | None = None, commit_rows: int | None = None,
              ann_threshold: int | None = DEFAULT_ANN_THRESHOLD, actors: int | None = None,
              cpus_per_actor: float | None = None, gpus_per_actor: float | None = None, dtype: str | None = None,
              plan_items: int = DEFAULT_PLAN_ITEMS) -> dict[str, Any]:
    """:func:`onepeace.search.ingest.build` with the embedding on Ray Data (it calls this for
    ``engine="ray"``; ``sources`` are already checked). Same counts, report and rows.

    ``address``: the Ray cluster to join (default: the session open in this process, else a new
    local one). ``actors`` (models in parallel), ``cpus_per_actor``, ``gpus_per_actor``: see
    :func:`plan_resources`. ``workers=0`` decodes inside the actors instead of in Ray tasks.
    ``dtype`` (fp32, bf16, fp16): the actors' compute precision (default: the driver model's, or
    as stored for a model given by path).
    Sources and a model directory must be at the same path on every node (a shared disk);
    a Hub id is fetched by each node into its own cache. Only the driver writes the index."""
    if isinstance(plan_items, bool) or not isinstance(plan_items, int) or plan_items < 1:
        raise InputError(f"plan_items must be a positive integer, got {plan_items!r}")
    import_ray()  # a missing extra is reported before any work
    spec, shipped = model_spec(model)
    if dtype is not None:
        from ..model.precision import resolve_runtime

        target = resolve_runtime(dtype)  # checked here; "auto" is resolved by each actor on its machine
        auto = isinstance(dtype, str) and dtype.strip().lower() == "auto"
        spec = dataclasses.replace(spec, dtype="auto" if auto else target if target == "int8"
                                   else str(target).removeprefix("torch."))
    if is_index(db):  # a model mismatch is refused before the cluster starts
        Index.open(db).check_model(spec.fingerprint, spec.name)
    with ray_cluster(address) as ray:
        res = plan_resources(ray.cluster_resources(), actors=actors, cpus_per_actor=cpus_per_actor,
                             gpus_per_actor=gpus_per_actor, workers=workers)
        index = open_index(db, spec)
        log.info("Ray: %d embedding actor(s), %g CPU / %g GPU each, decoding %s", res.actors, res.cpus_per_actor,
                 res.gpus_per_actor, "in the actors" if res.decode_in_actor else "in Ray tasks")
        return run_build(index, None, sources, embed=lambda planned: embed_ray(planned, spec, shipped, res,
                                                                               plan_items=plan_items),
                         batch_size=batch_size, prune=prune, report_path=report_path, progress=progress,
                         commit_rows=commit_rows, ann_threshold=ann_threshold, model_name=spec.name,
                         modalities=spec.modalities, engine="ray")
