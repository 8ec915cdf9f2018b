"""Tar shards read through webdataset (local paths, pipe: commands, brace specs, resampling) and
data records decoded through any registered modality's processor (no name branches)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

import onepeace
from onepeace.cli.data import data_check
from onepeace.data import PairDataset, iter_shard, make_loader, write_manifest, write_shards
from onepeace.data.dataset import collate_pairs, resolve_source
from onepeace.data.shards import decode_record, write_shards_from_samples
from onepeace.errors import InputError
from onepeace.modalities import base as modality_base
from onepeace.modalities.base import Modality

SMALL_STEM = [[128, 10, 5]] + [[128, 3, 2]] * 4 + [[128, 2, 2]] * 2


@pytest.fixture(scope="module")
def config():
    return onepeace.get_preset(
        "tiny", modalities={"text": {}, "image": {"image_size": 32}, "audio": {"stem": SMALL_STEM}}
    )


def image_manifest(tmp_path, n):
    (tmp_path / "img").mkdir(exist_ok=True)
    samples = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "img" / f"{i}.png")
        samples.append({"image": f"img/{i}.png", "text": f"picture {i}", "label": i})
    write_manifest(tmp_path / "m.jsonl", samples)
    return tmp_path / "m.jsonl"


def pipe(path) -> str:
    return f"pipe:cat {shlex.quote(str(path))}"


# ---------------------------------------------------------------------------- reading
def test_pipe_reads_the_same_samples_as_the_path(tmp_path, config):
    paths = write_shards(image_manifest(tmp_path, 7), tmp_path / "s", samples_per_shard=3)
    local = [s for p in paths for s in iter_shard(p)]
    piped = [s for p in paths for s in iter_shard(pipe(p))]
    assert len(local) == 7
    assert [{k: v for k, v in s.items() if k != "__shard__"} for s in piped] == \
        [{k: v for k, v in s.items() if k != "__shard__"} for s in local]
    assert piped[0]["__shard__"] == pipe(paths[0])
    # a dataset over pipe: sources decodes exactly what it decodes over the files
    ev_local = [(s["label"], s["image"]) for s in PairDataset(paths, config, train=False)]
    ev_pipe = [(s["label"], s["image"]) for s in PairDataset([pipe(p) for p in paths], config, train=False)]
    assert [lb for lb, _ in ev_pipe] == list(range(7))
    assert all(a == c and torch.equal(b, d) for (a, b), (c, d) in zip(ev_local, ev_pipe))


def test_brace_spec_and_url_sources(tmp_path):
    write_shards(image_manifest(tmp_path, 5), tmp_path / "s", samples_per_shard=2)
    kind, paths = resolve_source(str(tmp_path / "s" / "shard-{000000..000002}.tar"))
    assert kind == "shards" and [os.path.basename(p) for p in paths] == [f"shard-00000{i}.tar" for i in range(3)]
    kind, paths = resolve_source(f"{pipe(tmp_path / 's' / 'shard-000000.tar')}::{tmp_path / 's' / 'shard-000001.tar'}")
    assert kind == "shards" and len(paths) == 2 and paths[0].startswith("pipe:cat ")
    # URLs are taken as they are (opened when read); missing local shards are refused up front
    assert resolve_source(["https://example.invalid/s-0.tar"]) == ("shards", ["https://example.invalid/s-0.tar"])
    with pytest.raises(InputError, match=r"shard not found: .*shard-000003.tar \(and 6 more\)"):
        resolve_source(str(tmp_path / "s" / "shard-{000000..000009}.tar"))


def test_failing_pipe_and_truncated_stream_are_named_and_skipped(tmp_path, config):
    paths = write_shards(image_manifest(tmp_path, 4), tmp_path / "s", samples_per_shard=2)
    missing = tmp_path / "gone.tar"
    with pytest.raises(InputError, match=r"gone\.tar"):
        list(iter_shard(pipe(missing)))
    half = tmp_path / "half.tar"
    half.write_bytes(open(paths[1], "rb").read()[: 3 * 512 + 100])
    with pytest.raises(InputError, match="corrupt or truncated shard pipe:cat .*half.tar"):
        list(iter_shard(pipe(half)))
    skipped = []
    ds = PairDataset([pipe(paths[0]), pipe(missing), pipe(half)], config, train=False,
                     on_skip=lambda i, r: skipped.append(i))
    labels = [s["label"] for s in ds]
    assert labels[:2] == [0, 1] and len(labels) in (2, 3)  # the truncated shard gives what it can
    assert ds.skipped == 2 and skipped[0] == pipe(missing)
    # a reader that stops early does not turn the pipe's SIGPIPE into an error
    it = iter_shard(pipe(paths[0]))
    next(it)
    it.close()


def test_rank_worker_split_over_pipes(tmp_path, config, monkeypatch):
    from onepeace.data import dataset as dataset_mod

    paths = write_shards(image_manifest(tmp_path, 9), tmp_path / "s", samples_per_shard=2)
    seen = []
    for rank in range(2):
        for worker in range(2):
            info = type("Info", (), {"id": worker, "num_workers": 2})
            monkeypatch.setattr(dataset_mod, "get_worker_info", lambda info=info: info)
            ds = PairDataset([pipe(p) for p in paths], config, train=True, rank=rank, world_size=2, shuffle_buffer=3)
            got = [s["label"] for s in ds]
            assert got  # 5 shards over 4 slots: whole shards dealt out
            seen += got
    assert sorted(seen) == list(range(9))


def test_resampled_shards_are_endless_and_reproducible(tmp_path, config):
    paths = write_shards(image_manifest(tmp_path, 6), tmp_path / "s", samples_per_shard=2)

    def draw(seed, rank, n=20):
        it = iter(PairDataset(str(tmp_path / "s"), config, train=True, resample=True, seed=seed, rank=rank,
                              world_size=2, shuffle_buffer=4))
        return [next(it)["label"] for _ in range(n)]

    a = draw(0, 0)
    assert len(a) == 20 > len(set(a)) and set(a) <= set(range(6))  # with replacement, past one pass
    assert draw(0, 0) == a  # seeded: a resumed run sees the same stream
    assert draw(0, 1) != a  # each rank has its own stream
    with pytest.raises(InputError, match="resample=True"):
        PairDataset(image_manifest(tmp_path, 2), config, resample=True)
    # every shard broken: the stream stops with a warning instead of spinning
    (tmp_path / "bad").mkdir()
    for i in range(2):
        (tmp_path / "bad" / f"b{i}.tar").write_bytes(b"not a tar" * 100)
    ds = PairDataset(str(tmp_path / "bad"), config, train=True, resample=True)
    assert list(ds) == [] and ds.skipped >= 10
    assert paths  # (the good shards were written)


# ---------------------------------------------------------------------------- any modality
@dataclass
class VecOptions:
    dim: int = 4


class VecProcessor:
    """Reads ``.vec`` files (whitespace-separated floats) or their bytes."""

    def __init__(self, dim: int):
        self.dim = dim

    def sample(self, item, *, train=False, rng=None, noise=0.0):
        data = open(item, "rb").read() if isinstance(item, str) else bytes(item)
        try:
            v = torch.tensor([float(x) for x in data.split()])
        except ValueError:
            raise InputError(f"not a vector file: {item if isinstance(item, str) else 'bytes'}") from None
        if v.numel() != self.dim:
            raise InputError(f"vector of {v.numel()} values, expected {self.dim}")
        if train and noise:
            v = v + noise * rng.random()
        return v

    def collate(self, samples):
        return {"values": torch.stack(samples)}


class VecModality(Modality):
    name = "vec"
    Options = VecOptions
    input_keys = ("values",)
    file_extensions = (".vec",)

    @classmethod
    def make_processor(cls, options):
        return VecProcessor(options.dim)


@pytest.fixture
def vec_registered():
    modality_base.register_modality(VecModality)
    yield
    modality_base._REGISTRY.pop("vec", None)


def test_a_new_modality_flows_through_manifests_and_shards(tmp_path, config, vec_registered):
    cfg = config.replace(modalities={**config.modalities, "vec": {"dim": 4}})
    rows = []
    for i in range(4):
        (tmp_path / f"{i}.vec").write_text(" ".join(str(i + j) for j in range(4)))
        rows.append({"vec": f"{i}.vec", "text": f"vector {i}", "label": i})
    (tmp_path / "bad.vec").write_text("1 2")
    rows.append({"vec": "bad.vec", "text": "too short", "id": "short-one"})
    write_manifest(tmp_path / "v.jsonl", rows)

    ds = PairDataset(tmp_path / "v.jsonl", cfg, train=True, sample_options={"vec": {"noise": 0.5}}, seed=1)
    out = list(ds)
    assert len(out) == 4 and ds.skipped == 1  # the bad file: skipped and counted, not fatal
    assert all(s["vec"].shape == (4,) for s in out)
    batch = collate_pairs(out, cfg)
    assert set(batch) == {"text", "vec", "label"} and batch["vec"]["values"].shape == (4, 4)

    paths = write_shards(tmp_path / "v.jsonl", tmp_path / "s", samples_per_shard=2)
    raw = [s for p in paths for s in iter_shard(p)]
    assert all("vec" in s for s in raw)  # the plug-in's extension names the member
    rec = decode_record(raw[0])
    assert rec["vec"] == (tmp_path / "0.vec").read_bytes()
    ev = list(PairDataset(str(tmp_path / "s"), cfg, train=False))
    assert [s["label"] for s in ev] == [0, 1, 2, 3]
    assert torch.equal(ev[2]["vec"], torch.tensor([2.0, 3.0, 4.0, 5.0]))
    assert ev[0]["item"]["vec"].startswith("sha1:")


def test_records_with_several_media_fields(tmp_path, config, capsys):
    rng = np.random.default_rng(0)
    samples = [{"image": rng.integers(0, 256, (10, 10, 3), dtype=np.uint8),
                "audio": (rng.standard_normal(8000) * 0.1).astype(np.float32),
                "text": f"both {i}", "label": i} for i in range(3)]
    paths = write_shards_from_samples(samples, tmp_path / "s", samples_per_shard=2)
    raw = [s for p in paths for s in iter_shard(p)]
    assert [sorted(k for k in s if not k.startswith("__")) for s in raw] == [["flac", "json", "png"]] * 3
    loader = make_loader(str(tmp_path / "s"), config, batch_size=3, train=False)
    (batch,) = list(loader)
    assert batch["image"]["pixels"].shape == (3, 3, 32, 32) and batch["audio"]["waveform"].shape[0] == 3
    assert set(batch["item"]) == {"image", "audio"}
    # fields= keeps only some media fields; a record with none of them is skipped and counted
    only = list(PairDataset(str(tmp_path / "s"), config, train=False, fields=["audio"]))
    assert all(set(s) == {"text", "audio", "label", "item"} for s in only) and len(only) == 3
    with pytest.raises(InputError, match="no video branch"):
        PairDataset(str(tmp_path / "s"), config, fields=["video"])
    # mixing media-field sets within one batch is refused with the counts
    img_only = {"image": torch.zeros(3, 32, 32), "text": "a"}
    with pytest.raises(InputError, match=r"mixes image\+audio and image samples \(1 image\+audio, 1 image\)"):
        collate_pairs([{**img_only, "audio": torch.zeros(16000)}, img_only], config)
    # data check counts samples by their media fields
    assert data_check(str(tmp_path / "s"), model="tiny") == 0
    assert "ok 3 (3 audio+image), skipped 0" in capsys.readouterr().out
