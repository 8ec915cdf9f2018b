"""No compute on padding: embed() buckets / packs variable-length inputs (onepeace.model.packing),
and each row stays what the item gets alone."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

import onepeace
from conftest import derived_tol, model_depth
from onepeace.errors import InputError
from onepeace.model import packing
from onepeace.processing.audio import stem_frames, stem_samples

SR = 16000
#: a short stem (receptive field 22 samples, stride 20) keeps the audio tests fast
STEM = [[32, 10, 5], [32, 4, 4]]


def small(dtype=torch.float32):
    torch.manual_seed(0)
    m = onepeace.create_model("tiny", layers=2, layer_scale_init=0.5,
                              modalities={"text": {}, "audio": {"stem": STEM, "max_seconds": 0.25,
                                                                "min_seconds": 0.05}})
    with torch.no_grad():  # relative tables away from zero, so a wrong bias block would show
        for a in m.adapters.values():
            for t in a.rel_tables:
                t.weight.normal_(0, 1)
    return m.to(dtype).eval()


@pytest.fixture(scope="module")
def models():
    return small(), small(torch.float64)


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["a", "dog", "red", "running", "across", "the", "green", "field", "with", "two", "cats"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def clips(seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.standard_normal(int(SR * s)).astype(np.float32) for s in seconds]


def check_alone(models, name, items):
    m, m64 = models
    together = m.embed(**{name: items})[name]
    alone = torch.cat([m.embed(**{name: [x]})[name] for x in items])
    alone64 = torch.cat([m64.embed(**{name: [x]})[name] for x in items]).double()
    tol = derived_tol(alone.numpy(), alone64.numpy(), together.numpy(), depth=model_depth(m))
    assert tol < 1e-5  # the derived tolerance is a float32 one, not a loose bound
    assert (together - alone).abs().max().item() <= tol
    # input order: a shuffled call gives the same rows, shuffled
    perm = list(range(len(items)))
    random.Random(1).shuffle(perm)
    shuffled = m.embed(**{name: [items[i] for i in perm]})[name]
    assert (shuffled - together[perm]).abs().max().item() <= tol
    return together


@pytest.mark.slow
def test_text_rows_equal_each_caption_alone_and_keep_input_order(models):
    texts = captions(12)
    assert len({len(t.split()) for t in texts}) > 8  # really mixed lengths
    together = check_alone(models, "text", texts)
    padded = models[0].embed(text=texts, bucket=False)["text"]
    assert (together - padded).abs().max() < 1e-5


@pytest.mark.slow
def test_audio_rows_equal_each_clip_alone_and_keep_input_order(models):
    check_alone(models, "audio", clips([0.05, 0.25, 0.12, 0.2, 0.07, 0.16, 0.25, 0.09]))


def count_tokens(m, name, items, **kw):
    """Tokens the encoder's first layer and samples the audio stem receive during embed()."""
    seen = {"tokens": 0, "samples": 0, "calls": 0}

    def layer_hook(mod, args):
        seen["tokens"] += args[0].shape[0] * args[0].shape[1]
        seen["calls"] += 1

    def stem_hook(mod, args):
        seen["samples"] += args[0].numel()

    hooks = [m.encoder.layers[0].register_forward_pre_hook(layer_hook)]
    if name == "audio":
        hooks.append(m.adapters["audio"].stem.register_forward_pre_hook(stem_hook))
    try:
        m.embed(**{name: items}, **kw)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_padding_is_not_computed(models):
    m = models[0]
    texts = ["a"] * 20 + ["a long caption " * 20, "another very long caption " * 12]
    proc = m.processor.get("text")
    lengths = proc.lengths(proc(texts))
    padded = count_tokens(m, "text", texts, batch_size=len(texts), bucket=False)
    bucketed = count_tokens(m, "text", texts, batch_size=len(texts))
    assert padded["tokens"] == len(texts) * max(lengths)
    assert bucketed["tokens"] <= 1.1 * sum(lengths) < padded["tokens"] / 4
    steps = packing.schedule(lengths, len(lengths) * max(lengths), packing.Cost.for_config(m.config), True)
    assert bucketed["tokens"] == packing.padded_tokens(steps, lengths)

    waves = clips([0.25, 0.05, 0.06, 0.05, 0.07])
    padded = count_tokens(m, "audio", waves, batch_size=5, bucket=False)
    bucketed = count_tokens(m, "audio", waves, batch_size=5)
    assert bucketed["tokens"] < padded["tokens"] / 2
    assert bucketed["samples"] < padded["samples"] / 2  # the stem skips the padding too


def test_max_tokens_bounds_each_forward_pass(models):
    m = models[0]
    texts = captions(16, seed=3)
    proc = m.processor.get("text")
    lengths = proc.lengths(proc(texts))
    sizes = []
    hook = m.encoder.layers[0].register_forward_pre_hook(lambda mod, a: sizes.append(a[0].shape[0] * a[0].shape[1]))
    try:
        z = m.embed(text=texts, max_tokens=2 * max(lengths))["text"]
    finally:
        hook.remove()
    assert len(sizes) > 1 and max(sizes) <= 2 * max(lengths)
    assert (z - m.embed(text=texts)["text"]).abs().max() < 1e-5
    with pytest.raises(InputError, match="max_tokens"):
        m.embed(text=texts, max_tokens=0)


def test_embed_batch_bucket_option_and_long_audio_chunks(models):
    m = models[0]
    batch = m.processor.get("text")(captions(10, seed=5))
    a = m.embed_batch("text", batch)
    b = m.embed_batch("text", batch, bucket=True)
    assert (a - b).abs().max() < 1e-5
    # clips over the cap (0.25 s here) in windows: the same with and without bucketing
    waves = clips([0.6, 0.1, 0.3])
    c = m.embed(audio=waves, long_audio="chunk")["audio"]
    d = m.embed(audio=waves, long_audio="chunk", bucket=False)["audio"]
    assert (c - d).abs().max() < 1e-5


def brute_force(lengths, max_tokens, cost):
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    best = None
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        runs, cur = [], [order[0]]
        for i, cut in zip(order[1:], cuts):
            if cut:
                runs.append(cur)
                cur = []
            cur.append(i)
        runs.append(cur)
        if any(len(r) > 1 and len(r) * lengths[r[0]] > max_tokens for r in runs):
            continue
        c = sum(cost(len(r), lengths[r[0]]) for r in runs)
        best = c if best is None else min(best, c)
    return best


def test_buckets_are_the_cheapest_cut_and_pack_fits_every_item():
    rng = random.Random(0)
    cost = packing.Cost(attn_scale=500.0, overhead=20.0)
    for _ in range(30):
        lengths = [rng.randint(2, 80) for _ in range(rng.randint(1, 9))]
        max_tokens = rng.randint(80, 400)
        runs = packing.buckets(lengths, max_tokens, cost)
        assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
        assert all(len(r) == 1 or len(r) * max(lengths[i] for i in r) <= max_tokens for r in runs)
        got = sum(cost(len(r), max(lengths[i] for i in r)) for r in runs)
        assert got == pytest.approx(brute_force(lengths, max_tokens, cost))
        rows = packing.pack(lengths, max(lengths))
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= max(lengths) for r in rows)
    # many short and a few long items: far less than the padded batch
    lengths = [5] * 30 + [70, 72]
    steps = packing.schedule(lengths, 32 * 72, packing.Cost(attn_scale=2 * 128 + 1.5 * 512), True)
    assert packing.padded_tokens(steps, lengths) < 0.2 * 32 * 72


def test_stem_samples_inverts_stem_frames():
    for stem in (STEM, [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2):
        for t in (1, 2, 7, 50, 749):
            n = stem_samples(t, stem)
            assert stem_frames(n, stem) == t and stem_frames(n - 1, stem) == t - 1
