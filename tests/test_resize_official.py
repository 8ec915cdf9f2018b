"""Moving a checkpoint to a new image resolution reproduces the official loader's relative tables.

The official ``ImageAdapter.upgrade_state_dict_named`` places the 31 old offsets of a 256 px table on a
geometric progression and resamples each head with ``scipy.interpolate.interp2d(kind="cubic")``: on
a grid that is FITPACK's interpolating bicubic spline (``regrid`` with ``s=0``), the same spline that
``RectBivariateSpline(kx=3, ky=3, s=0)`` builds, and FITPACK evaluates points outside the data range
at its edge. The reference here is that scipy spline, evaluated at explicitly clamped points, on a
geometric grid recomputed from the official description (not with the package's helper).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from onepeace import OnePeace, create_model
from onepeace.cli import main
from onepeace.errors import ConfigError
from onepeace.model.resize import resize_rel_table, spline_matrix, with_image_size, with_per_layer_tables

interpolate = pytest.importorskip("scipy.interpolate", reason="scipy (the `test` extra) is the reference")

EPS32 = float(torch.finfo(torch.float32).eps)


def _official_grid(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Old offsets: 0 and partial sums of 1, q, q^2, ... with q bisected in [1.01, 1.5] until the
    sum of ``src // 2`` terms passes ``dst // 2``; new offsets: the integers up to ``dst // 2``."""
    n, target = src // 2, dst // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if sum(q**i for i in range(n)) > target:
            right = q
        else:
            left = q
    side = np.cumsum([q**i for i in range(n)])
    return np.concatenate([-side[::-1], [0.0], side]), np.arange(-target, target + 1, dtype=np.float64)


def _table(a: int, heads: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(a * a + 3, heads, generator=g).to(dtype)


@pytest.mark.parametrize("px", [384, 512, 640, 896])
def test_enlarging_matches_the_fitpack_spline_at_every_official_resolution(px):
    new_grid = px // 16
    a, b = 31, 2 * new_grid - 1
    table = _table(a, 3, px, torch.bfloat16).float()  # released checkpoints are bf16
    out = resize_rel_table(table, 16, new_grid)
    assert out.shape == (b * b + 3, 3) and out.dtype == torch.float32
    assert torch.equal(out[b * b :], table[a * a :])  # CLS rows as they were
    x, t = _official_grid(a, b)
    # the grid stops just short of the outermost new offset: those rows take the spline's edge value
    assert x[-1] < t[-1] and t[-1] - x[-1] < 1e-3
    tc = np.clip(t, x[0], x[-1])
    got = out[: b * b].T.reshape(-1, b, b).double().numpy()
    for h in range(3):
        z = table[: a * a, h].reshape(a, a).double().numpy()  # rows: first offset coordinate
        ref = interpolate.RectBivariateSpline(x, x, z, kx=3, ky=3, s=0)(tc, tc)
        ref32 = ref.astype(np.float32).astype(np.float64)  # official: torch.Tensor(f(dx, dy))
        # one float32 rounding of a float64 value apart at most
        assert np.all(np.abs(got[h] - ref32) <= EPS32 * np.abs(ref32)), (px, h)
        assert np.abs(got[h] - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max() / 8)
        # extrapolating the end cubics instead (no clamping) would be caught at the edges
        spl = interpolate.CubicSpline(x, z, axis=0, bc_type="not-a-knot")
        rows = spl(t)
        extrap = interpolate.CubicSpline(x, rows, axis=1, bc_type="not-a-knot")(t)
        assert np.abs(extrap - ref).max() > 1e2 * np.abs(got[h] - ref).max() + 1e-5


def test_the_spline_weights_are_fitpacks_on_any_grid():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-10, 10, 9))
    y = rng.standard_normal(9)
    t = np.linspace(-12, 12, 41)
    ref = interpolate.splev(np.clip(t, x[0], x[-1]), interpolate.splrep(x, y, k=3, s=0))
    assert np.abs(spline_matrix(x, t) @ y - ref).max() <= 1e-12 * np.abs(y).sum() * 10
    assert np.allclose(spline_matrix(x, x), np.eye(9), atol=1e-12)  # it interpolates


def test_rounding_to_the_checkpoint_dtype_follows_the_official_cast():
    """Officially: float64 spline -> float32 -> the checkpoint's dtype (bf16); ``round_to`` gives the
    same values to an fp32 model."""
    table = _table(31, 4, 1, torch.bfloat16).float()
    plain = resize_rel_table(table, 16, 24)
    rounded = resize_rel_table(table, 16, 24, round_to="bf16")
    assert rounded.dtype == torch.float32
    assert torch.equal(rounded, plain.to(torch.bfloat16).float())
    assert not torch.equal(rounded, plain)  # the default keeps float32 precision
    # a bf16 model gets the same values, in bf16
    in_bf16 = resize_rel_table(table.to(torch.bfloat16), 16, 24)
    assert in_bf16.dtype == torch.bfloat16 and torch.equal(in_bf16.float(), rounded)
    with pytest.raises(ConfigError, match="round_to"):
        resize_rel_table(table, 16, 24, round_to="int8")


def test_shrinking_keeps_the_offsets_the_smaller_grid_has():
    table = _table(31, 2, 2)
    small = resize_rel_table(table, 16, 12)  # 31x31 offsets -> 23x23
    maps = table[:961].T.reshape(2, 31, 31)
    assert torch.equal(small[: 23 * 23].T.reshape(2, 23, 23), maps[:, 4:27, 4:27])
    assert torch.equal(small[-3:], table[-3:])


def _tiny(image_size: int, **kw):
    torch.manual_seed(0)
    m = create_model("tiny", layers=2, modalities={"text": {}, "image": {"image_size": image_size}}, **kw).eval()
    with torch.no_grad():
        for t in m.adapters["image"].rel_tables:
            t.weight.copy_(torch.randn_like(t.weight))  # zero-initialised otherwise
    return m


def test_per_layer_tables_are_each_resized_and_match_resize_then_copy():
    m = _tiny(80)  # 5x5 patches
    copied_then_resized = with_image_size(with_per_layer_tables(m), 96)
    shared = resize_rel_table(m.adapters["image"].rel_tables[0].weight.detach(), 5, 6)
    for t in copied_then_resized.adapters["image"].rel_tables:  # the official order: resize, then copy
        assert torch.equal(t.weight.detach(), shared)
    own = with_per_layer_tables(m)
    with torch.no_grad():
        own.adapters["image"].rel_tables[1].weight.mul_(-2)  # layers that differ (a fine-tuned model)
    moved = with_image_size(own, 96, round_to=torch.bfloat16)
    for before, after in zip(own.adapters["image"].rel_tables, moved.adapters["image"].rel_tables, strict=True):
        assert torch.equal(after.weight.detach(), resize_rel_table(before.weight.detach(), 5, 6, round_to="bf16"))
    out = moved.encode(image={"pixels": torch.randn(1, 3, 96, 96)})
    assert out.features["image"].shape == (1, 37, 128)


def test_the_recipe_option_rounds_the_resized_tables(tmp_path, monkeypatch):
    from PIL import Image

    init = _tiny(80)
    init.save_pretrained(tmp_path / "init")
    rows = []
    for i in range(2):
        Image.fromarray(np.full((20, 20, 3), 100 * i, np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append({"image": f"im{i}.png", "label": i})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.toml").write_text(
        f'[model]\ninit = "{tmp_path / "init"}"\nimage_size = 96\nresize_round_to = "bf16"\n'
        "[data]\nbatch_size = 2\n[optim]\nmax_steps = 1\nlr = 0.0\nmin_lr = 0.0\n"
        "[train]\nprogress = false\nsave_every = 0\n")
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "classify", "r.toml", "data.train=train.jsonl", "task.num_classes=2",
                 "--output", str(tmp_path / "o")]) == 0
    tuned = OnePeace.from_pretrained(tmp_path / "o" / "model")
    want = with_image_size(init, 96, round_to="bf16").adapters["image"].rel_tables[0].weight.detach()
    assert torch.equal(tuned.adapters["image"].rel_tables[0].weight.detach(), want)  # lr 0: as loaded


def test_the_recipe_option_needs_an_image_size(tmp_path, capsys):
    (tmp_path / "r.toml").write_text('[model]\npreset = "tiny"\nresize_round_to = "bf16"\n[data]\ntrain = "x.jsonl"\n')
    assert main(["finetune", "classify", str(tmp_path / "r.toml"), "task.num_classes=2",
                 "--output", str(tmp_path / "o")]) == 2
    assert "model.resize_round_to needs model.image_size" in capsys.readouterr().err
