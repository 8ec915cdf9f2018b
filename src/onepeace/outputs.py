"""Writing outputs without ever destroying one by accident.

The rule every command follows (files, output directories, models):

* an existing output (a file, a non-empty directory) is refused unless forced (``--force`` on the
  command line, ``overwrite=True`` in Python), and this is checked before any work starts, as are
  the output's folder (an output file's folder must exist; a directory is created, but its nearest
  existing ancestor must be a writable directory);
* a directory that is replaced (a model, a prepared data set) is written into a temporary sibling
  (same folder, so the same file system) and swapped in only when complete: the old directory is
  renamed aside, the new one renamed into place, then the old one deleted. A crash at any point
  leaves the old or the new directory whole, never a mix. The next write to that destination puts
  back an old directory stranded by a crash between the two renames and deletes the temporary
  siblings of processes that no longer run (those of running processes are left alone);
* ``--force`` replaces only what looks like a previous output of the same kind (``owned``): it
  never deletes a folder holding other files, nor one holding the command's own input or the
  current directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence

from .errors import OutputError

# -------------------------------------------------------------- the files of a model directory
# (the checkpoint format, onepeace.checkpoints.format, writes them; they are named here, at the
# bottom of the library, because every output check must recognise a model directory)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_MODEL_FILE = re.compile(r"^(config\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json)"
                         r"(\.tmp-\d+)?$|^README\.md\.tmp-\d+$")
CARD_NAME = "README.md"


def is_model_file(name: str, folder: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` is a file of our model format (or a temporary one of an interrupted write);
    with ``folder``, also its ``README.md`` when that is an onepeace model card (a user's own
    README is never taken for part of a model). :func:`model_files` binds ``folder``."""
    if _MODEL_FILE.match(name) is not None:
        return True
    return name == CARD_NAME and folder is not None and is_model_card(os.path.join(folder, name))


def model_files(folder: str | os.PathLike) -> Callable[[str], bool]:
    """The ``owned`` predicate of a model directory ``folder`` (see :mod:`onepeace.outputs`)."""
    return lambda name: is_model_file(name, folder)


def is_model_card(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model card written for onepeace (YAML front matter naming the library)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(8192)
    except OSError:
        return False
    lines = head.splitlines()
    if not lines or lines[0].strip() != "---":
        return False
    for line in lines[1:]:
        if line.strip() == "---":
            return False
        if re.fullmatch(r"library_name:\s*['\"]?onepeace['\"]?\s*", line):
            return True
    return False

FORCE_HINT = "--force (overwrite=True in Python)"
_SIBLING = re.compile(r"^\.(?P<base>.+)\.onepeace-(?P<kind>new|old)-(?P<pid>\d+)-[0-9a-f]+$")


def is_staging_name(name: str) -> bool:
    """Whether ``name`` is a temporary sibling made by :func:`staged_dir`."""
    return _SIBLING.match(name) is not None


def listing(names: list[str], n: int = 3) -> str:
    """``a, b, c and 4 more``: the first ``n`` of ``names`` for a message."""
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _a(what: str) -> str:
    return ("an " if what[:1] in "aeiou" else "a ") + what


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:  # another drive (Windows)
        return False


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: leave its files alone
    return True


def _resolve(path: str) -> str:
    """The directory to operate on: a symlink to a directory stands for its target, anything
    else is taken lexically (so a staged sibling has the same relative paths to other files)."""
    return os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)


def check_creatable(path: str, shown: str | None = None) -> None:
    """``path`` may be created: its nearest existing ancestor is a writable directory."""
    shown = path if shown is None else shown
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        up = os.path.dirname(probe)
        if up == probe:
            break
        probe = up
    if not os.path.isdir(probe):
        raise OutputError(f"cannot create {shown}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {probe} (for {shown}): permission denied")


def recover(dst: str | os.PathLike) -> None:
    """Clean up after a killed :func:`staged_dir` writing ``dst``: an old directory renamed aside
    whose replacement never arrived is put back; other siblings of dead processes are deleted."""
    real = _resolve(os.fspath(dst))
    parent, base = os.path.split(real)
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return
    for name in names:
        m = _SIBLING.match(name)
        if not m or m["base"] != base or process_alive(int(m["pid"])):
            continue
        full = os.path.join(parent, name)
        if m["kind"] == "old" and not os.path.lexists(real):
            os.rename(full, real)
        else:
            shutil.rmtree(full, ignore_errors=True)


def is_model_dir(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an onepeace model: ``config.json`` and its weights."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    return "config.json" in names and any(n.endswith((".safetensors", ".safetensors.index.json")) and is_model_file(n)
                                          for n in names)


def check_not_in_model_dir(path: str | os.PathLike) -> None:
    """Refuse an output ``path`` inside a model directory (next to its config.json and weights):
    a model directory holds only the model, and a foreign file there blocks replacing it later."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if is_model_dir(parent):
        raise OutputError(f"{path} would be written into the model directory {parent}, which holds only the "
                          "model's files; write it elsewhere")


def check_output_folder_not_model(path: str | os.PathLike, flag: str = "the output directory") -> None:
    """Refuse an output directory ``path`` that is a model directory or lies inside one: files
    or folders of other outputs there block replacing the model later."""
    path = os.fspath(path)
    for folder in (path, os.path.dirname(os.path.abspath(path))):
        if is_model_dir(folder):
            raise OutputError(f"{flag} {path} is {'' if folder == path else 'inside '}the model directory "
                              f"{folder}, which holds only the model's files; choose another directory")


def check_output_file(path: str | os.PathLike, force: bool = False, *, hint: str = FORCE_HINT) -> str:
    """Check, before any work, that the file ``path`` may be written: its folder exists and is
    writable, and it does not exist yet unless ``force``. Returns ``path`` as a string."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"{path} is a directory; give the output file's name")
    if path.endswith(("/", os.sep)) or os.path.basename(path) in ("", ".", ".."):
        raise OutputError(f"{path} names a folder; give the output file's name")
    parent = os.path.dirname(os.path.abspath(path))
    check_not_in_model_dir(path)
    if not os.path.isdir(parent):
        raise OutputError(f"the folder of {path} does not exist ({parent}); create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent} (for {path}): permission denied")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} already exists; pass {hint} to overwrite it, or choose another name")
    return path


def check_output_files(folder: str | os.PathLike, names: Sequence[str], force: bool = False, *,
                       sources: Sequence[str] | None = None, hint: str = FORCE_HINT) -> list[str]:
    """Files ``names`` to write into ``folder`` (created if absent; other files in it are left
    alone), one per input of ``sources``: no two may share a name, and none may exist unless
    ``force``. Returns their paths."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{folder} is a file, not a directory; give a directory (it is created if absent)")
    check_creatable(_resolve(folder), folder)
    sources = list(sources) if sources is not None else list(names)
    paths, seen = [], {}
    for name, source in zip(names, sources):
        path = os.path.join(folder, name)
        if name in seen:
            raise OutputError(f"{seen[name]} and {source} would both be written to {path}; rename one of them")
        seen[name] = source
        paths.append(path)
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not force:
        raise OutputError(f"{existing[0]} already exists ({len(existing)} of the {len(paths)} outputs do); "
                          f"pass {hint} to overwrite them, or choose another directory")
    return paths


def check_output_dir(path: str | os.PathLike, force: bool = False, *, owned: Callable[[str], bool] | None = None,
                     inputs: Iterable[str | os.PathLike | None] = (), what: str = "output",
                     hint: str = FORCE_HINT) -> str:
    """Check, before any work, that the directory ``path`` may be written as a whole (see the
    module's rule). ``owned(name)`` tells the entries a previous ``what`` consists of (None: any);
    ``inputs`` are the command's inputs, which a replacement must not delete. Returns ``path``."""
    path = os.fspath(path)
    real = _resolve(path)
    recover(real)
    if os.path.exists(real) and not os.path.isdir(real):
        raise OutputError(f"{path} is a file, not a directory; give a directory (it is created if absent), "
                          "or move the file away")
    check_creatable(real, path)
    entries = sorted(os.listdir(real)) if os.path.isdir(real) else []
    if not entries:
        return path
    foreign = [e for e in entries if owned is not None and not owned(e)]
    if foreign:
        tail = f"{hint} only replaces a previous {what}" if force else "it is not empty"
        raise OutputError(f"{path} holds files that are not part of {_a(what)} ({listing(foreign)}); {tail}: "
                          "choose a new or empty directory, or move them away")
    if not force:
        raise OutputError(f"{path} already holds {_a(what)} ({listing(entries)}); pass {hint} to replace it, "
                          "or choose a new or empty directory")
    for inp in inputs:
        if inp is not None and _inside(os.fspath(inp), real):
            raise OutputError(f"{path} contains the input {os.fspath(inp)}; replacing it would delete the input: "
                              "choose another output directory")
    if _inside(os.getcwd(), real):
        raise OutputError(f"{path} contains the current directory; replacing it would delete it: "
                          "choose another output directory")
    return path


def _sibling(real: str, kind: str) -> str:
    parent, base = os.path.split(real)
    while True:
        candidate = os.path.join(parent, f".{base}.onepeace-{kind}-{os.getpid()}-{secrets.token_hex(4)}")
        if not os.path.lexists(candidate):
            return candidate


def _swap_in(new: str, real: str) -> None:
    """Put the complete directory ``new`` at ``real``; the previous one, if any, is deleted last."""
    try:
        os.replace(new, real)  # absent or an empty directory: one atomic rename
        return
    except OSError:
        if not os.path.isdir(real) or not os.listdir(real):
            raise
    old = _sibling(real, "old")
    os.rename(real, old)
    try:
        os.rename(new, real)
    except BaseException:
        os.rename(old, real)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(dst: str | os.PathLike, force: bool = False, *, owned: Callable[[str], bool] | None = None,
               inputs: Iterable[str | os.PathLike | None] = (), what: str = "output",
               hint: str = FORCE_HINT) -> Iterator[str]:
    """Yield an empty directory to fill; on success it replaces ``dst`` whole (see the module's
    rule), on an exception it is deleted and ``dst`` is untouched.

    When ``dst``'s folder is not writable but ``dst`` itself is an empty writable directory (a
    mounted volume, say), the files are written straight into it, and removed again on failure.
    """
    inputs = list(inputs)
    shown = os.fspath(dst)
    check_output_dir(shown, force, owned=owned, inputs=inputs, what=what, hint=hint)
    real = _resolve(shown)
    parent = os.path.dirname(real)
    if os.path.isdir(real) and not os.access(parent, os.W_OK | os.X_OK):
        if os.listdir(real) or not os.access(real, os.W_OK | os.X_OK):
            raise OutputError(f"cannot replace {shown}: its folder {parent} is not writable, and a new {what} "
                              f"is staged there; choose an output in a writable folder")
        try:
            yield real
        except BaseException:
            for name in os.listdir(real):
                full = os.path.join(real, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full, ignore_errors=True)
                else:
                    os.remove(full)
            raise
        return
    os.makedirs(parent, exist_ok=True)
    new = _sibling(real, "new")
    os.mkdir(new)
    try:
        yield new
        # something may have appeared meanwhile (another process): check again before replacing
        check_output_dir(shown, force, owned=owned, inputs=inputs, what=what, hint=hint)
        _swap_in(new, real)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


#: names that moved out of the library (they are about training runs), with their new place
_MOVED = {"check_run_dir": "onepeace_train.runs", "discard_run": "onepeace_train.runs"}


def __getattr__(name: str):
    if name in _MOVED:
        raise ImportError(f"onepeace.outputs.{name} is now {_MOVED[name]}.{name} (training runs live in onepeace_train)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CARD_NAME", "CONFIG_NAME", "INDEX_NAME", "WEIGHTS_NAME", "check_not_in_model_dir", "check_output_dir",
           "check_output_folder_not_model", "check_output_file", "check_output_files", "is_model_card", "is_model_dir",
           "is_model_file", "is_staging_name", "listing", "model_files", "recover", "staged_dir"]
