"""The prepared GPU check (issue 21, item 10): benchmarks/gpu_check.py, `make gpu-check`.

No GPU is needed here: without CUDA the script says so in one line and exits 0, and its
``--device cpu --quick`` dry run goes through every step (fixture parity, random-model parity,
throughput, the serve smoke test) on tiny models, so that the script cannot rot between GPU machines.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

pytest.importorskip("fastapi", reason="the serve smoke test needs pip install 'onepeace[serve]'")


def test_without_cuda_one_line_and_exit_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "DEFAULT_OUT", tmp_path / "gpu-check.json")
    assert gpu_check.main([]) == 0
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and "no CUDA device" in out.out and not out.err
    assert not (tmp_path / "gpu-check.json").exists()


def test_cpu_needs_quick_and_unknown_devices_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "cpu"])
    assert e.value.code == 2 and "--quick" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "tpu", "--quick"])
    assert e.value.code == 2 and "'tpu'" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_goes_through_every_step_and_writes_the_results(tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0, capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["ok"] and r["quick"] and r["facts"]["torch"] == torch.__version__ and r["facts"]["device"] == "cpu"
    sections = {c["section"] for c in r["checks"]}
    assert sections == {"parity: official tiny fixtures", "parity: random tiny", "serve smoke"}, sections
    fixture_rows = [c["what"] for c in r["checks"] if c["section"] == "parity: official tiny fixtures"]
    for what in ("text embeddings", "image embeddings", "audio embeddings", "token features", "grounding", "VGGSound"):
        assert any(what in w and "vs official" in w for w in fixture_rows) or what == "token features", what
        assert any(what in w and "bf16 vs cpu fp32" in w for w in fixture_rows), what
    assert all(c["tolerance"] > 0 for c in r["checks"])
    speed = r["throughput"]["tiny"]
    assert speed["dtype"] == "bf16" and set(speed["modalities"]) == {"text", "image", "audio"}
    assert all(m["items_per_s"] > 0 for m in speed["modalities"].values())


@pytest.mark.slow
def test_a_wrong_device_result_fails_the_check(monkeypatch):
    """The derived tolerances are no blanket: the device fp32 model with one weight matrix scaled by
    0.1 % fails its fp32 comparisons (and only those)."""
    import onepeace

    real, calls = onepeace.create_model, []

    def create(*a, **k):
        m = real(*a, **k)
        calls.append(m)
        if len(calls) == 4:  # cpu32, cpu64, cpubf16, then the device fp32 copy (gpu_check.parity_random)
            load = m.load_state_dict

            def perturbed(state, *a2, **k2):
                res = load(state, *a2, **k2)
                with torch.no_grad():
                    m.get_parameter("encoder.layers.0.attn.q_proj.weight").mul_(1.001)
                return res

            m.load_state_dict = perturbed
        return m

    monkeypatch.setattr(onepeace, "create_model", create)
    check = gpu_check.Check()
    gpu_check.parity_random(check, "cpu", ["tiny"])
    failed = {c["what"] for c in check.rows if not c["ok"]}
    assert failed == {f"{m} embeddings: cpu fp32 vs cpu fp32" for m in ("text", "image", "audio")}, check.rows
