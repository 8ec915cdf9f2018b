from __future__ import annotations

import atexit
import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: the official ONE-PEACE outputs the parity tests compare with, in the repository (README.md there)
FIX = ROOT / "tests" / "fixtures" / "upstream-tiny"
TINY = FIX / "tiny"
#: the large real data sets (COCO-MINI, ESC-10, the official demo assets and dict.txt) sit beside the
#: repository on developer and CI machines only; tests over them skip, with a reason, elsewhere
SHARED = ROOT.parent / "shared"
ASSETS = SHARED / "data" / "onepeace-assets"

torch.set_num_threads(2)


def fixture_dict(path: Path, rows_json: Path | None = None) -> Path:
    """Write a fairseq ``dict.txt`` that agrees with the official one (50,260 lines; the converter
    reads it to order the token-embedding rows) on every token the fixtures use, and return ``path``.

    ``tiny/dict_rows.json`` (or ``rows_json``) holds the official row of each GPT-2 token of the reference inputs; the
    other GPT-2 ids fill the remaining lines in ascending order and the three ``madeupword`` lines
    end the file, as in the official one. The rows of those other tokens are zero in the trimmed
    fixture checkpoints and no reference output reads them, so the converted models compute every
    reference output as with the official file (tests/test_issue21_fixtures.py checks the rows
    against the official ``dict.txt`` where the real data is present)."""
    from onepeace.processing.tokenizer import GPT2_VOCAB, VOCAB_SIZE

    rows_json = TINY / "dict_rows.json" if rows_json is None else rows_json
    rows = {int(g): r for g, r in json.loads(rows_json.read_text()).items()}
    lines: list[str | None] = [None] * (VOCAB_SIZE - 4)
    lines[-3:] = [f"madeupword000{i}" for i in range(3)]
    for g, r in rows.items():
        lines[r - 4] = str(g)
    rest = iter(g for g in range(GPT2_VOCAB) if g not in rows)
    path.write_text("".join(f"{s if s is not None else next(rest)} 0\n" for s in lines), encoding="utf-8")
    return path


#: the dictionary the fixture checkpoints are converted with (see fixture_dict), written once per run
DICT = fixture_dict(Path(tempfile.mkdtemp(prefix="onepeace-fixture-dict-")) / "dict.txt")
atexit.register(shutil.rmtree, DICT.parent, ignore_errors=True)

#: tests that read the official fixtures (tests/fixtures/upstream-tiny): `pytest -m official_fixtures`
#: runs the parity checks alone
needs_fixtures = pytest.mark.official_fixtures


@pytest.fixture(scope="session")
def ref_in():
    return dict(np.load(TINY / "reference_inputs.npz"))


@pytest.fixture(scope="session")
def ref_out():
    return dict(np.load(TINY / "reference_outputs.npz"))


@pytest.fixture(scope="session")
def texts():
    return json.loads((TINY / "inputs" / "texts.json").read_text())


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The three official tiny checkpoints converted once per session: name -> directory."""
    from onepeace.checkpoints.official import convert

    out = {}
    base = tmp_path_factory.mktemp("converted")
    for name in ("one-peace-tiny", "one-peace-tiny-grounding-refcocog", "one-peace-tiny-vggsound"):
        convert(TINY / f"{name}.pt", base / name, DICT)
        out[name] = base / name
    return out


def maxdiff(a, b, pad=None) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if pad is not None:
        keep = ~np.asarray(pad, dtype=bool)
        a, b = a[keep], b[keep]
    return float(np.abs(a - b).max())


# ---------------------------------------------------------------- derived parity tolerances
EPS32 = float(torch.finfo(torch.float32).eps)
PARITY_SAFETY = 4.0
PARITY_ROWS: dict[str, list[tuple[float, float]]] = {}  # README row -> [(measured diff, derived tolerance)]


def _magnitude(ref, pad=None) -> float:
    r = np.abs(np.asarray(ref, dtype=np.float64))
    if pad is not None:
        r = r[~np.asarray(pad, dtype=bool)]
    return float(r.max()) if r.size else 0.0


def derived_tol(ours, ours64, ref, pad=None, depth: int = 1) -> float:
    """Tolerance for ``|ours - ref|`` where ``ours`` is our float32 result, ``ours64`` the same code
    run in float64 on the same weights and inputs (``None`` for a shallow computation with no
    float64 run), and ``ref`` the float32 result to match (the official one, or another route).

    ``|ours - ref| <= |ours - exact| + |ref - exact|``. The float64 run stands in for the exact
    value, so the first term is measured on this CPU (``own``). The second, the official float32
    rounding, cannot be measured but comes from the same computation on other kernels; we allow it
    up to 3x ours, hence ``PARITY_SAFETY = 4`` times (``own`` + a floor of one float32 ulp of the
    output magnitude per sequential stage, summed in quadrature: ``eps * max|ref| * sqrt(depth)``).
    The floor covers outputs whose own error happens to be ~0 (an exact embedding lookup).
    Nothing is tuned to one CPU: on another CPU ``own`` is re-measured there.
    """
    own = 0.0 if ours64 is None else maxdiff(ours, ours64, pad)
    return PARITY_SAFETY * (own + EPS32 * _magnitude(ref, pad) * math.sqrt(depth))


def assert_parity(ours, ours64, ref, pad=None, *, depth: int = 1, row: str) -> float:
    """Assert ``maxdiff(ours, ref) <= derived_tol(...)``; record the figure under ``row`` (a row of
    the README parity table) for the summary printed at the end of the run."""
    diff = maxdiff(ours, ref, pad)
    tol = derived_tol(ours, ours64, ref, pad, depth)
    PARITY_ROWS.setdefault(row, []).append((diff, tol))
    assert diff <= tol, (
        f"{row}: max |ours - reference| = {diff:.3g} exceeds the derived tolerance {tol:.3g} "
        f"(our fp32-vs-fp64 error {0.0 if ours64 is None else maxdiff(ours, ours64, pad):.3g}, "
        f"magnitude {_magnitude(ref, pad):.3g}, depth {depth})"
    )
    return diff


def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    simd = "avx512_bf16" if "avx512_bf16" in flags else "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else ""
    return f"{name} ({simd})" if simd else name


def parity_summary() -> dict:
    """Per row of the parity table: the max diff, the derived tolerances' range, the worst
    diff/tolerance ratio and the number of checks recorded in this run."""
    out = {}
    for row, figures in PARITY_ROWS.items():
        tols = [t for _, t in figures]
        out[row] = {"max_diff": max(d for d, _ in figures), "tol_min": min(tols), "tol_max": max(tols),
                    "worst_ratio": max((d / t for d, t in figures if t > 0), default=0.0), "checks": len(figures)}
    return out


def pytest_terminal_summary(terminalreporter):
    if not PARITY_ROWS:
        return
    if os.environ.get("ONEPEACE_PARITY_JSON"):  # benchmarks/parity.py: the figures of this CPU, as JSON
        Path(os.environ["ONEPEACE_PARITY_JSON"]).write_text(
            json.dumps({"cpu": cpu_name(), "rows": parity_summary()}, indent=1) + "\n", encoding="utf-8")
    terminalreporter.section(f"parity with the official fixtures on {cpu_name()}")
    for row, figures in PARITY_ROWS.items():
        diff = max(d for d, _ in figures)
        lo, hi = min(t for _, t in figures), max(t for _, t in figures)
        worst = max(d / t for d, t in figures if t > 0) if any(t > 0 for _, t in figures) else 0.0
        terminalreporter.write_line(
            f"{row}: max diff {diff:.2g}; derived tolerances {lo:.2g}..{hi:.2g}; worst diff/tol {worst:.2f} ({len(figures)} check{'s' * (len(figures) != 1)})"
        )


# README parity-table rows the checks are recorded under
ROW_PRE = "preprocessed image / audio / grounding tensors"
ROW_EMB = "text / image / audio embeddings from the raw files"
ROW_FEAT = "token features, every layer's state, adapter outputs, fused vl/al"
ROW_SCALE = "exp(logit_scale)"
ROW_GLOGITS = "grounding logits"
ROW_GBOX = "grounding box (px)"
ROW_VGG = "VGGSound logits"


def model_depth(m) -> int:
    """Sequential stages up to the final features: the adapter, each layer, the final norm."""
    return len(m.encoder.layers) + 2


def load_fp64(path):
    """The same converted checkpoint in float64: the reference run that ``derived_tol`` measures
    our float32 error against."""
    import onepeace

    return onepeace.OnePeace.from_pretrained(path, dtype=torch.float64)


def tiny_search_collection(root: Path) -> tuple[Path, Path]:
    """A seeded tiny tri-modal model saved in ``root/model`` and the bundled PNG/WAV samples copied
    into ``root/media``, for the search-index, Ray and server tests: (model dir, media dir)."""
    import shutil
    from importlib import resources

    import onepeace

    torch.manual_seed(0)
    m = onepeace.create_model("tiny", layers=2, layer_scale_init=0.5,
                              modalities={"text": {}, "image": {"image_size": 64}, "audio": {}})
    m.save_pretrained(root / "model")
    media = root / "media"
    media.mkdir()
    for f in (resources.files("onepeace") / "assets" / "samples").iterdir():
        if f.name.endswith((".png", ".wav")):
            shutil.copy(f, media / f.name)
    return root / "model", media


from onepeace.model import precision as _precision  # noqa: E402

_REAL_CPU_FEATURES = _precision.cpu_features  # unpatched, for auto_dtype_as_users_get_it


def write_mp3(path: Path, x: np.ndarray, rate: int, *, xing: bool) -> None:
    """An MP3 (LAME, mono) of ``x`` at ``rate``, with or without the Xing/Info header that tells
    its length (skips the test where PyAV or its MP3 encoder is missing)."""
    av = pytest.importorskip("av", reason="writing an MP3 needs PyAV")
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this FFmpeg has no MP3 encoder (libmp3lame)")
    with av.open(str(path), "w", options={} if xing else {"write_xing": "0"}) as out:
        s = out.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = rate
        for p in [*s.encode(frame), *s.encode(None)]:
            out.mux(p)


def unfinished_wav(path: Path, x: np.ndarray, rate: int) -> None:
    """A float WAV whose data chunk size is 0: a recorder stopped before writing it."""
    import struct

    import soundfile as sf

    sf.write(path, x, rate, subtype="FLOAT")
    raw = bytearray(path.read_bytes())
    at = raw.find(b"data")
    raw[at + 4 : at + 8] = struct.pack("<I", 0)
    path.write_bytes(bytes(raw))
    assert sf.info(path).frames == 0


def mp3_files(folder: Path, x: np.ndarray, rate: int) -> tuple[Path, Path, Path]:
    """``x`` as three MP3s in ``folder``: without the length header (``plain.mp3``, whose length
    libsndfile guesses), with it (``tagged.mp3``), and the tagged one cut in half (``cut.mp3``)."""
    import soundfile as sf

    plain, tagged, cut = folder / "plain.mp3", folder / "tagged.mp3", folder / "cut.mp3"
    write_mp3(plain, x, rate, xing=False)
    write_mp3(tagged, x, rate, xing=True)
    raw = tagged.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    assert sf.info(plain).frames != sf.info(tagged).frames  # a guess
    return plain, tagged, cut


def piped_flac(path: Path, x: np.ndarray, rate: int) -> None:
    """A FLAC as written to a pipe: STREAMINFO's total samples 0, 'unknown' (allowed by the format)."""
    import soundfile as sf

    sf.write(path, x, rate)
    raw = bytearray(path.read_bytes())
    raw[8 + 13] &= 0xF0  # total samples: 36 bits from the low half of STREAMINFO's 13th byte
    raw[8 + 14 : 8 + 18] = bytes(4)
    path.write_bytes(bytes(raw))
    assert sf.info(path).frames > 2**62


@pytest.fixture
def auto_dtype_as_users_get_it(monkeypatch, _auto_dtype_is_fp32):
    """Undo the fp32 pin below for one test: ``dtype="auto"`` picks from this CPU's real flags, as it
    does for a user (bf16 where the CPU computes bf16 natively; int8 or fp32 elsewhere). Returns
    what ``auto`` stands for here."""
    from onepeace.model import precision

    monkeypatch.setattr(precision, "cpu_features", _REAL_CPU_FEATURES)
    return precision.choose("cpu")


@pytest.fixture(autouse=True)
def _auto_dtype_is_fp32(monkeypatch):
    """``dtype="auto"`` (the inference commands' default) picks bf16 or int8 from the CPU's flags;
    tests pin a CPU with neither, so that results are fp32 and the same on every machine
    (tests/test_int8.py tests the choice itself)."""
    from onepeace.model import precision

    monkeypatch.setattr(precision, "cpu_features", lambda: precision.CpuFeatures(native_bf16=False, int8_dot=False))
