"""Importing official ONE-PEACE checkpoints (fairseq pickles) into our format.

A pure translation, torchtitan ``state_dict_adapter`` style: one declarative table from official
key templates to ours (``None`` = dropped on purpose), a few named value transforms, and the
effective config derived from the saved cfg *and* the keys (the saved cfg is not what was built:
fixtures README quirks 1-2). Every official key is either mapped or listed as dropped; anything
else fails naming the keys.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
from typing import Any

import torch

from ..config import HeadConfig, ModelConfig
from ..errors import CheckpointError
from ..model.onepeace import OnePeaceNetwork
from ..model.precision import resolve_dtype
from ..outputs import check_output_dir
from ..processing.tokenizer import GPT2_VOCAB, SPECIAL_SYMBOLS, VOCAB_SIZE
from .format import TensorSpec, model_files, write_checkpoint_dir
from .safe_pickle import LazyTensor, read_checkpoint, to_plain

log = logging.getLogger(__name__)

E = "encoder_wrapper."
L = E + "fusion_model.layers.{i}."
M = "(?P<m>text|image|audio)"

#: official key template -> our key template (None: dropped on purpose). {i} layer, {j} index, {m} modality
KEY_MAP: list[tuple[str, str | None]] = [
    # shared layer parts
    (L + "gamma_1", "encoder.layers.{i}.gamma_1"),
    (L + "gamma_2", "encoder.layers.{i}.gamma_2"),
    (L + "self_attn.q_proj.{p}", "encoder.layers.{i}.attn.q_proj.{p}"),
    (L + "self_attn.k_proj.{p}", "encoder.layers.{i}.attn.k_proj.{p}"),
    (L + "self_attn.v_proj.{p}", "encoder.layers.{i}.attn.v_proj.{p}"),
    (L + "self_attn.out_proj.{p}", "encoder.layers.{i}.attn.out_proj.{p}"),
    (L + "self_attn.ln.{p}", "encoder.layers.{i}.attn.sub_norm.{p}"),
    (L + "self_attn_layer_norm.{p}", "encoder.layers.{i}.attn_norm.{p}"),
    (L + "final_layer_norm.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
    # per-modality FFNs and final norms
    (L + "{m}_ffn.0.wi_0.weight", "encoder.layers.{i}.ffns.{m}.wi_0.weight"),
    (L + "{m}_ffn.0.wi_1.weight", "encoder.layers.{i}.ffns.{m}.wi_1.weight"),
    (L + "{m}_ffn.2.{p}", "encoder.layers.{i}.ffns.{m}.sub_norm.{p}"),
    (L + "{m}_ffn.3.{p}", "encoder.layers.{i}.ffns.{m}.wo.{p}"),
    (E + "fusion_model.{m}_layer_norm.{p}", "encoder.norms.{m}.{p}"),
    (E + "fusion_model.version", None),
    # adapters: common
    (E + "{m}_adapter.cls_embedding", "adapters.{m}.cls_embedding"),
    (E + "{m}_adapter.rel_pos_table_list.{j}.weight", "adapters.{m}.rel_tables.{j}.weight"),
    (E + "{m}_adapter.rel_pos_table.weight", "adapters.{m}.rel_tables.0.weight"),
    (E + "{m}_adapter.rp_bucket", None),  # recomputed (checked equal in the tests)
    # text
    (E + "text_adapter.embed_tokens.weight", "adapters.text.embed_tokens.weight"),
    (E + "text_adapter.embed_positions.weight", "adapters.text.embed_positions.weight"),
    # image (hMLP)
    (E + "image_adapter.pos_embed", "adapters.image.pos_embed"),
    (E + "{m}_adapter.type_embedding", "adapters.{m}.type_embedding"),  # NLVR2
    (E + "image_adapter.type_embedding_2", "adapters.image.type_embedding_2"),
    (E + "image_adapter.position_idx", None),
    (E + "image_adapter.embed_images.0.{p}", "adapters.image.stem.conv1.{p}"),
    (E + "image_adapter.embed_images.1.layer_norm.{p}", "adapters.image.stem.norm1.{p}"),
    (E + "image_adapter.embed_images.3.{p}", "adapters.image.stem.conv2.{p}"),
    (E + "image_adapter.embed_images.4.layer_norm.{p}", "adapters.image.stem.norm2.{p}"),
    (E + "image_adapter.embed_images.6.{p}", "adapters.image.stem.conv3.{p}"),
    # audio
    (E + "audio_adapter.cls_pos_embed", "adapters.audio.cls_pos_embed"),
    (E + "audio_adapter.mask_embedding", "adapters.audio.mask_embedding"),
    (E + "audio_adapter.embed_audios.0.conv_layers.{j}.0.weight", "adapters.audio.stem.convs.{j}.weight"),
    (E + "audio_adapter.embed_audios.0.conv_layers.{j}.2.1.{p}", "adapters.audio.stem.norms.{j}.{p}"),
    (E + "audio_adapter.embed_audios.2.{p}", "adapters.audio.stem_norm.{p}"),
    (E + "audio_adapter.embed_audios.3.{p}", "adapters.audio.stem_proj.{p}"),
    (E + "audio_adapter.embed_positions.{k}.0.{p}", "adapters.audio.conv_pos.convs.{k-1}.{p}"),
    # heads
    ("{m}_proj.{p}", "proj.{m}.{p}"),
    ("logit_scale", "logit_scale"),
    ("classify_head.norm.{p}", "head.norm.{p}"),
    ("classify_head.attn_pooling_func.q", "head.pool.q"),
    ("classify_head.attn_pooling_func.{n}_proj.{p}", "head.pool.{n}_proj.{p}"),
    ("classify_head.pooler.1.{p}", "head.pooler.{p}"),
    ("classify_head.classifier.0.{p}", "head.fc1.{p}"),
    ("classify_head.classifier.1.{p}", "head.fc_norm.{p}"),
    ("classify_head.classifier.3.{p}", "head.fc2.{p}"),
    ("fc_norm.{p}", "head.norm.{p}"),  # vision-branch ImageNet head (models_vit.py)
    ("head.{p}", "head.fc.{p}"),
    # pretraining-only parts (absent from released files; dropped if present)
    ("decoder_wrapper.{rest}", None),
    ("decoder_{m}_embed.{p}", None),
    ("{m}_mask_token", None),
    ("{m}_mask_head.{p}", None),
]

_FIELDS = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "k": r"(?P<k>\d+)", "m": M,
           "p": r"(?P<p>weight|bias)", "n": r"(?P<n>k|v|out)", "rest": r"(?P<rest>.+)"}


def _compile(template: str) -> re.Pattern:
    out, pos = "", 0
    for mt in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos : mt.start()]) + _FIELDS[mt.group(1)]
        pos = mt.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


_PATTERNS = [(_compile(src), dst) for src, dst in KEY_MAP]


def map_key(key: str) -> str | None:
    """Our name for an official key; None if dropped on purpose; KeyError if unknown."""
    for pat, dst in _PATTERNS:
        mt = pat.match(key)
        if mt is None:
            continue
        if dst is None:
            return None
        g = mt.groupdict()
        if "k" in g and g["k"] is not None:
            g["k-1"] = str(int(g["k"]) - 1)
        return re.sub(r"\{([\w-]+)\}", lambda x, g=g: g[x.group(1)], dst)
    raise KeyError(key)


def normalize_keys(keys: list[str]) -> dict[str, str]:
    """Official key -> canonical retrieval-layout key (the vision-branch file is renamed)."""
    out = {}
    for k in keys:
        if k.startswith("encoder.layers."):
            out[k] = E + "fusion_model." + k[len("encoder."):]
        elif k.startswith("image_adapter."):
            out[k] = E + k
        else:
            out[k] = k
    return out


# ---------------------------------------------------------------------------------- config
def _get(d: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def parse_stem_spec(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``feature_encoder_spec`` string ('[(512,10,5)] + [(512,3,2)] * 4 ...')
    with a tiny evaluator that accepts only literals, + and * (never Python's eval)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported element {ast.dump(node)}")

    try:
        out = ev(ast.parse(spec, mode="eval"))
        return [tuple(int(v) for v in t) for t in out]
    except (SyntaxError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot parse audio feature_encoder_spec {spec!r}: {e}") from None


def _rel_tables(a: str, m: str, keys: set[str], shapes: dict[str, tuple]) -> tuple[list[int], int, int]:
    """(table indices, rows, heads) of the relative-position tables of the adapter prefixed ``a``."""
    tables = sorted(int(k.rsplit(".", 2)[-2]) for k in keys if k.startswith(a + "rel_pos_table_list."))
    if not tables and a + "rel_pos_table.weight" in keys:
        tables = [0]
    if not tables:
        raise CheckpointError(f"the {m} adapter has no relative-position table; unsupported")
    first = a + f"rel_pos_table_list.{tables[0]}.weight"
    rows, heads = shapes[first] if first in shapes else shapes[a + "rel_pos_table.weight"]
    return tables, rows, heads


def _image_options(cfg: dict, a: str, keys: set[str], shapes: dict[str, tuple], rows: int) -> dict:
    r = (math.isqrt(rows - 3) + 1) // 2
    if (2 * r - 1) ** 2 + 3 != rows:
        raise CheckpointError(f"image relative table of {rows} rows is not (2R-1)^2+3")
    size = 16 * r
    task_size = _get(cfg, "task", "patch_image_size")
    if task_size is not None and int(task_size) != size:
        log.warning("cfg says patch_image_size=%s but the image table is for %d px; using %d", task_size, size, size)
    pos_rows = shapes[a + "pos_embed"][0]
    g = math.isqrt(pos_rows - 1)
    if g * g + 1 != pos_rows:
        raise CheckpointError(f"image pos_embed of {pos_rows} rows is not a square grid + CLS")
    if a + "embed_images.0.weight" not in keys or a + "embed_images.6.weight" not in keys:
        raise CheckpointError("only the hMLP image stem is supported")
    return dict(image_size=size, pos_grid=g)


def _audio_options(cfg: dict, a: str, keys: set[str], shapes: dict[str, tuple], rows: int, dim: int) -> dict:
    spec_str = _get(cfg, "model", "encoder", "audio_adapter", "feature_encoder_spec")
    strides = parse_stem_spec(spec_str) if spec_str else None
    convs = sorted(int(k.split(".")[-3]) for k in keys
                   if re.match(re.escape(a) + r"embed_audios\.0\.conv_layers\.\d+\.0\.weight$", k))
    stem = []
    for j in convs:
        c_out, _, kk = shapes[a + f"embed_audios.0.conv_layers.{j}.0.weight"]
        s = strides[j][2] if strides and j < len(strides) else [5, 2, 2, 2, 2, 2, 2][j]
        stem.append([c_out, kk, s])
    pos = sorted(int(k.split(".")[-3]) for k in keys if re.match(re.escape(a) + r"embed_positions\.\d+\.0\.weight$", k))
    if not pos:
        raise CheckpointError("only the conv positional audio adapter is supported")
    w = shapes[a + f"embed_positions.{pos[0]}.0.weight"]
    return dict(stem=stem, conv_pos_depth=len(pos), conv_pos_width=w[2] * len(pos),
                conv_pos_groups=dim // w[1], bucket_size=(rows - 2) // 2)


def _infer_modalities(cfg: dict, keys: set[str], shapes: dict[str, tuple], mods: list[str],
                      dim: int) -> tuple[dict[str, dict], int, int]:
    """(per-modality options, number of relative tables per adapter, heads) of the adapters."""
    modalities: dict[str, dict] = {}
    n_tables, heads = set(), None
    for m in mods:
        a = E + f"{m}_adapter."
        tables, rows, heads = _rel_tables(a, m, keys, shapes)
        n_tables.add(len(tables))
        if m == "text":
            modalities[m] = dict(vocab_size=shapes[a + "embed_tokens.weight"][0],
                                 max_positions=shapes[a + "embed_positions.weight"][0], bucket_size=(rows - 2) // 2)
        elif m == "image":
            modalities[m] = _image_options(cfg, a, keys, shapes, rows)
        else:
            modalities[m] = _audio_options(cfg, a, keys, shapes, rows, dim)
    for m in ("text", "image"):
        if m in modalities and E + f"{m}_adapter.type_embedding" in keys:
            modalities[m]["type_embedding"] = True  # NLVR2
    if len(n_tables) != 1:
        raise CheckpointError(f"modalities disagree on relative tables: {sorted(n_tables)}")
    return modalities, n_tables.pop(), heads


def _infer_head(cfg: dict, keys: set[str], shapes: dict[str, tuple], mods: list[str], dim: int) -> HeadConfig | None:
    """The classification head of a fine-tuned checkpoint (or of the ImageNet vision branch), if any."""
    head = None
    if "classify_head.classifier.3.weight" in keys:
        head_type = _get(cfg, "task", "head_type", default=mods[0] if len(mods) == 1 else "vl")
        use_img = bool(_get(cfg, "model", "use_image_features", default=False))
        if head_type in ("vl", "al", "val"):
            other = {"vl": "image", "al": "audio", "val": "image"}[head_type]
            source = other if use_img or "text" not in mods else "text"
        else:
            source = head_type
        fc1 = shapes["classify_head.classifier.0.weight"]
        head = HeadConfig(
            num_classes=shapes["classify_head.classifier.3.weight"][0],
            feature_source=source,
            attn_pooling="classify_head.attn_pooling_func.q" in keys,
            use_pooler="classify_head.pooler.1.weight" in keys,
            head_scale_ratio=fc1[0] / dim,
            two_inputs=fc1[1] == 2 * dim,
        )
    if "head.weight" in keys and "fc_norm.weight" in keys:  # vision branch, ImageNet fine-tuned
        head = HeadConfig(num_classes=shapes["head.weight"][0], type="linear", feature_source="image")
    return head


def infer_config(cfg: dict, shapes: dict[str, tuple]) -> ModelConfig:
    """The effective model config, from the saved cfg and (mainly) the keys and shapes."""
    keys = set(shapes)
    layer_ids = {int(m.group(1)) for k in keys if (m := re.match(re.escape(E) + r"fusion_model\.layers\.(\d+)\.", k))}
    if not layer_ids:
        raise CheckpointError("no encoder layers found: is this a ONE-PEACE checkpoint?")
    for bad, what in (("attn_ln.", "scale_attn"), ("self_attn.c_attn", "scale_heads")):
        if any(bad in k for k in keys):
            raise CheckpointError(f"checkpoint uses {what}, which no released ONE-PEACE model uses; unsupported")
    l0 = L.format(i=0)
    dim = shapes[l0 + "self_attn.q_proj.weight"][0]
    mods = [m for m in ("text", "image", "audio") if l0 + f"{m}_ffn.0.wi_0.weight" in keys]
    if not mods:
        raise CheckpointError("no per-modality FFNs found in layer 0")
    modalities, n, heads = _infer_modalities(cfg, keys, shapes, mods, dim)
    per_layer = n > 1
    if per_layer and n != len(layer_ids):
        raise CheckpointError(f"{n} relative tables for {len(layer_ids)} layers")
    projection = any(f"{m}_proj.weight" in keys for m in mods)
    return ModelConfig(
        dim=dim,
        layers=max(layer_ids) + 1,
        heads=heads,
        ffn_dim=shapes[l0 + f"{mods[0]}_ffn.0.wi_0.weight"][0],
        modalities=modalities,
        per_layer_rel_tables=per_layer,
        attn_sub_norm=l0 + "self_attn.ln.weight" in keys,
        ffn_sub_norm=l0 + f"{mods[0]}_ffn.2.weight" in keys,
        layer_scale=l0 + "gamma_1" in keys,
        final_norm=any(E + f"fusion_model.{m}_layer_norm.weight" in keys for m in mods),
        projection=projection,
        logit_scale=projection,
        head=_infer_head(cfg, keys, shapes, mods, dim),
    )


# ---------------------------------------------------------------------------------- vocabulary
def read_fairseq_dict(path: str | os.PathLike) -> list[str]:
    """Symbols of a fairseq ``dict.txt`` (one 'symbol count' per line), in file order."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CheckpointError(f"cannot read dictionary {path}: {e.strerror or e}") from None
    symbols = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rstrip().rsplit(" ", 1)
        if len(parts) != 2:
            raise CheckpointError(f"{path}:{n}: expected 'symbol count', got {line!r}")
        symbols.append(parts[0].replace(" #fairseq:overwrite", ""))
    return symbols


def vocab_permutation(symbols: list[str]) -> torch.Tensor:
    """For each of our token ids, the official embedding row (fairseq: specials 0-3, then dict.txt)."""
    index = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i, s in enumerate(symbols):
        index.setdefault(s, i + 4)
    if len(symbols) + 4 != VOCAB_SIZE:
        raise CheckpointError(f"dictionary has {len(symbols)} entries; the official dict.txt has {VOCAB_SIZE - 4}")
    perm = torch.empty(VOCAB_SIZE, dtype=torch.long)
    missing = 0
    for ours in range(GPT2_VOCAB):
        row = index.get(str(ours))
        if row is None:
            missing += 1
            row = index["<unk>"]
        perm[ours] = row
    for ours, sym in SPECIAL_SYMBOLS.items():
        if sym not in index:
            raise CheckpointError(f"dictionary lacks {sym!r}")
        perm[ours] = index[sym]
    if missing:
        log.warning("%d GPT-2 tokens are not in the dictionary; they map to <unk>", missing)
    return perm


# ---------------------------------------------------------------------------------- conversion
def load_official(path: str | os.PathLike) -> tuple[dict, dict[str, LazyTensor]]:
    """(plain cfg dict, {official key: LazyTensor}) from a fairseq checkpoint or vision-branch pickle."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    cfg = to_plain(obj.get("cfg")) or {}
    if not isinstance(cfg, dict):
        cfg = {}
    if not cfg and obj.get("args") is not None:
        cfg = {"model": to_plain(obj["args"])}
    state = obj["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' is not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, LazyTensor)]
    if bad:
        raise CheckpointError(f"{path}: non-tensor entries in the state dict: {bad[:5]}")
    names = normalize_keys(list(state))
    return cfg, {names[k]: v for k, v in state.items()}


def plan_conversion(cfg: dict, state: dict[str, LazyTensor], dict_path: str | os.PathLike | None,
                    dtype: torch.dtype | None) -> tuple[ModelConfig, list[TensorSpec]]:
    """The effective config and the ordered list of our tensors, each produced lazily."""
    config = infer_config(cfg, {k: tuple(v.shape) for k, v in state.items()})
    expected = OnePeaceNetwork.build(config, device="meta", init=False).state_dict()
    mapped: dict[str, str] = {}
    unmapped = []
    for k in state:
        try:
            ours = map_key(k)
        except KeyError:
            unmapped.append(k)
            continue
        if ours is not None:
            mapped[ours] = k
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} official keys have no mapping: {sorted(unmapped)[:20]}")
    extra = sorted(set(mapped) - set(expected))
    if extra:
        raise CheckpointError(f"official keys map onto names the model lacks: {extra[:20]}")
    perm = None
    if "adapters.text.embed_tokens.weight" in expected:
        if dict_path is None:
            raise CheckpointError(
                "this checkpoint has a text branch: pass --dict with the official dict.txt "
                "(onepeace.checkpoints.official.DICT_URL) so its embedding rows can be reordered"
            )
        perm = vocab_permutation(read_fairseq_dict(dict_path))
    specs = []
    missing = []
    for name, ref in expected.items():
        out_dtype = dtype if (dtype is not None and ref.dtype.is_floating_point) else None
        if name in mapped:
            src = state[mapped[name]]
            shape = tuple(ref.shape)
            if tuple(src.shape) != shape:
                raise CheckpointError(f"{mapped[name]}: shape {tuple(src.shape)} does not fit {name} {shape}")
            fn = _producer(src, name, perm)
            specs.append(TensorSpec(name, shape, out_dtype or (torch.float32 if src.dtype.is_floating_point else src.dtype), fn))
        elif name == "logit_scale":  # one-peace.pt lacks it; upstream re-initialises it on load
            log.warning("checkpoint has no logit_scale; using the initial value ln(1/0.07)")
            specs.append(TensorSpec(name, (), out_dtype or torch.float32, lambda: torch.tensor(math.log(1 / 0.07))))
        else:
            missing.append(name)
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors the model needs: {missing[:20]}")
    return config, specs


def _producer(src: LazyTensor, name: str, perm: torch.Tensor | None):
    def produce() -> torch.Tensor:
        t = src.load()
        if name == "adapters.text.embed_tokens.weight":
            t = t[perm]
        return t

    return produce


DICT_URL = "https://raw.githubusercontent.com/OFA-Sys/ONE-PEACE/main/one_peace/utils/BPE/dict.txt"
CHECKPOINT_URLS = {
    "ONE-PEACE": "http://one-peace-shanghai.oss-accelerate.aliyuncs.com/one-peace.pt",
    "ONE-PEACE_Grounding": "https://one-peace-shanghai.oss-accelerate.aliyuncs.com/one_peace_checkpoints/finetune_refcocog.pt",
    "ONE-PEACE_VGGSound": "https://one-peace-shanghai.oss-accelerate.aliyuncs.com/one_peace_checkpoints/finetune_vggsound.pt",
}


def convert(src: str | os.PathLike, dst: str | os.PathLike, dict_path: str | os.PathLike | None = None,
            dtype: torch.dtype | str | None = "fp32", max_shard_bytes: int = 4 * 1024**3,
            labels: list[str] | None = None, overwrite: bool = False) -> ModelConfig:
    """Convert an official checkpoint to an onepeace model directory, streaming tensor by tensor.

    ``dst`` must be new or empty; ``overwrite=True`` replaces a previous model there, atomically
    (a crash leaves the old or the new model whole), never a folder holding other files."""
    if not os.path.isfile(src):
        raise CheckpointError(f"checkpoint not found: {os.fspath(src)}")
    inputs = [src, dict_path]
    check_output_dir(dst, overwrite, owned=model_files(dst), inputs=inputs, what="model")  # before any reading
    cfg, state = load_official(src)
    config, specs = plan_conversion(cfg, state, dict_path, resolve_dtype(dtype))
    if labels is not None and config.head is not None:
        if len(labels) != config.head.num_classes:
            raise CheckpointError(f"{len(labels)} labels given for a {config.head.num_classes}-class head")
        config.head.labels = list(labels)
    write_checkpoint_dir(os.fspath(dst), config, specs, max_shard_bytes, overwrite=overwrite, inputs=inputs)
    return config
