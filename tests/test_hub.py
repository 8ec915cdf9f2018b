"""Models by name: Hugging Face Hub ids against a hub cache laid out here, publishing with the
HfApi calls recorded. No test reaches the network: HF_HUB_OFFLINE is set and sockets are blocked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import onepeace
from onepeace.checkpoints import hub
from onepeace.checkpoints.format import is_model_file
from onepeace.cli import main
from onepeace.errors import CheckpointError, ConfigError, OutputError

huggingface_hub = pytest.importorskip("huggingface_hub")
hf_constants = pytest.importorskip("huggingface_hub.constants")

SHA_A = "a" * 40
SHA_B = "b" * 40
TEXTS = ["a handwritten seven", "someone saying three"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE for us and for huggingface_hub (which reads it at import), a default cache
    inside tmp, and no socket may connect anywhere."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def refuse(self, address, *a, **k):
        if self.family != getattr(socket, "AF_UNIX", None):
            raise OSError(f"network access in a test: {address}")
        return real_connect(self, address, *a, **k)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny saved models with different weights: name -> (directory, model)."""
    out = {}
    base = tmp_path_factory.mktemp("models")
    for name, seed in (("A", 0), ("B", 1)):
        torch.manual_seed(seed)
        m = onepeace.create_model("tiny", layers=1)
        m.save_pretrained(base / name)
        out[name] = (str(base / name), m)
    return out


def lay_out(cache, repo_id: str, model_dir: str, sha: str, refs: tuple[str, ...] = ("main",),
            skip: tuple[str, ...] = ()) -> str:
    """The Hub cache layout: models--org--name/{blobs/<hash>, snapshots/<sha>/<file> -> blob, refs/<ref>}."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", sha)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for name in sorted(os.listdir(model_dir)):
        if name in skip:
            continue
        data = open(os.path.join(model_dir, name), "rb").read()
        blob = hashlib.sha256(data).hexdigest()
        with open(os.path.join(repo, "blobs", blob), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
    for ref in refs:
        with open(os.path.join(repo, "refs", ref), "w") as f:
            f.write(sha)
    return snap


@pytest.fixture
def cache(tmp_path, models):
    """org/tiny: main -> model A (commit SHA_A); tag v1 -> model B (commit SHA_B)."""
    c = tmp_path / "hub"
    lay_out(c, "org/tiny", models["A"][0], SHA_A, ("main",))
    lay_out(c, "org/tiny", models["B"][0], SHA_B, ("v1",))
    return str(c)


def embed(model) -> torch.Tensor:
    return model.embed(text=TEXTS)["text"]


def test_parse_hub_id():
    assert hub.parse_hub_id("org/name") == ("org/name", None)
    assert hub.parse_hub_id("org/name.v2@v1.0") == ("org/name.v2", "v1.0")
    assert hub.parse_hub_id(f"org/name@{SHA_A}") == ("org/name", SHA_A)
    for path in ("/abs/model", "./org/name", "runs/demo/model", "model", "ckpt/one-peace.pt",
                 "org/model.safetensors", "org--x/name", "org/../name", "~/org", "org/"):
        assert hub.parse_hub_id(path) is None, path


def test_from_pretrained_by_id_offline_embeds_as_the_directory(cache, models, monkeypatch):
    directory, _ = models["A"]
    ref = embed(onepeace.OnePeace.from_pretrained(directory))
    m = onepeace.OnePeace.from_pretrained("org/tiny", cache_dir=cache)
    assert torch.equal(embed(m), ref)
    assert m.name_or_path == "org/tiny"
    assert os.path.realpath(m.source_dir) == os.path.realpath(os.path.join(
        cache, "models--org--tiny", "snapshots", SHA_A))
    # the cache from HF_HUB_CACHE, as set now
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    assert torch.equal(embed(onepeace.OnePeace.from_pretrained("org/tiny")), ref)


def test_revision_pinning(cache, models):
    ref_b = embed(models["B"][1].eval())
    ref_a = embed(models["A"][1].eval())
    assert not torch.allclose(ref_a, ref_b)  # the two revisions are told apart
    for name, kw in (("org/tiny@v1", {}), ("org/tiny", {"revision": "v1"}), (f"org/tiny@{SHA_B}", {}),
                     ("org/tiny", {"revision": SHA_B})):
        assert torch.equal(embed(onepeace.OnePeace.from_pretrained(name, cache_dir=cache, **kw)), ref_b), (name, kw)
    assert torch.equal(embed(onepeace.OnePeace.from_pretrained("org/tiny@main", cache_dir=cache)), ref_a)
    with pytest.raises(CheckpointError, match=r"org/tiny@v9 is neither a local directory nor in the Hugging Face"
                                              r" Hub cache .* HF_HUB_OFFLINE is set.*hf download org/tiny --revision v9"):
        onepeace.OnePeace.from_pretrained("org/tiny@v9", cache_dir=cache)
    with pytest.raises(ConfigError, match="names revision 'v1' but revision='main'"):
        onepeace.OnePeace.from_pretrained("org/tiny@v1", revision="main", cache_dir=cache)
    with pytest.raises(ConfigError, match="applies to a Hugging Face Hub id"):
        onepeace.OnePeace.from_pretrained(models["A"][0], revision="v1")


def test_local_directory_wins_over_the_id(cache, models, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(models["B"][0], work / "org" / "tiny")
    monkeypatch.chdir(work)
    m = onepeace.OnePeace.from_pretrained("org/tiny", cache_dir=cache)
    assert torch.equal(embed(m), embed(models["B"][1].eval()))
    assert m.source_dir == "org/tiny"


def test_cli_embed_and_info_by_id(cache, models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    out = tmp_path / "e.npz"
    assert main(["embed", "--model", "org/tiny", "--text", *TEXTS, "--out", str(out)]) == 0
    got = np.load(out)["text"]
    assert np.array_equal(got, embed(onepeace.OnePeace.from_pretrained(models["A"][0])).numpy())
    assert main(["info", "org/tiny@v1"]) == 0
    assert f"parameters: {models['B'][1].num_parameters():,}" in capsys.readouterr().out
    from onepeace.cli.data import _load_config  # `onepeace data check --model`

    assert _load_config("org/tiny") == models["A"][1].config


def test_missing_id_offline_is_one_line_exit_2(cache, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    assert main(["embed", "--model", "org/missing", "--text", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("onepeace embed: error: model org/missing is neither")
    assert "hf download org/missing" in err and "HF_HUB_OFFLINE" in err and cache in err


def test_path_messages_are_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "one-peace.pt").write_bytes(b"x")
    for model, want in (("/nonexistent/model", "model directory not found: /nonexistent/model"),
                        ("runs/demo/model", "model directory not found: runs/demo/model"),
                        ("runs/model.pt", "model directory not found: runs/model.pt"),
                        ("ckpt/one-peace.pt", "onepeace convert ckpt/one-peace.pt")):
        assert main(["embed", "--model", model, "--text", "x"]) == 2, model
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and want in err, (model, err)


def test_snapshot_without_config_is_not_an_onepeace_model(tmp_path, models):
    lay_out(tmp_path / "hub", "org/other", models["A"][0], SHA_A, skip=("config.json",))
    with pytest.raises(CheckpointError, match="org/other on the Hugging Face Hub has no config.json"):
        onepeace.OnePeace.from_pretrained("org/other", cache_dir=tmp_path / "hub")


def test_not_offline_and_unreachable_is_one_line(cache, monkeypatch):
    """With HF_HUB_OFFLINE unset, a Hub that cannot be reached (here: huggingface_hub's own offline
    switch, nothing leaves the machine) falls back to the cache, then says what failed."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    m = onepeace.OnePeace.from_pretrained("org/tiny", cache_dir=cache)
    assert m.name_or_path == "org/tiny"
    with pytest.raises(CheckpointError, match=r"^cannot reach the Hugging Face Hub for model org/nothere, and it "
                                              r"is not in the cache") as e:
        onepeace.OnePeace.from_pretrained("org/nothere", cache_dir=cache)
    assert "\n" not in str(e.value)


@pytest.fixture
def recorded(monkeypatch):
    """HfApi.create_repo / upload_folder replaced: the calls, and a copy of each uploaded folder."""
    calls: list[tuple[str, dict]] = []
    uploads: list[dict[str, bytes]] = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls.append(("upload_folder", {"repo_id": repo_id, **kw}))
        files = {}
        for name in sorted(os.listdir(folder_path)):
            with open(os.path.join(folder_path, name), "rb") as f:
                files[name] = f.read()
        uploads.append(files)
        return f"https://huggingface.co/{repo_id}/commit/{'c' * 40}"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # huggingface_hub's own offline switch stays on
    return calls, uploads


def _front_matter(card: str) -> str:
    assert card.startswith("---\n")
    return card.split("---\n")[1]


def test_push_to_hub_uploads_model_and_card(models, recorded, tmp_path):
    calls, uploads = recorded
    _, model = models["A"]
    url = hub.push_to_hub(model, "org/pushed", private=True, token="hf_x", commit_message="first",
                          metrics={"retrieval": {"audio->image": {"R@1": 0.61, "chance": 0.1}}, "loss": 1.25},
                          trained_on="bundled digits (demo)")
    assert url.startswith("https://huggingface.co/org/pushed/commit/")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == {"repo_id": "org/pushed", "private": True, "exist_ok": True, "repo_type": "model"}
    assert calls[1][1]["commit_message"] == "first"
    files = uploads[0]
    assert set(files) == {"config.json", "model.safetensors", "README.md"}
    assert json.loads(files["config.json"]) == json.loads(model.config.to_json())
    # the uploaded weights load back to the same model
    back = tmp_path / "back"
    back.mkdir()
    for name in ("config.json", "model.safetensors"):
        (back / name).write_bytes(files[name])
    assert torch.equal(embed(onepeace.OnePeace.from_pretrained(back)), embed(model.eval()))
    card = files["README.md"].decode()
    front = _front_matter(card)
    for line in ("library_name: onepeace", "pipeline_tag: feature-extraction", "license: apache-2.0"):
        assert line in front.splitlines()
    assert "- audio" in front and "- onepeace" in front
    assert f"| parameters | {model.num_parameters():,} |" in card
    assert f"| layers | {model.config.layers} |" in card
    assert "| audio->image | 0.61 | 0.1 |" in card and "| loss | 1.25 |" in card
    assert "- bundled digits (demo)" in card
    assert 'OnePeace.from_pretrained("org/pushed")' in card


def test_push_a_directory_keeps_its_card_and_save_pretrained_pushes(models, recorded, tmp_path):
    calls, uploads = recorded
    d = tmp_path / "m"
    shutil.copytree(models["B"][0], d)
    (d / "README.md").write_text("---\nlibrary_name: onepeace\n---\n# mine\n")
    hub.push_to_hub(str(d), "org/dir")
    assert uploads[-1]["README.md"] == (d / "README.md").read_bytes()
    assert set(uploads[-1]) == {"config.json", "model.safetensors", "README.md"}

    _, model = models["B"]
    out = tmp_path / "saved"
    url = model.save_pretrained(out, push_to_hub=True, repo_id="org/saved")
    assert url.startswith("https://huggingface.co/org/saved/")
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    assert uploads[-1]["README.md"] == (out / "README.md").read_bytes()
    assert "library_name: onepeace" in _front_matter(uploads[-1]["README.md"].decode())
    # a model directory holding its card is still replaced whole with overwrite=True ...
    assert is_model_file("README.md", out) and not is_model_file("README.md")
    model.save_pretrained(out, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    # ... but never a folder holding a README.md of its own
    (out / "README.md").write_text("# my notes\n---\nlibrary_name: onepeace\n")
    with pytest.raises(OutputError, match=r"not part of a model \(README.md\)"):
        model.save_pretrained(out, overwrite=True)


def test_push_failures_are_one_line(models, recorded, monkeypatch):
    calls, _ = recorded
    _, model = models["A"]

    response = SimpleNamespace(headers={}, request=None, status_code=401)
    for error, shown in ((huggingface_hub.utils.HfHubHTTPError("401 Client Error: Unauthorized\nmore detail",
                                                               response=response), "HfHubHTTPError: 401 Client"),
                         (ConnectionError("connection refused"), "ConnectionError: connection refused")):
        def fail(self, error=error, **kw):
            raise error

        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fail)
        with pytest.raises(OutputError, match=f"^cannot push to org/x on the Hugging Face Hub: {shown}") as e:
            hub.push_to_hub(model, "org/x")
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not a Hugging Face Hub repository id"):
        hub.push_to_hub(model, "org/bad--name")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(calls)
    with pytest.raises(OutputError, match="HF_HUB_OFFLINE is set"):
        hub.push_to_hub(model, "org/x")
    assert len(calls) == n


def test_write_model_card_for_a_directory(models, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(models["A"][0], d)
    path = hub.write_model_card(str(d), d, metrics={"R@1": 0.5}, trained_on=["set one", "set two"])
    card = open(path).read()
    assert f"| parameters | {models['A'][1].num_parameters():,} |" in card
    assert "- set one\n- set two" in card and "| R@1 | 0.5 |" in card
    no_data = hub.model_card(models["A"][1])
    assert no_data.count("Not recorded.") == 2
