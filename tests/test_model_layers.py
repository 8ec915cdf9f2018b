"""The network apart from its entry points (issue 21): ``onepeace.model`` is the nn.Module alone, the
inference layer adds ``embed`` & co., the checkpoints build the class they are given, and the old
import paths keep working or name the new place in one line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import onepeace
from onepeace import inference
from onepeace.checkpoints.format import load_pretrained
from onepeace.model import OnePeaceNetwork

SRC = Path(__file__).resolve().parents[1] / "src" / "onepeace"
TEXTS = ["a dog on the grass", "two cats", "a red car parked by the road"]
ENTRY_POINTS = ("embed", "embed_fused", "encode_media", "encode_text", "encode_image", "encode_audio", "classify",
                "ground", "segment", "from_pretrained", "save_pretrained", "push_to_hub")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = onepeace.create_model("tiny", modalities={"text": {}, "image": {}})
    path = tmp_path_factory.mktemp("layers") / "tiny"
    model.save_pretrained(path)
    return model, path


def test_the_network_has_no_entry_points():
    net = OnePeaceNetwork.build(onepeace.get_preset("tiny", modalities={"text": {}}))
    assert type(net) is OnePeaceNetwork
    for name in ENTRY_POINTS:
        assert not hasattr(OnePeaceNetwork, name), name
        assert hasattr(onepeace.OnePeace, name), name
    with pytest.raises(AttributeError):
        net.encode_text  # noqa: B018  (encode_<modality> belongs to the public class)
    # the network computes: encode / project on processed tensors
    batch = net.processor.get("text")(TEXTS)
    assert net.embed_batch("text", batch).shape == (3, net.config.dim)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (function-local imports included)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    pkg = list(rel.parts[:-1])  # the package a relative import starts from (a module's or __init__'s)
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return out


def _forbidden(folder: str, prefixes: tuple[str, ...]) -> list[str]:
    files = sorted((SRC / folder).glob("*.py")) if not folder.endswith(".py") else [SRC / folder]
    return [f"{f.name}: {m}" for f in files for m in sorted(_imports(f))
            if m == "onepeace" or m == "onepeace.__version__" or m.startswith(prefixes)]


def test_layers_point_one_way():
    above_model = ("onepeace.checkpoints", "onepeace.inference", "onepeace.factory", "onepeace.search",
                   "onepeace.serve", "onepeace.cli", "onepeace.data", "onepeace.tasks", "onepeace_train")
    assert _forbidden("model", above_model) == []
    above_checkpoints = above_model[1:]
    assert _forbidden("checkpoints", above_checkpoints) == []
    assert _forbidden("outputs.py", ("onepeace.checkpoints", "onepeace.model", "onepeace_train")) == []


def test_from_pretrained_gives_the_public_class_and_the_same_vectors(saved):
    model, path = saved
    before = model.embed(text=TEXTS)["text"]
    loaded = onepeace.OnePeace.from_pretrained(path)
    assert isinstance(loaded, onepeace.OnePeace) and isinstance(loaded, OnePeaceNetwork)
    got = loaded.embed(text=TEXTS)["text"]
    assert torch.equal(got, before)
    bare = load_pretrained(path)  # the checkpoints alone build the network
    assert type(bare) is OnePeaceNetwork
    assert torch.equal(inference.embed(bare, text=TEXTS)["text"], got)
    assert torch.equal(inference.encode_media(loaded, "text", TEXTS), loaded.encode_text(TEXTS))
    assert loaded.encode_image([]).shape == (0, loaded.config.dim)


def test_models_built_anywhere_are_the_public_class(saved):
    model, _ = saved
    assert type(onepeace.create_model("tiny", device="meta")) is onepeace.OnePeace
    grown = model.grown(model.config.replace(modalities={**model.config.modalities, "audio": {}}),
                        allow_missing=lambda k: ".audio" in k or k.startswith("adapters.audio"))
    assert type(grown) is onepeace.OnePeace and "audio" in grown.modality_names


def test_old_paths_work_or_name_the_new_place():
    from onepeace.factory import create_model, get_processor, get_tokenizer, resolve_dtype

    assert (create_model, get_processor, get_tokenizer, resolve_dtype) == \
        (onepeace.create_model, onepeace.get_processor, onepeace.get_tokenizer, onepeace.resolve_dtype)
    from onepeace.checkpoints import hub, resolve

    assert hub.resolve_model is resolve.resolve_model and hub.parse_hub_id is resolve.parse_hub_id
    from onepeace.checkpoints.format import CONFIG_NAME, is_model_file, model_files  # noqa: F401

    with pytest.raises(ImportError) as e:
        from onepeace.model.onepeace import OnePeace  # noqa: F401
    assert "onepeace.OnePeace" in str(e.value) and "\n" not in str(e.value)
    for name in ("check_run_dir", "discard_run"):
        with pytest.raises(ImportError) as e:
            exec(f"from onepeace.outputs import {name}")
        assert f"onepeace_train.runs.{name}" in str(e.value) and "\n" not in str(e.value)
    from onepeace_train.runs import check_run_dir, discard_run  # noqa: F401
