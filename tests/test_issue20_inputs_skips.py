"""Issue 20, item 2: only an input's own fault (an InputError: missing, corrupt, truncated) is skipped
and counted; a missing module, a bug in onepeace or a resource error stops the training run or the
index build in one line; and a run that skips more than MAX_SKIP_SHARE of its input stops and says so."""

from __future__ import annotations

import errno
import io
import json
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from onepeace.cli import main
from onepeace.data.dataset import PairDataset, make_loader
from onepeace.errors import (
    MAX_SKIP_SHARE,
    MIN_SKIP_SEEN,
    DataError,
    DecodeError,
    InputError,
    SkipGuard,
    SkipLimitError,
    not_the_input,
)

SR = 16000


def _wavs(root, n: int) -> list[str]:
    t = np.arange(SR // 2) / SR
    names = []
    for i in range(n):
        sf.write(root / f"w{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t)).astype(np.float32), SR)
        names.append(f"w{i}.wav")
    return names


def _images(root, n: int) -> list[str]:
    from onepeace_train.demo.data import load_digits

    imgs, _ = load_digits("test")
    for i in range(n):
        Image.fromarray(imgs[i]).save(root / f"i{i}.png")
    return [f"i{i}.png" for i in range(n)]


def _manifest(path, key: str, names: list[str]) -> str:
    path.write_text("".join(json.dumps({key: n, "text": f"caption {i}"}) + "\n" for i, n in enumerate(names)))
    return str(path)


# ---- the trainer's data path ------------------------------------------------------------------------

def test_a_missing_module_in_the_augmentation_stops_the_stream(tmp_path, monkeypatch):
    # the core install without scipy: every sample failed with ImportError, was "skipped", and the
    # demo's stage 2 died with StopIteration; now the ImportError itself comes out
    src = _manifest(tmp_path / "a.jsonl", "audio", _wavs(tmp_path, 3))
    monkeypatch.setitem(sys.modules, "scipy.signal", None)  # `from scipy.signal import ...` fails
    ds = PairDataset(src, "tiny", train=True, augment={"audio": {"noise": {"p": 1.0}}})
    with pytest.raises(ImportError, match="scipy"):
        next(iter(ds))
    assert ds.skipped == 0


def test_a_missing_module_in_a_loader_worker_is_one_line(tmp_path, monkeypatch):
    src = _manifest(tmp_path / "a.jsonl", "audio", _wavs(tmp_path, 3))
    monkeypatch.setitem(sys.modules, "scipy.signal", None)  # inherited by the forked worker
    loader = make_loader(src, "tiny", 2, num_workers=1, augment={"audio": {"noise": {"p": 1.0}}})
    with pytest.raises(DataError) as e:
        next(iter(loader))
    msg = str(e.value)
    assert "\n" not in msg and "scipy" in msg and "w" in msg and "a module onepeace needs is missing" in msg


@pytest.mark.slow
def test_a_bug_in_a_processor_stops_the_training_run_in_one_line(tmp_path, monkeypatch, capsys):
    import onepeace.processing.image as image

    src = _manifest(tmp_path / "i.jsonl", "image", _images(tmp_path, 8))
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(f"""
        [model]
        preset = "tiny"
        overrides = {{ layers = 2, modalities = {{ text = {{}}, image = {{ image_size = 32 }} }} }}
        [data]
        train = "{src}"
        batch_size = 4
        [optim]
        max_steps = 2
        [train]
        output = "{tmp_path / 'run'}"
        progress = false
        """))

    def broken(*a, **k):
        raise TypeError("broken() got an unexpected keyword argument 'scale'")

    monkeypatch.setattr(image.ImageProcessor, "sample", broken)
    assert main(["pretrain", str(recipe)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "internal error: TypeError: broken()" in err, err


def test_a_corrupt_file_is_still_skipped_and_counted(tmp_path):
    names = _images(tmp_path, MIN_SKIP_SEEN)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    skipped = []
    ds = PairDataset(_manifest(tmp_path / "m.jsonl", "image", ["bad.png", *names]), "tiny", train=True,
                     shuffle=False, on_skip=lambda i, r: skipped.append(r))
    assert len(list(ds)) == len(names) and ds.skipped == 1
    assert "cannot decode image" in skipped[0]


@pytest.mark.slow  # over 5 s on 2 cores: make test runs it, make test-fast does not
def test_a_run_that_skips_most_of_its_input_stops(tmp_path):
    good = _images(tmp_path, 5)
    for i in range(2 * MIN_SKIP_SEEN):
        (tmp_path / f"bad{i}.png").write_bytes(b"not an image")
    names = good + [f"bad{i}.png" for i in range(2 * MIN_SKIP_SEEN)]
    src = _manifest(tmp_path / "m.jsonl", "image", names)
    with pytest.raises(SkipLimitError) as e:
        list(PairDataset(src, "tiny", train=True))
    msg = str(e.value)
    assert "\n" not in msg and "m.jsonl" in msg and f"more than {MAX_SKIP_SHARE:.0%}" in msg
    # an evaluation reports what it skipped instead, and the option turns the stop off
    assert len(list(PairDataset(src, "tiny", train=False))) == len(good)
    ds = PairDataset(src, "tiny", train=True, max_skip_share=None)
    assert len(list(ds)) == len(good) and ds.skipped == 2 * MIN_SKIP_SEEN


def test_skip_guard_counts_a_share_after_a_minimum():
    g = SkipGuard("x", 0.5, min_seen=4)
    g.skip(), g.skip(), g.ok()  # 2 of 3 bad, but under the minimum
    g.ok()  # 2 of 4: not more than half
    with pytest.raises(SkipLimitError, match="x: 3 of the first 5"):
        g.skip()
    g = SkipGuard("y", 0.5, min_seen=2)
    g.ok(), g.ok()
    g.skip(counted=True)  # planned, then failed to decode: 1 of 2
    with pytest.raises(SkipLimitError, match="y: 2 of the first 3"):
        g.skip()


# ---- resource errors are not the input's fault --------------------------------------------------------

class _Failing(io.RawIOBase):
    def __init__(self, err: int):
        self.err, self.name = err, "clip.wav"

    def readable(self):
        return True

    def read(self, *a):
        raise OSError(self.err, "simulated")


def test_running_out_of_file_handles_is_not_a_bad_input():
    from onepeace.processing.audio import load_audio

    assert not_the_input(OSError(errno.EMFILE, "Too many open files")) and not_the_input(MemoryError())
    assert not not_the_input(OSError(errno.EIO, "Input/output error"))
    with pytest.raises(OSError) as e:
        load_audio(_Failing(errno.EMFILE))
    assert not isinstance(e.value, InputError)
    with pytest.raises(InputError, match="cannot read audio input clip.wav"):
        load_audio(_Failing(errno.EIO))
    with pytest.raises(DecodeError, match="cannot decode audio"):
        load_audio(b"RIFF not really a wav file")


# ---- fine-tuning ------------------------------------------------------------------------------------

class _Task:
    def __init__(self, fail):
        self.fail = fail

    def sample(self, rec, train, rng):
        if rec["id"] in self.fail:
            raise self.fail[rec["id"]]
        return {"x": rec["id"]}


def test_finetune_skips_bad_samples_but_stops_on_a_bug_or_mostly_bad_data():
    from onepeace_train.finetune.data import TaskDataset

    recs = [{"id": i} for i in range(3 * MIN_SKIP_SEEN)]
    ds = TaskDataset(recs, _Task({1: DecodeError("cannot decode image 1.png")}), train=True)
    assert ds[0] == {"x": 0} and ds[1] is None and ds.skipped == 1
    ds = TaskDataset(recs, _Task({2: TypeError("a bug")}), train=True)
    with pytest.raises(TypeError, match="a bug"):
        ds[2]
    ds = TaskDataset(recs, _Task({i: InputError(f"gone {i}") for i in range(len(recs)) if i % 3}), train=True,
                     name="the task manifest t.jsonl")
    with pytest.raises(SkipLimitError, match="t.jsonl"):
        for i in range(len(recs)):
            ds[i]
    # a record seen again (the next epoch) is not more input: the same few bad ones never stop a run
    ds = TaskDataset(recs[:4], _Task({0: InputError("gone"), 1: InputError("gone")}), train=True)
    for epoch in range(3 * MIN_SKIP_SEEN):
        for i in range(4):
            ds[(epoch, i)]
    assert ds.skipped == 2 * 3 * MIN_SKIP_SEEN


# ---- index builds --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from onepeace.factory import create_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "tiny"
    create_model("tiny").save_pretrained(d)
    return str(d)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_bug_in_a_decoder_stops_the_index_build_in_one_line(tmp_path, model_dir, monkeypatch, capsys, workers):
    import onepeace.processing.image as image

    (tmp_path / "media").mkdir()
    _images(tmp_path / "media", 3)

    def broken(item):
        raise TypeError("load_image() takes 0 positional arguments but 1 was given")

    monkeypatch.setattr(image, "load_image", broken)
    rc = main(["index", "build", str(tmp_path / "db"), str(tmp_path / "media"), "--model", model_dir,
               "--workers", workers])
    err = capsys.readouterr().err.strip()
    assert rc in (1, 2) and err.count("\n") == 0 and "TypeError: load_image()" in err, err
    assert "skipped" not in err


@pytest.mark.slow
def test_an_index_build_of_mostly_unreadable_files_stops(tmp_path, model_dir, capsys):
    (tmp_path / "media").mkdir()
    _images(tmp_path / "media", 3)
    for i in range(MIN_SKIP_SEEN):
        (tmp_path / "media" / f"bad{i}.png").write_bytes(b"not an image")
    rc = main(["index", "build", str(tmp_path / "db"), str(tmp_path / "media"), "--model", model_dir, "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "could not be used (more than 50%)" in err, err


@pytest.mark.slow  # over 5 s on 2 cores: make test runs it, make test-fast does not
def test_the_core_install_declares_what_the_training_augmentation_imports():
    # `pip install .` (no extras) then `onepeace demo`: scipy was only in the test extra
    import ast
    from importlib.metadata import packages_distributions
    from pathlib import Path

    import onepeace.data.augment as augment

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).parents[1]
    core = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
            for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    tree = ast.parse(Path(augment.__file__).read_text())
    tops = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    tops |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    dists = packages_distributions()
    third_party = {t for t in tops if t in dists and t not in sys.stdlib_module_names}
    missing = {t for t in third_party if not {d.lower() for d in dists[t]} & core}
    assert third_party and not missing, f"imported by the augmentation but not a core dependency: {missing}"
