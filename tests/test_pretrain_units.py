"""Unit tests of the pretraining pieces (official: one_peace/criterions/*_pretrain_loss.py): mask
samplers, ``forward_kept``, the two contrastive losses against plainly written references, and a
smoke test of ``compute_losses``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import onepeace
from onepeace.modalities.masking import keep_to_positions, random_keep
from onepeace.processing.audio import AudioProcessor, stem_frames
from onepeace.processing.tokenizer import EOS_ID, PAD_ID, default_bpe
from onepeace_train.pretrain.losses import contrastive_loss, denoising_loss
from onepeace_train.pretrain.model import PretrainModel
from onepeace_train.pretrain.objective import ObjectiveConfig, compute_losses

AUDIO_STEM = [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2

# rows of whole words; several of them split into many GPT-2 pieces
SENTENCES = [
    ["antidisestablishmentarianism", "xylophonists", "photosynthesizing", "a", "zygomorphic", "cat",
     "floccinaucinihilipilification", "the", "dog"],
    ["xylophonists", "photosynthesizing", "zygomorphic"],
    ["a"],
    ["the", "antidisestablishmentarianism", "cat", "sat", "on", "a", "zygomorphic", "mat"],
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is much faster than two on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = onepeace.create_model("tiny", layers=1, modalities={
        "text": {}, "image": {"image_size": 64}, "audio": {"stem": AUDIO_STEM}})
    with torch.no_grad():  # non-trivial relative biases (the official init zeroes them)
        for a in m.adapters.values():
            for t in a.rel_tables:
                t.weight.normal_()
    return m


@pytest.fixture(scope="module")
def text_batch():
    """Tokens built word by word, so the word boundaries are known independently of the model:
    (tokens [B, L], word id per CLS-prefixed position: -1 for CLS, </s> and padding)."""
    bpe = default_bpe()
    rows, words = [], []
    for sent in SENTENCES:
        ids, wid = [], []
        for j, w in enumerate(sent):
            pieces = bpe.encode(" " + w)
            ids += pieces
            wid += [j] * len(pieces)
        rows.append(ids + [EOS_ID])
        words.append([-1] + wid + [-1])
    n = max(map(len, rows))
    tokens = torch.full((len(rows), n), PAD_ID, dtype=torch.long)
    word_id = torch.full((len(rows), n + 1), -1, dtype=torch.long)
    for i, (r, w) in enumerate(zip(rows, words)):
        tokens[i, : len(r)] = torch.tensor(r)
        word_id[i, : len(w)] = torch.tensor(w)
    return tokens, word_id


def audio_batch(lengths=(16000, 9000, 12345), seed=0):
    g = torch.Generator().manual_seed(seed)
    proc = AudioProcessor([tuple(s) for s in AUDIO_STEM])
    return proc.collate([torch.randn(n, generator=g) for n in lengths])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- 1. masking


def test_text_batch_has_multi_token_words(model, text_batch):
    tokens, word_id = text_batch
    sizes = torch.bincount(word_id[0][word_id[0] >= 0])
    assert int(sizes.max()) >= 5  # antidisestablishmentarianism, floccinaucinihilipilification...
    # the adapter's word starts agree with the word-by-word construction
    ws = model.adapters["text"].word_starts(tokens)
    expect = torch.zeros_like(ws)
    expect[:, 1:] = (word_id[:, 1:] >= 0) & (word_id[:, 1:] != word_id[:, :-1])
    assert torch.equal(ws, expect)


@pytest.mark.parametrize("seed", range(4))
def test_image_unimodal_and_complementary_joint(model, seed):
    a = model.adapters["image"]
    pixels = torch.zeros(3, 3, 64, 64)
    p = a.grid**2
    assert p == 16
    uni = a.sample_keep((pixels,), 0.75, gen(seed))
    assert uni.shape == (3, p + 1) and uni.dtype == torch.bool
    assert uni[:, 0].all()
    assert ((~uni[:, 1:]).sum(1) == math.floor(0.75 * p)).all()
    joint = a.sample_keep((pixels,), 0.6875, gen(seed + 100), uni)
    assert joint[:, 0].all()
    assert (joint[:, 1:].sum(1) == p - math.floor(0.6875 * p)).all()
    # every joint-kept patch was hidden by the unimodal mask
    assert not (joint[:, 1:] & uni[:, 1:]).any()


@pytest.mark.parametrize("seed", range(3))
def test_random_keep_official_patch_counts(seed):
    """256 patches: 192 hidden / 64 kept unimodally; 176 hidden / 80 kept jointly, from the hidden."""
    valid = torch.ones(2, 257, dtype=torch.bool)
    uni = random_keep(valid, 0.75, gen(seed))
    assert (uni.sum(1) == 65).all() and uni[:, 0].all()
    joint = random_keep(valid, 0.6875, gen(seed + 1), allowed=~uni)
    assert (joint.sum(1) == 81).all() and joint[:, 0].all()
    assert not (joint[:, 1:] & uni[:, 1:]).any()


def test_random_keep_tops_up_when_too_few_allowed():
    valid = torch.ones(1, 11, dtype=torch.bool)
    valid[0, 9:] = False  # 8 real tokens + CLS, 2 padding
    allowed = torch.zeros(1, 11, dtype=torch.bool)
    allowed[0, [2, 5, 9, 10]] = True  # padding "allowed" must still never be kept
    keep = random_keep(valid, 0.25, gen(3), allowed)  # keep 8 - 2 = 6 > 2 allowed real tokens
    assert keep[0, 0] and keep[0, 2] and keep[0, 5]
    assert not keep[0, 9:].any()
    assert int(keep[0, 1:].sum()) == 6


@pytest.mark.parametrize("ratio", [0.15, 0.4, 0.6])
@pytest.mark.parametrize("seed", range(5))
def test_text_whole_word_masking(model, text_batch, ratio, seed):
    tokens, word_id = text_batch
    a = model.adapters["text"]
    keep = a.sample_keep((tokens,), ratio, gen(seed))
    valid = a.valid_mask(tokens)
    assert keep.shape == valid.shape
    assert keep[:, 0].all()  # CLS
    assert not (keep & ~valid).any()  # padding never kept
    for i in range(tokens.shape[0]):
        length = int(valid[i].sum())
        assert keep[i, length - 1]  # </s>
        assert int(tokens[i, length - 2]) == EOS_ID
        wid = word_id[i, : length]
        n_words = int(wid.max()) + 1
        hidden_words = set()
        for w in range(n_words):
            k = keep[i, : length][wid == w]
            assert k.all() or not k.any(), f"word {w} of row {i} partly hidden"
            if not k.any():
                hidden_words.add(w)
        assert len(hidden_words) == math.ceil(ratio * n_words)
        # nothing but whole words is hidden
        assert int((~keep[i, : length]).sum()) == int(sum((wid == w).sum() for w in hidden_words))


@pytest.mark.parametrize("seed", range(5))
def test_text_complementary_joint_prefers_unimodally_hidden(model, text_batch, seed):
    tokens, _ = text_batch
    a = model.adapters["text"]
    valid = a.valid_mask(tokens)
    uni = a.sample_keep((tokens,), 0.15, gen(seed))
    joint = a.sample_keep((tokens,), 0.4, gen(seed + 50), uni)
    assert joint[:, 0].all()
    assert not (joint & ~valid).any()
    body = valid.clone()
    body[:, 0] = False
    for i in range(tokens.shape[0]):
        uni_hidden = body[i] & ~uni[i]
        n_keep = int(joint[i, 1:].sum())
        if n_keep >= int(uni_hidden.sum()):
            assert joint[i][uni_hidden].all()  # every unimodally hidden token is kept first
        else:
            assert not (joint[i] & body[i] & uni[i]).any()
    # where the hidden pool is larger than the keep budget, kept tokens come only from it
    v = torch.ones(2, 21, dtype=torch.bool)
    u = torch.ones(2, 21, dtype=torch.bool)
    u[:, 1:15] = False  # 14 hidden, keep budget 20 - int(0.8 * 20) = 4
    j = random_keep(v, 0.8, gen(seed), ~u)
    assert (j[:, 1:].sum(1) == 4).all() and not (j[:, 15:]).any()


def test_text_joint_mask_counts_bpe_tokens_and_keeps_eos(model):
    a = model.adapters["text"]
    tokens = torch.tensor([default_bpe().encode(" a cat sat on") + [EOS_ID]])  # 4 BPE tokens + </s>
    uni = torch.ones(1, 6, dtype=torch.bool)
    uni[0, 2] = False  # unimodal mask hid "cat"
    eos_hidden, counts = 0, set()
    for seed in range(20):
        joint = a.sample_keep((tokens,), 0.4, gen(seed), uni)
        eos_hidden += int(not joint[0, 5])
        counts.add(int((~joint[0]).sum()))
    assert counts == {int(0.4 * 4)}, counts  # actual: {2} = int(0.4 * 5)
    assert eos_hidden == 0, f"</s> hidden in {eos_hidden}/20 draws"


@pytest.mark.parametrize("ratio", [0.55, 0.45])
@pytest.mark.parametrize("seed", range(4))
def test_audio_span_masking_counts(model, ratio, seed):
    a = model.adapters["audio"]
    batch = audio_batch()
    args = (batch["waveform"], batch["padding_mask"])
    valid = a.valid_mask(*args)
    frames = [stem_frames(n, a.stem.spec) for n in (16000, 9000, 12345)]
    assert valid.sum(1).tolist() == [t + 1 for t in frames] and len(set(frames)) == 3
    keep = a.sample_keep(args, ratio, gen(seed))
    assert keep[:, 0].all()
    assert not (keep & ~valid).any()
    for i, t in enumerate(frames):
        assert int((~keep[i, 1 : t + 1]).sum()) == int(ratio * t)
    # complement is ignored for audio (al audio is never complementary)
    assert torch.equal(a.sample_keep(args, ratio, gen(seed), keep), keep)


def test_audio_span_masking_makes_spans(model):
    """Hidden frames come mostly in runs (centres grown to 5 frames), unlike uniform masking."""
    a = model.adapters["audio"]
    wave = torch.zeros(8, 16000 * 4)
    keep = a.sample_keep((wave, None), 0.55, gen(0))
    hidden = ~keep[:, 1:]
    runs = (hidden[:, 1:] & ~hidden[:, :-1]).sum() + hidden[:, 0].sum()
    mean_run = float(hidden.sum()) / float(runs)
    assert mean_run > 3.0


def test_keep_to_positions():
    keep = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    pos = keep_to_positions(keep)
    assert pos.dtype == torch.int64
    assert pos.tolist() == [[0, 2, 3, 5], [0, 1, -1, -1], [0, 3, -1, -1]]
    g = gen(7)
    for _ in range(5):
        k = torch.rand(4, 30, generator=g) < 0.3
        k[:, 0] = True
        p = keep_to_positions(k)
        assert p.shape == (4, int(k.sum(1).max()))
        for i in range(4):
            real = p[i][p[i] >= 0]
            assert real.tolist() == k[i].nonzero().squeeze(1).tolist()  # ascending, CLS first
            assert (p[i][len(real):] == -1).all()


def test_masks_reproducible_with_same_seed(model, text_batch):
    tokens, _ = text_batch
    ad = model.adapters
    pixels = torch.zeros(2, 3, 64, 64)
    ab = audio_batch()
    a_args = (ab["waveform"], ab["padding_mask"])

    def draw(seed):
        g = gen(seed)
        t = ad["text"].sample_keep((tokens,), 0.15, g)
        tj = ad["text"].sample_keep((tokens,), 0.4, g, t)
        i = ad["image"].sample_keep((pixels,), 0.75, g)
        ij = ad["image"].sample_keep((pixels,), 0.6875, g, i)
        au = ad["audio"].sample_keep(a_args, 0.55, g)
        return [t, tj, i, ij, au]

    first, again, other = draw(11), draw(11), draw(12)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


# --------------------------------------------------------------------------- 2. forward_kept


def _check_kept(out, plain_x, full_bias, pos, content=True):
    pad = pos.lt(0)
    if pad.any():
        assert torch.equal(out.padding_mask, pad)
    else:
        assert out.padding_mask is None
    bias = out.rel_bias(0)
    assert bias.shape == (pos.shape[0], full_bias.shape[0], pos.shape[1], pos.shape[1])
    for b in range(pos.shape[0]):
        p = pos[b][pos[b] >= 0]
        k = p.numel()
        assert torch.equal(bias[b][:, :k, :k], full_bias[:, p][:, :, p])
        if content:
            assert torch.equal(out.x[b, :k], plain_x[b, p])


def test_forward_kept_text(model, text_batch):
    tokens, _ = text_batch
    a = model.adapters["text"]
    with torch.no_grad():
        plain = a(tokens)
        n = plain.x.shape[1]
        full_bias = plain.rel_bias(0)
        everything = torch.arange(n).expand(tokens.shape[0], n)
        out = a.forward_kept(everything, tokens)
        assert torch.equal(out.x, plain.x)
        assert torch.equal(out.rel_bias(0), full_bias.expand(tokens.shape[0], -1, -1, -1))
        valid = a.valid_mask(tokens)
        _check_kept(a.forward_kept(keep_to_positions(valid), tokens), plain.x, full_bias,
                    keep_to_positions(valid))
        pos = keep_to_positions(a.sample_keep((tokens,), 0.4, gen(1)))
        _check_kept(a.forward_kept(pos, tokens), plain.x, full_bias, pos)


def test_forward_kept_image(model):
    a = model.adapters["image"]
    pixels = torch.randn(2, 3, 64, 64, generator=gen(2))
    with torch.no_grad():
        plain = a(pixels)
        full_bias = plain.rel_bias(0)
        everything = keep_to_positions(a.valid_mask(pixels))
        out = a.forward_kept(everything, pixels)
        assert out.padding_mask is None
        assert torch.equal(out.x, plain.x)
        assert torch.equal(out.rel_bias(0), full_bias.expand(2, -1, -1, -1))
        pos = keep_to_positions(a.sample_keep((pixels,), 0.75, gen(3)))
        assert pos.shape == (2, 5)
        _check_kept(a.forward_kept(pos, pixels), plain.x, full_bias, pos)


@pytest.mark.parametrize("leak", [False, True])
def test_forward_kept_audio_without_padding(model, leak):
    a = model.adapters["audio"]
    old = a.official_padding_leak
    a.official_padding_leak = leak
    try:
        wave = torch.randn(2, 12000, generator=gen(4))
        with torch.no_grad():
            plain = a(wave, None)
            full_bias = plain.rel_bias(0)
            everything = keep_to_positions(a.valid_mask(wave, None))
            out = a.forward_kept(everything, wave, None)
            assert out.padding_mask is None
            assert torch.equal(out.x, plain.x)
            assert torch.equal(out.rel_bias(0), full_bias.expand(2, -1, -1, -1))
            # kept subsets: the conv positions run on the compacted sequence, so only the CLS and
            # the bias can be compared with the full sequence
            pos = keep_to_positions(a.sample_keep((wave, None), 0.55, gen(5)))
            out = a.forward_kept(pos, wave, None)
            _check_kept(out, plain.x, full_bias, pos, content=False)
            assert torch.equal(out.x[:, 0], plain.x[:, 0])
    finally:
        a.official_padding_leak = old


def test_forward_kept_audio_with_padding(model):
    """Keeping every valid frame of a padded batch gives the batch-invariant adapter output."""
    a = model.adapters["audio"]
    assert not a.official_padding_leak
    ab = audio_batch()
    args = (ab["waveform"], ab["padding_mask"])
    with torch.no_grad():
        plain = a(*args)
        valid = a.valid_mask(*args)
        pos = keep_to_positions(valid)
        out = a.forward_kept(pos, *args)
        assert torch.equal(out.padding_mask, ~valid)
        torch.testing.assert_close(out.x[valid], plain.x[valid], rtol=0, atol=1e-5)
        _check_kept(out, plain.x, plain.rel_bias(0), pos, content=False)
        pos = keep_to_positions(a.sample_keep(args, 0.45, gen(6)))
        _check_kept(a.forward_kept(pos, *args), plain.x, plain.rel_bias(0), pos, content=False)


# --------------------------------------------------------------------------- 3. contrastive


def ref_contrastive(za, zb, logit_scale):
    s = torch.exp(torch.clamp(logit_scale, 0.0, math.log(100.0)))
    b = za.shape[0]
    total_a = 0.0
    total_b = 0.0
    for i in range(b):
        la = torch.stack([s * torch.dot(za[i], zb[j]) for j in range(b)])
        lb = torch.stack([s * torch.dot(zb[i], za[j]) for j in range(b)])
        total_a = total_a - (la[i] - torch.logsumexp(la, 0))
        total_b = total_b - (lb[i] - torch.logsumexp(lb, 0))
    return (total_a / b + total_b / b) / 2


@pytest.mark.parametrize("ls", [0.3, math.log(1 / 0.07), 4.6, 5.5, -0.7])
def test_contrastive_loss_matches_reference(ls):
    g = gen(8)
    za0 = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    zb0 = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    za, zb = za0.clone().requires_grad_(), zb0.clone().requires_grad_()
    scale = torch.tensor(ls, requires_grad=True)
    loss = contrastive_loss(za, zb, scale)
    loss.backward()
    ra, rb = za0.double().requires_grad_(), zb0.double().requires_grad_()
    rscale = torch.tensor(ls, dtype=torch.float64, requires_grad=True)
    ref = ref_contrastive(ra, rb, rscale)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    assert abs(float(scale.grad) - float(rscale.grad)) < 1e-5
    torch.testing.assert_close(za.grad.double(), ra.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zb.grad.double(), rb.grad, rtol=1e-5, atol=1e-5)
    # the official no-grad gather is the same thing on one process
    assert torch.equal(contrastive_loss(za0, zb0, scale.detach(), gather_with_grad=False),
                       contrastive_loss(za0, zb0, scale.detach()))


def test_contrastive_logit_scale_clamping():
    g = gen(9)
    za = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    zb = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    at_max = contrastive_loss(za, zb, torch.tensor(math.log(100.0)))
    for above in (4.7, 6.0, 50.0):
        scale = torch.tensor(above, requires_grad=True)
        loss = contrastive_loss(za, zb, scale)
        assert torch.allclose(loss, at_max, atol=1e-6)  # s = 100, not e^above
        loss.backward()
        assert float(scale.grad) == 0.0
    below = torch.tensor(-3.0, requires_grad=True)
    loss = contrastive_loss(za, zb, below)
    assert torch.allclose(loss, contrastive_loss(za, zb, torch.tensor(0.0)), atol=1e-6)  # s = 1
    loss.backward()
    assert float(below.grad) == 0.0
    inside = torch.tensor(2.0, requires_grad=True)
    contrastive_loss(za, zb, inside).backward()
    assert float(inside.grad) != 0.0
    # the parameter itself is not modified by the loss (the trainer clamps it after the step)
    assert scale.item() == 50.0


# --------------------------------------------------------------------------- 4. denoising


def ref_denoising(student, teacher, masked, valid, tau=0.4, eps=0.1):
    b, n, _ = student.shape
    cands = [(i, j) for i in range(b) for j in range(1, n) if valid[i, j]]
    m = len(cands)
    t = [teacher[i, j] / teacher[i, j].norm() for i, j in cands]
    losses = []
    for i in range(b):
        for j in range(1, n):
            if not (masked[i, j] and valid[i, j]):
                continue
            s = student[i, j] / student[i, j].norm()
            logits = torch.stack([torch.dot(s, tk) / tau for tk in t])
            logp = logits - torch.logsumexp(logits, 0)
            nll = -logp[cands.index((i, j))]
            if eps > 0 and m > 1:
                losses.append((1 - eps - eps / (m - 1)) * nll + eps / (m - 1) * (-logp).sum())
            else:
                losses.append(nll)
    return torch.stack(losses).mean()


def _dcl_inputs(seed=10):
    g = gen(seed)
    b, n, d = 3, 7, 6
    student = torch.randn(b, n, d, generator=g)
    teacher = torch.randn(b, n, d, generator=g)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, 5:] = False
    valid[2, 3:] = False
    masked = torch.rand(b, n, generator=g) < 0.5
    masked[:, 0] = True  # CLS "masked": must be ignored
    masked[1, 5:] = True  # padding "masked": must be ignored
    masked[0, 2] = True
    return student, teacher, masked, valid


@pytest.mark.parametrize("smoothing", [0.1, 0.0])
def test_denoising_loss_matches_reference(smoothing):
    student0, teacher0, masked, valid = _dcl_inputs()
    student = student0.clone().requires_grad_()
    teacher = teacher0.clone().requires_grad_()
    loss = denoising_loss(student, teacher, masked, valid, 0.4, smoothing)
    loss.backward()
    assert teacher.grad is None  # stop-gradient on the teacher
    rs = student0.double().requires_grad_()
    ref = ref_denoising(rs, teacher0.double(), masked, valid, 0.4, smoothing)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    torch.testing.assert_close(student.grad.double(), rs.grad, rtol=0, atol=1e-5)
    # only masked, valid, non-CLS student tokens get gradients
    scored = masked & valid
    scored[:, 0] = False
    assert (student.grad[~scored] == 0).all()
    assert (student.grad[scored].abs().sum(-1) > 0).all()


def test_denoising_loss_ignores_cls_and_padding():
    student, teacher, masked, valid = _dcl_inputs(11)
    base = denoising_loss(student, teacher, masked, valid)
    junk = torch.randn(student.shape, generator=gen(12)) * 100
    other = ~valid
    other[:, 0] = True  # CLS and padding positions
    t2 = torch.where(other[..., None], junk, teacher)
    s2 = torch.where(other[..., None], junk, student)
    assert torch.allclose(denoising_loss(s2, t2, masked, valid), base, atol=1e-6)
    # unmasked teacher tokens ARE candidates: changing one changes the loss
    free = valid & ~masked
    free[:, 0] = False
    assert free.any()
    t3 = teacher.clone()
    t3[free] = junk[free]
    assert not torch.allclose(denoising_loss(student, t3, masked, valid), base, atol=1e-4)
    # a masked padded/CLS position alone scores nothing
    only_bad = torch.zeros_like(masked)
    only_bad[:, 0] = True
    only_bad[1, 6] = True
    s = student.clone().requires_grad_()
    zero = denoising_loss(s, teacher, only_bad, valid)
    assert zero.item() == 0.0
    zero.backward()
    assert (s.grad == 0).all()


def test_denoising_loss_teacher_gets_no_gradient_through_shared_graph():
    """The teacher may be an output of the same graph (stage-1 unimodal teachers): still no grad."""
    student0, teacher0, masked, valid = _dcl_inputs(13)
    w = torch.ones(6, requires_grad=True)
    loss = denoising_loss(student0 * w, teacher0 * w, masked, valid)
    ref = denoising_loss(student0 * w, teacher0.clone(), masked, valid)
    (g,) = torch.autograd.grad(loss, w)
    (g_ref,) = torch.autograd.grad(ref, w)
    assert torch.equal(g, g_ref)  # only the student path contributes


# --------------------------------------------------------------------------- 5. compute_losses


STAGE1 = dict(other="image")
STAGE2 = dict(
    other="audio",
    weights={"align": 1.0, "dcl_text": 0.0, "dcl_other": 1.0, "dcl_joint_text": 0.5, "dcl_joint_other": 0.5},
    mask={"text": 0.15, "other": 0.55, "joint_text": 0.4, "joint_other": 0.45},
    complementary=False,
    teacher_from_joint=True,
)


def _batch(text_batch, other):
    tokens, _ = text_batch
    b = tokens.shape[0]
    if other == "image":
        return {"text": {"tokens": tokens}, "image": {"pixels": torch.randn(b, 3, 64, 64, generator=gen(14))}}
    return {"text": {"tokens": tokens}, "audio": audio_batch((16000, 9000, 12345, 11000))}


@pytest.mark.parametrize("stage", [STAGE1, STAGE2], ids=["stage1-image", "stage2-audio"])
def test_compute_losses_smoke(model, text_batch, stage):
    torch.manual_seed(0)
    pm = PretrainModel(model)
    cfg = ObjectiveConfig(**stage)
    batch = _batch(text_batch, cfg.other)
    pm.zero_grad(set_to_none=True)
    try:
        out = compute_losses(pm, batch, cfg, gen(15))
        terms = {k for k, w in cfg.weights.items() if w}
        assert set(out) == terms | {"loss"}
        assert ("dcl_text" in out) == (stage is STAGE1)
        for k, v in out.items():
            assert v.dim() == 0 and torch.isfinite(v), k
        total = sum(cfg.weights[k] * out[k] for k in terms)
        assert torch.allclose(out["loss"], total, rtol=1e-6, atol=1e-6)
        out["loss"].backward()
        grads = {n: p.grad for n, p in pm.named_parameters() if p.requires_grad}
        assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
        o = cfg.other
        for name in ("model.logit_scale", f"model.proj.{o}.weight", "model.proj.text.weight",
                     f"mask_head.{o}.weight", "mask_head.text.weight", f"decoder_embed.{o}.weight"):
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
        # the same generator seed reproduces the same losses
        again = compute_losses(pm, batch, cfg, gen(15))
        for k in out:
            assert torch.allclose(again[k], out[k], atol=1e-6), k
    finally:
        pm.zero_grad(set_to_none=True)


@pytest.mark.parametrize("term", ["align", "dcl_text", "dcl_other", "dcl_joint_text", "dcl_joint_other"])
def test_compute_losses_zero_weight_term_absent(model, text_batch, term):
    pm = PretrainModel(model)
    cfg = ObjectiveConfig(other="image")
    cfg.weights[term] = 0.0
    with torch.no_grad():
        out = compute_losses(pm, _batch(text_batch, "image"), cfg, gen(16))
    assert term not in out
    assert set(out) == {k for k, w in cfg.weights.items() if w} | {"loss"}

