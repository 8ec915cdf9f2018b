"""The tables of figures in README.md and docs/*.md are the results files' (scripts/gen_tables.py),
and every results file is written by a script of the repository."""

from __future__ import annotations

import importlib.util
import re
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


def test_every_marker_names_a_renderer_and_every_renderer_is_used():
    """A marker with an unknown NAME is refused (not left as it is), and each renderer fills a table."""
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        gen_tables.regenerate("<!-- table:nope -->\n| a |\n<!-- /table -->\n", "x.md")
    used = {m.group(2) for p in gen_tables.FILES for m in gen_tables.MARK.finditer(p.read_text(encoding="utf-8"))}
    assert used <= set(gen_tables.TABLES), f"markers with no renderer: {sorted(used - set(gen_tables.TABLES))}"
    assert set(gen_tables.TABLES) <= used, f"renderers no page uses: {sorted(set(gen_tables.TABLES) - used)}"


#: a figure: 83.4, **1.05×**, 97%, ≤ 2.5e-7, 5.6 s, 1,249 ms, 0.8 GB
FIGURE = re.compile(r"[≤≥<>~]? ?[−-]?\d[\d,]*(?:\.\d+)?(?:e-?\d+)? ?(?:%|×|s|ms|GB|MB)?")


def _is_figures(cell: str) -> bool:
    """A cell of figures alone: ``83.4``, ``**96.0** (94.7 – 97.3)``, ``49.2 / –``, ``613 → 712 MB``."""
    rest = FIGURE.sub("", cell)
    return rest != cell and re.fullmatch(r"[\s/()–*,→+]*", rest) is not None


#: a line of a code block with two figures or more (a printed table's row)
FIGURE_LINE = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]).*(?<![\w.])\d+\.\d+(?![\w.])")
#: hand tables whose figures no results file holds; their page says where they come from
HAND_TABLES: dict[str, list[str]] = {}


def _figure_tables(text: str) -> list[str]:
    """The first line of each table of figures (Markdown, or printed in a code block) in ``text``."""
    found, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append(line)
            continue
        if any(_is_figures(c.strip()) for r in rows[2:] for c in r.strip().strip("|").split("|")):
            found.append(rows[0])
        rows = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        if sum(bool(FIGURE_LINE.search(line)) for line in block.splitlines()) >= 3:
            found.append(block.splitlines()[0])
    return found


@pytest.mark.parametrize("path", gen_tables.FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_table_of_figures_is_typed_by_hand(path):
    """Every table of figures of README.md and docs/*.md sits between table markers (so it is
    generated from its results file), but for the few HAND_TABLES no results file holds."""
    name = str(path.relative_to(ROOT))
    text = path.read_text(encoding="utf-8")
    missed = [m.group(2) for m in gen_tables.MARK.finditer(text) if not _figure_tables(m.group(3))]
    assert not missed, f"the detector does not see the generated tables {missed}: fix FIGURE or _is_figures"
    hand = [t for t in _figure_tables(gen_tables.MARK.sub("", text)) if not any(t.startswith(h) for h in
                                                                                 HAND_TABLES.get(name, []))]
    assert not hand, f"{name}: tables of figures typed by hand (generate them, scripts/gen_tables.py): {hand}"


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


def _scaled(x):
    """``x`` with every float in it times 1.37 (ints, names and flags kept)."""
    if isinstance(x, dict):
        return {k: _scaled(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_scaled(v) for v in x]
    return x * 1.37 if isinstance(x, float) else x


@pytest.mark.parametrize("name", sorted(gen_tables.TABLES))
def test_each_table_reads_its_figures_from_its_results_file(name, monkeypatch):
    """Change the measured figures of the results files and every table changes: none holds a
    figure of its own."""
    before = gen_tables.TABLES[name]()
    real = gen_tables._load
    monkeypatch.setattr(gen_tables, "_load", lambda f: _scaled(real(f)))
    assert gen_tables.TABLES[name]() != before
