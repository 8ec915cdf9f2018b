"""``onepeace index build --engine ray`` (issue 10, item 3): the embedding on Ray Data actors gives
the rows of the in-process engine (ids, hashes, metadata equal; vectors within a tolerance derived
from the float32 error against a float64 run), the same counts and report (a corrupt file skipped
and listed), incremental reruns, the CLI, and one-line errors. One local Ray cluster of 2 CPUs
serves the module."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lancedb")

import onepeace  # noqa: E402
from conftest import derived_tol, maxdiff, model_depth, tiny_search_collection  # noqa: E402
from onepeace.cli import main  # noqa: E402
from onepeace.errors import InputError  # noqa: E402
from onepeace.search import ray_engine  # noqa: E402
from onepeace.search.ingest import build  # noqa: E402
from onepeace.search.store import COLUMNS, Index, ModelMismatchError, SearchIndexError  # noqa: E402

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'onepeace[scale]')")
SAMPLES = resources.files("onepeace") / "assets" / "samples"
TEXTS = ["a red circle", "a blue square", "the sound of noise"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny model (and its float64 twin) and a folder of the bundled images and clips,
    one corrupt PNG, and a text file."""
    import torch

    root = tmp_path_factory.mktemp("ray")
    _, media = tiny_search_collection(root)
    (media / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    texts = root / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    model = onepeace.OnePeace.from_pretrained(root / "model")
    model64 = onepeace.OnePeace.from_pretrained(root / "model", dtype=torch.float64)
    return {"root": root, "media": media, "texts": texts, "model": model, "model64": model64}


@pytest.fixture(scope="module")
def cluster():
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def _build(world, db, engine, **kw):
    return build(db, world["model"], [world["media"], world["texts"]], batch_size=2, progress=False,
                 engine=engine, **kw)


@pytest.fixture(scope="module")
def local_db(world):
    db = world["root"] / "local"
    return db, _build(world, db, "local", workers=0)


@pytest.fixture(scope="module")
def ray_db(world, cluster):
    """Built on Ray with decoding in Ray tasks (a 2-CPU cluster would decode in the actors: the
    plan is forced here, so both routes are run by this module; the CLI test decodes in actors)."""
    db = world["root"] / "ray"
    plan = ray_engine.plan_resources

    def tasks(cluster_resources, **kw):
        return ray_engine.Resources(**{**plan(cluster_resources, **kw).__dict__, "actors": 1,
                                       "decode_in_actor": False})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_engine, "plan_resources", tasks)
        counts = _build(world, db, "ray")
    return db, counts


def _rows(db) -> dict[str, dict]:
    return {r["id"]: r for r in Index.open(db).rows([*COLUMNS, "vector"])}


def _exact(world, rows: list[dict]) -> np.ndarray:
    """The float64 model's embedding of each row's item."""
    out = []
    for r in rows:
        item = r["uri"] or r["text"]
        out.append(world["model64"].embed(**{r["modality"]: [item]})[r["modality"]][0].numpy())
    return np.stack(out)


# ---------------------------------------------------------------------------- same rows
@pytest.mark.slow
@needs_ray
def test_ray_rows_match_local(world, local_db, ray_db):
    local, on_ray = _rows(local_db[0]), _rows(ray_db[0])
    assert sorted(local) == sorted(on_ray)
    assert {r["modality"] for r in local.values()} == {"image", "audio", "text"}
    ids = sorted(local)
    for i in ids:
        for c in COLUMNS:  # id, modality, uri, text, metadata (file size, mtime, source...), content hash
            assert on_ray[i][c] == local[i][c], (c, on_ray[i][c], local[i][c])
    ours = np.stack([local[i]["vector"] for i in ids]).astype(np.float32)
    got = np.stack([on_ray[i]["vector"] for i in ids]).astype(np.float32)
    exact = _exact(world, [local[i] for i in ids])
    tol = derived_tol(ours, exact, got, depth=model_depth(world["model"]))
    assert maxdiff(got, ours) <= tol, (maxdiff(got, ours), tol)
    meta = Index.open(ray_db[0])
    assert (meta.fingerprint, meta.model_name, meta.dim) == (Index.open(local_db[0]).fingerprint,
                                                             str(world["root"] / "model"), world["model"].config.dim)


@pytest.mark.slow
@needs_ray
def test_ray_counts_and_report_match_local(local_db, ray_db):
    (_, a), (_, b) = local_db, ray_db
    keys = ("added", "changed", "unchanged", "skipped", "duplicates", "left_out", "rows")
    assert {k: b[k] for k in keys} == {k: a[k] for k in keys}
    assert b["skipped"] == 1 and b["added"] == b["rows"] > 0
    ra, rb = (json.loads(Path(x["report"]).read_text()) for x in (a, b))
    assert rb["engine"] == "ray" and rb["counts"]["finished"] is True
    assert rb["skipped"] == ra["skipped"]
    assert rb["skipped"][0]["uri"].endswith("broken.png") and "cannot decode" in rb["skipped"][0]["reason"]


@pytest.mark.slow
@needs_ray
def test_ray_rerun_adds_only_new_and_changed(world, cluster, tmp_path):
    """An index built in-process goes on on Ray: one file changed and one new are embedded, the
    rest is left alone; the changed row's hash is the new bytes'. The model was never saved, so it
    travels to the actors through the object store."""
    import copy
    import hashlib

    import torch

    torch.manual_seed(1)
    m = onepeace.create_model("tiny", layers=1, modalities={"text": {}, "image": {"image_size": 64}})
    media = tmp_path / "media"
    media.mkdir()
    for f in world["media"].glob("*.png"):
        shutil.copy(f, media / f.name)
    db = tmp_path / "db"
    first = build(db, m, [media], batch_size=2, progress=False, workers=0)
    shutil.copy(media / "red_circle.png", media / "blue_square.png")
    shutil.copy(media / "green_triangle.png", media / "new.png")
    again = build(db, m, [media], batch_size=2, progress=False, engine="ray")
    assert (again["added"], again["changed"], again["unchanged"], again["skipped"]) == (1, 1, first["added"] - 1, 1)
    assert again["rows"] == first["rows"] + 1
    rows = {r["uri"]: r for r in Index.open(db).rows(["uri", "content_hash", "vector"])}
    assert rows[str(media / "blue_square.png")]["content_hash"] == hashlib.sha256(
        (media / "red_circle.png").read_bytes()).hexdigest()
    new = [str(media / "blue_square.png"), str(media / "new.png")]
    got = np.stack([rows[u]["vector"] for u in new]).astype(np.float32)
    ours = m.embed(image=new)["image"].numpy()
    exact = copy.deepcopy(m).to(torch.float64).embed(image=new)["image"].numpy()
    assert maxdiff(got, ours) <= derived_tol(ours, exact, got, depth=model_depth(m))
    nothing = build(db, m, [media], batch_size=2, progress=False, engine="ray")
    assert (nothing["added"], nothing["changed"], nothing["unchanged"]) == (0, 0, again["rows"])


# ---------------------------------------------------------------------------- CLI and errors
@pytest.mark.slow
@needs_ray
def test_cli_engine_ray(world, cluster, tmp_path, capsys):
    db = tmp_path / "db"
    code = main(["index", "build", str(db), str(world["texts"]), "--model", str(world["root"] / "model"),
                 "--engine", "ray", "--actors", "2", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"indexed {len(TEXTS)} new" in out and "Traceback" not in err
    assert json.loads(Path(out.split("report: ")[1].strip()).read_text())["engine"] == "ray"
    # too many actors for the cluster: one line, before any work
    code = main(["index", "build", str(tmp_path / "db2"), str(world["texts"]), "--model", str(world["root"] / "model"),
                 "--engine", "ray", "--actors", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "3 Ray actor(s)" in err and "has 2 CPUs" in err


@pytest.mark.slow
@needs_ray
def test_a_worker_that_sees_another_model_fails_in_one_line(world, cluster, tmp_path, monkeypatch):
    """The actors check the model they load against the driver's (a node with other files under
    the same path); simulated by giving the driver another fingerprint."""
    spec_of = ray_engine.model_spec

    def other(model):
        spec, shipped = spec_of(model)
        return dataclasses.replace(spec, fingerprint="0" * 64), shipped

    monkeypatch.setattr(ray_engine, "model_spec", other)
    with pytest.raises(ModelMismatchError, match="every node must see the same model files") as e:
        build(tmp_path / "db", world["root"] / "model", [world["texts"]], progress=False, engine="ray")
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_without_ray_the_engine_is_one_line(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(SearchIndexError, match=r"pip install 'onepeace\[scale\]'"):
        build(tmp_path / "db", world["model"], [world["texts"]], progress=False, engine="ray")
    code = main(["index", "build", str(tmp_path / "db"), str(world["texts"]), "--model", str(world["root"] / "model"),
                 "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "onepeace[scale]" in err


def test_ray_options_need_the_ray_engine(world, tmp_path, capsys):
    base = ["index", "build", str(tmp_path / "db"), str(world["texts"]), "--model", str(world["root"] / "model")]
    assert main([*base, "--actors", "2", "--address", "auto"]) == 2
    assert "--address, --actors apply to --engine ray only" in capsys.readouterr().err
    assert main([*base, "--engine", "ray", "--device", "cuda"]) == 2
    assert "--device applies to --engine local" in capsys.readouterr().err
    assert main([*base, "--engine", "ray", "--threads", "4"]) == 2
    assert "give --cpus-per-actor" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


# ---------------------------------------------------------------------------- resource plan
def test_plan_resources():
    plan = ray_engine.plan_resources
    gpu = plan({"CPU": 32, "GPU": 4})  # one model per GPU, decoding in CPU tasks meanwhile
    assert (gpu.actors, gpu.gpus_per_actor, gpu.cpus_per_actor, gpu.decode_in_actor) == (4, 1.0, 1.0, False)
    assert plan({"CPU": 32, "GPU": 4}, gpus_per_actor=0.5).actors == 8
    cpu = plan({"CPU": 8})  # one single-threaded model per CPU, each decoding its own batches
    assert (cpu.actors, cpu.gpus_per_actor, cpu.decode_in_actor) == (8, 0.0, True)
    wide = plan({"CPU": 16}, cpus_per_actor=4)  # threaded models: one CPU left to the decode tasks
    assert (wide.actors, wide.decode_in_actor) == (3, False)
    assert plan({"CPU": 16}, cpus_per_actor=4, workers=0).decode_in_actor is True
    assert plan({"CPU": 8}, actors=2, cpus_per_actor=4).decode_in_actor is True  # no CPU left for tasks
    with pytest.raises(InputError, match="need 12 CPUs"):
        plan({"CPU": 8}, actors=3, cpus_per_actor=4)
    with pytest.raises(InputError, match="GPUs"):
        plan({"CPU": 8}, actors=1, gpus_per_actor=1)
    for bad in ({"actors": 0}, {"actors": True}, {"cpus_per_actor": 0.5}, {"gpus_per_actor": -1}):
        with pytest.raises(InputError):
            plan({"CPU": 8}, **bad)


def test_an_address_nothing_answers_at_fails_fast():
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SearchIndexError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        ray_engine.check_address(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(InputError, match="give host:port"):
        ray_engine.check_address("head-node")
    ray_engine.check_address("auto")  # left to Ray, which answers at once
