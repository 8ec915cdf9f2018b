from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIX = SHARED / "fixtures" / "upstream-tiny"
TINY = FIX / "tiny"
DICT = SHARED / "data" / "onepeace-assets" / "dict.txt"
ASSETS = SHARED / "data" / "onepeace-assets"

torch.set_num_threads(2)

needs_fixtures = pytest.mark.skipif(
    not (TINY / "one-peace-tiny.pt").exists() or not DICT.exists(),
    reason="../shared/fixtures/upstream-tiny and ../shared/data are absent (developer/CI machines only)",
)


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
