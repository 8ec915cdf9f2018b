"""The core wheel as pip builds it: under 2 MB, both packages (library and training), the recipes,
the page, the samples and the training commands' entry point, and no demo data set
(scripts/check_extras.py's own check, run on a freshly built wheel)."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_extras", ROOT / "scripts" / "check_extras.py")
check_extras = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_extras)


@pytest.mark.slow
def test_the_built_wheel_is_small_and_carries_no_demo_data(tmp_path):
    wheel = check_extras.build_wheel(tmp_path, dict(__import__("os").environ))
    said = check_extras.check_wheel_contents(wheel)
    assert "no demo data" in said
    with zipfile.ZipFile(wheel) as z:
        assert not any(n.endswith(".npz") for n in z.namelist())


def test_the_wheel_check_refuses_demo_data_and_a_missing_entry_point(tmp_path):
    bad = tmp_path / "onepeace-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("onepeace/__init__.py", "")
        z.writestr("onepeace_train/demo/assets/digits.npz", b"x")
    with pytest.raises(check_extras.CheckFailed) as e:
        check_extras.check_wheel_contents(bad)
    assert "demo data" in str(e.value) and "onepeace.commands" in str(e.value)
