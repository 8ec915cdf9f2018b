"""Each extra works alone (issue 21, item 9), and every dependency has tested bounds and a pin.

The suite's venv holds every extra, so an extra that misses a package only another extra brings is
invisible to it: ``pip install 'onepeace[search]'`` then ``onepeace index build`` died asking for
pylance, which only [scale] carried. ``make check-extras`` (scripts/check_extras.py) installs each
extra into a fresh venv; here, fast, the index commands run in a process that can import only the
distributions the core and [search] bring (their requirements followed through the installed
metadata), everything else refused as if not installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT, tiny_search_collection

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _closure(extras: list[str]) -> set[str]:
    """Canonical names of the distributions ``pip install 'onepeace[extras]'`` brings (as installed
    here): the core and the extras' requirements, followed through each one's metadata."""
    todo = [Requirement(r) for r in PROJECT["dependencies"]]
    for e in extras:
        todo += [Requirement(r) for r in PROJECT["optional-dependencies"][e]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "onepeace":
            todo += [Requirement(r) for e in req.extras for r in PROJECT["optional-dependencies"][e]]
            continue
        if name in seen:
            continue
        seen.add(name)
        for r in metadata.requires(req.name) or []:
            sub = Requirement(r)
            envs = [{"extra": e} for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return seen


# run in a child: refuse every top-level module that only distributions outside ALLOWED provide
BLOCKER = textwrap.dedent("""
    import importlib.abc, importlib.metadata as md, json, sys
    from packaging.utils import canonicalize_name
    allowed = set(json.loads(sys.argv.pop(1)))
    blocked = {mod for mod, dists in md.packages_distributions().items()
               if not any(canonicalize_name(d) in allowed for d in dists)}
    blocked -= set(sys.stdlib_module_names) | {"onepeace", "onepeace_train", "_distutils_hack", "setuptools", "pkg_resources"}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (not installed with these extras)", name=name)
    sys.meta_path.insert(0, Blocker())
    from onepeace.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _run_with(extras: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    allowed = sorted(_closure(extras) | {"packaging"})  # the blocker's own import
    return subprocess.run([sys.executable, "-c", BLOCKER, json.dumps(allowed), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_closure_follows_self_references_and_extras_markers():
    serve, search = _closure(["serve"]), _closure(["search"])
    assert {"fastapi", "lancedb", "pylance"} <= serve and "fastapi" not in search
    assert "ray" in _closure(["scale"]) and "ray" not in serve
    assert "pandas" in _closure(["scale"])  # ray[data]'s extra requirement, behind a marker


@pytest.mark.slow
def test_search_extra_alone_builds_and_searches_an_index(tmp_path):
    """Before the fix [search] lacked pylance: the build failed with one line asking for it."""
    model, media = tiny_search_collection(tmp_path)
    build = _run_with(["search"], "index", "build", "idx", str(media), "--model", str(model), "--workers", "0",
                      "--batch-size", "4", "--dtype", "fp32", cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    found = _run_with(["search"], "search", "idx", "--text", "a red circle", "-k", "2", "--json", "--dtype", "fp32",
                      cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-2000:]
    assert len(json.loads(found.stdout[found.stdout.index("{"):])["hits"]) == 2


@pytest.mark.slow
def test_the_blocker_refuses_what_the_extras_do_not_bring(tmp_path):
    """The check above can fail: without [search], the same build stops in one line naming the extra."""
    model, media = tiny_search_collection(tmp_path)
    r = _run_with([], "index", "build", "idx", str(media), "--model", str(model), "--workers", "0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
    assert "lancedb" in r.stderr or "onepeace[search]" in r.stderr


def _direct() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("onepeace")]
    return reqs


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, ver = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = ver
    return pins


@pytest.mark.parametrize("req", _direct(), ids=str)
def test_every_dependency_has_a_tested_lower_bound_and_a_pin_inside_its_bounds(req):
    pins = _pins()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name}: pin the tested version in constraints.txt (scripts/check_extras.py --pin)"
    assert any(s.operator == ">=" for s in req.specifier), f"{req}: give it a lower bound (the version tested)"
    assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {name}=={pins[name]} outside {req}"
    lower = next(s.version for s in req.specifier if s.operator == ">=")
    # the lower bound is the tested release line, not an older one nobody ran
    assert pins[name].split(".")[:2] == lower.split(".")[:2] or len(lower.split(".")) == 1, (req, pins[name])


def test_installs_use_the_constraints():
    make = (ROOT / "Makefile").read_text()
    assert "PIP := $(BIN)/pip install --constraint constraints.txt" in make
    assert "check-extras:" in make and "scripts/check_extras.py" in make
    script = (ROOT / "scripts" / "check_extras.py").read_text()
    assert script.count('"--constraint", str(CONSTRAINTS)') == 1  # the one pip command both steps use
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("make check-extras") > ci.index("make test")


def test_check_extras_refuses_an_unknown_check_in_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_extras.py"), "--only", "search,nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown check nope" in r.stderr
