"""Issue 22 item 2: a served row does not depend on who else is in its micro-batch, under the
default precision on every CPU. ``dtype="auto"`` picks int8 on CPUs with VNNI and no native bf16,
and int8 quantises activations per forward pass (per tensor): ``serve`` resolves ``auto`` to a
batch-invariant precision instead. The int8 choice is forced here by pinning such a CPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import onepeace  # noqa: E402
from conftest import derived_tol, maxdiff, model_depth, tiny_search_collection  # noqa: E402
from onepeace.model import precision  # noqa: E402
from onepeace.serve.app import ServerThread, create_app  # noqa: E402

PROBE = "a red circle"
#: company for the probe: other lengths and very different token statistics
OTHERS = ["zz " * 60, "!!!???###@@@" * 6, "x", "the sound of a pure tone at four hundred and forty hertz",
          "9 8 7 6 5 4 3 2 1 0 " * 5, "A" * 200, "qwertyuiop asdfghjkl zxcvbnm", "ÄÖÜ ß € ¥ 漢字 ひらがな"]


@pytest.fixture
def vnni_without_bf16(monkeypatch):
    if not precision.x86_int8_kernels():
        pytest.skip("this PyTorch build has no x86 int8 kernels")
    monkeypatch.setattr(precision, "cpu_features", lambda: precision.CpuFeatures(native_bf16=False, int8_dot=True))
    assert precision.choose("cpu") == "int8"  # what `auto` means for the other commands here


def _row(url: str, text: str) -> np.ndarray:
    r = httpx.post(url + "/v1/embeddings", json={"input": text}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array(r.json()["data"][0]["embedding"], dtype=np.float32)


def test_the_same_row_alone_and_amid_a_burst_under_the_default_precision(tmp_path, vnni_without_bf16):
    from onepeace.cli.serve import load_model

    model_dir, _ = tiny_search_collection(tmp_path)
    model = load_model(str(model_dir), "auto", "cpu")  # what `onepeace serve` does with the default --dtype
    assert model.precision != "int8"
    app = create_app(model, None, max_batch=16, max_wait_ms=300)
    with ServerThread(app) as server:
        models = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert models["batch_invariant"] is True and "not int8" in models["precision_note"]
        alone = _row(server.url, PROBE)
        amid: dict[str, np.ndarray] = {}
        barrier = threading.Barrier(len(OTHERS) + 1)

        def ask(text: str) -> None:
            barrier.wait()
            amid[text] = _row(server.url, text)

        threads = [threading.Thread(target=ask, args=(t,)) for t in [PROBE, *OTHERS]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = app.state.batcher.snapshot()
    assert stats["largest_batch"] > 1, stats  # the probe did share a forward pass
    # the rounding of a float32 computation of this row (measured against float64): what another
    # batch shape may change; an activation scale that depends on the batch changes far more
    exact = onepeace.OnePeace.from_pretrained(model_dir, dtype=torch.float64).embed(text=[PROBE])["text"].numpy()
    fp32 = onepeace.OnePeace.from_pretrained(model_dir, dtype="fp32").embed(text=[PROBE])["text"].numpy()
    tol = derived_tol(fp32, exact, alone[None], depth=model_depth(model))
    assert maxdiff(amid[PROBE][None], alone[None]) <= tol, (maxdiff(amid[PROBE][None], alone[None]), tol)


def test_serving_dtype_keeps_explicit_choices_and_says_so():
    from onepeace.cli.serve import serving_dtype

    assert serving_dtype("fp32") == ("fp32", "")
    assert serving_dtype("bf16") == ("bf16", "")
    dtype, note = serving_dtype("int8")
    assert dtype == "int8" and "not batch-invariant" in note
