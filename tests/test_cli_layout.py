"""The command line as a package of rooms (issue 21): one module per command group, shared options
in onepeace.cli.common, the training commands a plug-in (entry point group ``onepeace.commands``)
that the library never imports, and a plug-in that fails to load costs one warning line."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import onepeace.cli as cli
from onepeace.cli import build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"
TRAINING = {"demo", "try", "demo-video", "demo-adapt", "pretrain", "finetune", "adapt"}


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_lists_every_command_in_one_order_with_the_training_plugin():
    names = list(_commands(build_parser()))
    assert names == list(cli.COMMAND_ORDER)
    assert list(_commands(_commands(build_parser())["eval"])) == ["retrieval", "task"]
    entry = {ep.name: ep.value for ep in md.entry_points(group=cli.PLUGIN_GROUP)}
    assert entry.get("train") == "onepeace_train.cli:register"


def test_a_plugin_that_fails_to_load_is_one_warning_line_and_the_rest_works(monkeypatch, capsys):
    real = list(md.entry_points(group=cli.PLUGIN_GROUP))
    broken = md.EntryPoint(name="broken", value="onepeace_no_such_module:register", group=cli.PLUGIN_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken, *real])
    assert main(["info", "tiny"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "warning" in lines[0] and "'broken'" in lines[0], err
    assert "parameters:" in out
    assert TRAINING <= set(_commands(build_parser()))  # the working plug-in is still loaded


def test_without_the_training_plugin_the_library_commands_remain(monkeypatch, capsys):
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    names = set(_commands(build_parser()))
    assert not names & TRAINING and {"embed", "index", "serve", "export", "data"} <= names
    assert list(_commands(_commands(build_parser())["eval"])) == ["retrieval"]
    assert main(["pretrain", "r.toml"]) == 2
    assert "invalid choice: 'pretrain'" in capsys.readouterr().err


def test_the_command_line_loads_no_training_module_until_a_command_needs_it():
    """``import onepeace.cli`` (the console script's module) leaves the training package unloaded;
    the static rule (no library module imports onepeace_train, function-local imports included) and
    the 80-line limit of every function are tests/test_architecture.py's."""
    code = "import sys, onepeace.cli; print(sorted(m for m in sys.modules if m.startswith('onepeace_train')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_python_m_onepeace_cli_runs_the_command_line():
    for module in ("onepeace", "onepeace.cli"):
        done = subprocess.run([sys.executable, "-m", module, "eval", "--help"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and "{retrieval,task}" in done.stdout, done.stderr
