"""What every ``onepeace`` command shares: the parser's one-line usage errors, the option types,
the run options (``--dtype``, ``--device``, ``--threads``), media and text inputs, checked output
files, the model loading of the commands, and errors as one line with their exit status.

The command modules (:mod:`onepeace.cli.embed`, ...) and plug-ins such as ``onepeace_train.cli``
build on these; nothing here imports a command module.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

import numpy as np
import torch

from .. import OnePeace
from ..errors import InputError, OnePeaceError, OnePeaceWarning
from ..modalities import get_modality, registered_modalities
from ..outputs import check_output_file

_PYTHON_SHOWWARNING = warnings.showwarning
_VERBOSE = False  # -v of the command this process runs


# ---- the parser ----------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit 2), like every other error of the CLI."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def int_at_least(text: str, minimum: int) -> int:
    """An integer option's value, ``minimum`` or more (argparse reports the error in one line)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {n}")
    return n


def positive_int(text: str) -> int:
    return int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return int_at_least(text, 0)


def nonnegative_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return x


def command_group(subparsers: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:
    """The subcommands of the command ``name`` (e.g. ``eval``), for a plug-in to add one to."""
    parser = subparsers.choices[name]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def verbose_after_commands(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v`` after any (sub-)command too. Its default there is SUPPRESS, so a sub-command
    without it keeps the value given before the command instead of resetting it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in {id(x): x for x in action.choices.values()}.values():
                if "-v" not in sp._option_string_actions:
                    sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                    help="log progress and warnings")
                verbose_after_commands(sp)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("onepeace")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


# ---- options shared by the commands that run a model ---------------------------------------------

def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device`` and ``--threads`` of the commands that run a model."""
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="compute precision: auto (default: bf16 where the device computes it natively, else "
                        "int8 on CPUs with VNNI, else fp32), fp32, bf16, fp16, or int8 (CPU)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N, or auto (cuda when available, else cpu)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")


def add_adapter_option(p: argparse.ArgumentParser) -> None:
    """``--adapter DIR`` of the commands that run a model: a LoRA adapter merged into it on loading."""
    p.add_argument("--adapter", metavar="DIR",
                   help="a LoRA adapter directory (`onepeace adapt --out DIR`) trained on this model, merged into "
                        "its weights on loading (needs pip install 'onepeace[adapt]')")


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help="decode images of up to N pixels (default: Pillow's decompression-bomb limit, "
                             "about 89 million); raise it for huge images you trust")


def add_long_audio(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--long-audio", choices=["truncate", "chunk"], default="truncate",
                        help="clips over 15 s: truncate (official, the default: the first 15 s, with a "
                             "warning) or chunk (the duration-weighted mean of 15 s window embeddings)")
    parser.add_argument("--long-text", choices=["truncate", "chunk"], default="truncate",
                        help="texts over the model's 70 tokens: truncate (official, the default: the first 70 "
                             "tokens, with a warning) or chunk (the token-weighted mean of 70-token window "
                             "embeddings)")


def resolve_device(spec: str) -> str:
    """A ``--device`` value as a torch device string; an unavailable device is an error."""
    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {spec!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: CUDA is not available here (torch.cuda.is_available() is False); "
                             "use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"--device {spec}: unsupported device type; use cpu, cuda, cuda:N or auto")
    return str(dev)


def runtime(args: argparse.Namespace) -> str:
    """Apply ``--threads`` and check ``--device`` (before anything is loaded); the device."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return resolve_device(getattr(args, "device", "cpu"))


def load_model(path: str, dtype: str | None, device: str = "cpu", adapter: str | None = None):
    """The model of a command, with the LoRA ``adapter`` (``--adapter``) merged in when given (``-v``
    says what ``--dtype auto`` chose). The commands call it as ``common.load_model``, so that a
    test may substitute it."""
    model = OnePeace.from_pretrained(path, dtype=dtype, device=device, **({"adapter": adapter} if adapter else {}))
    if _VERBOSE:  # -v: say what --dtype auto chose
        what = f"{path} + adapter {adapter}" if adapter else path
        print(f"onepeace: model {what}: computing in {precision(model)} on {device} (--dtype {dtype or 'as stored'})",
              file=sys.stderr)
    return model


def precision(model) -> str:
    """The precision ``model`` computes in ("fp32", "bf16", "fp16" or "int8"): what ``--dtype auto``
    chose, recorded in the outputs."""
    p = getattr(model, "precision", None)
    if isinstance(p, str):
        return p
    from ..model.quant import is_int8

    if is_int8(model):
        return "int8"
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model.dtype, str(model.dtype))


# ---- inputs ----------------------------------------------------------------------------------------

def note(args: argparse.Namespace, message: str) -> None:
    print(f"onepeace {args.command}: note: {message}", file=sys.stderr)


def _folder_files(args: argparse.Namespace, folder: str, modality: str, exts: tuple[str, ...]) -> list[str]:
    found, other = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            if f.lower().endswith(exts):
                found.append(os.path.join(root, f))
            else:
                other += 1
    if not found:
        raise InputError(f"no {modality} files ({', '.join(exts)}) in the folder {folder}")
    if other:
        note(args, f"{folder}: {len(found)} {modality} files; left out {other} files that are not "
                   f"{modality} files ({', '.join(exts)})")
    return found


def media_files(args: argparse.Namespace, values: list[str], modality: str) -> list[str]:
    """``--image``/``--audio`` values with folders expanded (recursively, sorted, only the files
    whose extension is the modality's; hidden files and folders left out); every path is checked
    to be a readable file before any model is loaded."""
    exts = get_modality(modality).file_extensions
    out: list[str] = []
    for value in values:
        if os.path.isdir(value):
            out += _folder_files(args, value, modality, exts)
        elif os.path.isfile(value):
            if not os.access(value, os.R_OK):
                raise InputError(f"{modality} file is not readable: {value}")
            out.append(value)
        elif os.path.exists(value):
            raise InputError(f"{modality} input is not a file or a folder: {value}")
        else:
            raise InputError(f"{modality} file not found: {value}")
    return out


def file_modalities() -> list[str]:
    """The registered modalities read from files (image, audio, video, ...), in registration order."""
    return [m for m in registered_modalities() if get_modality(m).file_extensions]


def add_media_options(p: argparse.ArgumentParser, metavar: str = "PATH") -> None:
    """``--<modality>`` (files or folders) for every file modality the parser has no option for
    yet: a new modality plug-in gets its flag on every command that takes media."""
    have = {a.dest for a in p._actions}
    for m in file_modalities():
        if m not in have:
            p.add_argument(f"--{m}", nargs="+", action="extend", default=[], metavar=metavar,
                           help=f"{m} files or folders (searched recursively for {m} files)")


def media_inputs(args: argparse.Namespace) -> dict[str, list[str]]:
    """The media files of every ``--<modality>`` option given (folders expanded, paths checked),
    in the order of the command's options."""
    media = set(file_modalities())
    return {m: media_files(args, v, m) for m, v in vars(args).items() if m in media and v}


def media_flags() -> str:
    return ", ".join(f"--{m}" for m in file_modalities())


def texts(values: list[str], files: list[str] | None = None) -> list[str]:
    """``--text`` values, then the lines of each ``--text-file``: each line exactly as written
    (spaces included, so a line embeds as the same ``--text`` does), without its line ending
    (``\n``, ``\r\n`` or ``\r``) or a UTF-8 byte-order mark; blank and whitespace-only lines are
    left out."""
    out = list(values)
    for path in files or []:
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                lines = re.split(r"\r\n|\r|\n", f.read())  # line endings only (not str.splitlines' \f, \v, ...)
        except FileNotFoundError:
            raise InputError(f"text file not found: {path}") from None
        except IsADirectoryError:
            raise InputError(f"text file {path} is a directory; give a file with one text per line") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read text file {path}: {e}") from None
        lines = [line for line in lines if line.strip()]
        if not lines:
            raise InputError(f"text file {path} holds no text (one text per line)")
        out += lines
    return out


# ---- outputs ---------------------------------------------------------------------------------------

def npz_name(path: str) -> str:
    return path if path.endswith(".npz") else path + ".npz"


def check_out(path: str | None, force: bool, npz: bool = False) -> str | None:
    """An --out file is checked before any work: a file name (not a folder: an existing one, or a
    name ending in '/'), its folder exists and is not a model directory, and it is new unless
    --force. Returns the file that will be written (``.npz`` appended where ``npz`` and missing)."""
    if not path:
        return None
    check_output_file(path, True)  # the name as given: a folder is an error, not a place for '.npz'
    return check_output_file(npz_name(path) if npz else path, force, hint="--force")


def atomic_savez(path: str, **arrays: np.ndarray) -> str:
    """Write ``arrays`` to the .npz ``path`` (``.npz`` appended when missing) atomically; its name."""
    path = npz_name(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OnePeaceError(f"output directory does not exist: {parent}")
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def names(**inputs: list[str]) -> dict[str, np.ndarray]:
    """Input names as unicode arrays (``<name>_inputs``), readable by ``np.load`` without pickle."""
    return {f"{k}_inputs": np.array([str(x) for x in v], dtype=str) for k, v in inputs.items() if v}


def rounded(obj, digits: int = 4):
    """Floats of a JSON-able structure rounded to ``digits`` decimals."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


#: similarity tables: a full matrix up to this many columns, else each row's best matches
_MAX_COLUMNS, _MAX_ROWS, _TOP_MATCHES = 8, 20, 3


def short(s: str, n: int = 28) -> str:
    s = os.path.basename(s) if os.path.sep in s else s
    return s if len(s) <= n else s[: n - 1] + "…"


def _print_pair(a: str, b: str, sim: torch.Tensor, rows: list[str], cols: list[str]) -> None:
    rw = max(len(r) for r in rows)
    shown = sim[:_MAX_ROWS]
    if len(cols) <= _MAX_COLUMNS:
        print(f"\n{a} x {b} cosine similarity (rows: {a}, columns: {b})")
        width = max(8, *(len(c) for c in cols))
        print(" " * rw + "  " + "  ".join(c.rjust(width) for c in cols))
        for r, line in zip(rows, shown.tolist()):
            print(r.ljust(rw) + "  " + "  ".join(f"{v:+.4f}".rjust(width) for v in line))
    else:
        print(f"\n{a} x {b} cosine similarity: the {_TOP_MATCHES} most similar of the {len(cols)} "
              f"{b} inputs, per {a} input")
        top = shown.topk(_TOP_MATCHES)
        for r, vals, idx in zip(rows, top.values.tolist(), top.indices.tolist()):
            print(r.ljust(rw) + "  " + ", ".join(f"{cols[j]} {v:+.4f}" for v, j in zip(vals, idx)))


def print_similarity(emb: dict[str, torch.Tensor], labels: dict[str, list[str]], more: str = "") -> None:
    """Cosine similarities of every pair of modalities, readable for any number of inputs: a
    matrix of at most ``_MAX_COLUMNS`` columns (else each row's ``_TOP_MATCHES`` best columns) and
    ``_MAX_ROWS`` rows, then a count of the rows left out (``more``: where to find them all)."""
    modalities = list(emb)
    for i, a in enumerate(modalities):
        for b in modalities[i + 1 :]:
            rows = [short(x) for x in labels[a]]
            _print_pair(a, b, emb[a] @ emb[b].T, rows, [short(x) for x in labels[b]])
            if len(rows) > _MAX_ROWS:
                print(f"… {len(rows) - _MAX_ROWS} more {a} rows" + (f"; {more}" if more else ""))
    if len(modalities) == 1:
        print(f"\n{modalities[0]}: {len(labels[modalities[0]])} embeddings of size {emb[modalities[0]].shape[1]}")


def report_skipped(command: str, count: int, skipped: list[str] | None = None, total: int | None = None,
                   what: str = "samples", shown: int = 5) -> None:
    """One stderr line: how many inputs were skipped as unloadable, and the first few by name."""
    if not count:
        return
    line = f"onepeace {command}: skipped {count}" + (f" of {total}" if total else "") + f" {what} that could not be loaded"
    if skipped:
        line += ": " + ", ".join(skipped[:shown]) + (f" and {count - shown} more" if count > shown else "")
    print(line + " (`onepeace -v ...` logs why)", file=sys.stderr)


# ---- running a command: warnings and errors as one line, exit statuses ---------------------------

def set_verbose(verbose: bool) -> None:
    """``-v``: log INFO (else only errors); :func:`load_model` says which precision it chose."""
    global _VERBOSE
    _VERBOSE = bool(verbose)
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


def show_warnings_as_lines(command: str) -> None:
    """Print onepeace's own warnings as one `onepeace CMD: warning: ...` line on stderr, with or
    without -v; other warnings keep Python's format."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, OnePeaceWarning):
            print(f"onepeace {command}: warning: {message}", file=file or sys.stderr)
        else:
            _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; every error is one line on stderr with its exit status: 2 for bad
    input (:class:`OnePeaceError`), 130 for Ctrl-C, 1 for the rest (the traceback with ``-v``)."""
    def error(message: str) -> None:
        print(f"onepeace {args.command}: {message}", file=sys.stderr)

    try:
        return args.func(args)
    except OnePeaceError as e:
        error(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except MemoryError:
        error("error: out of memory; try a smaller --batch-size or fewer inputs")
        return 1
    except ImportError as e:
        missing = f" ({e.name})" if getattr(e, "name", None) else ""
        error(f"error: a module this command needs is missing{missing}: {e}; reinstall onepeace with the extra "
              "it needs (see docs/install.md)")
        return 1
    except OSError as e:  # disk full, permission denied, ... on a file the command reads or writes
        where = f": {e.filename}" if e.filename else ""
        error(f"error: {e.strerror or e}{where}")
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback with -v
        logging.getLogger("onepeace.cli").info("traceback of the internal error", exc_info=True)
        error(f"internal error: {type(e).__name__}: {e} (a bug in onepeace: please report it with the command; "
              "`onepeace -v ...` shows the traceback)")
        return 1
