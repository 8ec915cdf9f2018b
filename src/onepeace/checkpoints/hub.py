"""Publishing to the Hugging Face Hub: model cards and :func:`push_to_hub`; and, re-exported from
:mod:`onepeace.checkpoints.resolve`, Hub ids wherever a model directory is accepted.

* :func:`resolve_model` turns ``org/name`` (or ``org/name@revision``) into a local directory: a
  snapshot of the repository's model files in the standard Hub cache (``HF_HUB_CACHE``, by default
  ``~/.cache/huggingface/hub``), downloaded once and then reused. With ``HF_HUB_OFFLINE=1`` (or
  ``local_files_only=True``) only the cache is used. A local path always wins over an id.
* :func:`push_to_hub` uploads a model (or a saved model directory) with a generated model card
  (:func:`write_model_card`): ``config.json``, the safetensors weights and ``README.md``.

``huggingface_hub`` is imported only when an id is resolved or a model is pushed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from .._version import __version__
from ..errors import ConfigError, OutputError
from ..model.onepeace import OnePeaceNetwork
from .format import (
    CARD_NAME,
    CONFIG_NAME,
    INDEX_NAME,
    load_config,
    save_pretrained,
    weight_files,
    write_text_atomic,
)
from .resolve import (  # noqa: F401  (re-exported: onepeace.checkpoints.hub.resolve_model etc.)
    ALLOW_PATTERNS,
    LIBRARY,
    _first_line,
    _is_network_error,
    hub_cache_dir,
    hub_offline,
    looks_like_hub_id,
    parse_hub_id,
    resolve_model,
)


# ---------------------------------------------------------------------------------------- model card
def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        if any(isinstance(x, (list, tuple, Mapping)) for x in v):
            return json.dumps(v, separators=(",", ":"))
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "defaults"
    return str(v)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            rows += _flatten(v, f"{key} / ")
        else:
            rows.append((key, v))
    return rows


def _metrics_tables(metrics: Mapping[str, Any]) -> list[str]:
    """A table per group of rows that share columns (e.g. retrieval pairs x R@1/R@5/chance),
    a two-column table for the plain values."""
    lines: list[str] = []
    plain: dict[str, Any] = {}
    for name, value in metrics.items():
        rows = value if isinstance(value, Mapping) else None
        if rows and all(isinstance(r, Mapping) and r and not any(isinstance(x, Mapping) for x in r.values())
                        for r in rows.values()):
            cols = list(dict.fromkeys(c for r in rows.values() for c in r))
            lines += [f"**{name}**", "", f"| | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|"]
            lines += [f"| {k} | {' | '.join(_fmt(r[c]) if c in r else '' for c in cols)} |" for k, r in rows.items()]
            lines.append("")
        elif isinstance(value, Mapping):
            plain.update(dict(_flatten(value, f"{name} / ")))
        else:
            plain[name] = value
    if plain:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in plain.items()] + [""]
    return lines


def model_card(model, *, metrics: Mapping[str, Any] | None = None, trained_on: str | Sequence[str] | None = None,
               repo_id: str | None = None, license: str = "apache-2.0") -> str:
    """The text of a model card (``README.md`` with YAML front matter) for ``model``: a
    :class:`~onepeace.OnePeace` or a saved model directory (read on the meta device)."""
    config, n_params = _config_and_size(model)
    modalities = list(config.modalities)
    tags = ["onepeace", "one-peace", "multimodal", "feature-extraction", *modalities]
    if config.head is not None:
        tags.append(f"{config.head.type}-head")
    from huggingface_hub import ModelCardData

    front = ModelCardData(library_name=LIBRARY, license=license, tags=tags, pipeline_tag="feature-extraction")
    name = repo_id or getattr(model, "name_or_path", None) or "onepeace model"
    ref = repo_id or "ORG/NAME"
    inputs = ", ".join(f'{m}=[...]' for m in modalities)
    lines = ["---", front.to_yaml(), "---", "", f"# {name}", "",
             f"A [ONE-PEACE](https://arxiv.org/abs/2305.11172) model for the `onepeace` library: "
             f"{', '.join(modalities)} embedded in one space"
             f"{f', with a {config.head.type} head' if config.head is not None else ''}.", "",
             "## Use", "", "```python", "import onepeace", "",
             f'model = onepeace.OnePeace.from_pretrained("{ref}")',
             f"emb = model.embed({inputs})   # L2-normalised rows per modality", "```", "",
             "```bash", f"onepeace embed --model {ref} --text 'a dog' --image dog.jpg", "```", "",
             "## Model", "", "| | |", "|---|---|",
             f"| parameters | {n_params:,} |",
             f"| modalities | {'; '.join(f'{m} ({_fmt(o)})' for m, o in config.modalities.items())} |",
             f"| width (dim) | {config.dim} |", f"| layers | {config.layers} |", f"| attention heads | {config.heads} |",
             f"| FFN width | {config.ffn_dim} |",
             f"| projections / logit scale | {config.projection} / {config.logit_scale} |"]
    if config.head is not None:
        h = config.head
        lines.append(f"| head | {h.type}, {h.num_classes} classes, from {h.feature_source} |")
    lines += ["", f"The full configuration is in `{CONFIG_NAME}`.", "", "## Training data", ""]
    if trained_on:
        items = [trained_on] if isinstance(trained_on, str) else list(trained_on)
        lines += [f"- {t}" for t in items]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Metrics", ""]
    lines += _metrics_tables(metrics) if metrics else ["Not recorded.", ""]
    lines += ["## License", "", f"{license}.", ""]
    return "\n".join(lines)


def _config_and_size(model):
    if isinstance(model, (str, os.PathLike)):
        config = load_config(os.fspath(model))
        return config, OnePeaceNetwork.build(config, device="meta", init=False).num_parameters()
    return model.config, model.num_parameters()


def write_model_card(model, path: str | os.PathLike, metrics: Mapping[str, Any] | None = None,
                     trained_on: str | Sequence[str] | None = None, *, repo_id: str | None = None,
                     license: str = "apache-2.0") -> str:
    """Write the model card of ``model`` (an OnePeace or a model directory) as ``path/README.md``
    (atomically, replacing a previous card); returns its path. See :func:`model_card`."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise OutputError(f"model directory not found: {path}; save the model there first")
    out = os.path.join(path, CARD_NAME)
    write_text_atomic(out, model_card(model, metrics=metrics, trained_on=trained_on, repo_id=repo_id,
                                      license=license))
    return out


# ---------------------------------------------------------------------------------------- publishing
def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:
        shutil.copy2(src, dst)


def push_to_hub(model, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None, metrics: Mapping[str, Any] | None = None,
                trained_on: str | Sequence[str] | None = None) -> str:
    """Upload ``model`` (an OnePeace, or a saved model directory) to the Hub repository
    ``repo_id`` (created if absent) in one commit: ``config.json``, the safetensors weights and a
    model card. A directory's own ``README.md`` is kept; otherwise a card is generated (with
    ``metrics`` and ``trained_on``). Returns the commit URL."""
    if not isinstance(repo_id, str) or not repo_id or os.path.isabs(repo_id):
        raise ConfigError(f"repo_id {repo_id!r} is not a Hugging Face Hub repository id (org/name or name)")
    if hub_offline():
        raise OutputError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set; unset it to upload")
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise OutputError("pushing to the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from None
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"repo_id {repo_id!r} is not a Hugging Face Hub repository id: {e}") from None
    with tempfile.TemporaryDirectory(prefix="onepeace-push-") as tmp:
        folder = os.path.join(tmp, "model")
        if isinstance(model, (str, os.PathLike)):
            src = os.fspath(model)
            load_config(src)  # a model directory (clear errors otherwise)
            os.mkdir(folder)
            names = [CONFIG_NAME, *(os.path.basename(f) for f in weight_files(src))]
            if os.path.exists(os.path.join(src, INDEX_NAME)):
                names.append(INDEX_NAME)
            if os.path.isfile(os.path.join(src, CARD_NAME)):
                names.append(CARD_NAME)
            for n in names:
                _link_or_copy(os.path.join(src, n), os.path.join(folder, n))
            if CARD_NAME not in names:
                write_model_card(src, folder, metrics, trained_on, repo_id=repo_id)
        else:
            save_pretrained(model, folder)
            write_model_card(model, folder, metrics, trained_on, repo_id=repo_id)
        api = HfApi(token=token, library_name=LIBRARY, library_version=__version__)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                     commit_message=commit_message or "Upload onepeace model",
                                     allow_patterns=ALLOW_PATTERNS)
        except Exception as e:
            if not _is_network_error(e):
                raise
            raise OutputError(f"cannot push to {repo_id} on the Hugging Face Hub: {_first_line(e)} "
                              "(log in with hf auth login, or pass token=)") from None
    return str(getattr(info, "commit_url", info))


__all__ = ["ALLOW_PATTERNS", "hub_offline", "looks_like_hub_id", "model_card", "parse_hub_id", "push_to_hub",
           "resolve_model", "write_model_card"]
