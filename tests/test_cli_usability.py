"""The command line with many inputs and bad ones: one-line errors (exit 2) before any model is
loaded, folders and several files per flag, input names in the .npz, capped tables, --version,
-v after the command, --device, --dtype fp16, rounded JSON."""

from __future__ import annotations

import copy
import json
import math
import os
import re
from importlib import resources
from importlib.metadata import version

import numpy as np
import pytest
import torch
from PIL import Image

from onepeace import OnePeace, create_model
from onepeace.cli import build_parser, main
from onepeace.config import HeadConfig
from onepeace_train.finetune.job import attach_head

SAMPLES = resources.files("onepeace").joinpath("assets", "samples")
IMAGES = sorted(str(p) for p in SAMPLES.iterdir() if str(p).endswith(".png"))
SOUNDS = sorted(str(p) for p in SAMPLES.iterdir() if str(p).endswith(".wav"))
INFERENCE = ["embed", "zeroshot", "classify", "ground", "segment", "eval retrieval", "eval task"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny saved models: a plain one (layer scale 0.1 so that inputs differ), a classifier, a
    grounder and a segmenter."""
    base = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    out = {"plain": base / "plain"}
    create_model("tiny", layer_scale_init=0.1).save_pretrained(out["plain"])
    small = create_model("tiny", layers=2, modalities={"text": {}, "image": {"image_size": 32}})
    for name, head in (("classify", HeadConfig(num_classes=3, feature_source="image", labels=["a", "b", "c"])),
                       ("ground", HeadConfig(num_classes=4, feature_source="image")),
                       ("segment", HeadConfig(num_classes=2, type="dense", feature_source="image"))):
        out[name] = base / name
        attach_head(copy.deepcopy(small), head).save_pretrained(out[name])
    return {k: str(v) for k, v in out.items()}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line_error(code: int, err: str, *names: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Inputs must be checked before the model is loaded: loading is an error here."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(OnePeace, "from_pretrained", refuse)


# ---- --labels ------------------------------------------------------------------------------

@pytest.mark.parametrize("content,message", [
    ('{"dog": 0, "cat"', "not valid JSON"),
    ('{"dog": "zero", "cat": 1}', "map names to integer indices"),
    ("5", "got int 5"),
    ('"dog"', "got str"),
    ('{"dog": 0, "cat": 2}', "integers 0..1"),
    ('["dog", 3]', "non-empty strings"),
    ("[]", "holds no labels"),
])
@pytest.mark.parametrize("command", ["zeroshot", "convert"])
def test_bad_labels_files_are_one_line_errors(tmp_path, capsys, no_model_load, command, content, message):
    labels = tmp_path / "labels.json"
    labels.write_text(content)
    if command == "zeroshot":
        args = ["zeroshot", "--model", str(tmp_path / "m"), "--labels", str(labels), "--image", IMAGES[0]]
    else:
        args = ["convert", str(tmp_path / "official.pt"), str(tmp_path / "out"), "--labels", str(labels)]
    one_line_error(*run(capsys, *args)[::2], str(labels), message)


def test_labels_forms(tmp_path):
    from onepeace.tasks.zeroshot import parse_labels

    for content in ('{"cat": 1, "dog": 0}', '{"1": "cat", "0": "dog"}', '["dog", "cat"]'):
        (tmp_path / "l.json").write_text(content)
        assert parse_labels(str(tmp_path / "l.json")) == ["dog", "cat"]
    (tmp_path / "l.txt").write_text("dog\n\ncat\n")
    assert parse_labels(str(tmp_path / "l.txt")) == ["dog", "cat"]
    assert parse_labels("dog, cat") == ["dog", "cat"]


def test_bare_number_labels(capsys, no_model_load):
    one_line_error(*run(capsys, "zeroshot", "--model", "m", "--labels", "5", "--image", IMAGES[0])[::2], "'5'")


# ---- numbers, devices, model paths, input files ---------------------------------------------

@pytest.mark.parametrize("args,name", [
    (["zeroshot", "--labels", "a,b", "--image", IMAGES[0], "--top-k", "-3"], "--top-k"),
    (["classify", "--image", IMAGES[0], "--top-k", "-1"], "--top-k"),
    (["classify", "--image", IMAGES[0], "--top-k", "0"], "--top-k"),
    (["segment", "--image", IMAGES[0], "--top-k", "0"], "--top-k"),
    (["embed", "--text", "x", "--threads", "0"], "--threads"),
    (["zeroshot", "--labels", "a,b", "--image", IMAGES[0], "--threads", "0"], "--threads"),
    (["embed", "--text", "x", "--batch-size", "0"], "--batch-size"),
    (["embed", "--text", "x", "--dtype", "fp8"], "--dtype"),
])
def test_bad_numbers_are_usage_errors_in_one_line(capsys, no_model_load, args, name):
    line = one_line_error(*run(capsys, args[0], "--model", "m", *args[1:])[::2], name)
    assert line.startswith(f"onepeace {args[0]}: error:")


def test_model_given_a_file_says_convert_first(tmp_path, capsys, models):
    pt = tmp_path / "one-peace.pt"
    pt.write_bytes(b"not really a checkpoint")
    line = one_line_error(*run(capsys, "embed", "--model", str(pt), "--text", "x")[::2], str(pt))
    assert "onepeace convert" in line and "not found" not in line
    weights = os.path.join(models["plain"], "model.safetensors")
    line = one_line_error(*run(capsys, "embed", "--model", weights, "--text", "x")[::2], weights)
    assert "give the directory" in line


@pytest.mark.parametrize("command", ["embed", "zeroshot", "classify", "ground", "segment"])
def test_missing_inputs_are_reported_before_loading_the_model(tmp_path, capsys, no_model_load, command):
    missing = str(tmp_path / "nothere.png")
    extra = {"zeroshot": ["--labels", "a,b"], "ground": ["--text", "a dog"]}.get(command, [])
    one_line_error(*run(capsys, command, "--model", "m", "--image", IMAGES[0], missing, *extra)[::2],
                   "image file not found", missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(*run(capsys, command, "--model", "m", "--image", str(empty), *extra)[::2],
                   "no image files", str(empty))


def test_eval_sources_are_checked_before_loading_the_model(tmp_path, capsys, no_model_load):
    missing = str(tmp_path / "val.jsonl")
    one_line_error(*run(capsys, "eval", "retrieval", "--model", "m", "--data", missing, "--query", "text",
                        "--gallery", "image")[::2], "data source not found", missing)
    one_line_error(*run(capsys, "eval", "task", "classify", "--model", "m", "--data", missing)[::2],
                   "task manifest not found", missing)


def test_a_non_image_named_jpg_is_named(tmp_path, capsys, models):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(b"this is text, not a JPEG")
    line = one_line_error(*run(capsys, "embed", "--model", models["plain"], "--image", str(fake))[::2], str(fake))
    assert "BytesIO" not in line and "0x" not in line
    bad_audio = tmp_path / "clip.wav"
    bad_audio.write_bytes(b"this is text, not a WAV file")
    line = one_line_error(*run(capsys, "embed", "--model", models["plain"], "--audio", str(bad_audio))[::2],
                          str(bad_audio))
    assert "BytesIO" not in line and "0x" not in line


def test_device_option(capsys, models, monkeypatch):
    code, out, _ = run(capsys, "embed", "--model", models["plain"], "--text", "a", "b", "--device", "cpu")
    assert code == 0 and "embeddings of size" in out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(*run(capsys, "embed", "--model", models["plain"], "--text", "a", "--device", "cuda")[::2],
                   "--device cuda", "CUDA is not available")
    one_line_error(*run(capsys, "embed", "--model", models["plain"], "--text", "a", "--device", "nonsense")[::2],
                   "--device 'nonsense'")
    assert run(capsys, "embed", "--model", models["plain"], "--text", "a", "--device", "auto")[0] == 0
    parser = build_parser()
    for command in INFERENCE:
        args = parser.parse_args([*command.split(), *(["classify"] if command == "eval task" else []), "--model", "m",
                                  *{"eval retrieval": ["--data", "d", "--query", "text", "--gallery", "image"],
                                    "eval task": ["--data", "d"], "zeroshot": ["--labels", "a,b"],
                                    "ground": ["--image", "i", "--text", "t"], "segment": ["--image", "i"]}.get(command, []),
                                  "--device", "auto", "--threads", "2", "--dtype", "fp16"])
        assert (args.device, args.threads, args.dtype) == ("auto", 2, "fp16"), command


@pytest.mark.slow
def test_fp16_on_the_cpu_is_close_to_fp32(tmp_path, capsys, models):
    outs = {}
    for dtype in ("fp32", "fp16"):
        out = tmp_path / f"{dtype}.npz"
        code, _, err = run(capsys, "embed", "--model", models["plain"], "--text", "a cat", "a dog", "--image",
                           *IMAGES, "--audio", SOUNDS[0], "--dtype", dtype, "--out", str(out))
        assert code == 0, err
        outs[dtype] = np.load(out)
    m = OnePeace.from_pretrained(models["plain"], dtype="fp16")
    assert next(m.parameters()).dtype == torch.float16
    depth = len(m.encoder.layers) + 2
    eps16 = float(torch.finfo(torch.float16).eps)
    for k in ("text", "image", "audio"):
        ref, half = outs["fp32"][k].astype(np.float64), outs["fp16"][k].astype(np.float64)
        # weights and activations rounded to fp16 at each sequential stage: eps16 relative to the
        # output magnitude per stage in quadrature, times the safety factor 4 of the parity checks
        tol = 4 * eps16 * np.abs(ref).max() * math.sqrt(depth)
        diff = np.abs(ref - half).max()
        assert 0 < diff <= tol, (k, diff, tol)


# ---- version and verbosity -----------------------------------------------------------------

def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"onepeace {version('onepeace')}"


def test_verbose_before_or_after_the_command():
    parser = build_parser()
    base = ["embed", "--model", "m", "--text", "x"]
    assert parser.parse_args(base).verbose is False
    assert parser.parse_args(["-v", *base]).verbose is True
    assert parser.parse_args([*base, "-v"]).verbose is True
    assert parser.parse_args(["eval", "task", "classify", "--model", "m", "--data", "d", "--verbose"]).verbose is True
    assert parser.parse_args(["-v", "eval", "task", "classify", "--model", "m", "--data", "d"]).verbose is True
    assert parser.parse_args(["data", "check", "src", "-v"]).verbose is True


# ---- many inputs ---------------------------------------------------------------------------

def _images(folder, n: int, start: int = 0) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        path = os.path.join(folder, f"img{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_embed_folders_and_several_files_per_flag(tmp_path, capsys, models):
    root = tmp_path / "photos"
    top = _images(root, 2)
    nested = _images(root / "more", 2, start=2)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    (tmp_path / "texts.txt").write_text("a red circle\n\na blue square\n")
    out = tmp_path / "e.npz"
    code, stdout, err = run(capsys, "embed", "--model", models["plain"], "--image", str(root), IMAGES[0],
                            "--image", IMAGES[1], "--text", "one", "two", "--text-file", str(tmp_path / "texts.txt"),
                            "--audio", *SOUNDS, "--out", str(out))
    assert code == 0, err
    # the left-out file is named in a note, never skipped silently; hidden files are not counted
    assert re.search(rf"note: {re.escape(str(root))}: 4 image files; left out 1 file", err)
    e = np.load(out)  # no pickle needed: names are unicode arrays
    assert e["image_inputs"].dtype.kind == "U"
    assert list(e["image_inputs"]) == top + nested + IMAGES[:2]
    assert list(e["text_inputs"]) == ["one", "two", "a red circle", "a blue square"]
    assert list(e["audio_inputs"]) == SOUNDS
    assert e["image"].shape[0] == 6 and e["text"].shape[0] == 4 and e["audio"].shape[0] == len(SOUNDS)
    # rows in input order: the folder's first image alone gives the same embedding
    alone = tmp_path / "alone.npz"
    assert main(["embed", "--model", models["plain"], "--image", top[0], "--out", str(alone)]) == 0
    np.testing.assert_allclose(np.load(alone)["image"][0], e["image"][0], atol=1e-5)
    assert "text x image" in stdout and "image x audio" in stdout


def test_similarity_tables_stay_readable(tmp_path, capsys, models):
    images = _images(tmp_path / "many", 12)
    texts = [f"text number {i}" for i in range(25)]
    code, out, err = run(capsys, "embed", "--model", models["plain"], "--image", str(tmp_path / "many"),
                         "--text", *texts)
    assert code == 0, err
    lines = out.strip().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("text x image"))
    assert "the 3 most similar of the 12 image inputs" in lines[head]
    body = lines[head + 1:]
    assert len(body) == 21 and body[-1] == "… 5 more text rows; --out FILE.npz saves all the embeddings"
    assert all(len(re.findall(r"img\d\d\.png [+-]\d\.\d{4}", row)) == 3 for row in body[:20])
    assert max(len(line) for line in lines) < 120
    # few columns: a matrix
    code, out, _ = run(capsys, "embed", "--model", models["plain"], "--image", *images[:3], "--text", *texts[:2])
    assert "cosine similarity (rows: text, columns: image)" in out
    assert len(out.strip().splitlines()) == 1 + 1 + 2


def test_zeroshot_and_classify_take_folders(tmp_path, capsys, models):
    images = _images(tmp_path / "imgs", 3)
    out = tmp_path / "z.npz"
    code, stdout, err = run(capsys, "zeroshot", "--model", models["plain"], "--labels", "red,blue,green",
                            "--image", str(tmp_path / "imgs"), "--audio", SOUNDS[0], "--top-k", "2",
                            "--out", str(out))
    assert code == 0, err
    assert [line.split(":")[0] for line in stdout.strip().splitlines()] == images + [SOUNDS[0]]
    z = np.load(out)
    assert list(z["image_inputs"]) == images and list(z["labels"]) == ["red", "blue", "green"]
    code, stdout, err = run(capsys, "classify", "--model", models["classify"], "--image", str(tmp_path / "imgs"),
                            "--out", str(tmp_path / "c.npz"), "--top-k", "1")
    assert code == 0, err
    assert len(stdout.strip().splitlines()) == 3
    c = np.load(tmp_path / "c.npz")
    assert c["logits"].shape == (3, 3) and list(c["image_inputs"]) == images and list(c["labels"]) == ["a", "b", "c"]
    one_line_error(*run(capsys, "classify", "--model", models["classify"], "--image", *images,
                        "--text", "one", "two")[::2], "3 --image", "2 --text")


def test_ground_and_segment_take_folders(tmp_path, capsys, models):
    images = _images(tmp_path / "imgs", 3)
    code, out, err = run(capsys, "ground", "--model", models["ground"], "--image", str(tmp_path / "imgs"),
                         "--text", "the thing", "--batch-size", "2")
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["image"] for r in rows] == images and {r["text"] for r in rows} == {"the thing"}
    assert all(round(v, 2) == v for r in rows for v in r["box"])
    one_line_error(*run(capsys, "ground", "--model", models["ground"], "--image", *images, "--text", "a", "b")[::2],
                   "3 images and 2 texts")
    code, out, err = run(capsys, "segment", "--model", models["segment"], "--image", str(tmp_path / "imgs"),
                         "--out-dir", str(tmp_path / "masks"))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "masks")) == ["img00.png", "img01.png", "img02.png"]


def test_eval_retrieval_json_is_rounded(tmp_path, capsys, models):
    images = _images(tmp_path / "imgs", 4)
    manifest = tmp_path / "val.jsonl"
    manifest.write_text("".join(json.dumps({"image": p, "text": f"picture {i}"}) + "\n" for i, p in enumerate(images)))
    out = tmp_path / "m.json"
    code, _, err = run(capsys, "eval", "retrieval", "--model", models["plain"], "--data", str(manifest),
                       "--query", "text", "--gallery", "image", "--out", str(out))
    assert code == 0, err
    metrics = json.loads(out.read_text())["text->image"]
    floats = [v for v in metrics.values() if isinstance(v, float)]
    assert floats and all(round(v, 4) == v for v in floats)


def test_rounded_is_recursive():
    from onepeace.cli.common import rounded as _rounded

    assert _rounded({"a": 1 / 3, "b": [2 / 3, {"c": 0.123456}], "n": 7, "s": "x"}) == \
        {"a": 0.3333, "b": [0.6667, {"c": 0.1235}], "n": 7, "s": "x"}


def test_embed_progress_counts_every_input(monkeypatch, models):
    import onepeace.progress as progress

    seen = []

    class Bar:
        def __init__(self, enabled, *, total=None, **kw):
            seen.append(("open", enabled, total))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            seen.append(("update", n))

    monkeypatch.setattr(progress, "progress_bar", Bar)
    m = OnePeace.from_pretrained(models["plain"])
    m.embed(text=["a", "b", "c"], image=IMAGES[:2], batch_size=2, progress=True)
    assert seen[0] == ("open", True, 5)
    assert [n for kind, n in seen[1:]] == [2, 1, 2]


def test_progress_bar_shows_only_on_request_or_a_terminal(capsys):
    from onepeace.progress import progress_bar

    for enabled, disabled in ((False, True), (True, False), (None, True)):  # None: stderr is no terminal here
        with progress_bar(enabled, total=3) as bar:
            assert bar.disable is disabled
