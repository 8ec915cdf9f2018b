"""Each extra works alone: install the core plus ONE extra into a fresh virtual environment and run
that extra's command once (``make check-extras``; CI runs it after ``make test``).

The test suite runs in one environment holding every extra (``.[test]``), so it cannot see an
extra that misses a package another extra brings (``pip install 'onepeace[search]'`` then
``onepeace index build`` once died for want of pylance). Here each check gets its own venv:

    python -m venv V
    V/bin/pip install --constraint constraints.txt torch==<pinned>   (TORCH_INDEX: that index only)
    V/bin/pip install --constraint constraints.txt 'onepeace-<v>.whl[EXTRA]'

The wheel is built once from a copy of the working tree's files (tracked and untracked, minus what
git ignores), as a user would get it. Every install step takes constraints.txt, so the versions
checked are the pinned, documented ones; pip's cache is reused. Checks (each on a seeded tiny model
made in its venv, the bundled samples in src/onepeace/assets/samples):

    search  onepeace index build + onepeace search --json; a 30 s recording's moments (search --moments)
    serve   onepeace serve --model on 127.0.0.1, a free port; one POST /v1/embeddings; stop it
    video   onepeace embed --video on a generated clip
    export  onepeace export onnx
    scale   onepeace index build --engine ray (a 1-actor local Ray cluster)
    adapt   onepeace adapt, 2 steps of LoRA on image-text pairs, then onepeace embed --adapter (the
            adapted rows differ from the base model's)
    train   onepeace pretrain, 2 steps of a tiny image-text recipe (the core install alone, or the
            training extra when pyproject.toml has one)

Usage: python scripts/check_extras.py [--only search,serve] [--keep] [--workdir DIR] [--json FILE]
Prints one line per check (time, result) and exits 1 when any failed, with the failing command's
last output lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
SAMPLES = ROOT / "src" / "onepeace" / "assets" / "samples"
CHECKS = ("search", "serve", "video", "export", "scale", "integrations", "adapt", "train")
TRAIN_EXTRAS = ("train", "training")  # the training extra's name, if pyproject.toml declares one
DEMO_DATA = ROOT / "src" / "onepeace_train" / "demo" / "assets"  # in the source tree, not in the wheel
MAX_WHEEL_BYTES = 2_000_000  # issue 21: the core wheel carries no demo data set and stays under 2 MB


def check_wheel_contents(wheel: Path) -> str:
    """The wheel is small, carries both packages, the recipes, the page and the samples, the training
    commands' entry point, and no demo data set (that stays in the source tree)."""
    import zipfile

    size = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next((z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    problems = []
    if size >= MAX_WHEEL_BYTES:
        problems.append(f"{size / 1e6:.2f} MB, over {MAX_WHEEL_BYTES / 1e6:.0f} MB")
    demo = [n for n in names if "/demo/assets/" in n or n.endswith(".npz")]
    if demo:
        problems.append(f"carries demo data {demo[:3]}")
    for needed in ("onepeace/__init__.py", "onepeace_train/__init__.py", "onepeace_train/demo/run.py",
                   "onepeace/serve/routes/search.py", "onepeace_train/configs/demo_stage1.toml",
                   "onepeace/serve/static/", "onepeace/assets/samples/"):
        if not any(n.startswith(needed) for n in names):
            problems.append(f"lacks {needed}")
    if "[onepeace.commands]" not in entry_points:
        problems.append("declares no onepeace.commands entry point (the training commands)")
    if problems:
        raise CheckFailed(f"wheel {wheel.name}: " + "; ".join(problems))
    return f"{size / 1e6:.2f} MB, {len(names)} files, no demo data"

# a seeded tiny tri-modal model (2 layers, 32 px images): made by each venv's own onepeace
MAKE_MODEL = """
import sys, torch, onepeace
torch.manual_seed(0)
mods = {"text": {}, "image": {"image_size": 32}, "audio": {}}
if "video" in sys.argv[2:]:
    mods = {"text": {}, "video": {"frames": 2, "image_size": 32, "pool": 1}}
onepeace.create_model("tiny", layers=2, layer_scale_init=0.5, modalities=mods).save_pretrained(sys.argv[1])
"""

MAKE_CLIP = """
import sys, numpy as np
from onepeace.processing.video import write_video
rng = np.random.default_rng(0)
write_video(sys.argv[1], rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), fps=4)
"""


class CheckFailed(Exception):
    pass


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run ``cmd``; its output, or CheckFailed with the command and its last lines."""
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise CheckFailed(f"{' '.join(cmd)}: timed out after {timeout:.0f} s") from e
    if p.returncode != 0:
        tail = "\n".join(p.stdout.strip().splitlines()[-15:])
        raise CheckFailed(f"{' '.join(cmd)}: exit {p.returncode}\n{textwrap.indent(tail, '    ')}")
    return p.stdout


def pinned(name: str) -> str:
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.lower().startswith(name.lower() + "=="):
            return line
    raise SystemExit(f"check_extras: {CONSTRAINTS.name} pins no {name}; add '{name}==<version>' to it")


def project_extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))


def source_copy(dest: Path) -> Path:
    """The working tree's files as a clone (plus untracked, minus ignored) would have them."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         stdout=subprocess.PIPE, check=True).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():  # a deleted but still tracked file is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def build_wheel(work: Path, env: dict[str, str]) -> Path:
    src = source_copy(work / "src-copy")
    isolation = ["--no-build-isolation"] if _has_setuptools() else []  # else pip fetches setuptools
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "-w", str(work / "wheel"), str(src)],
        work, env)
    wheels = sorted((work / "wheel").glob("onepeace-*.whl"))
    if not wheels:
        raise CheckFailed("pip wheel built no onepeace wheel")
    return wheels[-1]


def _has_setuptools() -> bool:
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


def direct_requirements() -> list[str]:
    """The project's own dependencies, core and every extra (names only, sorted, no self-reference)."""
    import re

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    names = {re.split(r"[\[<>=!~; ]", r.strip(), maxsplit=1)[0] for r in reqs}
    names.discard(project["name"])
    return sorted(names, key=str.lower)


def write_pins(python: str) -> int:
    """Rewrite constraints.txt: ``name==version`` of each direct dependency as installed for
    ``python`` (the development venv, after `make test` passed on it)."""
    names = direct_requirements()
    code = ("import sys, importlib.metadata as md\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(n, md.version(n))\n"
            "    except md.PackageNotFoundError: print(n, '-')\n")
    out = subprocess.run([python, "-c", code, *names], stdout=subprocess.PIPE, text=True, check=True).stdout
    pins, missing = [], []
    for line in out.splitlines():
        name, ver = line.split()
        if ver == "-":
            missing.append(name)
        else:
            pins.append(f"{name}=={ver.split('+')[0]}")  # torch 2.13.0+cpu pins 2.13.0: any build of it
    if missing:
        print(f"check_extras: {python} lacks {', '.join(missing)}; install '.[test]' there first", file=sys.stderr)
        return 2
    CONSTRAINTS.write_text(
        "# The versions tested: every install step (Makefile, .ci/run, scripts/check_extras.py) passes\n"
        "# --constraint constraints.txt, so a new release of a dependency cannot change a documented install\n"
        "# unnoticed. The project's direct dependencies only (core and extras, from pyproject.toml), as\n"
        "# installed in the venv that passed `make test`; regenerate after raising a bound with\n"
        "#   .venv/bin/python scripts/check_extras.py --pin .venv/bin/python\n"
        "# then run `make test` and `make check-extras`.\n" + "\n".join(pins) + "\n")
    print(f"check_extras: pinned {len(pins)} packages in {CONSTRAINTS.name}")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ the checks
def check_search(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    media = cwd / "media"
    shutil.copytree(SAMPLES, media)
    run([str(bin_ / "onepeace"), "index", "build", "idx", "media", "--model", "model", "--workers", "0",
         "--batch-size", "4", "--dtype", "fp32"], cwd, env)
    out = run([str(bin_ / "onepeace"), "search", "idx", "--text", "a red circle", "-k", "3", "--json",
               "--dtype", "fp32"], cwd, env)
    hits = json.loads(out[out.index("{"):])["hits"]
    if len(hits) != 3:
        raise CheckFailed(f"onepeace search --json gave {len(hits)} hits, expected 3 (the index holds 6 files)")
    return f"indexed {len(list(media.iterdir()))} files, 3 hits; " + _check_moments(bin_, cwd, env)


#: a 30 s recording (noise, a tone from 12 s to 13 s) for the moment check
MAKE_LONG_WAV = ("import numpy as np, soundfile as sf, sys; r = np.random.default_rng(0); "
                 "w = (r.standard_normal(480000) * 0.01).astype('float32'); "
                 "w[192000:208000] += 0.5 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000); "
                 "sf.write(sys.argv[1], w, 16000)")


def _check_moments(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    """A long recording gets windows (moments) and a moment search answers time ranges."""
    (cwd / "long").mkdir()
    run([str(bin_ / "python"), "-c", MAKE_LONG_WAV, "long/rec.wav"], cwd, env)
    run([str(bin_ / "onepeace"), "index", "build", "momidx", "long", "--model", "model", "--workers", "0",
         "--segment", "both", "--dtype", "fp32"], cwd, env)
    out = run([str(bin_ / "onepeace"), "search", "momidx", "--audio", "media/tone_440hz.wav", "--moments",
               "--json", "--dtype", "fp32"], cwd, env)
    hits = json.loads(out[out.index("{"):])["hits"]
    if not hits or not all(0 <= h["start"] < h["end"] <= 30.0 + 1e-6 for h in hits):
        raise CheckFailed(f"onepeace search --moments --json gave no time ranges within the 30 s recording: {hits}")
    return f"moments: {hits[0]['start']:.1f}-{hits[0]['end']:.1f} s"


def check_scale(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    shutil.copytree(SAMPLES, cwd / "media")
    env = {**env, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    out = run([str(bin_ / "onepeace"), "index", "build", "idx", "media", "--model", "model", "--engine", "ray",
               "--actors", "1", "--batch-size", "4", "--dtype", "fp32"], cwd, env)
    report = json.loads((cwd / out.split("report: ")[1].split()[0]).read_text())
    if report.get("engine") != "ray" or not report["counts"].get("finished"):
        raise CheckFailed(f"the Ray build's report says engine={report.get('engine')}, counts={report.get('counts')}")
    return f"Ray build: {report['counts'].get('added', '?')} rows added"


def check_serve(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    port = free_port()
    log = open(cwd / "serve.log", "w")
    p = subprocess.Popen([str(bin_ / "onepeace"), "serve", "--model", "model", "--host", "127.0.0.1", "--port",
                          str(port), "--dtype", "fp32"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if p.poll() is not None:
                raise CheckFailed(f"onepeace serve exited with {p.returncode}:\n"
                                  + textwrap.indent((cwd / "serve.log").read_text()[-1500:], "    "))
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CheckFailed("onepeace serve did not answer /health within 120 s")
            time.sleep(0.5)
        req = urllib.request.Request(base + "/v1/embeddings", data=json.dumps({"input": ["a red circle"]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
        dim = len(body["data"][0]["embedding"])
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
    return f"POST /v1/embeddings: one {dim}-d embedding"


def check_video(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    run([str(bin_ / "python"), "-c", MAKE_CLIP, "clip.mp4"], cwd, env)
    run([str(bin_ / "onepeace"), "embed", "--model", "model", "--video", "clip.mp4", "--text", "a clip",
         "--out", "emb.npz", "--dtype", "fp32"], cwd, env)
    shapes = run([str(bin_ / "python"), "-c", "import numpy as np; d = np.load('emb.npz'); "
                  "print({k: d[k].shape for k in d.files if k == 'video'})"], cwd, env).strip()
    if "(1," not in shapes:
        raise CheckFailed(f"onepeace embed --video wrote no video embedding: {shapes}")
    return f"embedded a generated clip: {shapes}"


def check_export(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    run([str(bin_ / "onepeace"), "export", "onnx", "model", "onnx"], cwd, env)
    graphs = sorted(p.name for p in (cwd / "onnx").glob("*.onnx"))
    if not graphs:
        raise CheckFailed("onepeace export onnx wrote no .onnx file")
    return "exported " + ", ".join(graphs)


def check_train(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    rows = [{"image": str(p), "text": f"a picture of a {p.stem.replace('_', ' ')}"} for p in sorted(SAMPLES.glob("*.png"))]
    (cwd / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    (cwd / "recipe.toml").write_text(textwrap.dedent("""
        [model]
        preset = "tiny"
        overrides = { layers = 2, modalities = { text = {}, image = { image_size = 32 } } }
        [data]
        train = "pairs.jsonl"
        batch_size = 4
        num_workers = 0
        [optim]
        max_steps = 2
        warmup_steps = 1
        [train]
        output = "run"
        save_every = 0
        log_every = 1
        progress = false
        """))
    run([str(bin_ / "onepeace"), "pretrain", "recipe.toml"], cwd, env)
    losses = [json.loads(line) for line in (cwd / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in losses if "loss" in r]
    if len(losses) != 2 or not all(x == x and abs(x) != float("inf") for x in losses):
        raise CheckFailed(f"onepeace pretrain logged losses {losses}, expected 2 finite ones")
    # the README's main job on the core install: `pip install .` then `onepeace demo` (a few steps of
    # each stage; stage 2's audio augmentation needs scipy, which only the test extra had). The wheel
    # has no demo data set: without ONEPEACE_DEMO_DATA one line says where to get it (exit 2) ...
    demo = [str(bin_ / "onepeace"), "demo", "--out", "demo", "--stage1-steps", "3", "--stage2-steps", "3"]
    bare = {k: v for k, v in env.items() if k != "ONEPEACE_DEMO_DATA"}
    p = subprocess.run(demo, cwd=cwd, env=bare, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if p.returncode != 2 or "ONEPEACE_DEMO_DATA" not in p.stdout or "Traceback" in p.stdout:
        raise CheckFailed(f"onepeace demo without the demo data: exit {p.returncode}, said {p.stdout.strip()[-300:]!r}")
    # ... and with it pointing at the source tree's copy, the demo runs
    out = run(demo, cwd, {**env, "ONEPEACE_DEMO_DATA": str(DEMO_DATA)})
    metrics = json.loads((cwd / "demo" / "metrics.json").read_text())
    if "audio->image" not in metrics.get("retrieval", {}):
        raise CheckFailed("onepeace demo wrote no audio->image retrieval to metrics.json")
    return (f"2 steps, losses {', '.join(f'{x:.3f}' for x in losses)}; onepeace demo (3+3 steps) ran"
            + ("; its search step said LanceDB is missing" if "search: skipped" in (out or "") else ""))


def check_adapt(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    rows = [{"image": str(p), "text": f"a picture of a {p.stem.replace('_', ' ')}"} for p in sorted(SAMPLES.glob("*.png"))]
    (cwd / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    onepeace = str(bin_ / "onepeace")
    run([onepeace, "adapt", "model", "--pairs", "pairs.jsonl", "--out", "adapter", "--steps", "2", "--batch-size", "4",
         "--seed", "0"], cwd, env)
    size = sum(f.stat().st_size for f in (cwd / "adapter").iterdir())
    for out, extra in (("base.npz", []), ("adapted.npz", ["--adapter", "adapter"])):
        run([onepeace, "embed", "--model", "model", "--text", "a red circle", "--image", rows[0]["image"], "--out", out,
             "--dtype", "fp32", *extra], cwd, env)
    diff = run([str(bin_ / "python"), "-c", "import numpy as np; a, b = np.load('base.npz'), np.load('adapted.npz'); "
                "print(max(float(np.abs(a[k] - b[k]).max()) for k in ('text', 'image')))"], cwd, env).strip()
    if not float(diff) > 0:
        raise CheckFailed("onepeace embed --adapter gave the base model's rows (the adapter changed nothing)")
    return f"2 LoRA steps, adapter directory {size / 1024:.0f} KiB; embed --adapter rows differ by up to {float(diff):.1e}"


INTEGRATIONS = """
import numpy as np, torch, onepeace
from torch.utils.data import DataLoader
from onepeace.integrations.mteb import OnePeaceEncoder
from onepeace.integrations.sentence_transformers import load
enc = OnePeaceEncoder("model", dtype="fp32")
texts = ["a red circle", "a blue square"]
rows = enc.encode(DataLoader([{"text": t} for t in texts], batch_size=2), task_metadata=None,
                  hf_split="test", hf_subset="default")
st = load("model", device="cpu").encode(texts)
ref = onepeace.OnePeace.from_pretrained("model", dtype="fp32").embed(text=texts)["text"].numpy()
assert np.allclose(np.asarray(rows), ref, atol=1e-5) and np.allclose(np.asarray(st), ref, atol=1e-5)
print(f"mteb and sentence-transformers rows equal model.embed: {tuple(ref.shape)}")
"""


def check_integrations(bin_: Path, cwd: Path, env: dict[str, str]) -> str:
    return run([str(bin_ / "python"), "-c", INTEGRATIONS], cwd, env).strip().splitlines()[-1]


RUNNERS = {"integrations": check_integrations, "search": check_search, "serve": check_serve, "video": check_video, "export": check_export,
           "scale": check_scale, "adapt": check_adapt, "train": check_train}


def one_check(name: str, extra: str | None, wheel: Path, work: Path, base_env: dict[str, str],
              torch_index: str | None, keep: bool) -> dict:
    d = work / name
    shutil.rmtree(d, ignore_errors=True)  # a previous run's, with --workdir
    d.mkdir()
    venv = d / "venv"
    bin_ = venv / "bin"
    env = {k: v for k, v in base_env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    res: dict = {"check": name, "extra": extra, "ok": False}
    t0 = time.monotonic()
    try:
        run([sys.executable, "-m", "venv", str(venv)], d, env)
        pip = [str(bin_ / "python"), "-m", "pip", "install", "--quiet", "--constraint", str(CONSTRAINTS)]
        run(pip + [pinned("torch")] + (["--index-url", torch_index] if torch_index else []), d, env)
        run(pip + [f"{wheel}[{extra}]" if extra else str(wheel)], d, env)
        res["install_s"] = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        run([str(bin_ / "python"), "-c", MAKE_MODEL, "model"] + (["video"] if name == "video" else []), d, env)
        res["detail"] = RUNNERS[name](bin_, d, env)
        res["run_s"] = round(time.monotonic() - t1, 1)
        res["ok"] = True
    except CheckFailed as e:
        res["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - a check's own bug is reported as that check's failure
        res["error"] = f"{type(e).__name__}: {e}"
    res["total_s"] = round(time.monotonic() - t0, 1)
    if res["ok"] and not keep:  # deleting a venv with torch takes a while: beside the next check
        res["cleanup"] = subprocess.Popen(["rm", "-rf", "--", str(d)])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated checks (default all: {','.join(CHECKS)})")
    ap.add_argument("--workdir", type=Path, help="where the venvs go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the venvs of passed checks (failed ones are always kept)")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    ap.add_argument("--torch-index", default=os.environ.get("TORCH_INDEX") or None,
                    help="wheel index for the torch step only (default: $TORCH_INDEX, else pip's own)")
    ap.add_argument("--pin", metavar="PYTHON", help="instead of checking, rewrite constraints.txt from the "
                    "versions installed for PYTHON (e.g. .venv/bin/python)")
    args = ap.parse_args(argv)
    if args.pin:
        return write_pins(args.pin)
    names = CHECKS if not args.only else tuple(x.strip() for x in args.only.split(",") if x.strip())
    bad = [n for n in names if n not in CHECKS]
    if bad:
        ap.error(f"--only: unknown check {', '.join(bad)}; choose from {', '.join(CHECKS)}")
    extras = project_extras()
    train_extra = next((e for e in TRAIN_EXTRAS if e in extras), None)
    plan = [(n, train_extra if n == "train" else n) for n in names]
    missing = [e for _, e in plan if e is not None and e not in extras]
    if missing:
        print(f"check_extras: pyproject.toml declares no extra {', '.join(missing)}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="onepeace-extras-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    t0 = time.monotonic()
    print(f"check_extras: building the wheel in {work}", flush=True)
    try:
        wheel = build_wheel(work, env)
    except CheckFailed as e:
        print(f"check_extras: the wheel did not build: {e}", file=sys.stderr)
        return 1
    wheel_s = round(time.monotonic() - t0, 1)
    try:
        contents = check_wheel_contents(wheel)
    except CheckFailed as e:
        print(f"check_extras: {e}", file=sys.stderr)
        return 1
    print(f"  wheel {wheel.name} built in {wheel_s} s: {contents}", flush=True)
    results = []
    for name, extra in plan:
        what = f"onepeace[{extra}]" if extra else "onepeace (core)"
        print(f"check_extras: {name:<6} {what} ...", flush=True)
        r = one_check(name, extra, wheel, work, env, args.torch_index, args.keep)
        results.append(r)
        if r["ok"]:
            print(f"  ok    {r['total_s']:6.1f} s (install {r['install_s']} s, run {r['run_s']} s): {r['detail']}",
                  flush=True)
        else:
            print(f"  FAIL  {r['total_s']:6.1f} s: {r['error']}\n  (venv kept in {work / name})", flush=True)
    for r in results:
        if "cleanup" in r:
            r.pop("cleanup").wait()
    total = round(time.monotonic() - t0, 1)
    failed = [r["check"] for r in results if not r["ok"]]
    print(f"check_extras: {len(results) - len(failed)}/{len(results)} passed in {total} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"total_s": total, "wheel_s": wheel_s, "python": sys.version.split()[0],
                                         "results": results},
                                        indent=2) + "\n")
    if not failed and not args.workdir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
