"""The tables of figures in README.md and docs/*.md are the results files' (scripts/gen_tables.py),
and every results file is written by a script of the repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gen_tables", ROOT / "scripts" / "gen_tables.py")
gen_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_tables)


@pytest.mark.parametrize("path", gen_tables.FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_is_its_results_file(path):
    text = path.read_text(encoding="utf-8")
    want = gen_tables.regenerate(text, str(path.relative_to(ROOT)))
    if text != want:
        bad = [m.group(2) for m, n in zip(gen_tables.MARK.finditer(text), gen_tables.MARK.finditer(want))
               if m.group(3) != n.group(3)]
        pytest.fail(f"{path.relative_to(ROOT)}: the tables {bad} differ from their results files: run `make tables`")


def test_the_tables_are_where_the_docs_say():
    names = [m.group(2) for p in gen_tables.FILES for m in gen_tables.MARK.finditer(p.read_text(encoding="utf-8"))]
    assert sorted(set(names)) == sorted(gen_tables.TABLES), "a renderer of scripts/gen_tables.py is used by no table"
    readme = [m.group(2) for m in gen_tables.MARK.finditer((ROOT / "README.md").read_text(encoding="utf-8"))]
    assert readme == ["demo", "precision", "speed"], readme


def test_a_changed_figure_is_caught(monkeypatch):
    """Edit one figure of a table (as a hand edit would): the regenerated text differs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = next(m for m in gen_tables.MARK.finditer(text) if m.group(2) == "speed")
    edited = text[:m.start(3)] + m.group(3).replace("1.05×", "1.15×", 1) + text[m.end(3):]
    assert edited != text and gen_tables.regenerate(edited) == text
    # and a changed results file changes the table
    real = gen_tables._load

    def bumped(name):
        d = real(name)
        if name == "int8.json":
            d["accuracy_real_data"]["int8"]["audio"]["min"] = 0.5
        return d

    monkeypatch.setattr(gen_tables, "_load", bumped)
    assert gen_tables.regenerate(text) != text


def test_every_results_file_is_written_by_a_script():
    """Each benchmarks/results/NAME.json is named by a script under benchmarks/ or scripts/ other
    than the table generator, which only reads them (no hand-made or hand-renamed results file)."""
    code = "\n".join(p.read_text(encoding="utf-8") for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py")
                     if p.name != "gen_tables.py")
    orphans = [f.name for f in sorted((ROOT / "benchmarks" / "results").glob("*.json")) if f.name not in code]
    assert not orphans, f"results files no script writes: {orphans}"


def test_demo_video_results_are_written_from_a_runs_metrics(tmp_path):
    """benchmarks/demo_video_bench.py writes demo-video.json from a run's metrics.json as it is, and
    refuses metrics that are not a finished video demo's."""
    spec = importlib.util.spec_from_file_location("demo_video_bench", ROOT / "benchmarks" / "demo_video_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shipped = (ROOT / "benchmarks" / "results" / "demo-video.json").read_text()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(shipped)
    assert bench.main(["--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out.json")]) == 0
    import json

    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(shipped)
    (tmp_path / "run" / "metrics.json").write_text('{"retrieval": {}}')
    with pytest.raises(SystemExit, match="baseline_frame_average"):
        bench.main(["--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out2.json")])
