#!/usr/bin/env python
"""Indexing throughput: ``onepeace index build`` in-process (``--engine local``) against Ray Data
(``--engine ray``) on the same collection, model and batch size, and what the driver's writer
(``Index.add``, one Lance commit per batch) sustains.

The collection: ``--images`` held-out demo digits saved as PNG files plus ``--texts`` captions in a
.txt file; the model: the ``tiny`` preset, randomly initialised and saved (throughput does not
depend on the weights). Each build starts from an empty index. Figures (items/s = items indexed /
wall seconds of the build):

* ``embed``: plain ``model.embed`` of the same files and texts (the reference the issue compares
  the local build with);
* ``local``: ``build(engine="local")`` with its default decoding workers;
* ``ray``: ``build(engine="ray")`` on a local Ray cluster of ``--ray-cpus`` CPUs already started
  (the start itself, ``ray_init_s``, is reported apart: a cluster is started once per build from
  the CLI, once per session from Python); the actors load the model once each per build;
* ``*_cpu_ms_per_item``: CPU time of every process involved (this one, the DataLoader workers,
  Ray's processes and actors, during the build; /proc read every 0.2 s) per item: on a machine
  shared with other jobs, wall-clock rates reward whichever run has more processes competing for
  the cores, CPU time per item does not;
* ``writer``: ``Index.add`` of batches of ``--commit-rows`` synthetic unit vectors at the tiny
  model's width and at the 4B model's (1536): what one driver can commit, to compare with what a
  cluster embeds.

Usage::

    python benchmarks/bench_search_ray.py                     # about 2 min on 2 cores
    python benchmarks/bench_search_ray.py --images 64 --texts 64 --out /tmp/ray.json   # smoke
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make_collection(root: Path, n_images: int, n_texts: int) -> tuple[list[str], list[str], list[str]]:
    from PIL import Image

    from onepeace_train.demo.data import eval_caption, load_digits

    images, labels = load_digits("test")
    folder = root / "images"
    folder.mkdir()
    paths = []
    for i in range(n_images):
        p = folder / f"{i:04d}-{labels[i % len(labels)]}.png"
        Image.fromarray(images[i % len(images)]).save(p)
        paths.append(str(p))
    texts = [f"{eval_caption(int(labels[i % len(labels)]))} (#{i})" for i in range(n_texts)]
    (root / "texts.txt").write_text("\n".join(texts) + "\n")
    return [str(folder), str(root / "texts.txt")], paths, texts


class TreeCPU:
    """CPU seconds used by this process and all its descendants while the block runs: /proc is
    read every ``period`` s and each process's last reading kept, so processes that end inside the
    block (DataLoader workers, Ray actors) count up to at most ``period`` before their end.
    Ray's processes descend from the driver that started the cluster."""

    def __init__(self, period: float = 0.2):
        self.period = period
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> cpu s at the last look
        self.base: dict[tuple[int, int], float] = {}

    @staticmethod
    def _table() -> dict[int, tuple[int, int, float]]:
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / tick)
        return out

    def _look(self) -> dict[tuple[int, int], float]:
        table = self._table()
        mine, grew = {os.getpid()}, True
        while grew:
            grew = False
            for pid, (ppid, _, _) in table.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        return {(pid, table[pid][1]): table[pid][2] for pid in mine if pid in table}

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.seen.update(self._look())

    def __enter__(self) -> TreeCPU:
        import threading

        self.base = self._look()
        self.seen = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._look())
        self.seconds = sum(v - self.base.get(k, 0.0) for k, v in self.seen.items())


def writer_rate(root: Path, dim: int, rows: int, commit_rows: int) -> float:
    from onepeace.search.store import Index

    idx = Index.create(root / f"writer-{dim}", fingerprint="bench", model_name="bench", dim=dim)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for start in range(0, rows, commit_rows):
        n = min(commit_rows, rows - start)
        v = rng.standard_normal((n, dim)).astype(np.float32)
        idx.add([{"id": f"r{start + i}", "modality": "image", "uri": f"/data/{start + i}.png", "text": "",
                  "metadata": {"source": "/data", "file_size": 1234}, "content_hash": "0" * 64, "vector": v[i]}
                 for i in range(n)], replace=False)
    return rows / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--writer-rows", type=int, default=20_000)
    ap.add_argument("--commit-rows", type=int, default=256)
    ap.add_argument("--out", default=str(HERE / "results" / "search-ray.json"))
    args = ap.parse_args()

    import ray
    import torch

    import onepeace
    from onepeace.search.ingest import build
    from onepeace.search.ray_engine import plan_resources

    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        torch.manual_seed(0)
        onepeace.create_model("tiny").save_pretrained(root / "model")
        model = onepeace.OnePeace.from_pretrained(root / "model")
        sources, paths, texts = make_collection(root, args.images, args.texts)
        n = len(paths) + len(texts)
        out: dict = {"items": n, "images": len(paths), "texts": len(texts), "batch_size": args.batch_size,
                     "model": "tiny (random init)", "dim": model.config.dim, "torch_threads": torch.get_num_threads()}

        with TreeCPU() as cpu:
            t0 = time.perf_counter()
            model.embed(image=paths, text=texts, batch_size=args.batch_size)
            out["embed_items_per_s"] = n / (time.perf_counter() - t0)
        out["embed_cpu_ms_per_item"] = 1000 * cpu.seconds / n

        with TreeCPU() as cpu:
            t0 = time.perf_counter()
            r = build(root / "db-local", model, sources, batch_size=args.batch_size, progress=False)
            out["local_items_per_s"] = r["added"] / (time.perf_counter() - t0)
        out["local_cpu_ms_per_item"] = 1000 * cpu.seconds / r["added"]
        out["local_workers"] = max(0, min(2, (os.cpu_count() or 1) - 1))

        t0 = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        out["ray_init_s"] = time.perf_counter() - t0
        try:
            with TreeCPU() as cpu:  # the driver, Ray's own processes and the actors, during the build
                t0 = time.perf_counter()
                r = build(root / "db-ray", model, sources, batch_size=args.batch_size, progress=False,
                          engine="ray")
                out["ray_items_per_s"] = r["added"] / (time.perf_counter() - t0)
            out["ray_cpu_ms_per_item"] = 1000 * cpu.seconds / r["added"]
            out["ray_cpus"] = args.ray_cpus
            out["ray_actors"] = plan_resources(ray.cluster_resources()).actors  # the default plan
        finally:
            ray.shutdown()
        out["ray_over_local"] = out["ray_items_per_s"] / out["local_items_per_s"]
        out["local_over_embed"] = out["local_items_per_s"] / out["embed_items_per_s"]

        out["writer_rows_per_s"] = {str(d): writer_rate(root, d, args.writer_rows, args.commit_rows)
                                    for d in (model.config.dim, 1536)}
        out["writer_commit_rows"] = args.commit_rows
        out["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_avg_1m_at_end": os.getloadavg()[0], "python": sys.version.split()[0],
                          "torch": torch.__version__, "ray": ray.__version__}
        out["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
