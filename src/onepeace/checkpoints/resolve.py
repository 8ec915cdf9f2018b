"""Models by name: Hugging Face Hub ids wherever a model directory is accepted.

Publishing (model cards, :func:`onepeace.checkpoints.hub.push_to_hub`) is in
:mod:`onepeace.checkpoints.hub`, which re-exports everything here; this part sits below the
checkpoint format (:mod:`onepeace.checkpoints.format` resolves ids through it), the publishing above.

* :func:`resolve_model` turns ``org/name`` (or ``org/name@revision``) into a local directory: a
  snapshot of the repository's model files in the standard Hub cache (``HF_HUB_CACHE``, by default
  ``~/.cache/huggingface/hub``), downloaded once and then reused. With ``HF_HUB_OFFLINE=1`` (or
  ``local_files_only=True``) only the cache is used. A local path always wins over an id.
``huggingface_hub`` is imported only when an id is resolved.
"""

from __future__ import annotations

import os
import re

from .._version import __version__
from ..errors import CheckpointError, ConfigError
from ..outputs import CONFIG_NAME

#: the files of a snapshot that make an onepeace model (everything else in a repository is skipped)
ALLOW_PATTERNS = [CONFIG_NAME, "*.safetensors", "*.safetensors.index.json", "README.md"]
LIBRARY = "onepeace"

# org/name, optionally @revision (a branch, tag or commit). Hub rules: [\w.-], no "--" nor "..".
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w][\w./-]*))?$")
# a name ending like this is a file someone meant to give, not a repository
_FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt", ".safetensors", ".json", ".npz", ".txt", ".toml")
_TRUE = {"1", "ON", "YES", "TRUE"}


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``name`` reads as a Hub model id ``org/name[@revision]``,
    else None (a path: absolute, relative with ``./`` or more than one ``/``, or a file name)."""
    m = _HUB_ID.match(name)
    if m is None:
        return None
    repo = m["repo"]
    if "--" in repo or ".." in repo or repo.lower().endswith(_FILE_SUFFIXES + (".git",)):
        return None
    return repo, m["rev"]


def looks_like_hub_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` is not an existing path and reads as ``org/name[@revision]``."""
    name = os.fspath(name)
    return not os.path.exists(name) and parse_hub_id(name) is not None


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), read now rather than at import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> str | None:
    """The cache to use: ``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``/hub as set now, else
    None (huggingface_hub's default)."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _shown_cache(cache_dir: str | None) -> str:
    if cache_dir is not None:
        return cache_dir
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except ImportError:
        return "~/.cache/huggingface/hub"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_network_error(e: BaseException) -> bool:
    root = type(e).__module__.split(".")[0]
    return isinstance(e, OSError) or root in {"httpx", "httpx2", "requests", "urllib3", "huggingface_hub"}


def resolve_model(name_or_path: str | os.PathLike, *, revision: str | None = None,
                  cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                  token: str | bool | None = None) -> str:
    """A local model directory for ``name_or_path``.

    An existing path is returned as it is (a local directory wins over an id of the same name),
    and so is anything that does not read as ``org/name[@revision]``: the loader then says what is
    wrong with it. An id is snapshotted from the Hugging Face Hub into the standard cache (only
    ``config.json``, ``*.safetensors``, the shard index and ``README.md``), or taken from the
    cache alone when ``local_files_only`` (default: ``HF_HUB_OFFLINE``). ``revision`` (a branch,
    tag or commit) may also be given as ``org/name@revision``. Failures are one-line
    :class:`~onepeace.errors.CheckpointError` messages naming the id and what to do.
    """
    path = os.fspath(name_or_path)
    parsed = None if os.path.exists(path) else parse_hub_id(path)
    if parsed is None:
        if revision is not None:
            raise ConfigError(f"revision {revision!r} applies to a Hugging Face Hub id (org/name), "
                              f"not to the local path {path}")
        return path
    repo_id, rev = parsed
    if revision is not None and rev is not None and revision != rev:
        raise ConfigError(f"model {path} names revision {rev!r} but revision={revision!r} was also given; give one")
    rev = revision or rev
    shown = f"{repo_id}@{rev}" if rev else repo_id
    offline = hub_offline() if local_files_only is None else bool(local_files_only)
    cache = hub_cache_dir(cache_dir)
    try:
        import huggingface_hub
        from huggingface_hub.utils import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(f"model directory not found: {path} (to load it as a Hugging Face Hub id, "
                              "install huggingface_hub: pip install huggingface_hub)") from None
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=rev, cache_dir=cache, local_files_only=offline, allow_patterns=ALLOW_PATTERNS,
            library_name=LIBRARY, library_version=__version__, token=token)
    except RevisionNotFoundError:
        raise CheckpointError(f"model {repo_id} has no revision {rev!r} on the Hugging Face Hub; "
                              "give an existing branch, tag or commit") from None
    except GatedRepoError:
        raise CheckpointError(f"model {repo_id} is gated on the Hugging Face Hub: accept its terms on "
                              f"https://huggingface.co/{repo_id} and log in (hf auth login, or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"model directory not found: {path}; nor is it a model on the Hugging Face Hub "
                              "(if it is private, log in: hf auth login, or set HF_TOKEN)") from None
    except LocalEntryNotFoundError as e:
        if type(e).__name__ == "IncompleteSnapshotError":  # huggingface_hub >= 1: files of the snapshot missing
            raise CheckpointError(f"the cached snapshot of model {shown} in {_shown_cache(cache)} is incomplete; "
                                  f"download it again with network access (hf download {repo_id}"
                                  f"{f' --revision {rev}' if rev else ''})") from None
        if offline:
            why = "HF_HUB_OFFLINE is set" if local_files_only is None else "local_files_only=True"
            raise CheckpointError(
                f"model {shown} is neither a local directory nor in the Hugging Face Hub cache "
                f"({_shown_cache(cache)}) and {why}: download it once with network access "
                f"(hf download {repo_id}{f' --revision {rev}' if rev else ''}), or give a model directory") from None
        raise CheckpointError(f"cannot reach the Hugging Face Hub for model {shown}, and it is not in the cache "
                              f"({_shown_cache(cache)}): check the network (or HF_ENDPOINT), or give a model "
                              "directory") from None
    except HFValidationError as e:
        raise CheckpointError(f"model directory not found: {path} (nor a valid Hub id: {e})") from None
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise CheckpointError(f"cannot download model {shown} from the Hugging Face Hub: {_first_line(e)}") from None
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise CheckpointError(
            f"model {shown} on the Hugging Face Hub has no {CONFIG_NAME}: it is not an onepeace model "
            "(an official ONE-PEACE .pt checkpoint must be converted first: onepeace convert SRC.pt DST_DIR)")
    return folder


__all__ = ["ALLOW_PATTERNS", "LIBRARY", "hub_cache_dir", "hub_offline", "looks_like_hub_id", "parse_hub_id",
           "resolve_model"]
