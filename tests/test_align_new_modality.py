"""The "align a new modality" recipe (configs/align_new_modality.toml) with the video plug-in: a
trained text+image+audio model grows a video branch, only that branch trains, against text and the
clips' soundtracks, with both ONE-PEACE objectives; one CLI command, also under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import onepeace
from onepeace.cli import main
from onepeace.data import write_manifest

pytest.importorskip("av", reason="the video plug-in decodes with PyAV (pip install 'onepeace[video]')")

RECIPE = os.path.join(os.path.dirname(__file__), "..", "configs", "align_new_modality.toml")
STEM = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]
VIDEO = "{frames=2, image_size=32, pool=1}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from onepeace.processing.video import write_video

    root = tmp_path_factory.mktemp("align")
    torch.manual_seed(0)
    base = onepeace.create_model("tiny", layers=2, modalities={"text": {}, "image": {"image_size": 32},
                                                               "audio": {"stem": STEM}})
    base.save_pretrained(root / "base")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        frames = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        sound = (rng.standard_normal(8000) * 0.1).astype(np.float32)
        write_video(root / f"c{i}.mp4", frames, fps=4, audio=sound)  # the sound also on the soundtrack
        sf.write(root / f"c{i}.wav", sound, 16000)
        rows.append({"video": f"c{i}.mp4", "audio": f"c{i}.wav", "text": f"a clip of the number {i % 4}"})
    write_video(root / "silent.mp4", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), fps=4)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # not decodable
    rows.append({"video": "broken.mp4", "audio": "c0.wav", "text": "broken", "id": "the-broken-clip"})
    write_manifest(root / "clips.jsonl", rows)
    return root


def _overrides(root, out, *extra):
    return [f"data.train={json.dumps(str(root / 'clips.jsonl'))}", f"model.add_modalities={{video={VIDEO}}}",
            "objective.align_with={audio=1.0}", "data.batch_size=4", "optim.max_steps=2", "train.save_every=0",
            "train.log_every=1", "train.progress=false", *extra, "--from", str(root / "base"), "--output", str(out)]


def _records(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_recipe_trains_only_the_new_branch_with_both_objectives(setup, capsys):
    out = setup / "run"
    assert main(["pretrain", RECIPE, *_overrides(setup, out)]) == 0
    losses = [r for r in _records(out) if "loss" in r]
    assert len(losses) == 2
    for term in ("align", "align_audio", "dcl_other", "dcl_joint_text", "dcl_joint_other"):
        assert all(np.isfinite(r[term]) and r[term] > 0 for r in losses), term
    assert losses[-1]["skipped"] >= 1  # the undecodable clip: skipped and counted, not fatal
    assert "skipped" in capsys.readouterr().err

    base = onepeace.OnePeace.from_pretrained(setup / "base").state_dict()
    grown = onepeace.OnePeace.from_pretrained(out / "model")
    assert grown.modality_names == ["text", "image", "audio", "video"]
    after = grown.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base if k != "logit_scale")  # everything old frozen
    new = [k for k in after if k not in base]
    assert new and all(".video." in f".{k}." for k in new)
    # inflation started the branch as a copy of the image branch; training moved it
    moved = [k for k in new if k.startswith("adapters.video.")
             and k.replace("video", "image", 1) in base and after[k].shape == base[k.replace("video", "image", 1)].shape
             and not torch.equal(after[k], base[k.replace("video", "image", 1)])]
    assert moved
    emb = grown.embed(video=[str(setup / "c1.mp4")])["video"]
    assert emb.shape == (1, 128) and torch.isfinite(emb).all()


def test_recipe_refuses_a_missing_soundtrack_with_one_line(setup, capsys):
    write_manifest(setup / "silent.jsonl", [{"video": "c0.mp4", "text": "x"}] * 4)
    code = main(["pretrain", RECIPE, *_overrides(setup, setup / "silent", f"data.train={json.dumps(str(setup / 'silent.jsonl'))}")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("onepeace pretrain: error:") and "align_with aligns video with audio" in err[-1]


@pytest.mark.distributed
@pytest.mark.slow
def test_recipe_under_torchrun_two_processes(setup):
    out = setup / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "onepeace.cli", "pretrain",
           RECIPE, *_overrides(setup, out, "data.batch_size=2", "train.parallel=ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model" / "config.json").exists()
    assert "final losses" in proc.stdout and "align_audio" in proc.stdout


def test_the_soundtrack_of_a_clip_becomes_the_audio_side_of_a_batch(setup):
    from onepeace.data import PairDataset, make_loader

    base = onepeace.OnePeace.from_pretrained(setup / "base").config
    cfg = base.replace(modalities={**base.modalities, "video": {"frames": 2, "image_size": 32, "pool": 1}})
    rows = [{"video": f"c{i}.mp4", "text": f"clip {i}"} for i in range(4)]
    rows.insert(2, {"video": "silent.mp4", "text": "no sound", "id": "the-silent-clip"})
    write_manifest(setup / "tracks.jsonl", rows)
    skipped = []
    loader = make_loader(str(setup / "tracks.jsonl"), cfg, batch_size=4, train=True, shuffle=False,
                         sample_options={"video": {"audio": True}}, on_skip=lambda i, r: skipped.append((i, r)))
    (batch,) = list(loader)
    assert batch["video"] == {"frames": batch["video"]["frames"]} and batch["video"]["frames"].shape[:2] == (4, 2)
    assert batch["audio"]["waveform"].shape[0] == 4 and batch["audio"]["padding_mask"].shape[0] == 4
    # a clip without the requested sound is skipped, named and counted
    assert loader.dataset.skipped == 1 and skipped[0][0] == "the-silent-clip" and "audio" in skipped[0][1]
    # eval rows of such clips carry both identities
    ev = list(PairDataset(str(setup / "tracks.jsonl"), cfg, train=False, sample_options={"video": {"audio": True}}))
    assert len(ev) == 4 and ev[0]["item"]["video"].endswith("c0.mp4")


def test_data_check_decodes_clips_through_the_plug_in(setup, capsys):
    from onepeace.cli.data import data_check
    from onepeace.data.shards import iter_shard, write_shards

    write_manifest(setup / "check.jsonl", [{"video": "c0.mp4", "text": "a"}, {"video": "c1.mp4", "text": "b"},
                                           {"video": "broken.mp4", "text": "c", "id": "the-broken-clip"}])
    assert data_check(str(setup / "check.jsonl")) == 1  # default: every registered modality's processor
    captured = capsys.readouterr()
    assert "ok 2 (2 video), skipped 1" in captured.out and "the-broken-clip" in captured.err
    paths = write_shards(setup / "check.jsonl", setup / "shards", samples_per_shard=2)
    assert [sorted(k for k in s if not k.startswith("__")) for s in iter_shard(paths[0])] == [["json", "mp4"]] * 2
    assert data_check(str(setup / "shards")) == 1
    assert "ok 2 (2 video), skipped 1" in capsys.readouterr().out
