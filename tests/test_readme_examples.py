"""Every example of README.md and docs/*.md is checked, so that none can drift from the code.

Each fenced code block is found by its first line (``BLOCK KEY`` below) and is either **run** by a
test of this module (``@runs(...)``: in a scratch folder holding small stand-ins for the files the
README names, listed in ``FILES``) or **listed** in ``NOT_RUN`` with the reason it cannot run here
(the 4B weights, the network, a GPU or a cluster). A block that is neither fails
``test_every_block_is_run_or_listed``: adding an example means adding it to one of the two.

Whatever runs or not, every ``onepeace ...`` command line of every block (``\\`` continuations
joined, comments dropped, a synopsis's ``[optional]`` parts included and each ``a|b`` alternative
tried) is parsed by the real parser, ``onepeace.cli.build_parser()``; every Python block compiles
and the ``onepeace`` names it imports exist; so do the ``onepeace.x.y`` names of inline code and
the ``make`` targets the README mentions. Where the README states an output (a printed line, a
table, a count), the test compares it with what the code prints or with the results JSON it cites.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from conftest import DICT, TINY

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------------------- the blocks
@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    text: str  # dedented to the fence's indentation

    @property
    def key(self) -> str:
        """``FILE: its first line``; the tables below name a block by a prefix of it."""
        first = next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")
        return f"{self.file}: {first}"


def _blocks() -> list[Block]:
    out = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
            if m:
                indent, j = len(m.group(1)), i + 1
                while not re.match(r"^\s*```\s*$", lines[j]):
                    j += 1
                body = "\n".join(ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1:j])
                out.append(Block(str(path.relative_to(ROOT)), i + 1, m.group(2), body))
                i = j
            i += 1
    return out


BLOCKS = _blocks()

#: blocks that cannot run here, and why (their commands are still parsed, their Python compiled)
NOT_RUN = {
    "docs/harnesses.md: pip install 'onepeace[integrations]'":
        "an install from the package index (the test extra installs the same packages)",
    "docs/harnesses.md: import mteb":
        "MTEB's ESC50_Zeroshot downloads its data; tests/test_issue23_mteb.py runs the encoder and register()",
    'docs/harnesses.md: make mteb MTEB_MODEL=runs/demo/model MTEB_BENCHMARK="MAEB(v1)"':
        "a whole MTEB benchmark's data; tests/test_issue23_mteb.py runs the command on local tasks",
    "docs/harnesses.md: import torch":
        "the demo model (make demo); tests/test_issue23_hear.py runs the same calls on a tiny model",
    "docs/harnesses.md: make hear-validate HEAR_MODEL=runs/demo/model":
        "installs TensorFlow into a venv of its own (network, minutes)",
    "docs/harnesses.md: from onepeace.integrations.sentence_transformers import load,":
        "the demo model (make demo), and it writes into it; tests/test_issue23_sentence_transformers.py runs the same calls",
    "README.md: onepeace serve runs/demo/index --model runs/demo/model":
        "a server that runs until stopped (its API is run below, the CLI by tests/test_serve.py)",
    "docs/serve.md: onepeace serve runs/demo/index --model runs/demo/model        # then open http://127.0.0":
        "a server that runs until stopped (its API is run below, the CLI by tests/test_serve.py)",
    'docs/python.md: model = onepeace.OnePeace.from_pretrained("org/name")            # or "org/name@v1", r':
        "the Hugging Face Hub (network, an account)",
    "docs/scale.md: onepeace index build photos.db ~/Pictures --model one-peace-dir --engine ray   # a local":
        "starts a Ray cluster (tests/test_search_ray.py runs the engine on a local one)",
    "docs/scale.md: ray start --head --port 6379                      # on the head node":
        "a multi-node Ray cluster",
    "docs/scale.md: export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=us-east-1":
        "an S3 bucket and a Ray cluster (tests/test_issue22_storage.py runs build, search and serve on moto's S3 server)",
    "docs/architecture.md: training:     onepeace_train":
        "the drawing of the layers, not code: tests/test_architecture.py reads it and enforces it",
    'docs/serve.md: filter := {"column": C, "op": OP, "value": V}':
        "a grammar, not code (the JSON example below it is run by test_serve_examples)",
    "docs/checkpoints.md: onepeace download ONE-PEACE --out weights    # one-peace.pt: 3.9 B parameters, 15.5 GB":
        "the network and the 15.5 GB official checkpoint",
    "docs/adapting.md: make demo            # once: runs/demo/model":
        "minutes of training (make demo, then make demo-adapt); tests/test_demo_adapt.py runs demo-adapt on a tiny model",
    "docs/adapting.md: onepeace adapt runs/demo/model --pairs my_pairs.jsonl --out my_adapter":
        "your own pairs; tests/test_adapt.py runs adapt, --adapter and adapt merge on a tiny model",
    'docs/adapting.md: {"audio": "clips/0_george_0.wav", "text": "a voice speaking the number zero"}':
        "one line of a manifest, not code (tests/test_demo_adapt.py checks the manifests demo-adapt writes)",
    "docs/adapting.md: from onepeace import OnePeace":
        "your own pairs; tests/test_adapt.py runs run_adapt and tests/test_demo_adapt.py loads with adapter=",
    "docs/moments.md: onepeace index build field.db ~/Recordings --model one-peace-dir":
        "your own recordings; tests/test_moments_index.py runs index build with moments on generated ones",
    'docs/moments.md: onepeace search field.db --text "a dog barking" --moments':
        "your own recordings; tests/test_moments_search.py runs search --moments (table and --json) on generated ones",
    "docs/moments.md: curl -s localhost:8000/search -H 'Content-Type: application/json'":
        "a running server; tests/test_moments_search.py posts the same body to /search",
}


def _registered_runs() -> dict[str, str]:
    return {k: f.__name__ for f in list(globals().values()) if callable(f) for k in getattr(f, "_runs", ())}


def runs(*keys: str):
    """Mark a test as the one that runs these blocks."""
    def mark(f):
        f._runs = keys
        return f
    return mark


def _matches(key: str) -> list[Block]:
    """The block whose key is ``key``, else those it begins."""
    return [b for b in BLOCKS if b.key == key] or [b for b in BLOCKS if b.key.startswith(key)]


def block(key: str) -> Block:
    found = _matches(key)
    assert len(found) == 1, (f"{len(found)} blocks start with {key!r} (one expected): update the tables of "
                             "tests/test_readme_examples.py")
    return found[0]


def test_every_block_is_run_or_listed():
    run = _registered_runs()
    both = sorted(set(run) & set(NOT_RUN))
    assert not both, f"blocks both run and listed as not run: {both}"
    named = {key: _matches(key) for key in [*run, *NOT_RUN]}
    stale = sorted(k for k, found in named.items() if not found)
    assert not stale, f"tests/test_readme_examples.py names blocks that no longer exist: {stale}"
    twice = sorted(k for k, found in named.items() if len(found) > 1)
    assert not twice, f"these names match several blocks: {twice}"
    covered = {id(found[0]) for found in named.values()}
    new = [f"{b.file}:{b.line}: {b.key[:80]}" for b in BLOCKS if id(b) not in covered]
    assert not new, ("blocks neither run by tests/test_readme_examples.py nor listed in its NOT_RUN table "
                     "(with the reason): " + "; ".join(new))


# ------------------------------------------------------------------------- commands in the blocks
def _logical_lines(text: str) -> list[str]:
    """Shell lines with ``\\`` continuations joined and prompts (``$ ``) dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append((cur + line).strip().removeprefix("$ "))
        cur = ""
    if cur:
        out.append(cur.strip())
    return [ln for ln in out if ln and not ln.startswith("#")]


def _tokens(line: str) -> list[str]:
    toks = shlex.split(line, comments=True)
    for sep in ("|", "&&", ";", ">", "2>"):  # the first command of a pipeline or list
        if sep in toks:
            toks = toks[: toks.index(sep)]
    return toks


def onepeace_args(tokens: list[str]) -> list[str] | None:
    """The arguments given to onepeace by a command line (``onepeace ...``, ``python -m onepeace
    ...``, ``torchrun ... -m onepeace.cli ...``), or None."""
    if tokens and os.path.basename(tokens[0]) == "onepeace":
        return tokens[1:]
    if "-m" in tokens:
        i = tokens.index("-m")
        if i + 1 < len(tokens) and tokens[i + 1] in ("onepeace", "onepeace.cli"):
            return tokens[i + 2:]
    return None


#: values standing for the placeholders of a synopsis (``--batch-size N``), where the parser checks a type
PLACEHOLDERS = {"N": "2", "HEX": "0" * 64, "W": "1", "W...": "1"}


def synopsis_variants(args: list[str]) -> list[list[str]]:
    """A synopsis line as concrete argument lists: ``[optional]`` parts included, ``...`` dropped,
    and one variant per alternative of ``a|b|c`` (all alternatives of the line taken in step)."""
    clean = []
    for t in args:
        t = t.lstrip("[").rstrip("]") if not t.startswith(("{", "'")) else t
        if t in ("...", ""):
            continue
        t = t.removesuffix("...") if t.endswith("...") and t != "..." else t
        clean.append(t)
    alts = [t.split("|") if "|" in t and "=" not in t else [t] for t in clean]
    n = max(len(a) for a in alts) if alts else 1
    return [[PLACEHOLDERS.get(a[min(i, len(a) - 1)], a[min(i, len(a) - 1)]) for a in alts] for i in range(n)]


def _cli_argv(args: list[str]) -> list[str]:
    # as onepeace.cli.main: `--optim.lr=1e-4` is the override `optim.lr=1e-4`
    return [a[2:] if a.startswith("--") and "=" in a and "." in a.split("=", 1)[0] else a for a in args]


def parse(args: list[str]):
    """Parse with the real parser; an AssertionError with argparse's message if it refuses."""
    from onepeace.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(_cli_argv(args))
    except SystemExit as e:
        if e.code in (0, None):  # --version, --help
            return None
        raise AssertionError(f"`onepeace {shlex.join(args)}` is refused by the parser: {err.getvalue().strip()}") \
            from None


def _command_lines(b: Block) -> list[tuple[str, list[str]]]:
    found = []
    for line in _logical_lines(b.text):
        try:
            toks = _tokens(line)
        except ValueError:  # not shell (a table row)
            continue
        args = onepeace_args(toks)
        if args is not None:
            found.append((line, args))
    return found


SHELL_BLOCKS = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


@pytest.mark.parametrize("b", SHELL_BLOCKS, ids=lambda b: f"{b.file}:{b.line}")
def test_every_command_line_parses(b):
    for _line, args in _command_lines(b):
        for variant in synopsis_variants(args):
            parse(variant)


#: inline commands the parser cannot check here, and why
INLINE_NOT_PARSED = {
    'onepeace embed --model DIR --imu walks/ --text "someone walking"':
        "--imu exists once the docs' IMU plug-in is registered (run by test_imu_plugin)",
}


def test_inline_commands_use_real_flags():
    """Inline `onepeace CMD --flag ...` in the prose: the command and its flags exist and their
    values are valid choices (a fragment may leave out required arguments)."""
    checked, spans = 0, []
    for path in DOCS:
        text = " ".join(re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S).split())
        spans += re.findall(r"`(onepeace [^`]+)`", text)
        for span in re.findall(r"`(onepeace [^`]+)`", text):
            if span in INLINE_NOT_PARSED or " --" not in f" {span}" or ":" in " ".join(span.split()[:3]):
                continue
            args = onepeace_args(_tokens(span))
            for variant in synopsis_variants(args or []):
                try:
                    parse(variant)
                except AssertionError as e:
                    if "the following arguments are required" not in str(e):
                        raise
            checked += 1
    assert checked >= 5, checked  # the spans are still found
    assert set(INLINE_NOT_PARSED) <= set(spans), "INLINE_NOT_PARSED names commands the docs no longer hold"


def test_every_command_that_runs_a_model_takes_the_run_options():
    """The synopsis: "every command that runs a model also takes [--device ...] [--dtype ...] [--threads N]"."""
    import argparse

    from onepeace.cli import build_parser

    synopsis = block("docs/cli.md: onepeace --version").text
    claimed = re.search(r"# every command that runs a model also takes (.*)", synopsis).group(1)
    options = re.findall(r"\[(--[\w-]+)", claimed)
    assert options == ["--device", "--dtype", "--threads"], claimed

    def commands(parser, prefix):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in {id(sp): (n, sp) for n, sp in a.choices.items()}.values():
                    yield from commands(sp, [*prefix, name])
        yield prefix, parser

    for prefix, sp in commands(build_parser(), []):
        if "--model" in sp._option_string_actions and prefix != ["data", "check"]:  # data check: processors only
            missing = [o for o in options if o not in sp._option_string_actions]
            assert not missing, f"onepeace {' '.join(prefix)} runs a model but lacks {missing}"


def test_the_command_parser_check_catches_drift():
    """The check above fails on an unknown flag, a bad choice and a missing required argument."""
    for bad in (["embed", "--model", "m", "--no-such-flag"], ["eval", "retrieval", "--model", "m", "--data", "d",
                                                               "--query", "audio", "--gallery", "image",
                                                               "--protocol", "nearest"],
                ["search"], ["zeroshot", "--model", "m"]):
        with pytest.raises(AssertionError, match="refused by the parser"):
            parse(bad)
    assert synopsis_variants(["convert", "a", "b", "[--dtype", "fp32|bf16]"]) == [
        ["convert", "a", "b", "--dtype", "fp32"], ["convert", "a", "b", "--dtype", "bf16"]]


# ---------------------------------------------------------------- Python blocks and inline names
PY_BLOCKS = [b for b in BLOCKS if b.lang == "python"]


def _resolve(dotted: str) -> None:
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    obj, i = None, len(parts)
    while i > 0:
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError as e:
            if e.name is not None and not ".".join(parts[:i]).startswith(e.name):
                raise  # a dependency of the module is missing: not a drift of the README
            i -= 1
    assert obj is not None, f"{dotted}: no such module"
    for j, name in enumerate(parts[i:], i):
        if not (isinstance(obj, type) or type(obj).__name__ == "module"):
            return  # an instance's attribute: nothing static to check
        assert hasattr(obj, name), f"{'.'.join(parts[:j])} has no attribute {name!r} (named as {dotted})"
        obj = getattr(obj, name)


def _onepeace_names(tree: ast.AST) -> list[str]:
    """The dotted ``onepeace`` names a snippet imports or uses through what it imported."""
    bound: dict[str, str] = {}
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "onepeace":
                    names.append(a.name)
                    bound[(a.asname or a.name).split(".")[0]] = a.asname and a.name or "onepeace"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "onepeace":
            for a in node.names:
                names.append(f"{node.module}.{a.name}")
                bound[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in bound:
                names.append(".".join([bound[cur.id], *reversed(chain)]))
    return names


@pytest.mark.parametrize("b", PY_BLOCKS, ids=lambda b: f"{b.file}:{b.line}")
def test_every_python_block_compiles_and_its_onepeace_names_exist(b):
    tree = ast.parse(b.text, filename=f"{b.file}:{b.line}")
    compile(tree, f"{b.file}:{b.line}", "exec")
    for name in _onepeace_names(tree):
        _resolve(name)


#: entry-point groups the docs name, which are no module: plug-ins (modalities, commands) register there
ENTRY_POINT_GROUPS = {"onepeace.commands", "onepeace.modalities"}


def test_inline_onepeace_names_exist():
    """``onepeace.x.y`` in the prose's inline code is a real module or attribute (or one of the
    entry-point groups, the commands' group being declared in pyproject.toml)."""
    assert '[project.entry-points."onepeace.commands"]' in (ROOT / "pyproject.toml").read_text()
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", text):
            for name in re.findall(r"(?<![\w/.])onepeace(?:\.[A-Za-z_]\w*)+", span):
                if span.startswith(("pip ", "[project")) or name in ENTRY_POINT_GROUPS:
                    continue
                _resolve(name)


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, flags=re.M))
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        fenced = [ln for b in SHELL_BLOCKS if b.file == str(path.relative_to(ROOT)) for ln in _logical_lines(b.text)]
        for target in re.findall(r"`make ([a-z][\w-]*)", text) + [ln.split()[1] for ln in fenced
                                                                   if ln.startswith("make ")]:
            assert target in targets, f"{path.name} mentions `make {target}`, which the Makefile lacks"


# ---------------------------------------------------------------------------- the scratch folder
#: the files the README names, and what stands for each in the test's scratch folder (created by
#: ``workspace``): the tiny model, the bundled samples (src/onepeace/assets/samples) or the demo data
FILES = {
    "one-peace-dir": "model: a seeded tiny tri-modal model (2 layers, 64 px), save_pretrained",
    "runs/demo/model": "model: the same tiny model",
    "dog.jpg": "image: red_circle.png as JPEG",
    "park.jpg": "image: green_triangle.png as JPEG",
    "beach.jpg": "image: blue_square.png as JPEG",
    "cow.flac": "audio: tone_440hz.wav as FLAC",
    "bark.wav": "audio: noise.wav",
    "seven.wav": "audio: the demo's first held-out spoken seven",
    "my_seven.wav": "audio: the demo's first held-out spoken seven",
    "a.flac": "audio: a held-out spoken one as FLAC",
    "b.ogg": "audio: a held-out spoken two as Ogg Vorbis",
    "my_seven.jpg": "image: a held-out handwritten seven, dark ink on light paper, 112 px JPEG",
    "~/Pictures": "folder: the three sample PNGs (HOME is the scratch folder's home/)",
    "~/Sounds": "folder: the three sample WAVs",
    "captions.jsonl": "manifest: two sample images with captions and a text-only line",
    "notes.txt": "texts: two lines",
    "/data/cat.jpg": "image: red_circle.png as JPEG (data/cat.jpg)",
    "/data/dog.png": "image: blue_square.png (data/dog.png)",
    "runs/demo/index-media": "folder: 4 held-out digit images and the spoken seven (audio/seven-007.wav)",
    "data/pairs.jsonl": "manifest: the sample images with captions",
    "pairs.jsonl": "manifest: the sample images with captions",
    "configs": "the repository's configs/",
    "weights/one-peace.pt": "the official tiny checkpoint of tests/fixtures/upstream-tiny",
    "weights/dict.txt": "a dict.txt for it (conftest.fixture_dict)",
}
#: absolute paths of the README, relative in the scratch folder
ABSOLUTE = {"/data/cat.jpg": "data/cat.jpg", "/data/dog.png": "data/dog.png"}


def _tiny_model():
    import onepeace

    torch.manual_seed(0)
    return onepeace.create_model("tiny", layers=2, layer_scale_init=0.5,
                                 modalities={"text": {}, "image": {"image_size": 64}, "audio": {}})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    import soundfile as sf
    from PIL import Image

    from onepeace_train.demo.data import DIGIT_WORDS, load_digits, load_speech
    from onepeace_train.demo.search import query_clip_name

    ws = tmp_path_factory.mktemp("readme")
    samples = ROOT / "src" / "onepeace" / "assets" / "samples"
    model = _tiny_model()
    model.save_pretrained(ws / "one-peace-dir")
    model.save_pretrained(ws / "runs" / "demo" / "model")

    def jpg(src, dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Image.open(samples / src).convert("RGB").save(dst, quality=95)

    jpg("red_circle.png", ws / "dog.jpg")
    jpg("green_triangle.png", ws / "park.jpg")
    jpg("blue_square.png", ws / "beach.jpg")
    jpg("red_circle.png", ws / "data" / "cat.jpg")
    shutil.copy(samples / "blue_square.png", ws / "data" / "dog.png")
    tone, rate = sf.read(samples / "tone_440hz.wav")
    sf.write(ws / "cow.flac", tone, rate)
    shutil.copy(samples / "noise.wav", ws / "bark.wav")
    waves, wlabels, _ = load_speech("test")
    first = {d: next(i for i, lab in enumerate(wlabels) if int(lab) == d) for d in (1, 2, 7)}
    for name in ("seven.wav", "my_seven.wav"):
        sf.write(ws / name, waves[first[7]], 16000)
    sf.write(ws / "a.flac", waves[first[1]], 16000)
    sf.write(ws / "b.ogg", waves[first[2]], 16000, format="OGG", subtype="VORBIS")
    images, labels = load_digits("test")
    seven = images[next(i for i, lab in enumerate(labels) if int(lab) == 7)]
    paper = Image.fromarray(255 - seven).resize((112, 112), Image.Resampling.BICUBIC)
    paper.convert("RGB").save(ws / "my_seven.jpg", quality=95)
    home = ws / "home"
    (home / "Pictures").mkdir(parents=True)
    (home / "Sounds").mkdir()
    for f in samples.iterdir():
        if f.suffix == ".png":
            shutil.copy(f, home / "Pictures" / f.name)
        elif f.suffix == ".wav":
            shutil.copy(f, home / "Sounds" / f.name)
    shutil.copy(samples / "red_circle.png", ws / "red_circle.png")
    shutil.copy(samples / "blue_square.png", ws / "blue_square.png")
    lines = [{"image": "red_circle.png", "text": "a red circle"}, {"image": "blue_square.png", "text": "a blue square"}]
    (ws / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines + [{"text": "a dog barking"}]))
    (ws / "notes.txt").write_text("a dog on the grass\nthe sound of rain\n")
    (ws / "data" / "pairs.jsonl").write_text("".join(json.dumps({**x, "image": "../" + x["image"]}) + "\n"
                                                     for x in lines))
    (ws / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    media = ws / "runs" / "demo" / "index-media"
    (media / "audio").mkdir(parents=True)
    (media / "images").mkdir()
    sf.write(media / "audio" / query_clip_name(), waves[first[7]], 16000)
    for i in range(4):
        Image.fromarray(images[i]).save(media / "images" / f"{DIGIT_WORDS[int(labels[i])]}-{i:04d}.png")
    (ws / "configs").symlink_to(ROOT / "configs")
    (ws / "weights").mkdir()
    (ws / "weights" / "one-peace.pt").symlink_to(TINY / "one-peace-tiny.pt")
    (ws / "weights" / "dict.txt").symlink_to(DICT)
    missing = [name for name in FILES if name not in ABSOLUTE and not name.startswith("~")
               and not (ws / name).exists()]
    assert not missing, missing
    return ws


@pytest.fixture
def here(workspace, tmp_path, monkeypatch):
    """A folder of this test's own, seeing every file of the workspace (links to them), as cwd."""
    for entry in workspace.iterdir():
        (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(workspace / "home"))
    return tmp_path


def _map_token(t: str, ws: Path) -> str:
    if t in ABSOLUTE:
        return str(ws / ABSOLUTE[t])
    return os.path.expanduser(t) if t.startswith("~/") else t


def cli(args: list[str], ws: Path) -> tuple[int, str, str]:
    """Run ``onepeace ARGS`` in this process (as the console script would): (status, stdout, stderr)."""
    from onepeace.cli import main

    out, err = io.StringIO(), io.StringIO()
    show = warnings.showwarning
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([_map_token(a, ws) for a in args])
    finally:
        warnings.showwarning = show
    return rc, out.getvalue(), err.getvalue()


def run_ok(args: list[str], ws: Path) -> str:
    rc, out, err = cli(args, ws)
    assert rc == 0, f"`onepeace {shlex.join(args)}` exited {rc}: {err.strip()}"
    return out


def run_python(b: Block, ws: Path, subst: dict[str, str] | None = None, **names) -> dict:
    """Execute a Python block in the cwd, with ``subst`` replacing README text (addresses,
    placeholders) and ``names`` given to it (what earlier sections defined, e.g. ``model``)."""
    code = b.text
    for a, z in {**{f'"{k}"': f'"{ws / v}"' for k, v in ABSOLUTE.items()}, **(subst or {})}.items():
        code = code.replace(a, z)
    ns = {"__name__": f"readme_{b.line}", **names}
    exec(compile(code, f"{b.file}:{b.line}", "exec", dont_inherit=True), ns)
    return ns


# --------------------------------------------------------------------------------- the set-up
@runs("README.md: make demo   # installs into .venv (torch pinned to 2.13.0), then runs the main job o",
      "docs/install.md: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # then: p",
      "docs/install.md: make demo   # installs into .venv (torch pinned to 2.13.0), then runs the main job o",
      "docs/demo.md: make demo   # installs into .venv, then runs the demo: about 10 minutes on 2 CPU cores")
def test_setup_commands():
    """``make`` lines as a dry run (``make -n -B``: every step printed, nothing run); ``pip`` lines
    need the network and are not run. The README's claims: torch pinned to 2.13.0, ``TORCH_INDEX``
    reaching only the torch step."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    for key in test_setup_commands._runs:
        for line in _logical_lines(block(key).text):
            toks = _tokens(line)
            if toks[0] != "make":
                assert toks[:2] == ["pip", "install"], line
                continue
            dry = subprocess.run(["make", "-n", "-B", *toks[1:]], cwd=ROOT, capture_output=True, text=True)
            assert dry.returncode == 0, f"`{line}`: {dry.stderr.strip()}"
            pip_torch = [ln for ln in dry.stdout.splitlines() if "pip install" in ln and "torch==" in ln]
            assert pip_torch and all("torch==2.13.0" in ln for ln in pip_torch), dry.stdout
            index = next((t.split("=", 1)[1] for t in toks if t.startswith("TORCH_INDEX=")), None)
            for ln in dry.stdout.splitlines():
                if index and "pip install" in ln:
                    assert (f"--index-url {index}" in ln) == ("torch==" in ln), ln


def _table_rows(text: str) -> dict[str, list[tuple[str, list[float]]]]:
    """A printed retrieval table as {section title: [(pair, numbers)]}."""
    sections: dict[str, list] = {}
    title = ""
    for line in text.splitlines():
        m = re.match(r"^\s*(\w+->\w+)\s+([\d.\s]+?)(\s+<-.*)?$", line)
        if m:
            sections.setdefault(title, []).append((m.group(1), [float(x) for x in m.group(2).split()]))
        elif line.strip() and "R@1" not in line:
            title = line.strip()
    return sections


@runs("README.md: R@1  chance  x chance", "docs/demo.md: R@1  chance  x chance")
def test_demo_table_is_the_seed_0_run_of_the_results_file():
    seed0 = json.loads((RESULTS / "demo-seeds.json").read_text())["per_seed"]["0"]
    for key in test_demo_table_is_the_seed_0_run_of_the_results_file._runs:
        sections = list(_table_rows(block(key).text).items())
        assert [len(rows) for _, rows in sections] == [6, 4, 4], key
        for (title, rows), part in zip(sections, ("retrieval", "heldout_engine", "heldout_source")):
            for pair, (r1, chance, times) in rows:
                want = seed0[part][pair]
                assert (r1, chance) == (round(want["R@1"], 1), round(want["chance"], 1)), (key, title, pair)
                assert times == round(want["R@1"] / want["chance"], 1), (key, title, pair)


@runs("docs/demo.md: R@1  chance  x chance  frame avg")
def test_demo_video_table_is_the_results_file():
    b = block("docs/demo.md: R@1  chance  x chance  frame avg")
    res = json.loads((RESULTS / "demo-video.json").read_text())
    (rows,) = _table_rows(b.text).values()
    assert [p for p, _ in rows] == ["video->text", "text->video", "video->audio", "video->image"]
    for pair, (r1, chance, times, frame_avg) in rows:
        got, base = res["retrieval"][pair], res["baseline_frame_average"][pair]
        assert (r1, chance, frame_avg) == (round(got["R@1"], 1), round(got["chance"], 1), round(base["R@1"], 1)), pair
        assert times == round(got["R@1"] / got["chance"], 1), pair
    # the figures hold for `make demo-video` as it runs: with the thread count they were measured with
    if shutil.which("make"):
        dry = subprocess.run(["make", "-n", "-B", "demo-video"], cwd=ROOT, capture_output=True, text=True).stdout
        run_line = next(ln for ln in dry.splitlines() if "onepeace demo-video" in ln)
        assert f"OMP_NUM_THREADS={res['environment']['threads']} " in run_line, run_line


def test_demo_search_figures_are_the_results_file():
    """The demo model's search figures in the prose of docs/search.md are benchmarks/results/index.json's."""
    readme = " ".join((ROOT / "docs" / "search.md").read_text(encoding="utf-8").split())
    demo = json.loads((RESULTS / "index.json").read_text())["demo"]
    p = demo["audio_to_image"]
    m = re.search(r"precision@1 ([\d.]+) and precision@10 ([\d.]+), against a chance of ([\d.]+)", readme)
    assert m, "the README no longer states the demo's audio->image precision"
    assert [float(x) for x in m.groups()] == [round(p["k=1"]["precision_at_k"], 2), round(p["k=10"]["precision_at_k"], 2),
                                              round(p["k=10"]["chance"], 2)]
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    labels = [h["label"] for h in demo["composed_query"]["top"]]
    right = sum(lab == demo["composed_query"]["query"]["digit"] for lab in labels)
    m = re.search(r"returned (\w+) sevens(?: and an? (\w+))? in its top (\d+)", readme)
    assert m and m.group(1) == words[right] and int(m.group(3)) == len(labels), (m and m.group(0), labels)
    dist = demo["score_distributions"]
    for name, pair in (("spoken digit → image", "audio->image"), ("text → image", "text->image"),
                       ("image → image", "image->image")):
        m = re.search(re.escape(name) + r": ([−\d.]+) \(([−\d.]+)–([−\d.]+)\) against ([−\d.]+) \(([−\d.]+)–([−\d.]+)\)",
                      readme)
        assert m, name
        got = [float(x.replace("−", "-")) for x in m.groups()]
        want = [round(dist[pair][k][q], 2) for k in ("same_digit", "other_digit") for q in ("p50", "p5", "p95")]
        assert got == want, (name, got, want)


@runs("docs/architecture.md: src/onepeace/", "docs/architecture.md: src/onepeace_train/")
def test_source_tree_exists():
    for package in ("onepeace", "onepeace_train"):
        b = block(f"docs/architecture.md: src/{package}/")
        for line in b.text.splitlines()[1:]:
            name = line.split()[0]
            here = ROOT / "src" / package
            assert (here / name).exists(), f"the architecture page's source tree names {package}/{name}, which is gone"
            # every file the line names: in the folder it starts with, or beside the line's first file
            folder = here / name if name.endswith("/") else here
            for f in re.findall(r"\b(\w+\.(?:py|toml))\b", line.split(None, 1)[1] if " " in line.strip() else ""):
                if "*" not in f:
                    assert (folder / f).exists() or (folder / "configs" / f).exists(), f"{package}/{name} {f}"


# ------------------------------------------------------------------------------- running things
@runs("docs/demo.md: onepeace try --audio my_seven.wav    # prints e.g. \"my_seven.wav: 7 (seven), probabil")
def test_try(here):
    b = block(test_try._runs[0])
    line_format = re.compile(r"^(\S+): (\d) \((\w+)\), probability (0\.\d\d|1\.00); next (\d) (0\.\d\d), (\d) (0\.\d\d)$")
    claimed = re.search(r'prints e\.g\. "(.*)"', b.text).group(1)
    assert line_format.match(claimed), claimed
    for _line, args in _command_lines(b):
        out = run_ok(args, here).splitlines()
        files = [a for flag, a in zip(args, args[1:]) if flag in ("--audio", "--image")]
        assert len(out) == len(files), out
        for printed in out:
            m = line_format.match(printed)
            assert m, printed
            probs = [float(m.group(4)), float(m.group(6)), float(m.group(8))]
            assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 0.015, printed


@runs("README.md: import onepeace")
def test_use_it_from_python(here):
    b = block("README.md: import onepeace")
    ns = run_python(b, here)
    emb = ns["emb"]
    for m, n in (("text", 2), ("image", 1), ("audio", 1)):
        assert emb[m].dtype == torch.float32 and emb[m].shape[0] == n
        torch.testing.assert_close(emb[m].norm(dim=1), torch.ones(n), atol=1e-3, rtol=0)  # L2-normalised (bf16 model)
    claimed = int(re.search(r"([\d,]{9,}) parameters", b.text).group(1).replace(",", ""))
    assert sum(p.numel() for p in ns["big"].parameters()) == claimed
    assert ns["big"].device.type == "meta"
    from onepeace.config import list_presets

    presets = re.search(r"# presets: (.*)", b.text).group(1).split(", ")
    assert sorted(presets) == sorted(list_presets())


@runs("README.md: onepeace info one-peace-dir                      # a model directory, a Hub id or a preset name")
def test_readme_command_line_quickstart(here):
    """The README's command-line quickstart runs, line by line, and does what its comments say."""
    pytest.importorskip("lancedb")
    outs = [run_ok(args, here) for _line, args in _command_lines(block(test_readme_command_line_quickstart._runs[0]))]
    assert len(outs) == 5 and "parameters" in outs[0]
    with np.load(here / "emb.npz") as npz:
        assert npz["text"].shape[0] == 2 and npz["image"].shape[0] == 1 and npz["audio"].shape[0] == 1
    from onepeace.search.store import Index

    assert Index.open(str(here / "photos.db")).modality_counts() == {"image": 5, "text": 1}  # 3 + 2 captioned
    hits = [ln for ln in outs[4].splitlines()[2:] if ln.strip()]
    assert 0 < len(hits) <= 3 and all(" image " in ln for ln in hits), outs[4]


@runs("docs/python.md: import onepeace")
def test_clip_style_api(here):
    """docs/python.md's CLIP-style calls: unit float32 rows, the generic form equal to the named one."""
    ns = run_python(block(test_clip_style_api._runs[0]), here)
    for name, n in (("zt", 2), ("zi", 1), ("za", 1), ("z", 1)):
        z = ns[name]
        assert z.dtype == torch.float32 and z.shape[0] == n, name
        torch.testing.assert_close(z.norm(dim=1), torch.ones(n), atol=1e-5, rtol=0)
    torch.testing.assert_close(ns["z"], ns["zi"])
    assert ns["tok"](["a dog"])["tokens"].shape[0] == 1
    assert "pixels" in ns["proc"](["dog.jpg"])


@runs("docs/cli.md: onepeace --version")
def test_command_line_synopsis(here):
    """The synopsis is parsed line by line (test_every_command_line_parses); of its commands,
    the two that need no inputs run here, the others in their own sections."""
    from onepeace.cli.common import version as _version

    assert run_ok(["--version"], here).strip() == f"onepeace {_version()}"
    assert "parameters" in run_ok(["info", "one-peace-dir"], here)


@runs("docs/export.md: pip install 'onepeace[export]'          # onnx + onnxruntime",
      "docs/export.md: import onnxruntime as ort")
@pytest.mark.slow
def test_onnx_export(here):
    pytest.importorskip("onnxruntime")
    import onepeace
    from onepeace.export.onnx import PARITY_ATOL

    for _line, args in _command_lines(block(test_onnx_export._runs[0])):
        (full, *_) = synopsis_variants(args)  # every option given
        run_ok(full, here)
    assert sorted(p.name for p in (here / "onnx-dir").iterdir()) == ["audio.onnx", "export.json", "image.onnx",
                                                                    "text.onnx"]
    model = onepeace.OnePeace.from_pretrained("one-peace-dir", dtype="fp32")
    ns = run_python(block(test_onnx_export._runs[1]), here, model=model)
    for modality, items in (("text", ["a dog", "a cow"]), ("image", ["dog.jpg"]), ("audio", ["cow.flac"])):
        got = ns["onnx_embed"](modality, items)
        want = model.embed(**{modality: items})[modality].numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= PARITY_ATOL, modality


def _query_weights(out: str) -> dict[str, float]:
    return {q["modality"]: q["weight"] for q in json.loads(out)["query"]}


@runs("docs/search.md: onepeace index build photos.db --model one-peace-dir ~/Pictures ~/Sounds captions.jso")
def test_search_a_collection(here):
    pytest.importorskip("lancedb")
    b = block(test_search_a_collection._runs[0])
    outs = []
    for _line, args in _command_lines(b):
        outs.append(run_ok(args, here))
    from onepeace.search.store import Index

    counts = Index.open(str(here / "photos.db")).modality_counts()
    assert counts == {"image": 5, "audio": 3, "text": 3}, counts  # Pictures + the 2 captioned; Sounds; 1 + 2 texts
    assert "audio" in outs[2] and all(" audio " in ln for ln in outs[2].splitlines()[2:]), outs[2]
    # "A negative weight subtracts a concept": the beach picture minus "people"
    assert _query_weights(outs[4]) == {"image": 1.0, "text": -0.5}
    # the weighted mix: --audio bark.wav --image park.jpg --weights 1 0.5 -> in the order text, image, audio
    assert outs[3].splitlines()[0].startswith("query: 1 x image") and " + 0.5 x audio" in outs[3].splitlines()[0]


@runs("docs/search.md: onepeace search runs/demo/index --audio runs/demo/index-media/audio/seven-007.wav \\")
def test_demo_search_command(here):
    """The command the README shows is the one `make demo` prints, and it runs."""
    pytest.importorskip("lancedb")
    from onepeace_train.demo.search import INDEX, MEDIA, query_clip_name, search_command

    b = block(test_demo_search_command._runs[0])
    ((line, args),) = _command_lines(b)
    printed = search_command(os.path.join("runs", "demo", INDEX),
                             os.path.join("runs", "demo", MEDIA, "audio", query_clip_name()))
    assert shlex.split(printed)[1:] == args
    run_ok(["index", "build", "runs/demo/index", "--model", "runs/demo/model", "runs/demo/index-media"], here)
    out = run_ok(args, here)
    assert len(out.splitlines()) == 2 + 4 and all(" image " in ln for ln in out.splitlines()[2:]), out  # 4 images


@runs("docs/moments.md: import onepeace",
      'docs/moments.md: w = model.embed_windows(audio=["street.wav"], segment="onsets",')
def test_window_embeddings(here):
    """docs/moments.md's window embeddings: the files it names made of a held-out spoken word at a
    known time (field.wav: 25 s, the word at 10 s; meeting.flac and street.wav shorter), then its two
    blocks run: a window per hop with its times, and activity windows around the word."""
    import soundfile as sf

    from onepeace_train.demo.data import load_speech

    waves, _labels, _voices = load_speech("test")
    rng = np.random.default_rng(0)
    for name, seconds in (("field.wav", 25.0), ("meeting.flac", 6.0), ("street.wav", 8.0)):
        wave = (rng.standard_normal(int(seconds * 16000)) * 1e-3).astype(np.float32)
        at = int(min(10.0, seconds / 2) * 16000)
        wave[at : at + len(waves[0])] += waves[0]
        sf.write(here / name, wave, 16000)
    ns = run_python(block(test_window_embeddings._runs[0]), here)
    w = ns["w"]
    assert len(w) == 24 and w.embeddings.shape == (24, ns["model"].config.dim)  # 2 s windows every 1 s over 25 s
    assert w.start[0] == 0.0 and w.end[-1] == 25.0 and 0 <= ns["best"] < 24
    onsets = run_python(block(test_window_embeddings._runs[1]), here, model=ns["model"])["w"]
    assert set(onsets.kind) == {"onsets"} and len(onsets) >= 1
    assert any(s <= 4.0 + 0.1 and e >= 4.0 + len(waves[0]) / 16000 - 0.1 for s, e in zip(onsets.start, onsets.end))


@runs("docs/search.md: from onepeace import OnePeace")
def test_search_from_python(here):
    pytest.importorskip("lancedb")
    b = block("docs/search.md: from onepeace import OnePeace")
    ns = run_python(b, here)
    claimed = re.search(r"hits\[0\]\s+#\s*(\{.*\})", b.text).group(1)
    assert set(ns["hits"][0]) == set(re.findall(r'"(\w+)"', claimed))
    assert all(h["modality"] == "image" for h in ns["hits"]) and 0 < len(ns["hits"]) <= 5


@runs("docs/search.md: from pathlib import Path")
def test_lancedb_embedding_function(here):
    pytest.importorskip("lancedb")
    b = block("docs/search.md: from pathlib import Path")
    code_ns = run_python(b, here)
    table = code_ns["table"]
    assert table.count_rows() == 2
    hits = table.search(Path("bark.wav")).limit(5).to_list()
    assert {h["uri"] for h in hits} == {str(here / "data" / "cat.jpg"), str(here / "data" / "dog.png")}


@runs("docs/serve.md: from openai import OpenAI",
      "docs/serve.md: curl -s localhost:8000/search -F text=\"a handwritten seven\" -F audio=@seven.wav \\",
      'docs/serve.md: {"text": "a dog", "modality": "image", "k": 10,')
def test_serve_examples(here):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    pytest.importorskip("lancedb")
    httpx = pytest.importorskip("httpx")
    import onepeace
    from onepeace.search.store import Index
    from onepeace.serve.app import ServerThread, create_app

    run_ok(["index", "build", "served.db", "--model", "one-peace-dir", "runs/demo/index-media", "notes.txt", "dog.jpg"],
           here)
    model = onepeace.OnePeace.from_pretrained("one-peace-dir")
    png = "data:image/png;base64," + base64.b64encode((here / "data" / "dog.png").read_bytes()).decode()
    with ServerThread(create_app(model, Index.open("served.db"))) as server:
        ns = run_python(block(test_serve_examples._runs[0]), here,
                        {"http://127.0.0.1:8000/v1": f"{server.url}/v1", '"data:image/png;base64,iVBOR..."': f'"{png}"'})
        client = ns["client"]
        got = client.embeddings.create(model="onepeace", input=[png], extra_body={"modality": "image"})
        np.testing.assert_allclose(got.data[0].embedding, model.embed(image=[here / "data" / "dog.png"])["image"][0].numpy(),
                                   atol=1e-5)
        page = (ROOT / "docs" / "serve.md").read_text()
        answer = re.search(r"It answers `(\{\"schema_version\": 1, \"hits\": \[\{.*?\}, \.\.\.\], .*?\})`", page,
                           flags=re.S).group(1)
        hit_keys = set(re.findall(r'"(\w+)"', answer.split("[", 1)[1].split("]", 1)[0]))
        top_keys = set(re.findall(r'"(\w+)"', answer.split("[", 1)[0] + answer.split("]", 1)[1])) | {"hits"}
        if re.search(r"`results`, the same list under its old name, .*deprecated", page, flags=re.S):
            top_keys.add("results")  # the documented deprecated alias
        # the structured filter of the JSON example: accepted, and every hit satisfies it
        req = json.loads(block(test_serve_examples._runs[2]).text)
        res = httpx.post(f"{server.url}/search", json=req, timeout=60)
        assert res.status_code == 200, res.text
        body = res.json()
        assert set(body) == top_keys and body["schema_version"] == 1, body
        assert body["hits"] and all(h["modality"] == "image" and h["name"].endswith(".jpg") and "cat" not in (h["text"] or "")
                   for h in body["hits"]), body
        # the raw SQL `where` of earlier versions is refused over the network
        assert httpx.post(f"{server.url}/search", json={**req, "where": "1=1"}, timeout=60).status_code == 400
        if not shutil.which("curl"):
            pytest.skip("curl is not installed")
        for line in _logical_lines(block(test_serve_examples._runs[1]).text):
            cmd = shlex.split(line.replace("localhost:8000", server.url.removeprefix("http://")))
            res = subprocess.run(cmd, cwd=here, capture_output=True, text=True, timeout=60)
            body = json.loads(res.stdout)
            assert set(body) == top_keys, body
            assert body["hits"] and all(set(h) == hit_keys for h in body["hits"]), body


@runs("docs/checkpoints.md: onepeace convert weights/one-peace.pt one-peace-dir --dict weights/dict.txt")
def test_convert_official(here):
    ((line, args),) = _command_lines(block(test_convert_official._runs[0]))
    (here / "one-peace-dir").unlink()  # the link to the workspace's model: convert writes a new one
    run_ok(args, here)
    assert (here / "one-peace-dir" / "config.json").is_file()


def _recipe(args: list[str]) -> None:
    """What `onepeace pretrain/finetune` does before training: the recipe with its overrides, checked."""
    from onepeace_train.cli import _train_config

    ns = parse(args)
    cfg = _train_config(ns)
    if ns.command == "finetune":
        assert cfg.task.name in ("", None, ns.task), (args, cfg.task.name)
    else:
        assert not cfg.task.name, args


@runs("docs/training.md: onepeace pretrain configs/stage1_vl.toml data.train=data/pairs.jsonl --output runs/s1  ",
      "docs/training.md: onepeace pretrain configs/align_new_modality.toml data.train=clips.jsonl --from runs/demo",
      "docs/training.md: onepeace finetune classify configs/finetune_vggsound.toml model.init=checkpoints/one-peac")
def test_training_recipes_and_shards(here):
    """Training runs for hours (and torchrun runs several processes): the recipes and their
    overrides are loaded and checked as the commands do before training; the data commands run."""
    for key in test_training_recipes_and_shards._runs:
        for _line, args in _command_lines(block(key)):
            if args[0] in ("pretrain", "finetune"):
                _recipe(args)
            elif args[0] == "data":
                out = run_ok(args, here)
                assert out or args[1] == "shards"
            else:  # eval task: needs a fine-tuned model
                parse(args)
    assert list((here / "data" / "shards").glob("*.tar")), "data shards wrote no shard"


@runs("docs/training.md: [data.augment.audio]        # on the 16 kHz waveform, in this order")
def test_augmentation_block():
    from onepeace.data.augment import parse_augment

    cfg = tomllib.loads(block(test_augmentation_block._runs[0]).text)
    parse_augment(cfg["data"]["augment"])
    assert list(cfg["data"]["augment"]) == ["audio", "image"]


# ------------------------------------------------------------------------------ docs/new-modality
IMU = "docs/new-modality.md: # imu.py — an IMU modality for onepeace (a complete plug-in)"


def _register_imu(monkeypatch) -> dict:
    from onepeace.modalities import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # registered for this test only
    ns = {"__name__": "imu"}
    exec(compile(block(IMU).text, "docs/new-modality.md (imu.py)", "exec", dont_inherit=True), ns)
    return ns


@runs(IMU)
def test_imu_plugin(here, monkeypatch):
    import onepeace

    _register_imu(monkeypatch)
    torch.manual_seed(0)
    model = onepeace.create_model("tiny", layers=1, modalities={"text": {}, "imu": {}})
    (here / "walks").mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate((120, 300)):
        np.save(here / "walks" / f"walk-{i}.npy", rng.standard_normal((n, 6)).astype(np.float32))
    emb = model.embed(imu=sorted(str(p) for p in (here / "walks").iterdir()), text=["someone walking"])
    assert emb["imu"].shape == (2, model.config.dim if hasattr(model.config, "dim") else emb["imu"].shape[1])
    np.testing.assert_allclose(np.linalg.norm(emb["imu"], axis=1), 1.0, atol=1e-5)
    # the docs: `onepeace embed --model DIR --imu walks/ --text "someone walking"`
    model.save_pretrained(here / "imu-model")
    run_ok(["embed", "--model", "imu-model", "--imu", "walks/", "--text", "someone walking"], here)
    with pytest.raises(onepeace.errors.InputError, match="must be"):
        model.embed(imu=[np.zeros((50, 3), np.float32)])


@runs('docs/new-modality.md: [project.entry-points."onepeace.modalities"]')
def test_entry_point_block():
    from onepeace.modalities.base import ENTRY_POINT_GROUP

    cfg = tomllib.loads(block(test_entry_point_block._runs[0]).text)
    assert list(cfg["project"]["entry-points"]) == [ENTRY_POINT_GROUP]


@runs('docs/new-modality.md: # video: manifests of {"video": "clip.mp4", "text": "a caption"} lines, or')
def test_docs_align_recipes(here, monkeypatch):
    _register_imu(monkeypatch)
    for _line, args in _command_lines(block(test_docs_align_recipes._runs[0])):
        _recipe(args)


def test_demo_video_hint_names_the_clips_own_digit(tmp_path):
    """The command `onepeace demo-video` suggests pairs a held-out clip with its own digit's caption."""
    pytest.importorskip("av")
    from onepeace_train.demo.data import DIGIT_WORDS
    from onepeace_train.demo.video import EVAL_TEMPLATE, build_clips, example_clip

    manifest = build_clips(str(tmp_path), "test", 3)
    ex = example_clip(manifest)
    first = json.loads(Path(manifest).read_text().splitlines()[0])
    assert ex["video"] == str(tmp_path / "video-test" / first["video"]) and os.path.isfile(ex["video"])
    assert ex["digit"] == first["label"] and ex["text"] == EVAL_TEMPLATE.format(word=DIGIT_WORDS[first["label"]])


if __name__ == "__main__":  # list the blocks and what checks them
    table = {id(_matches(k)[0]): v for k, v in _registered_runs().items() if _matches(k)}
    table.update({id(_matches(k)[0]): "NOT RUN: " + v for k, v in NOT_RUN.items() if _matches(k)})
    for b in BLOCKS:
        print(f"{b.file}:{b.line:<5} {table.get(id(b), 'NEITHER RUN NOR LISTED')}")
    sys.exit(0)
