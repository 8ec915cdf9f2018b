#!/usr/bin/env python
"""Load test of ``onepeace serve``: micro-batching against one request at a time.

The server is the real command (``onepeace serve DB --port 0``) in its own process, on an index of
a few images built with the same model; the clients are threads of this process, each with its
own keep-alive HTTP connection, sending one input per request to ``POST /v1/embeddings`` back to
back. For text and for images (PNG, base64), and for ``--max-batch 16`` (micro-batching, the
default) and ``--max-batch 1`` (one request at a time, each its own forward pass), it measures:

* throughput (requests/s over a timed round, after an untimed warm-up) and latency p50 / p95 as
  the clients see it, and the mean batch the server formed (its /health counters). Both servers
  run side by side (an idle one costs nothing) and the rounds alternate between them, so that a
  change in the background load of a shared machine hits both modes alike; the speed-up is the
  median over rounds of batched / one-at-a-time throughput (and the ratio of the best rounds);
* the server's CPU time per request (user + system, all threads): on a busy shared machine the
  steadiest measure of the work batching saves;
* start-up: from starting the process to the first answered /health, and to the first answered
  embedding request (model load, index open and the warm-up forward passes included);
* peak RSS (``VmHWM``) of the server process after the load.

Writes ``benchmarks/results/serve.json``. Usage::

    python benchmarks/bench_serve.py                       # tiny and base presets, 16 clients
    python benchmarks/bench_serve.py --presets tiny --rounds 1 --out /tmp/serve.json   # smoke
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CAPTIONS = ["a dog running on the beach", "two people riding bicycles down a hill", "a plate of pasta with tomato",
            "a red car parked next to a tree", "a cat sleeping on a sofa", "the sound of rain on a window",
            "an old man reading a newspaper", "children playing football in a park"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_images(n: int, size: int, seed: int = 0) -> list[bytes]:
    """Smooth random RGB images (photo-like PNG sizes, not noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def prepare(work: Path, preset: str, image_size: int | None) -> Path:
    """A saved model of ``preset`` (random weights: speed does not depend on them) and an index
    of four images built with it; returns the index directory."""
    import torch

    import onepeace
    from onepeace.search.ingest import build

    torch.manual_seed(0)
    overrides: dict[str, Any] = {}
    if image_size:
        overrides["modalities"] = {**onepeace.get_preset(preset).modalities, "image": {"image_size": image_size}}
    model = onepeace.create_model(preset, **overrides)
    model.save_pretrained(work / "model")
    media = work / "media"
    media.mkdir()
    for i, data in enumerate(make_images(4, 96, seed=1)):
        (media / f"img{i}.png").write_bytes(data)
    build(work / "index", str(work / "model"), [media], batch_size=4, workers=0, progress=False)
    return work / "index"


class Server:
    """``onepeace serve`` in a child process on a free port."""

    def __init__(self, index: Path, max_batch: int, threads: int | None):
        exe = Path(sys.executable).with_name("onepeace")
        cmd = [str(exe), "serve", str(index), "--port", "0", "--max-batch", str(max_batch), "--timeout", "300"]
        if threads:
            cmd += ["--threads", str(threads)]
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "http://" not in line:
            raise RuntimeError(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split()[2].rstrip("/")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain the log

    def startup(self, image_b64: str) -> dict[str, float]:
        import httpx

        out = {}
        with httpx.Client(timeout=300) as c:
            while True:
                try:
                    if c.get(self.url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.02)
            out["to_health_s"] = round(time.perf_counter() - self.t0, 2)
            r = c.post(self.url + "/v1/embeddings", json={"input": [image_b64], "modality": "image"})
            r.raise_for_status()
            out["to_first_embedding_s"] = round(time.perf_counter() - self.t0, 2)
        return out

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/health", timeout=60).json()["batching"]

    def stop(self) -> float | None:
        rss = peak_rss_mb(self.proc.pid)
        self.proc.send_signal(2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return rss


def load(url: str, payloads: list[dict], clients: int, requests: int, warmup: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``warmup`` untimed then ``requests`` timed requests."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    timed = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as c:
            def one(i: int) -> float:
                t = time.perf_counter()
                r = c.post(url + "/v1/embeddings", json=payloads[(k * 7 + i) % len(payloads)])
                if r.status_code != 200:
                    with lock:
                        errors.append(r.text[:200])
                return time.perf_counter() - t

            start.wait()
            for i in range(warmup):
                one(i)
            timed.wait()
            mine = [one(warmup + i) for i in range(requests)]
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    timed.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {"requests": len(latencies), "seconds": round(wall, 2), "throughput_rps": round(len(latencies) / wall, 2),
            "latencies": latencies}


def run_preset(preset: str, args: argparse.Namespace, images: list[str], work: Path) -> dict[str, Any]:
    """Both modes on one model size. Both servers stay up (an idle one costs no CPU) and the load
    alternates between them round by round, so that a drift in the machine's background load
    (this is a shared machine) hits both modes alike; the speed-up is the median of the rounds'
    ratios, throughput the median of the rounds, latencies pooled over the rounds."""
    workloads = {"text": [{"input": c} for c in CAPTIONS],
                 "image": [{"input": b, "modality": "image"} for b in images]}
    index = prepare(work, preset, args.image_size)
    import onepeace

    config = onepeace.get_preset(preset)
    out: dict[str, Any] = {"model": {"preset": preset, "dim": config.dim, "layers": config.layers,
                                     "image_size": args.image_size or config.modalities["image"].get("image_size", 256),
                                     "weights": "random (speed does not depend on them)"},
                           "startup": {}, "peak_rss_mb": {},
                           # other processes' load: on a shared machine it moves every figure
                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    modes = {"batched": 16, "one_at_a_time": 1}
    servers: dict[str, Server] = {}
    try:
        for mode, max_batch in modes.items():
            servers[mode] = Server(index, max_batch, args.threads)
            out["startup"][mode] = servers[mode].startup(images[0])
        for kind, payloads in workloads.items():
            requests = args.requests if kind == "text" else args.image_requests
            rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for _ in range(args.rounds):
                for mode, server in servers.items():
                    before, cpu0 = server.stats(), cpu_seconds(server.proc.pid)
                    row = load(server.url, payloads, args.clients, requests, args.warmup)
                    after, cpu1 = server.stats(), cpu_seconds(server.proc.pid)
                    # server CPU per request (warm-up requests included on both sides): unlike
                    # wall time, it hardly depends on what else the machine is running
                    row["server_cpu_ms_per_request"] = round(1000 * (cpu1 - cpu0) / (after["jobs"] - before["jobs"]), 1)
                    row["mean_batch"] = round((after["items"] - before["items"])
                                              / max(1, after["batches"] - before["batches"]), 2)
                    rounds[mode].append(row)
            summary: dict[str, Any] = {}
            for mode, rows in rounds.items():
                lat = sorted(x for r in rows for x in r.pop("latencies"))
                summary[mode] = {
                    "throughput_rps": round(statistics.median(r["throughput_rps"] for r in rows), 2),
                    "best_throughput_rps": max(r["throughput_rps"] for r in rows),
                    "server_cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in rows), 1),
                    "p50_ms": round(1000 * statistics.median(lat), 1),
                    "p95_ms": round(1000 * lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 1),
                    "mean_batch": round(statistics.mean(r["mean_batch"] for r in rows), 2),
                    "requests": sum(r["requests"] for r in rows), "rounds": rows}
                print(f"{preset:5s} {kind:5s} {mode:13s} {summary[mode]['throughput_rps']:7.2f} req/s (best "
                      f"{summary[mode]['best_throughput_rps']:.2f})  p50 {summary[mode]['p50_ms']:8.1f} ms  "
                      f"p95 {summary[mode]['p95_ms']:8.1f} ms  mean batch {summary[mode]['mean_batch']}  "
                      f"server CPU {summary[mode]['server_cpu_ms_per_request']} ms/request", flush=True)
            b, o = summary["batched"], summary["one_at_a_time"]
            ratios = [x["throughput_rps"] / y["throughput_rps"] for x, y in zip(rounds["batched"], rounds["one_at_a_time"])]
            summary["speedup"] = round(statistics.median(ratios), 2)
            summary["speedup_per_round"] = [round(x, 2) for x in ratios]
            summary["speedup_best"] = round(b["best_throughput_rps"] / o["best_throughput_rps"], 2)
            summary["cpu_per_request_ratio"] = round(o["server_cpu_ms_per_request"] / b["server_cpu_ms_per_request"], 2)
            out[kind] = summary
            print(f"{preset} {kind}: micro-batching gives {summary['speedup']}x the throughput of one request at a "
                  f"time (median of rounds {summary['speedup_per_round']}; best rounds {summary['speedup_best']}x; "
                  f"server CPU per request {summary['cpu_per_request_ratio']}x less)", flush=True)
    finally:
        out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        for mode, server in servers.items():
            out["peak_rss_mb"][mode] = round(server.stop() or 0, 1)
    print(f"{preset}: start-up to the first answered embedding {out['startup']['batched']['to_first_embedding_s']} s; "
          f"peak RSS under load {out['peak_rss_mb']['batched']} MB", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "base"])
    ap.add_argument("--image-size", type=int, help="the image branch's resolution (default: the preset's)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per workload and mode")
    ap.add_argument("--requests", type=int, default=6, help="timed text requests per client and round")
    ap.add_argument("--image-requests", type=int, default=2, help="timed image requests per client and round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed requests per client before each phase")
    ap.add_argument("--threads", type=int, help="the server's torch threads (default: torch's choice)")
    ap.add_argument("--image-pixels", type=int, default=224, help="side of the PNGs sent (resized by the server)")
    ap.add_argument("--out", default=str(RESULTS / "serve.json"))
    args = ap.parse_args(argv)

    import signal

    import torch

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers (finally blocks) when killed
    images = [base64.b64encode(b).decode() for b in make_images(16, args.image_pixels, seed=2)]
    result: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "server_torch_threads": args.threads or torch.get_num_threads()},
        "clients": args.clients, "rounds": args.rounds, "text_requests_per_client_and_round": args.requests,
        "image_requests_per_client_and_round": args.image_requests, "warmup_per_client_and_round": args.warmup,
        "image_png_pixels": args.image_pixels,
        "modes": {"batched": "onepeace serve --max-batch 16 (--max-wait-ms 5)", "one_at_a_time": "--max-batch 1"},
        "runs": {},
    }
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            result["runs"][preset] = run_preset(preset, args, images, Path(tmp))
    from onepeace.checkpoints.format import write_text_atomic

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
