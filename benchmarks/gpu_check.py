"""The prepared GPU check (``make gpu-check``): run it whenever a CUDA machine is at hand.

On one GPU, in well under 8 minutes (one H100), it runs and writes to
``benchmarks/results/gpu-check.json`` (with the device's name, torch's and CUDA's versions):

1. **parity on the official tiny fixtures** (the checkpoints and official outputs the parity tests
   use): embeddings from the raw files, token features of text/image/audio, grounding and VGGSound
   logits, each on CUDA in fp32 and bf16 against our CPU fp32 (and CUDA fp32 against the official
   outputs);
2. **parity of random-weight ``base`` and ``large`` models**, CPU fp32 against CUDA fp32 and bf16,
   text/image/audio embeddings;
3. **embedding throughput** of ``base`` and the ``one-peace-4b`` preset (random weights, bf16, built
   on the meta device and materialised on CUDA): text, image and audio batches, items/s and peak
   memory;
4. **a serve smoke test**: ``create_app`` in-process with a ``TestClient`` on the CUDA model, one
   ``POST /v1/embeddings`` against ``model.embed``.

Tolerances are derived, never tuned to a card (the rule of tests/conftest.py): our CPU fp32 result
and a CPU float64 run of the same weights measure our own fp32 rounding error ``own``; a result from
other kernels (CUDA's, the official run's) may err up to ``FOREIGN = 3`` times as much, plus a floor
of one unit of rounding of the output's magnitude per sequential stage (``eps * max|ref| *
sqrt(depth)``). So CUDA fp32 vs CPU fp32: ``(1 + FOREIGN) * (own + floor)``; CUDA fp32 vs the
official outputs: ``2 * FOREIGN * (own + floor)``; CUDA bf16 vs CPU fp32: ``own`` plus FOREIGN times
the bf16 error of our CPU bf16 run (measured against float64 in the same way).
TF32 is switched off, so fp32 on CUDA is fp32.

Without CUDA it says so in one line and exits 0. ``--device cpu --quick`` is a dry run of every
step on the CPU (tiny presets, small batches; tests/test_issue21_gpu_check.py runs it), so the
script cannot rot between GPU machines. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
DEFAULT_OUT = HERE / "results" / "gpu-check.json"
FOREIGN = 3.0  # another implementation's rounding error, as a multiple of ours (tests/conftest.py)
SEED = 4321
#: batches per size: the GPU run, and the --quick dry run (tiny preset)
THROUGHPUT = {
    "base": {"image": 64, "text": 256, "audio": 16},
    "one-peace-4b": {"image": 32, "text": 128, "audio": 8},
}
QUICK_BATCH = {"image": 2, "text": 4, "audio": 1}
PARITY_BATCH = {"image": 2, "text": 8, "audio": 2}


class Check:
    """The figures and verdicts of one run, written as the JSON's ``checks``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def compare(self, section: str, what: str, ours, ref, tol: float, pad=None, **extra: Any) -> bool:
        import numpy as np

        a, b = _np(ours), _np(ref)
        if a.shape != b.shape:
            self.rows.append({"section": section, "what": what, "ok": False,
                              "error": f"shape {a.shape} vs {b.shape}"})
            return False
        if pad is not None:
            keep = ~np.asarray(pad, dtype=bool)
            a, b = a[keep], b[keep]
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        ok = bool(np.isfinite(a).all()) and diff <= tol
        self.rows.append({"section": section, "what": what, "max_abs_diff": _r(diff), "tolerance": _r(tol),
                          "ok": ok, **extra})
        return ok

    def fail(self, section: str, what: str, error: str) -> None:
        self.rows.append({"section": section, "what": what, "ok": False, "error": error})

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)


def _np(x):
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _r(x: float) -> float:
    return float(f"{x:.3g}")


def _maxdiff(a, b, pad=None) -> float:
    import numpy as np

    a, b = _np(a), _np(b)
    if pad is not None:
        keep = ~np.asarray(pad, dtype=bool)
        a, b = a[keep], b[keep]
    return float(np.abs(a - b).max()) if a.size else 0.0


def _magnitude(x, pad=None) -> float:
    import numpy as np

    a = np.abs(_np(x))
    if pad is not None:
        a = a[~np.asarray(pad, dtype=bool)]
    return float(a.max()) if a.size else 0.0


def _eps(dtype) -> float:
    import torch

    return float(torch.finfo(dtype).eps)


def tolerances(cpu32, cpu64, cpubf16, pad=None, depth: int = 1) -> dict[str, float]:
    """The derived tolerances of one output (module docstring): vs CPU fp32 for CUDA fp32 and bf16,
    vs the official fp32 outputs for CUDA fp32."""
    import torch

    own = _maxdiff(cpu32, cpu64, pad)
    mag = _magnitude(cpu64, pad)
    floor = _eps(torch.float32) * mag * math.sqrt(depth)
    own16 = _maxdiff(cpubf16, cpu64, pad)  # never ~0 in bf16: no floor of its own
    return {"fp32": (1 + FOREIGN) * (own + floor), "official": 2 * FOREIGN * (own + floor),
            "bf16": own + FOREIGN * (own16 + floor)}


# ------------------------------------------------------------------------------------ facts
def device_facts(device: str) -> dict[str, Any]:
    import platform

    import torch

    facts: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                             "python": platform.python_version()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        facts.update({"device_name": torch.cuda.get_device_name(device),
                      "compute_capability": f"{props.major}.{props.minor}",
                      "memory_gb": round(props.total_memory / 1e9, 1),
                      "cudnn": torch.backends.cudnn.version(), "bf16_supported": torch.cuda.is_bf16_supported()})
    else:
        facts["device_name"] = platform.processor() or platform.machine()
    try:
        from _bench import git_facts

        facts.update(git_facts())
    except Exception:  # noqa: BLE001 - facts are best effort
        pass
    return facts


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _to(batch: dict, device: str) -> dict:
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "sizes"}


# ------------------------------------------------------------------------ 1. official fixtures
def find_fixtures() -> tuple[Path, Path] | None:
    """(folder of one-peace-tiny.pt and the reference .npz files, the fairseq dict.txt), wherever
    they are kept: $ONEPEACE_FIXTURES, inside the repository, or ../shared next to it."""
    roots = [os.environ.get("ONEPEACE_FIXTURES", "")]
    roots += sorted(glob.glob(str(ROOT / "tests" / "**" / "one-peace-tiny.pt"), recursive=True))
    roots += [str(ROOT.parent / "shared" / "fixtures" / "upstream-tiny" / "tiny")]
    for r in filter(None, roots):
        d = Path(r).parent if r.endswith(".pt") else Path(r)
        if not ((d / "one-peace-tiny.pt").is_file() and (d / "reference_outputs.npz").is_file()):
            continue
        # the trimmed in-repository fixtures come with the official rows they use (as the tests read them)
        dicts = [d / "dict_rows.json", d / "dict.txt", ROOT.parent / "shared" / "data" / "onepeace-assets" / "dict.txt"]
        for p in dicts:
            if p.is_file():
                return d, p
    return None


def fixture_dict(rows_json: Path, path: Path) -> Path:
    """A fairseq dict.txt that agrees with the official one on every token the fixtures use, from
    the trimmed fixtures' ``dict_rows.json``: ``fixture_dict`` of tests/conftest.py, which documents it."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    sys.path.insert(0, tests)
    try:
        from conftest import fixture_dict as build
    finally:
        sys.path.remove(tests)
    return build(path, rows_json)


def _variants(path: Path, device: str) -> dict[str, Any]:
    """The same checkpoint as CPU fp32 / float64 / bf16 and device fp32 / bf16."""
    import torch

    import onepeace

    return {"cpu32": onepeace.OnePeace.from_pretrained(path, dtype="fp32"),
            "cpu64": onepeace.OnePeace.from_pretrained(path, dtype=torch.float64),
            "cpubf16": onepeace.OnePeace.from_pretrained(path, dtype="bf16"),
            "dev32": onepeace.OnePeace.from_pretrained(path, dtype="fp32", device=device),
            "devbf16": onepeace.OnePeace.from_pretrained(path, dtype="bf16", device=device)}


def _judge(check: Check, section: str, what: str, outs: dict[str, Any], official=None, pad=None,
           depth: int = 1) -> None:
    """Device fp32 and bf16 against CPU fp32 (and device fp32 against the official outputs)."""
    dev = outs["dev32"].device.type
    tol = tolerances(outs["cpu32"], outs["cpu64"], outs["cpubf16"], pad, depth)
    check.compare(section, f"{what}: {dev} fp32 vs cpu fp32", outs["dev32"], outs["cpu32"], tol["fp32"], pad)
    check.compare(section, f"{what}: {dev} bf16 vs cpu fp32", outs["devbf16"], outs["cpu32"], tol["bf16"], pad)
    if official is not None:
        check.compare(section, f"{what}: {dev} fp32 vs official", outs["dev32"], official, tol["official"], pad)


def parity_fixtures(check: Check, device: str, work: Path) -> None:
    import json

    import numpy as np
    import torch

    from onepeace.checkpoints.official import convert
    from onepeace.errors import OnePeaceWarning

    section = "parity: official tiny fixtures"
    found = find_fixtures()
    if found is None:
        check.fail(section, "fixtures", "the official tiny fixtures were not found (one-peace-tiny.pt, "
                   "reference_*.npz, dict.txt); set ONEPEACE_FIXTURES to their folder")
        return
    fix, dict_txt = found
    if dict_txt.suffix == ".json":
        dict_txt = fixture_dict(dict_txt, work / "dict.txt")
    ref_in, ref_out = dict(np.load(fix / "reference_inputs.npz")), dict(np.load(fix / "reference_outputs.npz"))
    texts = json.loads((fix / "inputs" / "texts.json").read_text())
    images = [str(fix / "inputs" / f"image{i}.png") for i in range(2)]
    audios = [str(fix / "inputs" / f"audio{i}.wav") for i in range(2)]
    paths = {}
    for name in ("one-peace-tiny", "one-peace-tiny-grounding-refcocog", "one-peace-tiny-vggsound"):
        convert(fix / f"{name}.pt", work / name, dict_txt)
        paths[name] = work / name

    models = _variants(paths["one-peace-tiny"], device)
    depth = len(models["cpu32"].encoder.layers) + 2
    for m in ("text", "image", "audio"):
        kw = {"text": texts["texts"], "image": images, "audio": audios}[m]
        with warnings.catch_warnings():  # one fixture text is over the 70-token limit, as officially
            warnings.simplefilter("ignore", OnePeaceWarning)
            outs = {k: v.embed(**{m: kw}, batch_size=1)[m].to(next(v.parameters()).device) for k, v in models.items()}
        _judge(check, section, f"{m} embeddings from the raw files", outs, ref_out[f"{m}_embed_single"],
               depth=depth + 1)

    def audio_batch():
        return {"waveform": torch.tensor(ref_in["audio_src_audios"]),
                "padding_mask": torch.tensor(ref_in["audio_padding_masks"])}

    for m in ("text", "image", "audio"):
        outs = {}
        for k, v in models.items():
            dev = next(v.parameters()).device.type
            if m == "text":
                batch = {"tokens": v.processor.get("text")(texts["texts"])["tokens"]}
            elif m == "image":
                batch = {"pixels": torch.tensor(ref_in["image_src_images"])}
            else:
                batch = audio_batch()
            v.adapters["audio"].official_padding_leak = m == "audio"  # the official outputs' padding
            try:
                with torch.no_grad():
                    outs[k] = v.encode(**{m: _to(batch, dev)}).features[m]
            finally:
                v.adapters["audio"].official_padding_leak = False
        pad = ref_out.get(f"{m}_padding_mask", ref_out.get(f"{m}_padding_mask_out"))
        _judge(check, section, f"{m} token features", outs, ref_out[f"{m}_token_features"], pad, depth)

    g = _variants(paths["one-peace-tiny-grounding-refcocog"], device)
    imgs = [str(fix / "inputs" / a) for a, _ in texts["grounding_pairs"]]
    caps = [t for _, t in texts["grounding_pairs"]]
    outs = {k: v.classify(image=imgs, text=caps).to(next(v.parameters()).device) for k, v in g.items()}
    _judge(check, section, "grounding logits", outs, ref_out["grounding_logits"],
           depth=len(g["cpu32"].encoder.layers) + 3)

    v_ = _variants(paths["one-peace-tiny-vggsound"], device)
    outs = {}
    for k, v in v_.items():
        v.adapters["audio"].official_padding_leak = True
        try:
            with torch.no_grad():
                outs[k] = v.classify_batch(audio=_to(audio_batch(), next(v.parameters()).device.type))
        finally:
            v.adapters["audio"].official_padding_leak = False
    _judge(check, section, "VGGSound logits", outs, ref_out["vggsound_logits"],
           depth=len(v_["cpu32"].encoder.layers) + 3)


# ----------------------------------------------------------------- 2. random base/large models
def parity_random(check: Check, device: str, sizes: list[str]) -> None:
    import torch
    from _bench import make_batches, randomize_

    import onepeace

    for size in sizes:
        section = f"parity: random {size}"
        cpu32 = onepeace.create_model(size, device="meta", init=False).to_empty(device="cpu")
        randomize_(cpu32, SEED)
        cpu32.eval()
        state = cpu32.state_dict()
        variants = {"cpu32": cpu32}
        for k, dt, dev in (("cpu64", torch.float64, "cpu"), ("cpubf16", torch.bfloat16, "cpu"),
                           ("dev32", torch.float32, device), ("devbf16", torch.bfloat16, device)):
            m = onepeace.create_model(size, device="meta", init=False).to(dt).to_empty(device=dev)
            m.load_state_dict(state)
            variants[k] = m.eval()
        batches, _, _ = make_batches(cpu32, PARITY_BATCH)
        depth = len(cpu32.encoder.layers) + 3
        for name, batch in batches.items():
            outs = {}
            for k, m in variants.items():
                with torch.inference_mode():
                    outs[k] = m.embed_batch(name, _to(batch, next(m.parameters()).device.type)).float()
            _judge(check, section, f"{name} embeddings", outs, depth=depth)
        del variants, cpu32, state
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ 3. throughput
def throughput(check: Check, device: str, plan: dict[str, dict[str, int]], runs: int, warmup: int) -> dict:
    import torch
    from _bench import make_batches, median

    import onepeace

    out: dict[str, Any] = {}
    for size, batch in plan.items():
        t0 = time.perf_counter()
        # meta build, then materialised straight on the device in bf16 (no CPU copy of the weights)
        m = onepeace.create_model(size, device="meta", init=False).to(torch.bfloat16).to_empty(device=device)
        with torch.no_grad():
            m.reset_parameters()
        m.eval()
        _sync(device)
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in m.parameters())
        batches, lens, _ = make_batches(m, batch)
        row: dict[str, Any] = {"params": params, "dtype": "bf16", "build_s": round(build_s, 2), "modalities": {}}
        for name, b in batches.items():
            b = _to(b, device)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            try:
                for i in range(warmup + runs):
                    _sync(device)
                    t = time.perf_counter()
                    with torch.inference_mode():
                        e = m.embed_batch(name, b)
                    _sync(device)
                    if i >= warmup:
                        times.append(time.perf_counter() - t)
            except torch.OutOfMemoryError as err:
                check.fail(f"throughput: {size}", f"{name} batch of {batch[name]}", f"out of memory: {err}")
                continue
            n = batch[name]
            fine = bool(torch.isfinite(e.float()).all())
            if not fine:
                check.fail(f"throughput: {size}", f"{name} embeddings", "non-finite values in bf16")
            row["modalities"][name] = {
                "batch": n, "tokens": lens[name], "median_s": round(median(times), 5),
                "items_per_s": round(n / median(times), 1),
                "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
                if device.startswith("cuda") else None}
        out[size] = row
        del m, batches
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------- 4. serve smoke
def serve_smoke(check: Check, device: str, size: str) -> None:
    import torch
    from fastapi.testclient import TestClient

    import onepeace
    from onepeace.serve.app import create_app

    section = "serve smoke"
    torch.manual_seed(0)
    m = onepeace.create_model(size, device=device, dtype="bf16" if device.startswith("cuda") else None)
    app = create_app(m, model_name="gpu-check")
    texts = ["a red circle", "a dog running on the beach", "the sound of rain"]
    with TestClient(app) as c:
        health = c.get("/health")
        r = c.post("/v1/embeddings", json={"input": texts})
    if health.status_code != 200 or r.status_code != 200:
        check.fail(section, "/health and POST /v1/embeddings", f"status {health.status_code}, {r.status_code}: "
                   f"{r.text[:200]}")
        return
    served = torch.tensor([d["embedding"] for d in r.json()["data"]])
    direct = m.embed(text=texts)["text"]
    # unit vectors through the same bf16/fp32 weights: one rounding of the dtype per stage
    dt = next(m.parameters()).dtype
    tol = (1 + FOREIGN) * _eps(dt) * math.sqrt(len(m.encoder.layers) + 3)
    check.compare(section, f"POST /v1/embeddings on {device} ({str(dt).removeprefix('torch.')}) vs model.embed",
                  served, direct, tol)


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (a dry run; with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny presets and small batches, one timed run (the dry run of tests/test_issue21_gpu_check.py)")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/gpu-check.json on CUDA; "
                                             "none on the CPU)")
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}): nothing checked; run `make gpu-check` on a machine with an NVIDIA GPU")
        return 0
    if args.device != "cpu" and not args.device.startswith("cuda"):
        ap.error(f"--device: {args.device!r}; use cuda, cuda:N or cpu")
    if args.device == "cpu" and not args.quick:
        ap.error("--device cpu is the dry run: add --quick (the full sizes take hours on a CPU)")
    out = args.out or (DEFAULT_OUT if args.device.startswith("cuda") else None)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (cuDNN's convolutions too)
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(SEED)
    device = args.device
    check = Check()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one step's failure is recorded, the others still run
            check.fail(name, "step", f"{type(e).__name__}: {e}")
            return None
        finally:
            timings[name] = round(time.perf_counter() - t, 1)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        step("parity: official tiny fixtures", lambda: parity_fixtures(check, device, Path(work)))
    step("parity: random models", lambda: parity_random(check, device, ["tiny"] if args.quick else ["base", "large"]))
    plan = {"tiny": QUICK_BATCH} if args.quick else THROUGHPUT
    speed = step("throughput", lambda: throughput(check, device, plan, runs=1 if args.quick else 5,
                                                  warmup=1 if args.quick else 2))
    step("serve smoke", lambda: serve_smoke(check, device, "tiny" if args.quick else "base"))
    result = {"facts": device_facts(device), "quick": args.quick, "ok": check.ok,
              "seconds": round(time.perf_counter() - t0, 1), "step_seconds": timings, "throughput": speed,
              "checks": check.rows}
    failed = [r for r in check.rows if not r["ok"]]
    for r in failed:
        why = r.get("error") or f"max diff {r['max_abs_diff']} > tolerance {r['tolerance']}"
        print(f"gpu_check: FAILED {r['section']}: {r['what']}: {why}")
    if out is not None:
        from _bench import write_json_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    print(f"gpu_check: {len(check.rows) - len(failed)}/{len(check.rows)} checks passed on "
          f"{result['facts'].get('device_name')} in {result['seconds']} s" + (f"; results: {out}" if out else ""))
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
