"""onepeace models in sentence-transformers (tested with 6.3): :class:`OnePeaceModule` is an input
module taking sentence-transformers' multimodal inputs (texts, PIL images, audio as
``{"array", "sampling_rate"}`` dicts or 16 kHz arrays, paths of image or audio files, videos when the
model has a video branch) and returning ``model.embed``'s rows as ``sentence_embedding``::

    from onepeace.integrations.sentence_transformers import load, write_modules_json

    st = load("runs/demo/model")                 # a SentenceTransformer
    st.encode(["a dog barks"]); st.encode([pil_image]); st.encode([{"array": wav, "sampling_rate": 44100}])

    write_modules_json("runs/demo/model")        # once: then sentence-transformers reads the directory
    SentenceTransformer("runs/demo/model", trust_remote_code=True)

A onepeace model directory holds ``config.json`` and ``model.safetensors``; sentence-transformers
reads a directory through its ``modules.json``. :func:`write_modules_json` adds that file (naming
this module, which reads the onepeace files from the directory's root), and :func:`load` builds the
``SentenceTransformer`` around the module without touching the directory. sentence-transformers 6
imports a module class from outside its own package only with ``trust_remote_code=True``: here that
imports this installed module (the directory holds no code). Embeddings are unit rows
(the model normalises them; ``normalize_embeddings`` changes nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from . import require

require("sentence_transformers", "st", "the sentence-transformers module (onepeace.integrations.sentence_transformers)")

from sentence_transformers.base.modality import infer_modality  # noqa: E402
from sentence_transformers.base.modules.input_module import InputModule  # noqa: E402

#: what sentence-transformers' modules.json calls this module
CLASS_REF = "onepeace.integrations.sentence_transformers.OnePeaceModule"


def _item(modality: str, x: Any) -> Any:
    if modality == "audio":
        if isinstance(x, dict):
            if x.get("array") is None:
                raise InputError(f"an audio input dict needs 'array' (and 'sampling_rate'), got keys {sorted(x)}")
            rate = x.get("sampling_rate", x.get("sample_rate"))
            if rate is None:
                raise InputError("an audio input {'array': ...} has no 'sampling_rate': give the rate of its samples")
            return np.asarray(x["array"], dtype=np.float32), int(rate)
        if hasattr(x, "get_all_samples"):  # a torchcodec AudioDecoder
            s = x.get_all_samples()
            return s.data.detach().cpu().numpy(), int(s.sample_rate)
    if modality == "video" and isinstance(x, dict):
        return x.get("bytes") or x.get("path") or x.get("frames")
    return x


class OnePeaceModule(InputModule):
    """A whole onepeace model as a sentence-transformers input module (preprocess keeps the raw
    inputs, forward embeds them with :meth:`OnePeace.embed`)."""

    save_in_root = True
    config_keys = ["long_audio", "long_text"]
    config_file_name = "onepeace_sentence_transformers.json"

    def __init__(self, model_name_or_path: Any = None, *, long_audio: str = "chunk", long_text: str = "truncate",
                 model: Any = None, **kwargs: Any) -> None:
        super().__init__()
        from ..inference import OnePeace
        from ..processing.audio import check_long_audio
        from ..processing.text import check_long_text

        if model is None:
            if isinstance(model_name_or_path, OnePeace):
                model = model_name_or_path
            else:
                model = _load_onepeace(model_name_or_path)
        self.model = model.eval()
        self.long_audio = check_long_audio(long_audio)
        self.long_text = check_long_text(long_text)

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("text", "image", "audio", "video") if m in self.model.modality_names]

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.model.config.dim)

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.dim)

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        items = []
        for x in inputs:
            m = infer_modality(x, supported_modalities=self.modalities)
            if isinstance(m, tuple) or m not in self.model.modality_names:
                raise InputError(f"a {m} input, but this model has no {m} branch (it has "
                                 f"{', '.join(self.model.modality_names)})")
            if m == "text" and prompt:
                x = prompt + x
            items.append((m, _item(m, x)))
        return {"onepeace_items": items}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        items = features["onepeace_items"]
        out = torch.empty(len(items), self.model.config.dim)
        by: dict[str, list[int]] = {}
        for i, (m, _) in enumerate(items):
            by.setdefault(m, []).append(i)
        for m, rows in by.items():
            z = self.model.embed(**{m: [items[i][1] for i in rows]}, long_audio=self.long_audio,
                                 long_text=self.long_text, batch_size=max(1, len(rows)))[m]
            out[rows] = z
        features["sentence_embedding"] = out.to(self.model.device)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        import shutil
        import tempfile

        # sentence-transformers writes its own files beside ours: save the model alone, then move it in
        os.makedirs(output_path, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".onepeace-", dir=output_path)
        try:
            self.model.save_pretrained(os.path.join(tmp, "model"))
            for name in os.listdir(os.path.join(tmp, "model")):
                os.replace(os.path.join(tmp, "model", name), os.path.join(output_path, name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: Any = None, cache_folder: Any = None,
             revision: str | None = None, local_files_only: bool = False, **kwargs: Any) -> OnePeaceModule:
        path = os.path.join(model_name_or_path, subfolder) if subfolder else model_name_or_path
        try:
            config = cls.load_config(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                     revision=revision, local_files_only=local_files_only)
        except Exception:  # noqa: BLE001 - the file is optional (written by write_modules_json)
            config = {}
        model = _load_onepeace(path, revision=revision, cache_dir=cache_folder, local_files_only=local_files_only)
        return cls(model=model, **{k: v for k, v in config.items() if k in cls.config_keys})


def _load_onepeace(path: Any, **kwargs: Any):
    from ..errors import OnePeaceError
    from ..inference import OnePeace

    if path is None or not isinstance(path, (str, os.PathLike)):
        raise InputError(f"a onepeace model directory or hub id is needed, got {type(path).__name__}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return OnePeace.from_pretrained(os.fspath(path), **kwargs)
    except OnePeaceError as e:
        raise CheckpointError(f"sentence-transformers cannot read {os.fspath(path)} as a onepeace model: {e}") from None


def load(model_or_path: Any, *, device: str | None = None, long_audio: str = "chunk",
         long_text: str = "truncate") -> Any:
    """A ``SentenceTransformer`` of a onepeace model (a :class:`OnePeace`, a model directory or a hub
    id), its directory left as it is."""
    from sentence_transformers import SentenceTransformer

    module = OnePeaceModule(model_or_path, long_audio=long_audio, long_text=long_text)
    return SentenceTransformer(modules=[module], device=device or str(module.model.device))


def write_modules_json(path: str | os.PathLike) -> str:
    """Add sentence-transformers' ``modules.json`` to a onepeace model directory, so that
    ``SentenceTransformer(path)`` loads it (this module reading ``config.json`` and the weights
    from the directory's root); returns the file written. The model is checked first."""
    path = os.fspath(path)
    _load_onepeace(path)  # a directory onepeace cannot read is one line, before anything is written
    out = os.path.join(path, "modules.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": CLASS_REF}], f, indent=2)
    return out
