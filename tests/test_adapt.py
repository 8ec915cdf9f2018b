"""``onepeace adapt`` (issue 25): LoRA adaptation to a user's pairs with peft, scored before and after,
resumable after SIGKILL, written as a small adapter directory."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file

import onepeace
from onepeace.cli import main
from onepeace_train.adapt import run as adapt_run
from onepeace_train.adapt import run_adapt
from onepeace_train.adapt.data import read_pairs
from onepeace_train.adapt.lora import add_lora, lora_config

peft = pytest.importorskip("peft")  # the adapt extra (pip install 'onepeace[adapt]'), part of the test extra

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
FAST = dict(batch_size=12, eval_batch_size=32, threads=2, lr=2e-3, val=0.25)


def _image(path, color, rng) -> None:
    arr = np.array(color)[None, None] + rng.normal(0, 25, (32, 32, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)


def _pairs(root, n=32, seed=0) -> str:
    """An easy task: noisy one-colour pictures captioned with their colour (4 labels)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    rows = []
    for i in range(n):
        name = list(COLORS)[i % 4]
        _image(os.path.join(root, f"img{i}.png"), COLORS[name], rng)
        rows.append({"image": f"img{i}.png", "text": f"a {name} picture"})
    return _manifest(os.path.join(root, "pairs.jsonl"), rows)


def _manifest(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _model(root, **modalities):
    torch.manual_seed(0)
    mods = modalities or {"text": {}, "image": {"image_size": 32}}
    m = onepeace.create_model("tiny", layers=2, layer_scale_init=0.1, modalities=mods)
    path = os.path.join(root, "model")
    m.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One adaptation run (12 steps), with the LoRA'd network captured when the adapter is saved."""
    root = tmp_path_factory.mktemp("adapt")
    model, pairs = _model(root), _pairs(root / "data")
    captured = {}
    real = adapt_run.adapter_state

    def capture(network):
        captured["network"] = network
        return real(network)

    adapt_run.adapter_state = capture
    try:
        metrics = run_adapt(model, pairs, root / "out", steps=12, **FAST)
    finally:
        adapt_run.adapter_state = real
    return {"root": root, "model": model, "pairs": pairs, "out": str(root / "out"), "metrics": metrics, **captured}


def test_adapting_raises_held_out_retrieval_on_an_easy_task(trained):
    m = trained["metrics"]
    before, after = m["before"], m["after"]
    assert after["R@1 image->text"] > before["R@1 image->text"]
    assert after["R@1 text->image"] >= before["R@1 text->image"]
    assert after["zero-shot"] > before["zero-shot"] and after["zero-shot"] >= 75.0
    assert before["zero-shot chance"] == 25.0
    assert m["steps"] == 12 and len(m["loss"]) == 12 and m["loss"][-1] < m["loss"][0]
    assert m["pairs"] == {"train": 24, "val": 8, "skipped": 0, "source": trained["pairs"],
                          "held_out": "a seeded 25% of the pairs"}


def test_the_adapter_directory_holds_what_the_contract_names(trained):
    out = trained["out"]
    assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                       "metrics.json", "onepeace_adapter.json"]
    assert not os.path.exists(os.path.join(os.path.dirname(out), ".out.onepeace-adapt"))  # staging removed
    cfg = peft.LoraConfig.from_pretrained(out)
    assert cfg.r == 8 and cfg.lora_alpha == 16
    card = json.loads(open(os.path.join(out, "onepeace_adapter.json")).read())
    from onepeace.checkpoints.fingerprint import model_fingerprint

    assert card["format"] == "onepeace-lora/1" and card["base_fingerprint"] == model_fingerprint(trained["model"])
    assert card["base_name"] == os.path.abspath(trained["model"])
    assert card["modalities"] == ["image", "text"] and card["targets"] == ["ffn", "proj"]
    assert (card["rank"], card["alpha"], card["steps"], card["seed"]) == (8, 16.0, 12, 0)
    assert card["peft_version"] == peft.__version__
    tensors = load_file(os.path.join(out, "adapter_model.safetensors"))
    assert set(tensors) == set(peft.get_peft_model_state_dict(trained["network"]))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert all(".ffns.image." in k or ".ffns.text." in k or k.startswith("proj.") for k in tensors)
    metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert metrics["before"] == trained["metrics"]["before"] and metrics["after"] == trained["metrics"]["after"]
    assert metrics["adapter_bytes"] == os.path.getsize(os.path.join(out, "adapter_model.safetensors")) < 1_000_000
    readme = open(os.path.join(out, "README.md")).read()
    assert readme.startswith("---\nlibrary_name: onepeace") and card["base_fingerprint"] in readme
    assert "R@1 image->text" in readme and "adapter=" in readme


def test_only_lora_weights_change_the_base_stays_bit_identical(trained):
    base = onepeace.OnePeace.from_pretrained(trained["model"], dtype="fp32").state_dict()
    net = trained["network"]
    lora = {n for n, _ in net.named_parameters() if ".lora_" in n}
    assert lora and all(p.requires_grad == (n in lora) for n, p in net.named_parameters())
    for name, value in net.state_dict().items():
        if ".lora_" in name:
            continue
        key = name.replace(".base_layer.", ".")
        assert torch.equal(value, base[key]), name
    moved = [n for n in lora if n.endswith("lora_B.default.weight") and bool(dict(net.named_parameters())[n].any())]
    assert moved  # lora_B starts at zero: training moved it


def _merged_copy(base, lora_net):
    """``base`` with every LoRA layer's W + scale * B @ A written into its plain weights."""
    merged = copy.deepcopy(base)
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for name, module in lora_net.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                params[f"{name}.weight"].add_(module.scaling["default"] * (b @ a))
    return merged


def _tones(root, n=4):
    paths = []
    for i in range(n):
        t = np.arange(8000) / 16000
        path = os.path.join(root, f"tone{i}.wav")
        sf.write(path, (0.3 * np.sin(2 * np.pi * (300 + 170 * i) * t)).astype(np.float32), 16000)
        paths.append(path)
    return paths


def test_lora_embeddings_equal_those_of_a_weight_merged_copy(tmp_path):
    """No fast path (packed text/audio batches, the fused GeGLU, the projections) reads a Linear's
    ``.weight`` past peft: the LoRA'd model embeds as a copy with the deltas merged into its weights."""
    torch.manual_seed(0)
    base = onepeace.create_model("tiny", layers=2, layer_scale_init=0.1,
                                 modalities={"text": {}, "image": {"image_size": 32}, "audio": {}}).eval()
    net = copy.deepcopy(base)
    add_lora(net, lora_config(4, 8, ("ffn", "proj", "attention"), ("text", "image", "audio")))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    merged = _merged_copy(base, net)
    _image(tmp_path / "a.png", COLORS["red"], np.random.default_rng(0))
    inputs = dict(text=["a red picture", "a much longer caption of a green picture"],
                  image=[str(tmp_path / "a.png")], audio=_tones(tmp_path, 3))
    got, want, plain = net.embed(**inputs), merged.embed(**inputs), base.embed(**inputs)
    for m in inputs:
        g, w, p = (torch.as_tensor(x[m]) for x in (got, want, plain))
        assert torch.allclose(g, w, atol=2e-5), (m, float((g - w).abs().max()))
        assert float((g - p).abs().max()) > 1e-3, m


def test_the_trained_adapter_loaded_by_the_library_embeds_as_the_lora_network(trained):
    adapter = pytest.importorskip("onepeace.checkpoints.adapter")
    loaded = onepeace.OnePeace.from_pretrained(trained["model"], adapter=trained["out"], dtype="fp32")
    assert hasattr(adapter, "load_adapter")
    net = trained["network"].eval()
    rows = read_pairs(trained["pairs"]).rows[:3]
    inputs = dict(text=[r["text"] for r in rows], image=[r["image"] for r in rows])
    got, want = loaded.embed(**inputs), net.embed(**inputs)
    for m in inputs:
        assert torch.allclose(torch.as_tensor(got[m]), torch.as_tensor(want[m]), atol=2e-5)


def test_the_cli_trains_prints_the_table_and_merges(tmp_path, capsys):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=16)
    out = tmp_path / "ad"
    assert main(["adapt", model, "--pairs", pairs, "--out", str(out), "--steps", "3", "--batch-size", "8",
                 "--threads", "2", "--val", "0.25"]) == 0
    text = capsys.readouterr().out
    assert "R@1 image->text" in text and "zero-shot" in text and "before" in text and "after" in text
    assert os.path.isfile(out / "adapter_model.safetensors")
    pytest.importorskip("onepeace.checkpoints.adapter")
    assert main(["adapt", "merge", model, str(out), "--out", str(tmp_path / "merged")]) == 0
    merged = onepeace.OnePeace.from_pretrained(tmp_path / "merged")
    adapted = onepeace.OnePeace.from_pretrained(model, adapter=str(out))
    e1, e2 = merged.embed(text=["a red picture"])["text"], adapted.embed(text=["a red picture"])["text"]
    assert torch.allclose(torch.as_tensor(e1), torch.as_tensor(e2), atol=1e-5)


def test_a_folder_of_media_takes_sidecar_captions_else_the_folder_name(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("dog_bark", "car-horn"):
        (tmp_path / label).mkdir()
        for i in range(2):
            _image(tmp_path / label / f"{i}.png", COLORS["red"], rng)
    (tmp_path / "dog_bark" / "1.txt").write_text("  a very loud\nbark ")
    _image(tmp_path / "top.png", COLORS["blue"], rng)
    (tmp_path / "top.txt").write_text("a blue thing")
    p = read_pairs(tmp_path)
    assert p.modalities == ("image", "text")
    got = {os.path.relpath(r["image"], tmp_path): r["text"] for r in p.rows}
    assert got == {"car-horn/0.png": "car horn", "car-horn/1.png": "car horn", "dog_bark/0.png": "dog bark",
                   "dog_bark/1.png": "a very loud bark", "top.png": "a blue thing"}
    (tmp_path / "top.txt").unlink()
    with pytest.raises(onepeace.errors.InputError, match="top.png has no caption"):
        read_pairs(tmp_path)


# ---- bad input: one line, exit 2, before any training ------------------------------------------

def _cli_error(capsys, argv) -> str:
    t0 = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("onepeace adapt: error: "), err
    assert time.perf_counter() - t0 < 30
    return err


@pytest.mark.parametrize("rows, message", [
    ([], "holds no pairs"),
    ([{"image": "img0.png", "text": "a red picture"}], "holds 1 pair: adapt needs at least 2 usable pairs"),
    ([{"audio": "x.wav", "text": "a tone"}] * 6, "the model has no audio branch"),
    ([{"image": "img0.png"}] * 6, "a pair needs exactly two modality fields"),
])
def test_bad_pairs_are_one_line_errors(tmp_path, capsys, rows, message):
    model = _model(tmp_path)
    _pairs(tmp_path / "data", n=4)
    data = _manifest(tmp_path / "data" / "bad.jsonl", rows)
    err = _cli_error(capsys, ["adapt", model, "--pairs", data, "--out", str(tmp_path / "ad")])
    assert message in err, err
    assert not os.path.exists(tmp_path / "ad")


def test_an_existing_out_is_refused_without_force(tmp_path, capsys):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=8)
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "notes.txt").write_text("mine")
    err = _cli_error(capsys, ["adapt", model, "--pairs", pairs, "--out", str(tmp_path / "ad")])
    assert "notes.txt" in err and (tmp_path / "ad" / "notes.txt").read_text() == "mine"
    (tmp_path / "ad" / "notes.txt").unlink()
    (tmp_path / "ad" / "adapter_config.json").write_text("{}")
    err = _cli_error(capsys, ["adapt", model, "--pairs", pairs, "--out", str(tmp_path / "ad")])
    assert "already holds an adapter" in err and "--force" in err


def test_missing_and_corrupt_files_are_skipped_and_counted(tmp_path, capsys):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=20)
    os.remove(tmp_path / "data" / "img3.png")
    (tmp_path / "data" / "img5.png").write_bytes(b"not a png at all")
    assert main(["adapt", model, "--pairs", pairs, "--out", str(tmp_path / "ad"), "--steps", "4",
                 "--batch-size", "8", "--val", "0.25", "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 pairs that could not be loaded" in err
    assert json.loads((tmp_path / "ad" / "metrics.json").read_text())["pairs"]["skipped"] == 2


def test_the_run_stops_when_most_files_are_bad(tmp_path, capsys):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=30)
    for i in range(25):
        os.remove(tmp_path / "data" / f"img{i}.png")
    err = _cli_error(capsys, ["adapt", model, "--pairs", pairs, "--out", str(tmp_path / "ad")])
    assert "could not be used (more than 50%)" in err


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=8)
    base = ["adapt", model, "--pairs", pairs, "--out", str(tmp_path / "ad")]
    assert "--targets takes" in _cli_error(capsys, base + ["--targets", "ffn,mlp"])
    assert "no audio branch" in _cli_error(capsys, base + ["--branches", "audio"])
    assert "not both" in _cli_error(capsys, base + ["--steps", "3", "--epochs", "1"])
    assert "give --out DIR" in _cli_error(capsys, ["adapt", model, "--pairs", pairs])
    with pytest.raises(onepeace.errors.ConfigError, match="no option 'ranks'"):
        run_adapt(model, pairs, tmp_path / "ad", ranks=3)


# ---- resumable after SIGKILL -------------------------------------------------------------------

KILLABLE = textwrap.dedent("""
    import sys, time
    import onepeace_train.adapt.run as R
    save = R.st.save_checkpoint
    def slow(*a, **k):
        r = save(*a, **k)
        print("SAVED", r, flush=True)
        time.sleep(120)
        return r
    R.st.save_checkpoint = slow
    R.run_adapt(sys.argv[1], sys.argv[2], sys.argv[3], steps=8, save_every=3, batch_size=8, threads=2, lr=2e-3,
                val=0.25)
""")


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_to_the_same_adapter(tmp_path):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=20)
    opts = dict(steps=8, save_every=3, batch_size=8, threads=2, lr=2e-3, val=0.25)
    full = run_adapt(model, pairs, tmp_path / "full", **opts)
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), model, pairs, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.stdout.readline().startswith("SAVED"):
                break
        else:
            pytest.fail("the run never saved a checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    staging = tmp_path / ".killed.onepeace-adapt"
    assert (staging / "checkpoints" / "step-00000003.pt").is_file() and not out.exists()
    resumed = run_adapt(model, pairs, out, **opts)  # the same command again: resumes from step 3
    assert resumed["loss"] == full["loss"] and resumed["before"] == full["before"]
    assert resumed["after"] == full["after"]
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not staging.exists()


def test_an_unfinished_run_with_other_options_is_refused_unless_forced(tmp_path):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=8)
    staging = tmp_path / ".ad.onepeace-adapt"
    staging.mkdir()
    (staging / "run.json").write_text(json.dumps({"rank": 3}))
    with pytest.raises(onepeace.errors.OutputError, match="unfinished adapt run .* other settings"):
        run_adapt(model, pairs, tmp_path / "ad", steps=2, **FAST)
    m = run_adapt(model, pairs, tmp_path / "ad", steps=2, force=True, **FAST)
    assert m["steps"] == 2 and not staging.exists()


def test_bf16_checkpointing_one_branch_and_a_held_out_file(tmp_path):
    """--bf16 --checkpointing train; --branches image leaves the text side (and so every other
    pairing) exactly as it was; --val FILE holds out that manifest's pairs."""
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=12)
    held = _manifest(tmp_path / "data" / "held.jsonl", [json.loads(line) for line in open(pairs)][:5])
    m = run_adapt(model, pairs, tmp_path / "ad", steps=2, bf16=True, checkpointing=True, branches="image", val=held,
                  batch_size=6, threads=2)
    assert m["pairs"]["train"] == 12 and m["pairs"]["val"] == 5 and m["pairs"]["held_out"] == held
    card = json.loads((tmp_path / "ad" / "onepeace_adapter.json").read_text())
    assert card["branches"] == ["image"]
    tensors = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    assert tensors and all(".image." in k or k.startswith("proj.image") for k in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    pytest.importorskip("onepeace.checkpoints.adapter")
    base = onepeace.OnePeace.from_pretrained(model, dtype="fp32")
    adapted = onepeace.OnePeace.from_pretrained(model, adapter=str(tmp_path / "ad"), dtype="fp32")
    t = ["a red picture", "a blue picture"]
    assert torch.equal(torch.as_tensor(base.embed(text=t)["text"]), torch.as_tensor(adapted.embed(text=t)["text"]))


def test_denoise_adds_the_denoising_contrast_and_needs_text_pairs(tmp_path, capsys):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=8)
    m = run_adapt(model, pairs, tmp_path / "ad", steps=2, denoise=0.5, batch_size=6, threads=2)
    assert len(m["loss"]) == 2 and "denoising contrast | weight 0.5" in (tmp_path / "ad" / "README.md").read_text()
    tensors = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    assert all(".lora_" in k for k in tensors)  # the decoder trained along is not part of the adapter
    tri = _model(tmp_path / "tri", text={}, image={"image_size": 32}, audio={})
    rows = [{"image": f"img{i}.png", "audio": t} for i, t in enumerate(_tones(tmp_path / "data", 8))]
    data = _manifest(tmp_path / "data" / "ia.jsonl", rows)
    err = _cli_error(capsys, ["adapt", tri, "--pairs", data, "--out", str(tmp_path / "ad2"), "--denoise"])
    assert "--denoise adds the pretraining's denoising contrast of media paired with text" in err


def test_without_peft_adapt_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    model, pairs = _model(tmp_path), _pairs(tmp_path / "data", n=8)
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    err = _cli_error(capsys, ["adapt", model, "--pairs", pairs, "--out", str(tmp_path / "ad")])
    assert "pip install 'onepeace[adapt]'" in err
