"""The MTEB encoder on a model with a video branch: ModelMeta declares video, and video items in
MTEB's batch shapes ([T, H, W, C] frames, torchvision's [T, C, H, W] tensors, {"frames": ...}) give
the rows model.embed gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mteb")

from onepeace import create_model  # noqa: E402
from onepeace.integrations.mteb import OnePeaceEncoder  # noqa: E402


@pytest.fixture(scope="module")
def video_model():
    torch.manual_seed(0)
    mods = {"text": {}, "video": {"frames": 2, "image_size": 32, "pool": 1}}
    return create_model("tiny", layers=2, layer_scale_init=0.5, modalities=mods).eval()


def test_video_rows_equal_model_embed(video_model):
    enc = OnePeaceEncoder(video_model)
    assert "video" in enc.mteb_model_meta.modalities and "text" in enc.mteb_model_meta.modalities
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    ref = video_model.embed(video=clips)["video"].numpy()
    batches = [{"video": [clips[0], torch.from_numpy(clips[1]).permute(0, 3, 1, 2)]},
               {"video": [{"frames": clips[2]}]}]
    rows = enc.encode(batches, task_metadata=None)
    assert rows.shape == ref.shape and rows.dtype == np.float32
    np.testing.assert_allclose(rows, ref, atol=1e-6)


def test_a_text_model_refuses_video_naming_it():
    from onepeace.errors import InputError

    torch.manual_seed(0)
    enc = OnePeaceEncoder(create_model("tiny", layers=2, modalities={"text": {}, "image": {"image_size": 32}}))
    with pytest.raises(InputError, match="no video branch"):
        enc.encode([{"video": [np.zeros((2, 32, 32, 3), np.uint8)]}])
