#!/usr/bin/env python
"""Locust, headless, against ``onepeace serve`` on the loopback address: mixed traffic at 16 and
64 users, and an optional soak.

The server is the real command (``onepeace serve DB --port 0``, 127.0.0.1 only) in its own
process, on an index of a few images built with a saved random model of ``--preset`` (speed does
not depend on the weights). Locust (as a library: ``locust.env.Environment`` and a local runner,
no web UI) runs ``FastHttpUser`` clients, each sending requests back to back, picked by weight:
text embeddings (5), image embeddings (3, a PNG as base64) and text searches (2). Every level is
bounded in users, in time (``--seconds``) and in requests (``--max-requests``), whichever comes
first. It reports, per level: requests/s, latency p50 / p95 / p99 (ms, as the clients see it),
the error rate (any non-2xx), and among the errors the 503s of load shedding (``--max-queue`` /
``--max-in-flight``); and the server's RSS before the load, right after it and after
``--settle`` seconds idle (does memory return to its baseline after a burst?).

A burst (``--burst-seconds``, default 5; 0: none) against a second server with small bounds
(``--max-queue 8 --max-in-flight 32``): ``--burst-users`` clients (default 64) send embeddings of
4 texts back to back; it reports the share of 503s, that every answer was a 200 or a 503, and the
time to recover: from the moment the burst's clients stop to the first 200 of a probe sending a
normal one-text request every 10 ms. ``--burst-only`` runs just the burst and merges it into an
existing ``--out`` file (its own date and load average recorded), the other figures untouched.

``--soak SECONDS`` (e.g. 600) runs one more level of ``--soak-users`` for that long and reports
the RSS at its start and end (sampled every 10 s) and the throughput of its first and last minute.

Writes ``benchmarks/results/serve-load.json`` (``--out``). Usage::

    python benchmarks/bench_serve_load.py                     # 16 and 64 users, 30 s each
    python benchmarks/bench_serve_load.py --soak 600          # plus a 10-minute soak
    python benchmarks/bench_serve_load.py --seconds 5 --out /tmp/load.json   # smoke
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import ipaddress
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import gevent
import locust  # patches the standard library with gevent (sockets, threads) on import
from locust import FastHttpUser, constant, task
from locust.env import Environment

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_serve import CAPTIONS, Server, cpu_name, make_images, prepare  # noqa: E402

RESULTS = HERE / "results"
WEIGHTS = {"embed_text": 5, "embed_image": 3, "search_text": 2}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def make_user(images: list[str]) -> type:
    class Client(FastHttpUser):
        wait_time = constant(0)
        network_timeout = connection_timeout = 120.0

        def _post(self, path: str, body: dict, name: str) -> None:
            with self.client.post(path, json=body, name=name, catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"{r.status_code}")

        @task(WEIGHTS["embed_text"])
        def embed_text(self):
            i = self.environment.runner.stats.total.num_requests
            self._post("/v1/embeddings", {"input": [CAPTIONS[i % len(CAPTIONS)]]}, "embed_text")

        @task(WEIGHTS["embed_image"])
        def embed_image(self):
            i = self.environment.runner.stats.total.num_requests
            self._post("/v1/embeddings", {"input": [images[i % len(images)]], "modality": "image"}, "embed_image")

        @task(WEIGHTS["search_text"])
        def search_text(self):
            i = self.environment.runner.stats.total.num_requests
            self._post("/search", {"text": CAPTIONS[i % len(CAPTIONS)], "k": 5}, "search_text")

    return Client


def run_level(url: str, user: type, users: int, seconds: float, max_requests: int,
              pid: int | None = None, sample_every: float = 0.0) -> dict:
    """One bounded Locust run: ``users`` clients for at most ``seconds`` or ``max_requests``."""
    env = Environment(user_classes=[user], host=url, events=locust.events)
    runner = env.create_local_runner()
    samples: list[tuple[float, float | None, int]] = []
    runner.start(users, spawn_rate=users)
    t0 = time.monotonic()
    next_sample = 0.0
    while time.monotonic() - t0 < seconds and env.stats.total.num_requests < max_requests:
        if sample_every and pid and time.monotonic() - t0 >= next_sample:
            samples.append((round(time.monotonic() - t0, 1), rss_mb(pid), env.stats.total.num_requests))
            next_sample += sample_every
        gevent.sleep(0.1)
    elapsed = time.monotonic() - t0
    runner.quit()
    total = env.stats.total
    errors = dict(env.stats.errors)
    shed = sum(e.occurrences for e in errors.values() if "503" in str(e.error))
    out = {
        "users": users, "seconds": round(elapsed, 1), "requests": total.num_requests,
        "requests_per_s": round(total.num_requests / elapsed, 1) if elapsed else None,
        "p50_ms": total.get_response_time_percentile(0.5), "p95_ms": total.get_response_time_percentile(0.95),
        "p99_ms": total.get_response_time_percentile(0.99),
        "error_rate": round(total.num_failures / total.num_requests, 4) if total.num_requests else None,
        "shed_503_rate": round(shed / total.num_requests, 4) if total.num_requests else None,
        "errors": {str(e.error): e.occurrences for e in errors.values()},
        "by_kind": {name: {"requests": s.num_requests, "p50_ms": s.get_response_time_percentile(0.5),
                           "p95_ms": s.get_response_time_percentile(0.95)}
                    for (name, _), s in env.stats.entries.items()},
    }
    if samples:
        out["rss_samples"] = samples
    return out


class BurstServer(Server):
    """``onepeace serve`` with small bounds, so that a burst is shed."""

    def __init__(self, index: Path, max_queue: int, max_in_flight: int, threads: int | None):
        import subprocess
        import threading

        exe = Path(sys.executable).with_name("onepeace")
        cmd = [str(exe), "serve", str(index), "--port", "0", "--max-batch", "16", "--timeout", "300",
               "--max-queue", str(max_queue), "--max-in-flight", str(max_in_flight)]
        if threads:
            cmd += ["--threads", str(threads)]
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "http://" not in line:
            raise RuntimeError(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split()[2].rstrip("/")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain the log


def run_burst(url: str, users: int, seconds: float) -> dict:
    """``users`` clients send 4-text embeddings back to back for ``seconds``; then they stop and a
    probe sends a one-text request every 10 ms until one is answered 200 (time to recover)."""
    import gevent.pool
    import urllib3

    pool = urllib3.PoolManager(maxsize=users + 2, timeout=urllib3.Timeout(total=300), retries=False)
    statuses: list[int] = []
    stop = [False]

    def client(k: int) -> None:
        i = 0
        while not stop[0]:
            body = json.dumps({"input": [f"burst {k} {i} {j}" for j in range(4)]}).encode()
            r = pool.request("POST", url + "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
            statuses.append(r.status)
            i += 1

    group = gevent.pool.Group()
    t0 = time.monotonic()
    for k in range(users):
        group.spawn(client, k)
    gevent.sleep(seconds)
    stop[0] = True
    t_stop = time.monotonic()
    probes, recovered = 0, None
    while recovered is None and time.monotonic() - t_stop < 120:
        r = pool.request("POST", url + "/v1/embeddings", body=b'{"input": "probe"}',
                         headers={"Content-Type": "application/json"})
        probes += 1
        if r.status == 200:
            recovered = time.monotonic() - t_stop
        else:
            gevent.sleep(0.01)
    group.join(timeout=300)
    drained = time.monotonic() - t_stop
    counts = {str(c): statuses.count(c) for c in sorted(set(statuses))}
    return {
        "users": users, "seconds": round(t_stop - t0, 1), "requests": len(statuses), "inputs_per_request": 4,
        "statuses": counts, "only_200_and_503": set(statuses) <= {200, 503},
        "shed_503_share": round(statuses.count(503) / len(statuses), 4) if statuses else None,
        "recover_s": round(recovered, 3) if recovered is not None else None, "recover_probes": probes,
        "burst_drained_s": round(drained, 3),
    }


def burst(index: Path, args: argparse.Namespace) -> dict:
    server = BurstServer(index, args.burst_queue, args.burst_in_flight, args.threads)
    try:
        host = urlparse(server.url).hostname or ""
        if not ipaddress.ip_address(host).is_loopback:
            raise SystemExit(f"refusing to load {server.url}: not a loopback address")
        server.startup(base64.b64encode(make_images(1, 96, seed=2)[0]).decode())
        out = run_burst(server.url, args.burst_users, args.burst_seconds)
        out["server"] = (f"onepeace serve DB --max-batch 16 --max-queue {args.burst_queue} "
                         f"--max-in-flight {args.burst_in_flight}")
        out["health_after"] = server.stats()
    finally:
        server.stop()
    print(f"burst: {out['requests']} requests from {out['users']} users in {out['seconds']} s, {out['statuses']}, "
          f"503 share {out['shed_503_share']:.1%}, recovered {out['recover_s']} s after the burst stopped",
          file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--users", type=int, nargs="+", default=[16, 64])
    p.add_argument("--seconds", type=float, default=30.0, help="most seconds per level")
    p.add_argument("--max-requests", type=int, default=20_000, help="most requests per level")
    p.add_argument("--settle", type=float, default=5.0, help="idle seconds before the RSS after a level")
    p.add_argument("--soak", type=float, default=0.0, help="seconds of a soak level (0: none; e.g. 600)")
    p.add_argument("--soak-users", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--burst-seconds", type=float, default=5.0, help="seconds of the burst (0: none)")
    p.add_argument("--burst-users", type=int, default=64)
    p.add_argument("--burst-queue", type=int, default=8, help="--max-queue of the burst's server")
    p.add_argument("--burst-in-flight", type=int, default=32, help="--max-in-flight of the burst's server")
    p.add_argument("--burst-only", action="store_true",
                   help="run only the burst and merge it into the existing --out file")
    p.add_argument("--out", default=str(RESULTS / "serve-load.json"))
    args = p.parse_args(argv)
    if args.burst_users > 256 or args.burst_seconds > 120:
        p.error("bounded: at most 256 burst users and a 120 s burst")
    if args.burst_only:
        work = Path(tempfile.mkdtemp(prefix="onepeace-burst-"))
        index = prepare(work, args.preset, args.image_size)
        load_avg = os.getloadavg()[0]
        result = json.loads(Path(args.out).read_text()) if os.path.exists(args.out) else {}
        result["burst"] = {"date": _dt.date.today().isoformat(), "load_average_at_start": load_avg,
                           **burst(index, args)}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote the burst into {args.out}", file=sys.stderr)
        return 0
    if max(args.users + [args.soak_users]) > 256 or args.seconds > 600 or args.soak > 3600:
        p.error("bounded: at most 256 users, 600 s per level and a 3600 s soak")

    work = Path(tempfile.mkdtemp(prefix="onepeace-load-"))
    index = prepare(work, args.preset, args.image_size)
    images = [base64.b64encode(b).decode() for b in make_images(8, 96, seed=2)]
    server = Server(index, 16, args.threads)
    host = urlparse(server.url).hostname or ""
    if not ipaddress.ip_address(host).is_loopback:  # never load anything but this machine
        server.stop()
        raise SystemExit(f"refusing to load {server.url}: not a loopback address")
    try:
        startup = server.startup(images[0])
        user = make_user(images)
        run_level(server.url, user, 4, 3.0, 200)  # warm-up, not reported
        gevent.sleep(args.settle)
        levels = []
        for n in args.users:
            before = rss_mb(server.proc.pid)
            level = run_level(server.url, user, n, args.seconds, args.max_requests)
            level["rss_mb"] = {"before": before, "after_load": rss_mb(server.proc.pid)}
            gevent.sleep(args.settle)
            level["rss_mb"]["after_settle"] = rss_mb(server.proc.pid)
            levels.append(level)
            print(f"{n:>4} users: {level['requests_per_s']} req/s, p50/p95/p99 {level['p50_ms']}/{level['p95_ms']}/"
                  f"{level['p99_ms']} ms, errors {level['error_rate']:.2%} (503 {level['shed_503_rate']:.2%}), "
                  f"RSS {level['rss_mb']}", file=sys.stderr)
        soak = None
        if args.soak:
            soak = run_level(server.url, user, args.soak_users, args.soak, 10**9, pid=server.proc.pid,
                             sample_every=10.0)
            samples = soak.get("rss_samples", [])
            soak["rss_start_mb"] = samples[1][1] if len(samples) > 1 else None  # after the first 10 s
            soak["rss_end_mb"] = rss_mb(server.proc.pid)
            print(f"soak {args.soak:.0f} s: RSS {soak['rss_start_mb']} -> {soak['rss_end_mb']} MB", file=sys.stderr)
        health = server.stats()
    finally:
        peak = server.stop()
    shed = burst(index, args) if args.burst_seconds else None
    result = {
        "benchmark": "bench_serve_load", "date": _dt.date.today().isoformat(), "cpu": cpu_name(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "locust": locust.__version__,
        "load_average_at_start": os.getloadavg()[0],
        "server": f"onepeace serve DB --port 0 (127.0.0.1; --max-batch 16, defaults --max-queue 1024 "
                  f"--max-in-flight 256), preset {args.preset}, image {args.image_size} px",
        "traffic": {"weights": WEIGHTS, "users_wait_s": 0, "bounds": {"seconds": args.seconds,
                                                                       "max_requests": args.max_requests}},
        "startup": startup, "levels": levels, "soak": soak, "burst": shed, "server_batching": health, "server_peak_rss_mb": peak,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
