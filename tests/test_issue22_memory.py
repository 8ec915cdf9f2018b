"""Issue 22 item 1 (memory): after a burst against a small queue, the server's memory returns to
its baseline: repeated bursts do not grow the resident set. The bound is derived from the burst
itself: the bytes it moved (requests and answers) and the memory it took at its peak."""

from __future__ import annotations

import base64
import gc
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
httpx = pytest.importorskip("httpx")

import onepeace  # noqa: E402
from conftest import tiny_search_collection  # noqa: E402
from onepeace.serve.app import ServerThread, create_app  # noqa: E402

BURST = 300


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _png(seed: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    # noise: about 150 KB per PNG, so that a leak of request bodies would stand out of the noise
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow  # over 5 s on 2 cores: make test runs it, make test-fast does not
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_repeated_bursts_do_not_grow_memory(tmp_path):
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    model_dir, media = tiny_search_collection(tmp_path)
    model = onepeace.OnePeace.from_pretrained(model_dir)
    build(tmp_path / "index", model, [media], batch_size=4, workers=0, progress=False)
    images = [_png(i) for i in range(8)]
    app = create_app(model, Index.open(tmp_path / "index"), max_queue=16, max_in_flight=48, max_batch=8, max_wait_ms=2)
    moved = [0]

    def one(client: httpx.Client, i: int) -> int:
        kind = i % 3
        if kind == 0:
            body = {"input": [f"a caption number {i}"]}
            r = client.post("/v1/embeddings", json=body)
        elif kind == 1:
            body = {"input": [images[i % len(images)]], "modality": "image"}
            r = client.post("/v1/embeddings", json=body)
        else:
            body = {"text": f"query {i}", "k": 5}
            r = client.post("/search", json=body)
        moved[0] += len(r.content) + len(str(body))
        return r.status_code

    peak = [0]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.02):
            peak[0] = max(peak[0], rss_bytes())

    def burst(server) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=64)) as client, \
                ThreadPoolExecutor(48) as pool:
            codes = list(pool.map(lambda i: one(client, i), range(BURST)))
        gc.collect()
        time.sleep(0.5)
        return codes

    with ServerThread(app) as server:
        codes = burst(server)  # the first burst: the allocator's pools and the model's buffers grow once
        assert set(codes) <= {200, 503} and 200 in codes, sorted(set(codes))
        base = rss_bytes()
        moved[0] = 0
        peak[0] = base
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        after = []
        for _ in range(4):
            codes = burst(server)
            assert set(codes) <= {200, 503}, sorted(set(codes))
            after.append(rss_bytes())
        sampling.set()
        assert httpx.get(server.url + "/health", timeout=30).json()["batching"]["queued"] == 0
    per_burst_bytes = moved[0] / 4
    last_two = after[-1] - after[-3]
    # a leak of what a burst moves (request bodies, answers) would grow RSS by about one burst's
    # bytes per burst; caches and allocator arenas grow too, but less with every burst (they fill
    # up): the last two bursts together must grow less than one burst's bytes
    print(f"\nRSS after the first burst {base / 2**20:.1f} MiB, after 4 more "
          f"{[round(a / 2**20, 1) for a in after]} MiB, peak {peak[0] / 2**20:.1f} MiB, "
          f"one burst moves {per_burst_bytes / 2**20:.2f} MiB; the last two grew {last_two / 2**20:.2f} MiB")
    assert last_two < per_burst_bytes, (last_two, per_burst_bytes)
