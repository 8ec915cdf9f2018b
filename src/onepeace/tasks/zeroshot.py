"""Zero-shot classification: class names + prompt templates (ensembled) against images or audio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError

#: ESC-50 protocol of the official evaluation: one template
AUDIO_TEMPLATES = ["This is a sound of {}."]
#: a small CLIP-style ensemble for images
IMAGE_TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "an image of a {}.",
]
DEFAULT_TEMPLATES = {"image": IMAGE_TEMPLATES, "audio": AUDIO_TEMPLATES}


def check_templates(templates: Sequence[str], what: str = "template") -> None:
    """Each prompt template formats with one label (``str.format``: ``"a photo of a {}."``); a
    template that does not (``"{} and {}"``, ``"a {} {"``, ``"a {name}"``, no ``{}``) is an
    :class:`InputError` naming it."""
    if not templates:
        raise InputError(f"no {what} given: each needs a '{{}}' where the label goes")
    marker = "\x00label\x00"
    for t in templates:
        try:
            filled = t.format(marker)
        except (IndexError, KeyError, ValueError, AttributeError, TypeError) as e:
            kind = {IndexError: "more than one '{}'", KeyError: f"a named field {{{e}}}"}.get(type(e), str(e))
            raise InputError(f"{what} {t!r} cannot take the label ({kind}); give one '{{}}' where the label "
                             "goes, and write a literal brace as '{{' or '}}'") from None
        if marker not in filled:
            raise InputError(f"{what} {t!r} has no '{{}}' where the label goes (a literal brace is written "
                             "'{{' or '}}')")


@torch.inference_mode()
def class_embeddings(model, labels: Sequence[str], templates: Sequence[str], *, batch_size: int = 16,
                     progress: bool | None = False, long_text: str = "truncate") -> torch.Tensor:
    """[C, D]: per class, the normalised mean of its normalised prompt embeddings (``long_text``: a
    prompt over the model's token limit, as in :meth:`OnePeace.embed`)."""
    if not labels:
        raise InputError("no class labels given")
    check_templates(templates)
    prompts = [t.format(label) for label in labels for t in templates]
    z = model.embed(text=prompts, batch_size=batch_size, progress=progress, long_text=long_text)["text"].view(len(labels), len(templates), -1)
    return F.normalize(z.mean(1), dim=-1)


@torch.inference_mode()
def zero_shot(model, labels: Sequence[str], *, templates: Sequence[str] | None = None,
              batch_size: int = 16, long_audio: str = "truncate", long_text: str = "truncate",
              progress: bool | None = False, **inputs: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Per given modality: class probabilities [N, C] (softmax of the model's temperature-scaled
    cosine similarities). ``long_audio``, ``long_text`` (the class prompts: a long label) and ``progress`` are as in
    :meth:`OnePeace.embed`."""
    given = {k: v for k, v in inputs.items() if v is not None}
    if not given:
        raise InputError("nothing to classify: give image=[...] or audio=[...]")
    out = {}
    scale = float(model.logit_scale_exp()) if model.logit_scale is not None else 100.0
    for name, items in given.items():
        tpl = templates or DEFAULT_TEMPLATES.get(name) or list(_plugin_templates(name)) or ["{}"]
        classes = class_embeddings(model, labels, tpl, batch_size=batch_size, progress=progress, long_text=long_text)
        z = model.embed(batch_size=batch_size, long_audio=long_audio, progress=progress, **{name: items})[name]
        out[name] = (scale * z @ classes.T).softmax(-1)
    return out


def _plugin_templates(name: str) -> tuple[str, ...]:
    """A modality plug-in's own zero-shot prompts (``Modality.prompt_templates``)."""
    from ..modalities import get_modality

    return get_modality(name).prompt_templates


def parse_labels(spec: str) -> list[str]:
    """Class names from a file (one label per line; or ``.json``: a list of names, a
    ``{name: index}`` or an ``{index: name}`` object, indices 0..N-1) or a comma-separated list.
    Anything else is an :class:`InputError` naming the spec."""
    import json
    import os

    if os.path.isdir(spec):
        raise InputError(f"labels {spec} is a directory; give a .txt (one label per line) or .json file")
    if not os.path.exists(spec):
        if spec.lower().endswith((".json", ".txt")):
            raise InputError(f"labels file not found: {spec}")
        labels = [s.strip() for s in spec.split(",") if s.strip()]
        if len(labels) < 2:
            raise InputError(f"labels {spec!r}: give a file that exists or at least two comma-separated names")
        return labels
    try:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read labels file {spec}: {e}") from None
    if spec.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"labels file {spec} is not valid JSON: {e}") from None
        labels = _labels_from_json(data, spec)
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise InputError(f"labels file {spec} holds no labels")
    return labels


def _labels_from_json(data: Any, spec: str) -> list[str]:
    def is_name(x: Any) -> bool:
        return isinstance(x, str) and bool(x.strip())

    def by_index(pairs: list[tuple[Any, str]]) -> list[str]:
        try:
            index = {int(i): name for i, name in pairs}
        except (TypeError, ValueError):
            index = {}
        if len(index) != len(pairs) or sorted(index) != list(range(len(pairs))):
            raise InputError(f"labels file {spec}: the class indices must be the integers 0..{len(pairs) - 1}, "
                             "each once")
        return [index[i] for i in range(len(pairs))]

    if isinstance(data, list):
        if not all(is_name(x) for x in data):
            raise InputError(f"labels file {spec}: a JSON list of labels must hold only non-empty strings")
        return [x.strip() for x in data]
    if isinstance(data, dict):
        if all(is_name(v) for v in data.values()):  # {"0": "dog", "1": "cat"}
            if not all(k.strip().isdigit() for k in data):
                raise InputError(f"labels file {spec}: in an {{index: name}} object every key must be an integer")
            return by_index([(k, v.strip()) for k, v in data.items()])
        # {"dog": 0, "cat": 1}; bool is an int subclass, but never a class index
        if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
            if not all(is_name(k) for k in data):
                raise InputError(f"labels file {spec}: a class name is empty")
            return by_index([(v, k.strip()) for k, v in data.items()])
        raise InputError(f"labels file {spec}: a JSON object must map names to integer indices "
                         "({\"dog\": 0, ...}) or indices to names ({\"0\": \"dog\", ...})")
    raise InputError(f"labels file {spec}: expected a JSON list of names or an object, "
                     f"got {type(data).__name__} {_json_preview(data)}")


def _json_preview(data: Any, n: int = 40) -> str:
    import json

    text = json.dumps(data)
    return text if len(text) <= n else text[: n - 1] + "…"
