"""The training data pipeline: manifests, shards, augmentation, the pair dataset, the data CLI."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import onepeace
from onepeace.cli.data import data_check, data_shards
from onepeace.cli.data import register as add_data_parser
from onepeace.data import (
    PairDataset,
    collate_pairs,
    iter_shard,
    make_loader,
    random_resized_crop,
    read_manifest,
    write_manifest,
    write_shards,
    write_shards_from_samples,
)
from onepeace.data import dataset as dataset_mod
from onepeace.data.augment import crop_params, to_normalized_tensor
from onepeace.data.shards import decode_record
from onepeace.errors import InputError, OnePeaceError
from onepeace.modalities import Processor
from onepeace.processing.image import ImageProcessor

SMALL_STEM = [[128, 10, 5]] + [[128, 3, 2]] * 4 + [[128, 2, 2]] * 2


@pytest.fixture(scope="module")
def config():
    return onepeace.get_preset(
        "tiny", modalities={"text": {}, "image": {"image_size": 32}, "audio": {"stem": SMALL_STEM}}
    )


@pytest.fixture(scope="module")
def processor(config):
    return Processor(config)


def make_image(path, seed=0, size=(20, 14), fmt=None):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def make_audio(path, seed=0, seconds=0.3, rate=16000, fmt=None):
    rng = np.random.default_rng(seed)
    wav = (rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    sf.write(path, wav, rate, format=fmt)
    return wav


def image_manifest(tmp_path, n, name="m.jsonl"):
    """n images with label = index, written as relative paths."""
    (tmp_path / "img").mkdir(exist_ok=True)
    samples = []
    for i in range(n):
        make_image(tmp_path / "img" / f"{i}.png", seed=i)
        samples.append({"image": f"img/{i}.png", "text": f"picture number {i}", "label": i, "id": f"s{i}"})
    write_manifest(tmp_path / name, samples)
    return tmp_path / name


def fake_worker(monkeypatch, worker_id, num_workers):
    info = None if num_workers is None else argparse.Namespace(id=worker_id, num_workers=num_workers)
    monkeypatch.setattr(dataset_mod, "get_worker_info", lambda: info)


# ------------------------------------------------------------------------------ manifests
def test_manifest_round_trip(tmp_path):
    samples = [
        {"image": "a/b.png", "text": "a cat", "label": 3, "id": "x1", "source": "web"},
        {"audio": "c.flac", "text": "a dog barks"},
        {"image": str(tmp_path / "abs.jpg"), "text": "ünïcode caption"},
    ]
    m = tmp_path / "sub" / "m.jsonl"
    m.parent.mkdir()
    assert write_manifest(m, samples) == 3
    assert os.listdir(m.parent) == ["m.jsonl"]  # no temp file left behind
    back = read_manifest(m)
    assert back[0] == {**samples[0], "image": str(m.parent / "a" / "b.png")}
    assert back[1] == {"audio": str(m.parent / "c.flac"), "text": "a dog barks"}
    assert back[2]["image"] == str(tmp_path / "abs.jpg") and back[2]["text"] == "ünïcode caption"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"image": "a.png", "text": ', "invalid JSON"),
        ('{"image": "a.png"}', "missing the 'text' field"),
        ('{"text": "hi"}', "needs a media field, one of '"),
        ('{"image": "a.png", "audio": 5, "text": "x"}', "'audio' must be a non-empty path string"),
        ('{"image": "a.png", "text": "x", "label": "3"}', "'label' must be an integer"),
        ('{"image": "a.png", "text": 5}', "'text' must be a string"),
        ('["a.png", "x"]', "must be a JSON object"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, line, message):
    m = tmp_path / "bad.jsonl"
    m.write_text('{"image": "ok.png", "text": "fine"}\n\n' + line + "\n")
    with pytest.raises(InputError, match=message) as e:
        read_manifest(m)
    assert f"{m}:3" in str(e.value)


def test_manifest_missing_and_write_validation(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="sample 1: missing the 'text' field"):
        write_manifest(tmp_path / "m.jsonl", [{"image": "a.png", "text": "x"}, {"image": "b.png"}])
    assert not (tmp_path / "m.jsonl").exists()


# ------------------------------------------------------------------------------ shards
def test_shards_round_trip_byte_identical(tmp_path):
    files = []
    for i in range(4):
        make_image(tmp_path / f"i{i}.{'png' if i % 2 else 'jpg'}", seed=i, fmt="PNG" if i % 2 else "JPEG")
        files.append(("image", f"i{i}.{'png' if i % 2 else 'jpg'}"))
    for i in range(3):
        ext = "flac" if i % 2 else "wav"
        make_audio(tmp_path / f"a{i}.{ext}", seed=i)
        files.append(("audio", f"a{i}.{ext}"))
    samples = [{k: f, "text": f"caption {j}", "label": j} for j, (k, f) in enumerate(files)]
    write_manifest(tmp_path / "m.jsonl", samples)

    out = tmp_path / "shards"
    paths = write_shards(tmp_path / "m.jsonl", out, samples_per_shard=3)
    assert [os.path.basename(p) for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(os.listdir(out)) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    got = [s for p in paths for s in iter_shard(p)]
    assert len(got) == len(files)
    for j, ((kind, f), s) in enumerate(zip(files, got)):
        ext = f.rsplit(".", 1)[1]
        assert s[ext] == (tmp_path / f).read_bytes()  # copied as-is
        assert json.loads(s["json"]) == {"text": f"caption {j}", "label": j}
        rec = decode_record(s)
        assert rec[kind] == (tmp_path / f).read_bytes() and rec["label"] == j
    # existing shards are not silently mixed with new ones
    with pytest.raises(InputError, match="already holds 3 shard"):
        write_shards(tmp_path / "m.jsonl", out, samples_per_shard=3)
    paths = write_shards(tmp_path / "m.jsonl", out, samples_per_shard=5, overwrite=True)
    assert sorted(os.listdir(out)) == ["shard-000000.tar", "shard-000001.tar"]  # stale shard removed


def test_shards_missing_file(tmp_path):
    make_image(tmp_path / "a.png")
    write_manifest(tmp_path / "m.jsonl", [{"image": "a.png", "text": "x"}, {"image": "gone.png", "text": "y"}])
    with pytest.raises(InputError, match="gone.png"):
        write_shards(tmp_path / "m.jsonl", tmp_path / "s")
    assert not os.listdir(tmp_path / "s")  # the temporary shard was removed
    paths = write_shards(tmp_path / "m.jsonl", tmp_path / "s", skip_missing=True)
    assert len(list(iter_shard(paths[0]))) == 1


def test_shards_from_memory(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    tone = np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440).astype(np.float32) * 0.5
    jpg = io.BytesIO()
    Image.fromarray(img).save(jpg, format="JPEG")
    samples = [
        {"image": img, "text": "array"},
        {"image": Image.fromarray(img), "text": "pil", "id": "p"},
        {"image": jpg.getvalue(), "text": "jpeg bytes"},
        {"audio": tone, "text": "tone"},
        {"audio": (np.repeat(tone, 3)[:24000], 48000), "text": "48k tone", "label": 1},
    ]
    paths = write_shards_from_samples(iter(samples), tmp_path, samples_per_shard=2, prefix="mem")
    assert [os.path.basename(p) for p in paths] == ["mem-000000.tar", "mem-000001.tar", "mem-000002.tar"]
    got = [s for p in paths for s in iter_shard(p)]
    assert [sorted(k for k in s if not k.startswith("__")) for s in got] == [
        ["json", "png"], ["json", "png"], ["jpg", "json"], ["flac", "json"], ["flac", "json"]
    ]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(got[0]["png"]))), img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(got[1]["png"]))), img)
    assert got[2]["jpg"] == jpg.getvalue()
    wav, rate = sf.read(io.BytesIO(got[3]["flac"]), dtype="float32")
    assert rate == 16000 and wav.shape == tone.shape and np.abs(wav - tone).max() < 1e-3
    wav, rate = sf.read(io.BytesIO(got[4]["flac"]), dtype="float32")
    assert rate == 16000 and wav.shape == (8000,)
    assert json.loads(got[4]["json"]) == {"text": "48k tone", "label": 1}
    with pytest.raises(InputError, match="sample 0: 'text' must be a string"):
        write_shards_from_samples([{"image": img}], tmp_path / "x")


# ------------------------------------------------------------------------------ augmentation
def test_random_resized_crop_size_and_determinism():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    a = random_resized_crop(img, 24, rng=random.Random(1))
    b = random_resized_crop(img, 24, rng=random.Random(1))
    assert a.size == (24, 24) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    for seed in range(50):
        top, left, h, w = crop_params(50, 30, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(seed))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50
        # a crop of 90-100% of the area (up to rounding), or the centre-crop fallback at ratio 4/3
        assert 0.87 * 1500 <= h * w <= 1.03 * 1500 or (top, left, h, w) == (0, 5, 30, 40)


def test_random_resized_crop_identity_equals_plain_resize():
    arr = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out = random_resized_crop(img, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), rng=random.Random(0))
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((32, 32), Image.BICUBIC)))
    # and the tensor path equals the eval processor exactly
    assert torch.equal(to_normalized_tensor(out), ImageProcessor(32).one(img)[0])


def test_random_resized_crop_fallback_is_centre_crop():
    # a 100x10 image can never fit a square crop of >= 90% of its area: torchvision falls back
    # to a centre crop clamped to the ratio range
    assert crop_params(100, 10, (0.9, 1.0), (1.0, 1.0), random.Random(0)) == (0, 45, 10, 10)
    assert crop_params(10, 100, (0.9, 1.0), (1.0, 1.0), random.Random(0)) == (45, 0, 10, 10)


# ------------------------------------------------------------------------------ dataset
def test_dataset_samples_train_and_eval(tmp_path, config):
    m = image_manifest(tmp_path, 3)
    make_audio(tmp_path / "a.flac", seconds=0.5)
    ds = PairDataset(m, config, train=True, seed=0)
    samples = list(ds)
    assert len(samples) == 3 and ds.ok == 3 and ds.skipped == 0
    assert all(s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32 for s in samples)
    assert sorted(s["label"] for s in samples) == [0, 1, 2]
    ev = {s["label"]: s for s in PairDataset(m, config, train=False)}
    assert [ev[i]["text"] for i in range(3)] == ["picture number 0", "picture number 1", "picture number 2"]
    assert torch.equal(ev[1]["image"], ImageProcessor(32).one(tmp_path / "img" / "1.png")[0])
    # audio: exactly AudioProcessor.one (normalise -> cap -> tile to 1 s)
    write_manifest(tmp_path / "a.jsonl", [{"audio": "a.flac", "text": "noise"}])
    (a,) = list(PairDataset(tmp_path / "a.jsonl", config, train=True))
    assert set(a) == {"text", "audio"}
    ref = Processor(config).get("audio").one(str(tmp_path / "a.flac"))
    assert a["audio"].shape == (16000,) and torch.equal(a["audio"], ref)


def test_dataset_shuffle_per_epoch(tmp_path, config):
    m = image_manifest(tmp_path, 12)
    ds = PairDataset(m, config, train=False, shuffle=True, seed=3)
    e0 = [s["label"] for s in ds]
    assert [s["label"] for s in ds] == e0  # same epoch, same order
    ds.set_epoch(1)
    e1 = [s["label"] for s in ds]
    assert e1 != e0 and sorted(e1) == sorted(e0) == list(range(12))
    assert [s["label"] for s in PairDataset(m, config, train=False)] == list(range(12))  # eval: in order
    inf = iter(PairDataset(m, config, train=False, shuffle=True, seed=3, repeat=True))
    first = [next(inf)["label"] for _ in range(30)]
    assert first[:12] == e0 and first[12:24] == e1


def _labels_by_slot(source, config, monkeypatch, ranks=2, workers=2, **kw):
    seen = {}
    for r in range(ranks):
        for w in range(workers):
            fake_worker(monkeypatch, w, workers)
            ds = PairDataset(source, config, train=True, rank=r, world_size=ranks, shuffle_buffer=4, **kw)
            seen[(r, w)] = [s["label"] for s in ds]
    fake_worker(monkeypatch, 0, None)
    return seen


@pytest.mark.parametrize("layout", ["manifest", "many-shards", "few-shards"])
def test_rank_worker_split_covers_each_sample_once(tmp_path, config, monkeypatch, layout):
    n = 13
    m = image_manifest(tmp_path, n)
    source = m
    if layout != "manifest":
        per = 2 if layout == "many-shards" else 7  # 7 shards >= 4 slots; 2 shards < 4 slots
        write_shards(m, tmp_path / "shards", samples_per_shard=per)
        source = str(tmp_path / "shards")
    for epoch in (0, 1):
        seen = _labels_by_slot(source, config, monkeypatch, seed=epoch)
        everything = sorted(x for labels in seen.values() for x in labels)
        assert everything == list(range(n)), seen
        assert all(seen.values())  # every slot got work


def test_rank_worker_split_with_real_dataloader_workers(tmp_path, config):
    n = 11
    m = image_manifest(tmp_path, n)
    write_shards(m, tmp_path / "shards", samples_per_shard=3)
    for source in (m, str(tmp_path / "shards" / "shard-*.tar")):
        labels = []
        for rank in range(2):
            loader = make_loader(source, config, batch_size=2, num_workers=2, train=True, seed=1,
                                 rank=rank, world_size=2, drop_last=False)
            for batch in loader:
                assert batch["image"]["pixels"].shape[1:] == (3, 32, 32)
                labels += batch["label"].tolist()
        assert sorted(labels) == list(range(n))


def test_corrupt_and_missing_files_are_skipped(tmp_path, config, caplog):
    make_image(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "empty.jpg").write_bytes(b"")
    make_audio(tmp_path / "good.wav")
    (tmp_path / "bad.flac").write_bytes(b"fLaC" + os.urandom(64))
    write_manifest(tmp_path / "img.jsonl", [
        {"image": "good.png", "text": "ok"},
        {"image": "corrupt.png", "text": "bad", "id": "the-corrupt-one"},
        {"image": "missing.png", "text": "bad"},
        {"image": "empty.jpg", "text": "bad"},
        {"image": "good.png", "text": "ok again"},
    ])
    skipped = []
    with caplog.at_level(logging.WARNING, logger="onepeace.data.dataset"):
        ds = PairDataset(tmp_path / "img.jsonl", config, train=True, shuffle=False, on_skip=lambda i, r: skipped.append(i))
        out = list(ds)
    assert [s["text"] for s in out] == ["ok", "ok again"]
    assert ds.skipped == 3 and ds.ok == 2
    assert skipped == ["the-corrupt-one", str(tmp_path / "missing.png"), str(tmp_path / "empty.jpg")]
    assert "the-corrupt-one" in caplog.text and "missing.png" in caplog.text

    write_manifest(tmp_path / "aud.jsonl", [{"audio": "bad.flac", "text": "x"}, {"audio": "good.wav", "text": "y"}])
    ds = PairDataset(tmp_path / "aud.jsonl", config, repeat=True)
    it = iter(ds)
    assert [next(it)["text"] for _ in range(3)] == ["y", "y", "y"]  # infinite stream survives bad files
    assert ds.skipped == 3


def test_bad_shards_are_skipped(tmp_path, config):
    m = image_manifest(tmp_path, 6)
    paths = write_shards(m, tmp_path / "s", samples_per_shard=3)
    data = open(paths[1], "rb").read()
    with open(paths[1], "wb") as f:  # truncate in the middle of the second sample
        f.write(data[: 3 * 512 + 200])
    with tarfile.open(tmp_path / "s" / "extra.tar", "w") as tar:  # a sample with no caption
        info = tarfile.TarInfo("k1.png")
        png = (tmp_path / "img" / "0.png").read_bytes()
        info.size = len(png)
        tar.addfile(info, io.BytesIO(png))
    ds = PairDataset(str(tmp_path / "s"), config, train=False)
    labels = sorted(s["label"] for s in ds)
    assert labels[:3] == [0, 1, 2] and len(labels) in (3, 4)  # the truncated shard gives what it can
    assert ds.skipped == 2  # the truncated shard, the captionless sample


def test_dataset_source_errors(tmp_path, config):
    with pytest.raises(InputError, match="data source not found"):
        PairDataset(tmp_path / "nothing", config)
    with pytest.raises(InputError, match="no .tar shards"):
        PairDataset(tmp_path, config)
    with pytest.raises(InputError, match="no files match"):
        PairDataset(str(tmp_path / "*.tar"), config)
    make_audio(tmp_path / "a.wav")
    write_manifest(tmp_path / "a.jsonl", [{"audio": "a.wav", "text": "x"}])
    with pytest.raises(InputError, match="no audio branch"):
        PairDataset(tmp_path / "a.jsonl", config.replace(modalities={"text": {}, "image": {}}))


# ------------------------------------------------------------------------------ collate
def test_collate_shapes_and_model_inputs(tmp_path, config, processor):
    m = image_manifest(tmp_path, 3)
    images = list(PairDataset(m, config, train=True))
    batch = collate_pairs(images, processor)
    assert set(batch) == {"text", "image", "label"}
    assert batch["text"]["tokens"].dtype == torch.long and batch["text"]["tokens"].shape[0] == 3
    assert batch["image"]["pixels"].shape == (3, 3, 32, 32)
    assert batch["label"].dtype == torch.long and sorted(batch["label"].tolist()) == [0, 1, 2]

    clips = [{"audio": torch.randn(n), "text": f"clip {n}"} for n in (16000, 20000)]
    ab = collate_pairs(clips, config)  # a config works too
    assert set(ab) == {"text", "audio"}
    assert ab["audio"]["waveform"].shape == (2, 20000)
    assert ab["audio"]["padding_mask"].dtype == torch.bool and ab["audio"]["padding_mask"].shape[0] == 2
    assert not ab["audio"]["padding_mask"][1].any() and ab["audio"]["padding_mask"][0].any()

    model = onepeace.create_model(config, init=False)  # shapes only: skip the (slow) init
    with torch.no_grad():
        assert model.embed_batch("image", batch["image"]).shape == (3, 128)
        assert model.embed_batch("audio", ab["audio"]).shape == (2, 128)
        assert model.embed_batch("text", batch["text"]).shape == (3, 128)


def test_collate_errors(processor):
    img = {"image": torch.zeros(3, 32, 32), "text": "a"}
    aud = {"audio": torch.zeros(16000), "text": "b"}
    with pytest.raises(InputError, match=r"mixes image and audio samples \(1 image, 1 audio\)"):
        collate_pairs([img, aud], processor)
    with pytest.raises(InputError, match="label all or none"):
        collate_pairs([img, {**img, "label": 1}], processor)
    with pytest.raises(InputError, match="empty batch"):
        collate_pairs([], processor)


# ------------------------------------------------------------------------------ CLI
def test_data_cli(tmp_path, capsys):
    m = image_manifest(tmp_path, 5)
    out = tmp_path / "shards"
    parser = argparse.ArgumentParser(prog="onepeace")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "shards", str(m), str(out), "--samples-per-shard", "2"])
    assert args.func(args) == 0
    assert "wrote 5 samples in 3 shards" in capsys.readouterr().out
    args = parser.parse_args(["data", "check", str(out), "--model", "tiny"])
    assert args.func(args) == 0
    assert "ok 5 (5 image), skipped 0" in capsys.readouterr().out

    (tmp_path / "img" / "2.png").write_bytes(b"not an image")
    assert data_check(str(m)) == 1
    captured = capsys.readouterr()
    assert "ok 4 (4 image), skipped 1" in captured.out and "s2" in captured.err

    with pytest.raises(OnePeaceError, match="already holds"):
        data_shards(str(m), str(out), 2)
    with pytest.raises(OnePeaceError, match="data source not found"):
        data_check(str(tmp_path / "none.jsonl"))
    with pytest.raises(OnePeaceError, match="manifest not found"):
        data_shards(str(tmp_path / "none.jsonl"), str(out))
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "shards", str(m), str(out), "--samples-per-shard", "0"])
