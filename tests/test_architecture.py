"""The source tree keeps its shape: the layers drawn in docs/architecture.md hold, no import circle
anywhere in src/, the library never imports the training package, `import onepeace` stays light,
and no function grows past ~80 lines without a reason written next to it.

Imports are read with ``ast`` from every file, function-local ones and ``TYPE_CHECKING`` ones
included: an import moved into a function to dodge a circle is still a dependency.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 80
#: a comment with this text on the line above a def (or its decorators) says why it is longer
LONG_REASON = "long function:"


# --------------------------------------------------------------------------- the import graph
def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every .py file under ``src``."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _resolve(name: str, mods: dict) -> str | None:
    """The module of ``mods`` that an import of ``name`` loads (a name inside a module -> it)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(src: Path) -> dict[str, set[str]]:
    """module -> the modules of ``src`` it imports (anywhere in the file)."""
    mods = modules(src)
    edges: dict[str, set[str]] = defaultdict(set)
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full for a in node.names]
            for target in targets:
                hit = _resolve(target, mods)
                if hit and hit != name:
                    edges[name].add(hit)
    return {m: edges.get(m, set()) for m in mods}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# --------------------------------------------------------------------------- the drawn layers
def layers(page: Path = ARCHITECTURE) -> list[tuple[str, list[str]]]:
    """The layers drawn on the architecture page, highest first: ``(name, [module prefixes])`` from
    the block after ``<!-- layers -->``, one layer a line: ``name: prefix prefix ...``."""
    text = page.read_text(encoding="utf-8")
    block = re.search(r"<!-- layers -->\s*```\w*\n(.*?)```", text, re.S)
    assert block, f"{page.name} has no <!-- layers --> block"
    out = []
    for line in block.group(1).splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            name, _, prefixes = line.partition(":")
            out.append((name.strip(), prefixes.split()))
    return out


def layer_of(module: str, drawn: list[tuple[str, list[str]]]) -> int | None:
    """The rank of the layer whose longest prefix names ``module`` (0 = lowest), or None. The bare
    ``onepeace`` names the package's ``__init__`` (its public names) only."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(reversed(drawn)):
        for p in prefixes:
            covers = module == p or (p != "onepeace" and module.startswith(p + "."))
            if covers and len(p) > best:
                best, rank = len(p), i
    return rank


# --------------------------------------------------------------------------- the checks themselves
def test_the_checks_see_a_circle_made_by_a_function_local_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path)
    assert graph["pkg.c"] == {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_circle_in_src():
    found = circles(import_graph(SRC))
    assert not found, "import circles (function-local imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_every_library_module_sits_on_a_drawn_layer_and_imports_only_downwards():
    drawn = layers()
    names = [n for n, _ in reversed(drawn)]
    graph = import_graph(SRC)
    ours = [m for m in graph if m.split(".")[0] in ("onepeace", "onepeace_train")]
    unplaced = sorted(m for m in ours if layer_of(m, drawn) is None)
    assert not unplaced, f"modules on no layer of docs/architecture.md: {unplaced}"
    upward = []
    for module in ours:
        for target in graph[module]:
            src, dst = layer_of(module, drawn), layer_of(target, drawn)
            if dst > src:
                upward.append(f"{module} ({names[src]}) -> {target} ({names[dst]})")
    assert not upward, "imports against the layers of docs/architecture.md:\n" + "\n".join(sorted(upward))


def test_the_library_never_imports_the_training_package():
    graph = import_graph(SRC)
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if m == "onepeace" or m.startswith("onepeace.")
                 for t in ts if t.startswith("onepeace_train"))
    assert not bad, "the library imports the training package: " + ", ".join(bad)
    # nor by name through importlib (entry points are how training commands arrive)
    for path in (SRC / "onepeace").rglob("*.py"):
        assert not re.search(r"import_module\(\s*[\"']onepeace_train", path.read_text(encoding="utf-8")), path


def test_import_onepeace_loads_no_training_module_and_no_heavy_extra():
    code = textwrap.dedent("""
        import sys, onepeace
        heavy = ("onepeace_train", "lancedb", "fastapi", "uvicorn", "ray", "av", "onnx", "onnxruntime", "mteb",
                 "sentence_transformers", "transformers", "pyarrow", "scipy")
        print(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import onepeace loads {out.strip()}"


def _long_functions(src: Path, root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted(src.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = lines[first - 2] if first >= 2 else ""
            if length > MAX_LINES and LONG_REASON not in above:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_the_length_check_sees_a_long_function_and_its_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES + 1))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n# {LONG_REASON} a table\ndef ok():\n{body}")
    assert _long_functions(tmp_path, root=tmp_path) == [f"m.py:1 long ({MAX_LINES + 2} lines)"]


@pytest.mark.parametrize("package", ["onepeace", "onepeace_train"])
def test_no_function_over_80_lines_without_a_reason(package):
    found = _long_functions(SRC / package)
    assert not found, (f"functions over {MAX_LINES} lines with no '# {LONG_REASON} <why>' comment above them: "
                       + ", ".join(found))
