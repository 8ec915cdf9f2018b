"""No command destroys an output by accident (onepeace.outputs): existing outputs are refused
unless --force / overwrite=True, checked before any work, and directories are replaced whole."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DICT, TINY, needs_fixtures
from onepeace import create_model
from onepeace.cli import main
from onepeace.config import HeadConfig
from onepeace.errors import OutputError
from onepeace.outputs import check_output_dir, staged_dir
from onepeace_train.runs import check_run_dir

DEAD_PID = 4194305  # above Linux's PID_MAX_LIMIT (2**22): never a running process


def _tiny():
    torch.manual_seed(0)
    return create_model("tiny", layers=1, modalities={"text": {}, "image": {"image_size": 32}})


def _files(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "m"
    _tiny().save_pretrained(d)
    return d


# ---------------------------------------------------------------- models: convert, save_pretrained
@needs_fixtures
def test_convert_refuses_an_existing_model_and_force_swaps_it_in(tmp_path, model_dir, capsys):
    from onepeace.checkpoints.official import convert

    before = _files(model_dir)
    args = ["convert", str(TINY / "one-peace-tiny.pt"), str(model_dir), "--dict", str(DICT)]
    assert main(args) == 2
    _one_line_error(capsys, "already holds a model", "--force")
    assert _files(model_dir) == before
    assert main([*args, "--force"]) == 0
    convert(TINY / "one-peace-tiny.pt", tmp_path / "ref", DICT)
    assert _files(model_dir) == _files(tmp_path / "ref") != before
    assert sorted(os.listdir(tmp_path)) == ["m", "ref"]  # no staging directory left behind


def test_convert_into_a_file_or_a_folder_of_other_files(tmp_path, capsys):
    src = tmp_path / "ck.pt"
    src.write_bytes(b"never read: the output is checked first")
    dst = tmp_path / "notes.txt"
    dst.write_text("keep me")
    assert main(["convert", str(src), str(dst)]) == 2
    _one_line_error(capsys, f"{dst} is a file, not a directory")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        assert main(["convert", str(src), str(folder), *extra]) == 2
        _one_line_error(capsys, "not part of a model (notes.txt)")
    assert dst.read_text() == "keep me" and _files(folder) == {"notes.txt": b"keep me"}
    # --force never deletes the command's own input
    model = folder / "model"
    _tiny().save_pretrained(model)
    (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
    inside = model / "model-00001-of-00001.safetensors"
    assert main(["convert", str(inside), str(model), "--force"]) == 2
    _one_line_error(capsys, "contains the input")


def test_save_pretrained_overwrite_replaces_whole_and_keeps_permissions(tmp_path, model_dir):
    m = _tiny()
    before = _files(model_dir)
    with pytest.raises(OutputError, match="already holds a model"):
        m.save_pretrained(model_dir)
    assert _files(model_dir) == before
    m.save_pretrained(model_dir, max_shard_bytes=64 * 1024, overwrite=True)
    names = sorted(os.listdir(model_dir))
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names  # no stale file kept
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(model_dir).st_mode) == 0o777 & ~umask
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("x")
    with pytest.raises(OutputError, match="not part of a model"):
        m.save_pretrained(other, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    m.save_pretrained(empty)  # an empty directory is new enough
    # a symlinked model directory: its target is replaced, the link stays
    link = tmp_path / "link"
    link.symlink_to(empty, target_is_directory=True)
    m.save_pretrained(link, overwrite=True)
    assert link.is_symlink() and (empty / "config.json").exists()


def test_a_crash_while_writing_leaves_the_old_model_whole(tmp_path, model_dir, monkeypatch):
    import onepeace.checkpoints.format as fmt

    before = _files(model_dir)
    real = fmt.write_safetensors

    def dies_half_way(path, specs, metadata=None):
        real(path, specs[: len(specs) // 2], metadata)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(fmt, "write_safetensors", dies_half_way)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _tiny().save_pretrained(model_dir, overwrite=True)
    assert _files(model_dir) == before and sorted(os.listdir(tmp_path)) == ["m"]
    monkeypatch.undo()
    # the rename of the new model into place fails after the old one was moved aside: rolled back
    import onepeace.outputs as outputs

    calls = []

    def rename(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError("simulated crash between the two renames")
        os.replace(a, b)

    monkeypatch.setattr(outputs.os, "rename", rename)
    with pytest.raises(OSError, match="between the two renames"):
        _tiny().save_pretrained(model_dir, overwrite=True)
    monkeypatch.undo()
    assert _files(model_dir) == before and sorted(os.listdir(tmp_path)) == ["m"]


def test_a_killed_swap_is_recovered_by_the_next_write(tmp_path, model_dir):
    before = _files(model_dir)
    # as a process killed between "rename old aside" and "rename new in" leaves it
    old = tmp_path / f".m.onepeace-old-{DEAD_PID}-0a1b2c3d"
    model_dir.rename(old)
    new = tmp_path / f".m.onepeace-new-{DEAD_PID}-4e5f6a7b"
    new.mkdir()
    (new / "model.safetensors").write_bytes(b"complete or not: never trusted")
    running = tmp_path / f".m.onepeace-new-{os.getpid()}-00000000"  # a live writer's: left alone
    running.mkdir()
    with pytest.raises(OutputError, match="already holds an output"):
        check_output_dir(model_dir)
    assert _files(model_dir) == before
    assert sorted(os.listdir(tmp_path)) == sorted(["m", running.name])


def test_staged_dir_needs_a_writable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        with staged_dir(blocker / "sub" / "out"):
            pass
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "new") as d:
            (open(os.path.join(d, "a"), "w")).close()
            raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["file"]


# ---------------------------------------------------------------- output files, checked first
def test_embed_out_refused_unless_force(tmp_path, model_dir, capsys):
    out = tmp_path / "e.npz"
    out.write_bytes(b"earlier result")
    # checked before the model is loaded: a missing model is not even looked at
    assert main(["embed", "--model", str(tmp_path / "nomodel"), "--text", "a", "--out", str(out)]) == 2
    _one_line_error(capsys, f"{out} already exists", "--force")
    assert main(["embed", "--model", str(model_dir), "--text", "a", "--out", str(tmp_path / "e")]) == 2
    _one_line_error(capsys, "already exists")  # the .npz suffix is added before the check
    assert out.read_bytes() == b"earlier result"
    assert main(["embed", "--model", str(model_dir), "--text", "a", "--out", str(out), "--force"]) == 0
    assert np.load(out)["text"].shape == (1, 128)


def test_eval_out_folder_checked_before_any_work(tmp_path, capsys):
    missing = tmp_path / "nodir" / "x.json"
    for cmd in (["eval", "retrieval", "--query", "image", "--gallery", "text"], ["eval", "task", "classify"]):
        assert main([*cmd, "--model", str(tmp_path / "nomodel"), "--data", "none.jsonl", "--out", str(missing)]) == 2
        _one_line_error(capsys, "does not exist", str(tmp_path / "nodir"))
    existing = tmp_path / "m.json"
    existing.write_text("{}")
    assert main(["eval", "task", "classify", "--model", "x", "--data", "y", "--out", str(existing)]) == 2
    _one_line_error(capsys, "already exists")


def test_segment_out_dir_refuses_existing_pngs(tmp_path, capsys):
    from onepeace_train.finetune.job import attach_head

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(img)
    out = tmp_path / "masks"
    out.mkdir()
    (out / "a.png").write_bytes(b"earlier mask")
    (out / "other.png").write_bytes(b"left alone")
    assert main(["segment", "--model", str(tmp_path / "nomodel"), "--image", str(img), "--out-dir", str(out)]) == 2
    _one_line_error(capsys, str(out / "a.png"), "--force")
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(sub / "a.jpg")
    assert main(["segment", "--model", "x", "--image", str(img), "--image", str(sub / "a.jpg"),
                 "--out-dir", str(tmp_path / "fresh")]) == 2
    _one_line_error(capsys, "would both be written to")
    seg = tmp_path / "seg"
    attach_head(_tiny(), HeadConfig(num_classes=2, type="dense", feature_source="image")).save_pretrained(seg)
    assert main(["segment", "--model", str(seg), "--image", str(img), "--out-dir", str(out), "--force"]) == 0
    with Image.open(out / "a.png") as m:
        assert m.size == (24, 20)
    assert (out / "other.png").read_bytes() == b"left alone"


# ---------------------------------------------------------------- data prepare / shards
def _esc(root):
    for c, name in ((1, "001 - Dog"), (2, "002 - Rain")):
        (root / name).mkdir(parents=True)
        for fold in (1, 2):
            (root / name / f"{fold}-{c}-A.ogg").write_bytes(b"")  # only listed, never decoded
    return root


def test_data_prepare_out_is_replaced_whole_or_refused(tmp_path, capsys):
    root, out = _esc(tmp_path / "esc"), tmp_path / "prepared"
    cmd = ["data", "prepare", "esc", "--root", str(root), "--out", str(out)]
    assert main(cmd) == 0
    first = (out / "all.jsonl").read_bytes()
    (out / "fold9").mkdir()  # an earlier, larger preparation's fold: gone after a replacement
    capsys.readouterr()
    assert main(cmd) == 2
    _one_line_error(capsys, "already holds a prepared data set", "--force")
    assert main([*cmd, "--force"]) == 0
    assert (out / "all.jsonl").read_bytes() == first and not (out / "fold9").exists()
    rows = [json.loads(line) for line in (out / "fold1" / "test.jsonl").read_text().splitlines()]
    assert all((out / "fold1" / r["audio"]).resolve().is_file() for r in rows)  # paths relative to the real place
    (out / "mine.txt").write_text("x")
    capsys.readouterr()
    assert main([*cmd, "--force"]) == 2
    _one_line_error(capsys, "not part of a prepared data set (mine.txt)")


def test_data_shards_force(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "text": "x"}) + "\n")
    out = tmp_path / "shards"
    out.mkdir()
    stale_tmp = out / f"shard-000000.tar.tmp-{DEAD_PID}"  # left by a killed writer
    stale_tmp.write_bytes(b"partial")
    assert main(["data", "shards", str(tmp_path / "m.jsonl"), str(out)]) == 0
    assert sorted(os.listdir(out)) == ["shard-000000.tar"]
    capsys.readouterr()
    assert main(["data", "shards", str(tmp_path / "m.jsonl"), str(out)]) == 2
    _one_line_error(capsys, "already holds 1 shard", "--force")
    assert main(["data", "shards", str(tmp_path / "m.jsonl"), str(out), "--force"]) == 0


# ---------------------------------------------------------------- training run directories
def _ckpt(run, step):
    (run / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)


def test_run_directory_rules(tmp_path):
    run = tmp_path / "run"
    assert check_run_dir(run, 10) == "new"
    run.mkdir()
    assert check_run_dir(run, 10) == "new"
    (run / "train_config.json").write_text("{}")  # killed before its first checkpoint
    assert check_run_dir(run, 10) == "new"
    _ckpt(run, 4)
    assert check_run_dir(run, 10) == "resume"
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    assert check_run_dir(run, 10) == "resume"  # max_steps raised after a finished run: continue it
    _ckpt(run, 10)
    with pytest.raises(OutputError, match=r"finished run \(step 10 of 10.*--force"):
        check_run_dir(run, 10)
    assert check_run_dir(run, 10, "resume") == "resume"
    assert check_run_dir(run, 10, "restart") == "restart"
    assert check_run_dir(run, 20) == "resume"
    (run / "model" / "notes.md").write_text("x")  # the final save would fail: refused before training
    with pytest.raises(OutputError, match=r"not part of a model \(notes.md\)"):
        check_run_dir(run, 20, "restart")
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"")
    with pytest.raises(OutputError, match="holds no training run"):
        check_run_dir(other, 10)
    assert check_run_dir(other, 10, "restart") == "new"  # --force: train there, the photo stays
    (other / "model").mkdir()
    with pytest.raises(OutputError, match="holds model/ but no training run"):
        check_run_dir(other, 10, "restart")
    with pytest.raises(OutputError, match="is a file"):
        check_run_dir(other / "photo.jpg", 10)


RECIPE = """
[model]
preset = "tiny"
overrides = { layers = 1, modalities = { text = {}, image = { image_size = 32 } } }
[data]
batch_size = 2
[optim]
max_steps = 2
warmup_steps = 1
[train]
log_every = 1
save_every = 1
progress = false
"""


@pytest.mark.slow
def test_finetune_refuses_a_finished_run_and_force_restarts_it(tmp_path, capsys):
    rows = []
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append({"image": str(tmp_path / f"im{i}.png"), "label": i % 2})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recipe.toml").write_text(RECIPE)
    run = tmp_path / "run"
    cmd = ["finetune", "classify", str(tmp_path / "recipe.toml"), f"data.train={tmp_path / 'train.jsonl'}",
           "task.num_classes=2", "--output", str(run)]
    assert main(cmd) == 0
    model = _files(run / "model")
    capsys.readouterr()
    assert main(cmd) == 2
    _one_line_error(capsys, "holds a finished run (step 2 of 2", "--force")
    assert _files(run / "model") == model
    (run / "checkpoints" / "step-00000001" / "marker").write_text("from the first run")
    assert main([*cmd, "--force"]) == 0
    assert not (run / "checkpoints" / "step-00000001" / "marker").exists()  # retrained from scratch
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert sorted(_files(run / "model")) == sorted(model)  # the new model, swapped in whole
    assert not [n for n in os.listdir(run) if ".onepeace-" in n]


def test_demo_never_writes_into_a_foreign_directory(tmp_path):
    from onepeace_train.demo.run import run_demo

    (tmp_path / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="not a demo run directory"):
        run_demo(str(tmp_path))
    assert os.listdir(tmp_path) == ["thesis.tex"]
