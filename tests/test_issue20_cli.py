"""Issue 20, command-line items: outputs go where the message says (3), no traceback a user can
reach (4), `eval retrieval` reads the mixed manifests the project writes (6), one answer for one
input (7: --text and --text-file embed alike), --dtype on try and export (9), and which dtype
`auto` chose (5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onepeace import OnePeace, create_model
from onepeace.cli import build_parser, main
from onepeace.config import get_preset

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny tri-modal model with 32 px images (fast), layer scale 0.1 so that inputs differ."""
    cfg = get_preset("tiny")
    cfg.modalities["image"] = {"image_size": 32}
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "tiny"
    create_model(cfg, layer_scale_init=0.1).save_pretrained(d)
    return str(d)


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
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(OnePeace, "from_pretrained", refuse)


# ---- item 3: outputs go where the message says ------------------------------------------------

def test_embed_names_the_file_it_wrote(tmp_path, capsys, model_dir):
    code, out, err = run(capsys, "embed", "--model", model_dir, "--text", "one", "two", "--out",
                         str(tmp_path / "vectors"))
    assert code == 0, err
    written = str(tmp_path / "vectors.npz")
    assert os.path.isfile(written) and not os.path.exists(tmp_path / "vectors")
    wrote = [line for line in out.splitlines() if line.startswith("wrote")]
    assert wrote and wrote[0].endswith(f"to {written}"), out


@pytest.mark.parametrize("command", ["embed", "zeroshot", "classify", "eval retrieval", "eval task"])
@pytest.mark.parametrize("where", ["existing folder", "folder/", "model folder"])
def test_an_out_folder_or_model_directory_is_refused_before_any_work(tmp_path, capsys, no_model_load, model_dir,
                                                                      command, where):
    from importlib import resources

    image = str(next(p for p in resources.files("onepeace").joinpath("assets", "samples").iterdir()
                     if str(p).endswith(".png")))
    (tmp_path / "existing").mkdir()
    out = {"existing folder": str(tmp_path / "existing"),
           "folder/": str(tmp_path / "existing") + "/",
           "model folder": os.path.join(model_dir, "model.safetensors")}[where]
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"image": image, "text": "x"}) + "\n")
    args = {"embed": ["embed", "--text", "x"],
            "zeroshot": ["zeroshot", "--labels", "a,b", "--image", image],
            "classify": ["classify", "--image", image],
            "eval retrieval": ["eval", "retrieval", "--data", str(data), "--query", "text", "--gallery", "image"],
            "eval task": ["eval", "task", "classify", "--data", str(data)]}[command]
    before = sorted(os.listdir(model_dir))
    line = one_line_error(*run(capsys, *args, "--model", model_dir, "--out", out)[::2], out)
    assert ("model directory" in line) == (where == "model folder"), line
    assert sorted(os.listdir(model_dir)) == before
    assert os.listdir(tmp_path / "existing") == []  # no hidden '.npz' written into it


def test_check_output_file_refuses_folders_and_model_directories(tmp_path, model_dir):
    from onepeace.errors import OutputError
    from onepeace.outputs import check_output_file, is_model_dir

    assert is_model_dir(model_dir) and not is_model_dir(tmp_path)
    for bad in (str(tmp_path) + "/", str(tmp_path / "x") + "/", os.path.join(model_dir, "report.json")):
        with pytest.raises(OutputError):
            check_output_file(bad)
    assert check_output_file(tmp_path / "report.json") == str(tmp_path / "report.json")


# ---- item 4: no traceback ---------------------------------------------------------------------

@pytest.mark.parametrize("template,message", [
    ("{} and {}", "more than one"), ("a {} {", "Single '{'"), ("a {} {name}", "named field"),
    ("no label here", "no '{}'"), ("{{}}", "no '{}'"),
])
def test_bad_templates_are_one_line_errors_before_the_model_loads(tmp_path, capsys, no_model_load, template,
                                                                  message):
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    line = one_line_error(*run(capsys, "zeroshot", "--model", "m", "--labels", "a,b", "--audio", str(wav),
                               "--template", "This is {}.", "--template", template)[::2], "--template", message)
    assert repr(template) in line


def test_a_good_template_with_an_index_still_works(tmp_path, capsys, model_dir):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000)
    code, out, err = run(capsys, "zeroshot", "--model", model_dir, "--labels", "a,b", "--audio", str(wav),
                         "--template", "a sound of {0}; {{braces}}")
    assert code == 0, err


def _closed_pipe_run(*args: str) -> subprocess.CompletedProcess:
    """Run ``onepeace ARGS`` with stdout a pipe whose reader has already gone (as `| head` that
    exited): every write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "onepeace.cli", *args], stdout=w, stderr=subprocess.PIPE,
                              env=ENV, timeout=300, text=True)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [("info", "tiny"), ("info", "one-peace-4b")])
def test_a_closed_pipe_ends_quietly_like_coreutils(args):
    done = _closed_pipe_run(*args)
    assert done.stderr == "", done.stderr
    assert done.returncode == 141  # 128 + SIGPIPE: what `seq 100000 | head -1` leaves in PIPESTATUS


def test_an_unexpected_error_is_one_line_and_the_traceback_comes_with_v(tmp_path, capsys, monkeypatch, model_dir):
    import onepeace.cli.common as cli

    def boom(*args, **kwargs):
        raise RuntimeError("something odd")

    monkeypatch.setattr(cli, "load_model", boom)
    code, out, err = run(capsys, "embed", "--model", model_dir, "--text", "x")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "RuntimeError: something odd" in err


def _png(folder: Path) -> Path:
    from PIL import Image

    p = folder / "digit.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(p)
    return p


# ---- item 7: --text and --text-file embed alike -----------------------------------------------

def test_text_file_lines_embed_exactly_as_text(tmp_path, capsys, model_dir):
    lines = ["  two leading spaces", "trailing space ", "\ttab first", "plain"]
    f = tmp_path / "texts.txt"
    f.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n   \n\n").encode("utf-8"))  # BOM, CRLF, blank lines
    assert run(capsys, "embed", "--model", model_dir, "--text", *lines, "--out", str(tmp_path / "a.npz"))[0] == 0
    assert run(capsys, "embed", "--model", model_dir, "--text-file", str(f), "--out", str(tmp_path / "b.npz"))[0] == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert list(b["text_inputs"]) == lines
    np.testing.assert_array_equal(a["text"], b["text"])
    # and the spaces matter to the model: the stripped text is another vector
    assert run(capsys, "embed", "--model", model_dir, "--text", lines[0].strip(), "--out",
               str(tmp_path / "c.npz"))[0] == 0
    assert not np.array_equal(np.load(tmp_path / "c.npz")["text"][0], a["text"][0])


# ---- item 9: --dtype on try and export; item 5: the dtype auto chose --------------------------

@pytest.mark.parametrize("command", [["try", "--audio", "x.wav"], ["export", "onnx", "M", "OUT"]])
def test_try_and_export_take_dtype(command):
    args = build_parser().parse_args([*command, "--dtype", "fp32"])
    assert args.dtype == "fp32"


def test_export_refuses_a_dtype_it_cannot_write_before_loading(tmp_path, capsys, no_model_load):
    one_line_error(*run(capsys, "export", "onnx", "M", str(tmp_path / "out"), "--dtype", "fp16")[::2], "--dtype fp16")


def test_try_computes_in_the_dtype_given(tmp_path, capsys, monkeypatch, model_dir):
    import onepeace.cli.common as cli

    seen = []
    real = cli.load_model
    monkeypatch.setattr(cli, "load_model", lambda path, dtype, device="cpu", adapter=None: seen.append(dtype) or real(path, dtype))
    import soundfile as sf

    from onepeace_train.demo.data import load_speech

    wav = tmp_path / "seven.wav"
    sf.write(wav, load_speech("test")[0][0], 16000)  # a spoken digit
    code, out, err = run(capsys, "try", "--model", model_dir, "--audio", str(wav), "--dtype", "fp32")
    assert code == 0, err
    assert seen == ["fp32"]


def test_the_dtype_computed_in_is_recorded(tmp_path, capsys, model_dir):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000)
    expect = OnePeace.from_pretrained(model_dir, dtype="auto").precision
    assert expect in PRECISIONS
    code, out, err = run(capsys, "-v", "embed", "--model", model_dir, "--text", "x", "--out", str(tmp_path / "e"))
    assert code == 0, err
    assert f"computing in {expect}" in err
    assert str(np.load(tmp_path / "e.npz")["dtype"]) == expect
    assert run(capsys, "zeroshot", "--model", model_dir, "--labels", "a,b", "--audio", str(wav), "--out",
               str(tmp_path / "z.npz"))[0] == 0
    assert str(np.load(tmp_path / "z.npz")["dtype"]) == expect
    code, out, err = run(capsys, "embed", "--model", model_dir, "--text", "x", "--dtype", "fp32", "--out",
                         str(tmp_path / "f.npz"))
    assert str(np.load(tmp_path / "f.npz")["dtype"]) == "fp32"


@pytest.mark.parametrize("inside", [False, True])
def test_output_directories_in_a_model_directory_are_refused(tmp_path, capsys, no_model_load, model_dir, inside):
    manifest = tmp_path / "d.jsonl"
    manifest.write_text(json.dumps({"image": str(_png(tmp_path)), "text": "x"}) + "\n")
    out = os.path.join(model_dir, "sub") if inside else model_dir
    before = sorted(os.listdir(model_dir))
    for args in (["data", "shards", str(manifest), out], ["export", "onnx", model_dir, out],
                 ["segment", "--model", model_dir, "--image", str(_png(tmp_path)), "--out-dir", out],
                 ["data", "prepare", "esc", "--root", str(tmp_path), "--out", out]):
        one_line_error(*run(capsys, *args)[::2], "model directory")
        assert sorted(os.listdir(model_dir)) == before, args


def test_long_text_warns_and_chunks_from_the_cli(tmp_path, capsys, model_dir):
    """A text over the 70-token limit is one warning line naming its length (not a silent cut), and
    --long-text chunk embeds all of it: the vector differs from the truncated one."""
    long = " ".join(f"word{i}" for i in range(120))
    code, _, err = run(capsys, "embed", "--model", model_dir, "--dtype", "fp32", "--text", long,
                       "--out", str(tmp_path / "t.npz"))
    assert code == 0 and "Traceback" not in err
    warn = [line for line in err.splitlines() if "warning" in line]
    assert len(warn) == 1, err
    assert "240 tokens" in warn[0] and "first 70" in warn[0] and "--long-text chunk" in warn[0], warn[0]
    code, _, err = run(capsys, "embed", "--model", model_dir, "--dtype", "fp32", "--text", long, "--long-text", "chunk",
                       "--out", str(tmp_path / "c.npz"))
    assert code == 0
    cut, whole = np.load(tmp_path / "t.npz")["text"], np.load(tmp_path / "c.npz")["text"]
    assert abs(float(np.linalg.norm(whole)) - 1) < 1e-5 and float((cut * whole).sum()) < 1 - 1e-4
    model = OnePeace.from_pretrained(model_dir, dtype="fp32")
    ref = model.embed(text=[long], long_text="chunk")["text"].numpy()
    np.testing.assert_allclose(whole, ref, atol=1e-6)


def test_recipe_overrides_may_follow_options():
    """`pretrain CFG --output D optim.lr=1e-4` took the override as an unrecognised argument."""
    from onepeace.cli import _is_override

    parser = build_parser()
    args, extra = parser.parse_known_args(["pretrain", "r.toml", "--output", "d", "optim.lr=1e-4"])
    assert extra == ["optim.lr=1e-4"] and all(_is_override(a) for a in extra)
    assert not _is_override("--foo=1") and not _is_override("lr=1") and not _is_override("x")


def test_overrides_after_options_reach_the_recipe(capsys, monkeypatch):
    import onepeace.cli as cli

    seen = {}

    def fake(args):
        seen["overrides"] = list(args.overrides)
        return 0

    real = cli.build_parser

    def with_fake_pretrain():
        p = real()
        p._subparsers._group_actions[0].choices["pretrain"].set_defaults(func=fake)
        return p

    monkeypatch.setattr(cli, "build_parser", with_fake_pretrain)
    assert main(["pretrain", "r.toml", "a.b=1", "--output", "d", "optim.lr=1e-4"]) == 0
    assert seen["overrides"] == ["a.b=1", "optim.lr=1e-4"]
    code, _, err = run(capsys, "pretrain", "r.toml", "--output", "d", "stray")
    assert code == 2 and "unrecognized arguments: stray" in err and len(err.strip().splitlines()) == 1


def test_search_json_says_which_dtype_it_computed_in(tmp_path, capsys, model_dir):
    pytest.importorskip("lancedb")
    texts = tmp_path / "t.txt"
    texts.write_text("a red circle\na blue square\n")
    assert main(["index", "build", str(tmp_path / "db"), "--model", model_dir, "--dtype", "fp32", str(texts)]) == 0
    capsys.readouterr()
    for dtype in ("fp32", "bf16"):
        code, out, err = run(capsys, "-v", "search", str(tmp_path / "db"), "--text", "a red circle", "--json",
                             "--dtype", dtype)
        assert code == 0, err
        assert json.loads(out)["dtype"] == dtype and f"computing in {dtype}" in err
