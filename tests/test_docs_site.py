"""The documentation site builds: ``mkdocs build --strict`` (as ``make docs``) over docs/ and
mkdocs.yml, into a scratch folder. Strict mode fails on a broken link or anchor, a page missing
from the navigation, and a docstring mkdocstrings cannot collect for the API reference."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    site = tmp_path / "site"
    for page in sorted(p.stem for p in (ROOT / "docs").glob("*.md")):
        assert (site / f"{page}.html").is_file(), f"docs/{page}.md was not built"
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in ("from_pretrained", "encode_text", "create_model", "get_tokenizer"):
        assert name in api, f"the API reference lacks {name}"
    assert (site / "serve.png").is_file() and (site / "search" / "search_index.json").is_file()
