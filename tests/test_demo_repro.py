"""`onepeace demo` is reproducible (same seed, same machine -> the same numbers, bit for bit),
resumable, refuses to overwrite a finished demo without --force, and rejects options of the
other mode. Training runs use the demo's own recipes on a few samples of the bundled set."""

from __future__ import annotations

import json
import os

import pytest
import torch

from onepeace.cli import main
from onepeace.errors import OutputError
from onepeace.factory import create_model
from onepeace_train.demo.run import STATE, run_demo, stage_config
from onepeace_train.trainer import Trainer


@pytest.fixture
def two_threads():
    """The nondeterminism fixed here needs >1 thread to show; on a 1-core machine the tests still
    run, with 2 threads time-sliced."""
    n = torch.get_num_threads()
    torch.set_num_threads(max(2, n))
    yield
    torch.set_num_threads(n)


def _small_data(root, n_train_image=64, n_train_audio=32, n_test=20):
    """The demo's six shard sets, cut to a few samples (captions as ``build_data`` makes them)."""
    import random

    from onepeace.data.shards import write_shards_from_samples
    from onepeace_train.demo.data import (
        audio_captions,
        eval_caption,
        image_captions,
        load_digits,
        load_font_digits,
        load_speech,
    )

    def digits(split):
        return load_font_digits()[:2] if split == "heldout" else load_digits(split)

    out = {}
    for m, load, cap in (("image", digits, image_captions), ("audio", lambda s: load_speech(s)[:2], audio_captions)):
        for split, n in (("train", n_train_image if m == "image" else n_train_audio), ("test", n_test),
                         ("heldout", n_test)):
            items, labels = load(split)
            rng = random.Random(f"{m}-{split}")
            path = os.path.join(root, f"{m}-{split}")
            if not os.path.isdir(path):
                write_shards_from_samples(
                    ({m: items[i], "label": int(labels[i]), "id": f"{m}-{split}-{i}",
                      "text": cap(labels[i], rng) if split == "train" else eval_caption(labels[i], m)}
                     for i in range(n)), path)
            out[f"{m}-{split}"] = path
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-data")
    data = _small_data(str(root))
    # a stage-1-shaped model (the recipe's overrides) as stage 2's init; its values do not matter
    cfg = stage_config(1, str(root), data)
    torch.manual_seed(0)
    create_model(cfg.model.preset, **cfg.model.overrides).save_pretrained(str(root / "init"))
    return data, str(root / "init")


def test_relative_bias_gradient_is_the_same_every_time(two_threads):
    """The cause of the stage-2 drift: the audio relative-position table's gradient summed with
    atomic adds across threads. Masked audio (kept frames gathered at their true positions) is the
    large case; its gradient must be identical on every backward."""
    torch.manual_seed(0)
    a = create_model("tiny").adapters["audio"]
    g = torch.Generator().manual_seed(0)
    b, n, k = 32, 100, 50  # demo-sized: 32 clips, ~50 kept frames
    pos = torch.sort(torch.rand(b, n, generator=g).argsort(1)[:, :k], 1).values
    upstream = torch.randn(b, a.config.heads, k, k, generator=g)
    w = a.rel_tables[0].weight
    grads = []
    for _ in range(12):
        w.grad = None
        (a.relative_bias(k, 0, pos) * upstream).sum().backward()
        grads.append(w.grad.clone())
    assert all(torch.equal(grads[0], x) for x in grads[1:])
    # and it is the right gradient: the sum of the upstream values per bucket, in float64
    idx = a.buckets(n, w.device)[pos[:, :, None], pos[:, None, :]].reshape(-1)
    vals = upstream.permute(0, 2, 3, 1).reshape(-1, w.shape[1]).double()
    ref = torch.zeros(w.shape, dtype=torch.float64).index_add_(0, idx, vals)
    # a float32 sum of m terms is off by at most (m - 1) * eps * (sum of their magnitudes)
    terms = torch.bincount(idx, minlength=w.shape[0]).double()[:, None]
    mags = torch.zeros(w.shape, dtype=torch.float64).index_add_(0, idx, vals.abs())
    bound = (terms.clamp(min=1) * torch.finfo(torch.float32).eps * mags).clamp(min=1e-30)
    assert bool(((grads[0].double() - ref).abs() <= bound).all())


def _stage2(out, data, init, seed=0, steps=3):
    cfg = stage_config(2, out, data, seed=seed, steps=steps, progress=False, init=init)
    cfg.train.log_every = 1
    result = Trainer(cfg).fit()
    rows = [json.loads(line) for line in open(os.path.join(out, "stage2", "metrics.jsonl"))]
    for r in rows:
        r.pop("samples_per_s", None)  # wall-clock speed, the only thing allowed to differ
    with open(os.path.join(out, "stage2", "model", "model.safetensors"), "rb") as f:
        weights = f.read()
    return rows, result, weights


@pytest.mark.slow
def test_stage2_training_is_identical_bit_for_bit_with_the_same_seed(tmp_path, small, two_threads):
    data, init = small
    rows_a, res_a, w_a = _stage2(str(tmp_path / "a"), data, init)
    rows_b, res_b, w_b = _stage2(str(tmp_path / "b"), data, init)
    assert [r["step"] for r in rows_a if "loss" in r] == [1, 2, 3]
    assert rows_a == rows_b  # every loss term, lr, grad norm and the retrieval metrics
    assert res_a["retrieval"] == res_b["retrieval"] and res_a["final"] == res_b["final"]
    assert w_a == w_b  # the trained weights, every bit
    # the seed is what decides: another one gives another first step (data order, masks)
    rows_c, _, w_c = _stage2(str(tmp_path / "c"), data, init, seed=1, steps=1)
    assert rows_c[0]["loss"] != rows_a[0]["loss"] and w_c != w_a


@pytest.mark.slow
def test_demo_resumes_refuses_a_finished_run_and_reruns_identically_with_force(tmp_path, small, monkeypatch,
                                                                              two_threads):
    import onepeace_train.demo.run as demo

    monkeypatch.setattr(demo, "build_data", lambda root, seed=0, **kw: _small_data(root))
    out = str(tmp_path / "demo")
    real_plot = demo._plot

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_plot", interrupted)  # killed after both stages, before the plot
    with pytest.raises(KeyboardInterrupt):
        run_demo(out, stage1_steps=1, stage2_steps=2, progress=False)
    state = json.load(open(os.path.join(out, STATE)))
    assert state["stage1"] and "retrieval" in state and not state.get("finished")
    assert os.path.isdir(os.path.join(out, "stage2", "checkpoints"))  # nothing removed yet

    # another seed does not silently continue this run
    with pytest.raises(OutputError, match="unfinished demo with seed 0, 1 \\+ 2 steps"):
        run_demo(out, stage1_steps=1, stage2_steps=2, seed=1, progress=False)

    monkeypatch.setattr(demo, "_plot", real_plot)
    trained = []
    monkeypatch.setattr(Trainer, "fit", lambda self, _f=Trainer.fit: trained.append(1) or _f(self))
    first = run_demo(out, stage1_steps=1, stage2_steps=2, progress=False)
    assert not trained  # resumed: both stages were done, only the plot and the clean-up remained
    assert sorted(os.listdir(out)) == ["demo.json", "demo.png", "metrics.json", "model", "stage1", "stage2"]
    for st in ("stage1", "stage2"):  # the logs stay, the checkpoints and stage models go
        assert sorted(os.listdir(os.path.join(out, st))) == ["metrics.jsonl", "train_config.json"]
    assert first["kept"] == {}
    # the held-out engine and image source are scored next to the in-distribution figures
    for key, pairs in (("heldout_engine", ["audio->text", "text->audio", "audio->image", "image->audio"]),
                       ("heldout_source", ["image->text", "text->image", "image->audio", "audio->image"])):
        assert [p for p in first[key] if p != "data"] == pairs
        assert all(0 <= first[key][p]["R@1"] <= 100 and first[key][p]["protocol"] == "class" for p in pairs)
    assert json.load(open(os.path.join(out, "metrics.json")))["heldout_engine"] == first["heldout_engine"]
    with open(os.path.join(out, "model", "model.safetensors"), "rb") as f:
        weights = f.read()

    with pytest.raises(OutputError, match="holds a finished demo.*--force"):
        run_demo(out, stage1_steps=1, stage2_steps=2, progress=False)
    again = run_demo(out, stage1_steps=1, stage2_steps=2, progress=False, force=True, keep_checkpoints=True)
    assert len(trained) == 2  # both stages trained again, from scratch
    assert again["retrieval"] == first["retrieval"]
    with open(os.path.join(out, "model", "model.safetensors"), "rb") as f:
        assert f.read() == weights
    assert set(again["kept"]) >= {os.path.join(out, "stage1", "checkpoints"), os.path.join(out, "stage2", "model")}
    assert all(size > 0 for size in again["kept"].values())


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("onepeace demo: error: "), err
    for p in parts:
        assert p in err, err


@pytest.mark.parametrize("argv, parts", [
    (["--preset", "base"], ["--preset only applies with --samples", "add --samples"]),
    (["--save", "m"], ["--save only applies with --samples"]),
    (["--samples", "--out", "x"], ["--out is an option of the training demo"]),
    (["--samples", "--stage2-steps", "3"], ["--stage2-steps is an option of the training demo"]),
    (["--stage1-steps", "0"], ["--stage1-steps must be a positive number of steps, got 0"]),
    (["--samples", "--plain"], ["--plain is an option of the training demo"]),
    (["--plain", "--robust"], ["--robust is the default recipe and --plain the earlier one; choose one"]),
    (["--no-context", "--robust"], ["--no-context the one before the word in context; choose one"]),
    (["--no-context", "--plain"], ["--plain already trains without the word in context", "drop --no-context"]),
    (["--samples", "--no-context"], ["--no-context is an option of the training demo"]),
])
def test_demo_options_of_the_other_mode_are_refused(tmp_path, capsys, monkeypatch, argv, parts):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", *argv]) == 2
    _one_line_error(capsys, *parts)
    assert os.listdir(tmp_path) == []  # refused before any work


def test_demo_refuses_finished_and_mismatched_runs_before_any_work(tmp_path, capsys):
    old = tmp_path / "old"  # a finished demo of an older onepeace: metrics.json, no demo.json
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    assert main(["demo", "--out", str(old)]) == 2
    _one_line_error(capsys, "holds a finished demo", "--force")
    assert os.listdir(old) == ["metrics.json"]

    other = tmp_path / "other"
    other.mkdir()
    (other / STATE).write_text(json.dumps({"settings": {"seed": 0, "stage1_steps": 300, "stage2_steps": 150,
                                                        "extra_voices": False, "augment": False, "plain": True},
                                           "stage1": True}))
    assert main(["demo", "--out", str(other), "--stage2-steps", "5"]) == 2
    _one_line_error(capsys, "unfinished demo with seed 0, 300 + 150 steps, --plain", "rerun with those settings")
    assert os.listdir(other) == [STATE]
    # one an earlier onepeace wrote (other settings keys) cannot be resumed by any flags: --force is the way
    (other / STATE).write_text(json.dumps({"settings": {"seed": 0, "stage1_steps": 300, "stage2_steps": 250,
                                                        "extra_voices": False, "augment": False, "robust": True},
                                           "stage1": True}))
    assert main(["demo", "--out", str(other)]) == 2
    _one_line_error(capsys, "unfinished demo from an earlier onepeace (seed 0, 300 + 250 steps, --robust)", "--force")
    assert os.listdir(other) == [STATE]
