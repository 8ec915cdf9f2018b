"""Distributed equivalence, exact resume after SIGKILL, and a short real training run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from dist_worker import align_only, batch, build, grads, worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_process_gradients_equal_single_process(tmp_path, kind):
    pm = build()
    out = pm("loss", batch(), align_only(), torch.Generator().manual_seed(0))
    out["loss"].backward()
    ref = grads(pm)
    path = str(tmp_path / "g.pt")
    torch.multiprocessing.spawn(worker, args=(2, _free_port(), kind, path), nprocs=2, join=True)
    got = torch.load(path)
    assert set(got) == set(ref)
    for k in ref:
        scale = ref[k].abs().max().clamp(min=1e-3)
        assert (got[k] - ref[k]).abs().max() / scale < 1e-4, (k, float((got[k] - ref[k]).abs().max()), float(scale))


def _write_data(root) -> str:
    from onepeace.data.shards import write_shards_from_samples
    from onepeace_train.demo.data import image_captions, load_digits

    imgs, labels = load_digits("train")
    import random

    rng = random.Random(0)
    samples = ({"image": imgs[i], "text": image_captions(labels[i], rng), "label": int(labels[i])} for i in range(256))
    path = os.path.join(root, "shards")
    write_shards_from_samples(samples, path, samples_per_shard=128)
    return path


def _config(tmp_path, data, out, steps=6, **extra) -> str:
    cfg = textwrap.dedent(f"""
        [model]
        preset = "tiny"
        overrides = {{ layers = 2, layer_scale_init = 0.1, modalities = {{ text = {{}}, image = {{ image_size = 32 }} }} }}
        [data]
        train = "{data}"
        batch_size = 16
        [optim]
        lr = 2e-3
        warmup_steps = 2
        max_steps = {steps}
        [train]
        output = "{out}"
        log_every = 1
        save_every = {extra.get('save_every', 3)}
        progress = false
        """)
    path = tmp_path / f"{os.path.basename(out)}.toml"
    path.write_text(cfg)
    return str(path)


def _losses(run_dir) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


KILLABLE = textwrap.dedent("""
    import sys, time
    import onepeace_train.trainer as T
    save = T.ckpt.save
    def slow(*a, **k):
        r = save(*a, **k)
        print("SAVED", r, flush=True)
        time.sleep(120)
        return r
    T.ckpt.save = slow
    from onepeace_train.recipe import load_config
    T.run(load_config(sys.argv[1]))
""")


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_uninterrupted_losses(tmp_path):
    data = _write_data(tmp_path)
    from onepeace_train.recipe import load_config
    from onepeace_train.trainer import run

    run(load_config(_config(tmp_path, data, str(tmp_path / "full"))))
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    cfg = _config(tmp_path, data, str(tmp_path / "killed"))
    proc = subprocess.Popen([sys.executable, str(script), cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("SAVED"):
                break
        else:
            pytest.fail("the run never saved a checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert os.path.isdir(tmp_path / "killed" / "checkpoints" / "step-00000003")
    run(load_config(cfg))  # resumes from step 3
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "killed")
    assert len(a) == len(b) == 6
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    from onepeace import OnePeace

    m = OnePeace.from_pretrained(tmp_path / "killed" / "model")
    assert m.embed(text=["a handwritten digit seven"])["text"].shape == (1, 128)


@pytest.mark.slow
def test_short_training_on_demo_digits_lowers_the_loss(tmp_path):
    data = _write_data(tmp_path)
    from onepeace_train.recipe import load_config
    from onepeace_train.trainer import run

    run(load_config(_config(tmp_path, data, str(tmp_path / "short"), steps=24, save_every=0)))
    losses = _losses(tmp_path / "short")
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3


@pytest.mark.slow
def test_align_a_new_modality_trains_only_its_branch(tmp_path):
    """The "align a new modality" recipe: extend a text+image model with an audio branch and train
    only that branch (audio stands in for any registered plug-in)."""
    import numpy as np

    import onepeace
    from onepeace.data.shards import write_shards_from_samples
    from onepeace_train.recipe import load_config
    from onepeace_train.trainer import Trainer

    base = onepeace.create_model("tiny", layers=2, modalities={"text": {}, "image": {"image_size": 32}})
    base.save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(0)
    write_shards_from_samples(({"audio": rng.standard_normal(8000).astype(np.float32), "text": f"sound {i % 3}"}
                               for i in range(16)), tmp_path / "pairs")
    recipe = os.path.join(os.path.dirname(__file__), "..", "configs", "align_new_modality.toml")
    cfg = load_config(recipe, [
        "objective.other=audio", f'model.init="{tmp_path / "base"}"',
        'model.add_modalities={audio={stem=[[32,10,5],[32,3,2],[32,3,2],[32,3,2],[32,3,2],[32,2,2],[32,2,2]]}}',
        f'data.train="{tmp_path / "pairs"}"', "data.batch_size=8", "optim.max_steps=2", "train.save_every=0",
        f'train.output="{tmp_path / "run"}"', "train.progress=false"])
    tr = Trainer(cfg)
    assert tr.trainable and all(
        n.startswith(("model.adapters.audio.", "model.proj.audio.", "model.encoder.norms.audio.", "decoder",
                      "mask_", "model.logit_scale")) or ".ffns.audio." in n for n in tr.trainable)
    before = {k: v.clone() for k, v in tr.pm.model.state_dict().items()}
    tr.fit()
    after = onepeace.OnePeace.from_pretrained(tmp_path / "run" / "model").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".audio." in f".{k}." or k == "logit_scale" for k in changed)
    assert "adapters.image.stem.conv1.weight" not in changed and "encoder.layers.0.attn.q_proj.weight" not in changed
