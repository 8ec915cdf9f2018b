"""Issue 22 item 6 and the build lock: an index on object storage (``s3://bucket/path``) built,
searched and served against a real S3-compatible server (moto's server mode, started by the test
on 127.0.0.1), rebuilt while two servers read it (each answer is the old or the new version,
never a partial one), the storage stopped mid-query (503 naming it, and serving resumes when it is
back); and a killed build's orphaned DataLoader workers no longer hold the build lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import onepeace
from conftest import tiny_search_collection

BUCKET = "onepeace-test"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a remote index's build reports are written under ./index-reports/


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the build's workers")
def test_a_killed_build_with_dataloader_workers_does_not_refuse_the_rerun(tmp_path):
    """SIGKILL a build while its DataLoader workers run; the orphaned workers (alive at the rerun)
    must not hold the lock: ``flock`` locks were inherited by them, ``lockf`` locks are not."""
    from onepeace.search.ingest import build_lock

    model_dir, media = tiny_search_collection(tmp_path)
    many = tmp_path / "many"
    many.mkdir()
    pngs = sorted(media.glob("*.png"))
    for i in range(600):  # enough work that the build is still running when it is killed
        (many / f"{i:04d}.png").write_bytes(pngs[i % len(pngs)].read_bytes() + i.to_bytes(4, "little"))
    script = textwrap.dedent(f"""
        import onepeace
        from onepeace.search.ingest import build
        build({str(tmp_path / 'db')!r}, {str(model_dir)!r}, [{str(many)!r}], batch_size=2, workers=2,
              progress=False, commit_rows=10_000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    lock = tmp_path / "db" / ".build.lock"
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid) if _alive(c)]
        if len(workers) >= 2 and lock.exists() and lock.read_text().strip() == str(proc.pid):
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) >= 2, "the build did not start its DataLoader workers"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    try:
        assert any(_alive(w) for w in workers), "the workers exited before the rerun: this test checks nothing"
        with build_lock(str(tmp_path / "db")):  # what the rerun takes first: not refused
            pass
    finally:
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------------------ object storage
class S3:
    """moto's S3-compatible server on 127.0.0.1 (its data lives in this process, so it survives a
    stop and a start on the same port: the storage going down and coming back)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.stop()

    def start(self):
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto.server")
    pytest.importorskip("lancedb")
    import boto3

    server = S3()
    env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "ONEPEACE_STORAGE_TIMEOUT": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    root = tmp_path_factory.mktemp("s3").resolve()
    model_dir, media = tiny_search_collection(root)
    (root / "captions.txt").write_text("a red circle\nseven dogs\nit's a square\n")
    try:
        yield {"server": server, "root": root, "model_dir": model_dir, "media": media,
               "model": onepeace.OnePeace.from_pretrained(model_dir)}
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _objects(prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def test_a_build_writes_to_the_bucket_and_search_reads_it_as_a_local_index_does(s3, capsys, tmp_path):
    from onepeace.cli import main
    from onepeace.search import search
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    uri = f"s3://{BUCKET}/in-process"
    result = build(uri, s3["model"], [s3["media"]], batch_size=4, workers=0, progress=False)
    assert result["rows"] > 0 and any(k.endswith(".manifest") for k in _objects("in-process/"))
    assert not os.path.exists(uri) and not Path("s3:").exists()  # nothing written locally under that name
    build(s3["root"] / "local", s3["model"], [s3["media"]], batch_size=4, workers=0, progress=False)
    remote, local = Index.open(uri), Index.open(s3["root"] / "local")
    assert remote.count() == local.count() and remote.fingerprint == local.fingerprint
    got = search(remote, s3["model"], text="a red circle", k=5)
    want = search(local, s3["model"], text="a red circle", k=5)
    assert [(h["id"], h["score"]) for h in got] == [(h["id"], h["score"]) for h in want]
    # the command lines: index build, search, index info
    assert main(["index", "build", f"s3://{BUCKET}/cli", "--model", str(s3["model_dir"]), str(s3["media"]),
                 "--workers", "0"]) == 0
    assert f"s3://{BUCKET}/cli holds" in capsys.readouterr().out
    assert main(["search", f"s3://{BUCKET}/cli", "--text", "a red circle", "--json", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert f'"index": "s3://{BUCKET}/cli"' in out and '"hits"' in out
    assert list((tmp_path / "index-reports" / f"{BUCKET}-cli").glob("build-*.json"))
    assert main(["index", "info", f"s3://{BUCKET}/cli"]) == 0
    out = capsys.readouterr().out
    assert "object storage" in out and "last build" in out
    # a bucket path that holds no index: one line, exit 2
    assert main(["search", f"s3://{BUCKET}/nothing", "--text", "x"]) == 2
    assert "holds no onepeace index" in capsys.readouterr().err


def test_two_servers_read_the_bucket_while_a_rebuild_is_seen_old_or_new_never_partial(s3):
    from fastapi.testclient import TestClient

    from onepeace.search.ingest import build
    from onepeace.search.store import Index
    from onepeace.serve.app import create_app

    uri = f"s3://{BUCKET}/served"
    build(uri, s3["model"], [s3["media"]], batch_size=4, workers=0, progress=False)
    old = Index.open(uri).modality_counts()
    seen: list[tuple[dict, int]] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader(client: TestClient):
        while not stop.is_set():
            h = client.get("/health")
            r = client.post("/search", json={"text": "a red circle", "k": 50})
            if h.status_code != 200 or r.status_code != 200:
                errors.append(f"{h.status_code} {r.status_code} {r.text[:200]}")
                continue
            seen.append((h.json()["index"]["modalities"], len(r.json()["hits"])))

    with TestClient(create_app(s3["model"], Index.open(uri))) as a, \
            TestClient(create_app(s3["model"], Index.open(uri))) as b:
        threads = [threading.Thread(target=reader, args=(c,)) for c in (a, b)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            build(uri, s3["model"], [s3["media"], s3["root"] / "captions.txt"], batch_size=4, workers=0,
                  progress=False)  # the rebuild adds the captions
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        new = Index.open(uri).modality_counts()
        assert new != old and not errors, errors
        totals = {sum(old.values()), sum(new.values())}
        assert seen and all(counts in (old, new) for counts, _ in seen), seen
        assert all(n in totals for _, n in seen), seen  # k=50 covers every row: the hits are one version's
        assert {tuple(sorted(c.items())) for c, _ in seen} == {tuple(sorted(old.items())), tuple(sorted(new.items()))}
        assert a.get("/health").json()["index"]["name"] == "served"


@pytest.mark.slow  # over 5 s on 2 cores: make test runs it, make test-fast does not
def test_the_storage_stopped_mid_query_is_a_503_naming_it_and_serving_resumes(s3):
    from fastapi.testclient import TestClient

    from onepeace.search.ingest import build
    from onepeace.search.store import Index
    from onepeace.serve.app import create_app

    uri = f"s3://{BUCKET}/outage"
    build(uri, s3["model"], [s3["media"]], batch_size=4, workers=0, progress=False)
    with TestClient(create_app(s3["model"], Index.open(uri))) as client:
        assert client.post("/search", json={"text": "a red circle"}).status_code == 200
        s3["server"].stop()
        try:
            t0 = time.monotonic()
            r = client.post("/search", json={"text": "a red circle"})
            took = time.monotonic() - t0
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "storage_unavailable" and uri in err["message"] and "Traceback" not in err["message"]
            assert r.headers["Retry-After"]
            assert took < 60  # bounded by ONEPEACE_STORAGE_TIMEOUT's retries, not minutes
            h = client.get("/health")  # the server itself still answers
            assert h.status_code == 200 and h.json()["status"] == "degraded" and uri in h.json()["index"]["error"]
            r = client.post("/v1/embeddings", json={"input": "a dog"})  # embeddings need no storage
            assert r.status_code == 200
        finally:
            s3["server"].start()
        r = client.post("/search", json={"text": "a red circle"})
        assert r.status_code == 200 and r.json()["hits"]
        assert client.get("/health").json()["status"] == "ok"


@pytest.mark.slow
def test_a_ray_data_build_writes_to_the_bucket(s3):
    """``--engine ray`` on a local Ray cluster: the driver's writer commits into the bucket (about
    30 s on 2 cores, most of it Ray's start)."""
    pytest.importorskip("ray")
    from onepeace.search import search
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    uri = f"s3://{BUCKET}/ray"
    result = build(uri, str(s3["model_dir"]), [s3["media"]], engine="ray", workers=0, batch_size=4, progress=False,
                   ray_options={"actors": 1})
    idx = Index.open(uri)
    assert result["rows"] == idx.count() > 0 and any(k.endswith(".manifest") for k in _objects("ray/"))
    assert search(idx, s3["model"], text="a red circle", k=2)


@pytest.mark.slow
def test_two_onepeace_serve_processes_answer_from_one_bucket(s3):
    """Two real ``onepeace serve s3://...`` processes on free ports of 127.0.0.1, reading one
    bucket at once: both start, report the index healthy and answer the same search the same way
    as the index read in-process; then both stop on SIGINT."""
    import httpx

    from onepeace.search import search
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    uri = f"s3://{BUCKET}/two-servers"
    build(uri, s3["model"], [s3["media"], s3["root"] / "captions.txt"], batch_size=4, workers=0, progress=False)
    want = [h["id"] for h in search(Index.open(uri), s3["model"], text="a red circle", k=5)]
    exe = Path(sys.executable).with_name("onepeace")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(2):  # started together: their model loads and index opens overlap
            procs.append(subprocess.Popen([str(exe), "serve", uri, "--model", str(s3["model_dir"]), "--port", "0"],
                                          stderr=subprocess.PIPE, text=True, env=dict(os.environ)))
        urls = []
        for p in procs:
            line = p.stderr.readline()  # the banner: "onepeace serve: http://127.0.0.1:PORT/ — index ..."
            assert "http://127.0.0.1:" in line and uri in line, line + p.stderr.read() if p.poll() is not None else line
            urls.append(line.split()[2].rstrip("/"))
            threading.Thread(target=p.stderr.read, daemon=True).start()  # drain the log
        assert len(set(urls)) == 2
        for url in urls:
            deadline = time.monotonic() + 60
            while True:
                try:
                    health = httpx.get(url + "/health", timeout=30)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"{url} never answered"
                    time.sleep(0.1)
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
            assert health.json()["index"]["name"] == "two-servers"
        with ThreadPoolExecutor(2) as pool:  # both at once
            answers = list(pool.map(lambda u: httpx.post(u + "/search", json={"text": "a red circle", "k": 5},
                                                         timeout=60), urls))
        for r in answers:
            assert r.status_code == 200, r.text
            assert [h["id"] for h in r.json()["hits"]] == want
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    assert [p.returncode for p in procs] == [0, 0]
