"""Issue 20, item 7 (index summary): `onepeace index build` of a COCO manifest (five captions per image)
said "79 new, 0 skipped" and left 316 lines out as duplicates, counted only in the JSON report; the
console summary names every kind of input left out, with its count."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onepeace.cli import main

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from onepeace.factory import create_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "tiny"
    create_model("tiny").save_pretrained(d)
    return str(d)


def _summary(err: str, out: str) -> tuple[str, list[str]]:
    line = next(ln for ln in out.splitlines() if ln.startswith("indexed "))
    return line, [ln for ln in err.splitlines() if ln.strip()]


@pytest.mark.skipif(not (COCO / "annotations" / "captions_val2017.json").exists(),
                    reason="needs the COCO-MINI data in ../shared/data/coco-mini")
def test_an_index_build_of_a_coco_manifest_names_the_captions_it_left_out(tmp_path, model_dir, capsys):
    assert main(["data", "prepare", "coco", "--root", str(COCO), "--out", str(tmp_path / "coco"),
                 "--tasks", "retrieval"]) == 0
    manifest = tmp_path / "coco" / "val_retrieval.jsonl"
    lines = [json.loads(ln) for ln in manifest.read_text().splitlines() if ln.strip()]
    images = {rec["image"] for rec in lines}
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert main(["index", "build", str(tmp_path / "db"), str(manifest), "--model", model_dir, "--workers", "0",
                 "--report", str(report)]) == 0
    captured = capsys.readouterr()
    line, notes = _summary(captured.err, captured.out)
    dup = len(lines) - len(images)
    assert dup > 0
    assert f"indexed {len(images)} new" in line and f"{dup} duplicate(s) left out" in line and "0 skipped" in line
    assert any(f"left out {dup} duplicate(s)" in n and str(report) in n for n in notes), notes
    rep = json.loads(report.read_text())
    assert rep["counts"]["duplicates"] == dup and rep["duplicate_examples"]
    assert re.search(r"val_retrieval\.jsonl:\d+$", rep["duplicate_examples"][0]["source"])


def test_the_summary_counts_every_kind_of_input_left_out(tmp_path, model_dir, capsys):
    from PIL import Image

    media = tmp_path / "media"
    media.mkdir()
    Image.new("RGB", (32, 32), "red").save(media / "a.png")
    Image.new("RGB", (32, 32), "blue").save(media / "b.png")
    (media / "bad.png").write_bytes(b"not an image")
    (media / "notes.csv").write_text("a,b\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "media/a.png", "text": "red"}\n{"image": "media/a.png", "text": "crimson"}\n'
                        '{"text": "a red square"}\n{"text": "a red square"}\n')
    assert main(["index", "build", str(tmp_path / "db"), str(media), str(manifest), "--model", model_dir,
                 "--workers", "0"]) == 0
    captured = capsys.readouterr()
    line, notes = _summary(captured.err, captured.out)
    # a.png (listed in the folder and twice in the manifest) and the repeated text: 3 duplicates
    assert "indexed 3 new" in line and "1 skipped" in line and "3 duplicate(s) left out" in line, line
    assert "1 file(s) of other types left out" in line, line
    assert any("skipped 1 item" in n for n in notes) and any("left out 3 duplicate(s)" in n for n in notes)
