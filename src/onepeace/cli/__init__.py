"""The ``onepeace`` command line.

One module per group of commands, each with ``register(subparsers)``: :mod:`.model` (convert,
info, download), :mod:`.embed` (embed, zeroshot, classify, ground, segment), :mod:`.eval`,
:mod:`.data`, :mod:`.index` (index, search), :mod:`.serve`, :mod:`.export`; what they share is in
:mod:`.common`. Other packages add commands through the entry-point group ``onepeace.commands``
(a ``register(subparsers)`` function each): ``onepeace_train.cli`` adds demo, try, demo-video,
pretrain, finetune and ``eval task``; the library never imports it.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

from . import data, embed, export, index, model, serve
from . import eval as eval_commands
from .common import (
    Parser,
    run_command,
    set_verbose,
    show_warnings_as_lines,
    verbose_after_commands,
    version,
)

__all__ = ["build_parser", "main"]

#: the entry-point group of command plug-ins: ``name = "package.module:register"``
PLUGIN_GROUP = "onepeace.commands"

#: the order of ``onepeace --help`` (plug-ins' commands included); other commands follow, as added
COMMAND_ORDER = ("convert", "embed", "info", "demo", "try", "demo-video", "demo-adapt", "pretrain", "finetune", "adapt",
                 "zeroshot", "eval", "ground", "classify", "segment", "data", "index", "search", "download", "serve",
                 "export")

_GROUPS = (model, embed, eval_commands, data, index, serve, export)


def _register_plugins(sub) -> None:
    """Each ``onepeace.commands`` entry point's ``register(subparsers)``; one that fails is one
    warning line naming it, and the other commands still work."""
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not take the other commands down
            print(f"onepeace: warning: the command plug-in {ep.name!r} ({ep.value}) could not be loaded, its "
                  f"commands are missing: {type(e).__name__}: {e}", file=sys.stderr)


def _in_order(sub) -> None:
    """List the commands in :data:`COMMAND_ORDER` (help and usage), whoever added them."""
    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}

    def key(name: str) -> int:
        return rank.get(name, len(rank))

    sub._choices_actions.sort(key=lambda action: key(action.dest))
    ordered = sorted(sub.choices.items(), key=lambda item: key(item[0]))
    sub.choices.clear()  # in place: argparse looks commands up in this very dict
    sub.choices.update(ordered)


def build_parser() -> Parser:
    p = Parser(prog="onepeace", description="ONE-PEACE: vision, audio and language in one space")
    p.add_argument("--version", action="version", version=f"onepeace {version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and warnings (also after the command)")
    sub = p.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.register(sub)
    _register_plugins(sub)
    _in_order(sub)
    verbose_after_commands(p)
    return p


def _is_override(arg: str) -> bool:
    """``section.key=value``: a recipe override of ``pretrain`` / ``finetune``."""
    key = arg.split("=", 1)[0]
    return "=" in arg and not arg.startswith("-") and "." in key and " " not in key


def main(argv: list[str] | None = None) -> int:
    """The ``onepeace`` command; returns its exit status. A reader that stops early (``| head``)
    ends it quietly with status 141 (128 + SIGPIPE), as a coreutils tool killed by SIGPIPE."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141


def _stdout_to_devnull() -> None:
    """After a broken pipe: what is still buffered for stdout goes nowhere (else Python's final
    flush fails again and prints 'Exception ignored ... BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured in tests): nothing buffered there
        pass


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # allow `onepeace pretrain CONFIG --optim.lr=1e-4` as well as `optim.lr=1e-4`
    argv = [a[2:] if a.startswith("--") and "=" in a and "." in a.split("=", 1)[0] else a for a in argv]
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # recipe overrides (section.key=value) may also come after options: `pretrain CFG --output D optim.lr=1`
        if extra and isinstance(getattr(args, "overrides", None), list) and all(_is_override(a) for a in extra):
            args.overrides += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # a usage error (already printed), --help or --version
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    set_verbose(args.verbose)
    show_warnings_as_lines(args.command)
    if getattr(args, "max_pixels", None):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_pixels  # process-wide: this process runs this one command
    return run_command(args)
