"""Issue 20, item 7: ``onepeace search --modality smell`` is refused (one line, exit 2) as the
server refuses it with a 400, instead of answering "no rows match"."""

from __future__ import annotations

import pytest

pytest.importorskip("lancedb")

import onepeace  # noqa: E402
from onepeace import OnePeace  # noqa: E402
from onepeace.cli import main  # noqa: E402


def test_search_refuses_an_unknown_modality_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import torch

    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    onepeace.create_model("tiny").save_pretrained(model_dir)
    (tmp_path / "texts.txt").write_text("the number one\nthe number seven\n")
    db = tmp_path / "db"
    assert main(["index", "build", str(db), str(tmp_path / "texts.txt"), "--model", str(model_dir),
                 "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", str(db), "--text", "seven", "--modality", "text", "-k", "1"]) == 0
    assert " text " in capsys.readouterr().out

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before --modality was checked")

    monkeypatch.setattr(OnePeace, "from_pretrained", refuse)
    code = main(["search", str(db), "--text", "seven", "--modality", "smell"])
    cap = capsys.readouterr()
    assert code == 2, cap
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "--modality 'smell'" in lines[0] and "text" in lines[0], cap.err
    assert "no rows match" not in cap.out
