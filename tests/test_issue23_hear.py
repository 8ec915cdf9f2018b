"""Issue 23: the HEAR API, onepeace.hear, on a tiny model.

The contract hearvalidator checks (run it with `make hear-validate`: it pulls TensorFlow, so it has a
venv of its own), tested here without it: the attributes, float32 tensors of the documented shapes
for a batch of clips, timestamps in ms increasing and spaced one frame hop apart within a window,
and the embeddings themselves: scene rows equal ``model.embed`` (long clips: ``long_audio="chunk"``),
timestamp rows are the audio encoder's own frame features.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onepeace
from onepeace import hear
from onepeace.errors import InputError


@pytest.fixture(scope="module")
def om():
    torch.manual_seed(0)
    return onepeace.create_model("tiny", layers=1)


@pytest.fixture(scope="module")
def model(om):
    return hear.load_model(om)


def _clips(n, seconds, rate=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, int(seconds * rate), generator=g) - 0.5) * 0.4


def test_attributes(model, om):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000 and model.sample_rate in hear.HEAR_SAMPLE_RATES
    assert isinstance(model.scene_embedding_size, int) and model.scene_embedding_size == om.config.dim
    assert isinstance(model.timestamp_embedding_size, int) and model.timestamp_embedding_size == om.config.dim
    # 20 ms between frames (HEAR asks for at most 50 ms) with the official stem the preset uses
    assert model.hop * 1000 / model.model_rate == 20.0


def test_scene_embeddings_are_embed(model, om):
    x = _clips(3, 1.5)
    z = hear.get_scene_embeddings(x, model)
    assert z.shape == (3, om.config.dim) and z.dtype == torch.float32
    want = om.embed(audio=[(c.numpy(), 16000) for c in x])["audio"]
    torch.testing.assert_close(z, want, rtol=0, atol=1e-6)


def test_timestamp_embeddings_contract_and_features(model, om):
    x = _clips(3, 2.0)
    emb, ts = hear.get_timestamp_embeddings(x, model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.ndim == 3 and emb.shape[0] == 3 and emb.shape[2] == model.timestamp_embedding_size
    assert ts.shape == emb.shape[:2]
    # one frame per 20 ms of the conv stem: (32000 - 400) // 320 + 1 frames, centred at 12.5 ms + 20 ms k
    assert emb.shape[1] == (32000 - 400) // 320 + 1
    torch.testing.assert_close(ts[0], 12.5 + 20.0 * torch.arange(emb.shape[1], dtype=torch.float32))
    assert torch.equal(ts[0], ts[2])
    # the encoder's own frame features of each clip, as model.encode computes them alone
    proc = om.processor.get("audio")
    for i in range(3):
        feats = om.encode(audio=proc([(x[i].numpy(), 16000)])).features["audio"][0, 1:]
        torch.testing.assert_close(emb[i], feats.float(), rtol=0, atol=1e-5)
    # frames differ over time (not one vector repeated)
    assert (emb[0] - emb[0].mean(0)).abs().max() > 1e-3


def test_long_audio_in_15_s_windows(model, om):
    x = _clips(1, 17.0, seed=1)
    emb, ts = hear.get_timestamp_embeddings(x, model)
    assert bool((ts[0, 1:] > ts[0, :-1]).all()), "timestamps must increase"
    per_window = (240000 - 400) // 320 + 1
    assert emb.shape[1] == per_window + (32000 - 400) // 320 + 1
    assert ts[0, per_window].item() == 15000 + 12.5 and ts[0, -1].item() < 17000
    # the second window's frames are that window encoded alone, cut from the clip normalised whole
    proc = om.processor.get("audio")
    wav = proc.normalized((x[0].numpy(), 16000))
    feats = om.encode(audio=proc.collate([wav[240000:]])).features["audio"][0, 1:]
    torch.testing.assert_close(emb[0, per_window:], feats.float(), rtol=0, atol=1e-5)
    # the scene embedding is embed's long_audio="chunk"
    z = hear.get_scene_embeddings(x, model)
    torch.testing.assert_close(z, om.embed(audio=[(x[0].numpy(), 16000)], long_audio="chunk")["audio"],
                               rtol=0, atol=1e-6)


def test_other_sample_rates_are_resampled(om):
    m = hear.load_model(om, sample_rate=44100)
    x = _clips(2, 1.2, rate=44100, seed=2)
    z = hear.get_scene_embeddings(x, m)
    torch.testing.assert_close(z, om.embed(audio=[(c.numpy(), 44100) for c in x])["audio"], rtol=0, atol=1e-6)
    emb, ts = hear.get_timestamp_embeddings(x, m)
    n16 = int(np.ceil(x.shape[1] * 16000 / 44100))
    assert emb.shape[1] == (n16 - 400) // 320 + 1 and ts[0, -1].item() <= 1200


def test_short_clip_keeps_frames_within_it(model):
    emb, ts = hear.get_timestamp_embeddings(_clips(2, 0.1), model)  # tiled to 1 s inside; 100 ms real
    assert emb.shape[1] == ts.shape[1] and ts[0, -1].item() <= 100 and emb.shape[1] >= 1


def test_empty_batch(model):
    z = hear.get_scene_embeddings(torch.zeros(0, 16000), model)
    emb, ts = hear.get_timestamp_embeddings(torch.zeros(0, 16000), model)
    assert z.shape == (0, model.scene_embedding_size)
    assert emb.shape == (0, 0, model.timestamp_embedding_size) and ts.shape == (0, 0)


@pytest.mark.parametrize("rate", [8000, 0, 16000.0, "16000"])
def test_wrong_sample_rate_at_load(om, rate):
    with pytest.raises(InputError, match="is not one HEAR uses: give one of 16000, 22050, 32000, 44100, 48000"):
        hear.load_model(om, sample_rate=rate)


def test_wrong_sample_rate_at_call(model):
    with pytest.raises(InputError, match=r"audio at 44100 Hz given to a model loaded for 16000 Hz: load it with "
                                         r"onepeace.hear.load_model\(path, sample_rate=44100\)"):
        hear.get_scene_embeddings(_clips(1, 1.0), model, sample_rate=44100)
    with pytest.raises(InputError, match="audio at 22050 Hz"):
        hear.get_timestamp_embeddings(_clips(1, 1.0), model, sample_rate=22050)


@pytest.mark.parametrize("fn", [hear.get_scene_embeddings, hear.get_timestamp_embeddings])
def test_bad_clips(model, fn):
    with pytest.raises(InputError, match="audio clips of 0 samples"):
        fn(torch.zeros(2, 0), model)
    with pytest.raises(InputError, match=r"must be \[n_sounds, n_samples\], got shape \(16000,\)"):
        fn(torch.zeros(16000), model)
    bad = _clips(1, 1.0)
    bad[0, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fn(bad, model)


def test_load_model_errors(tmp_path):
    with pytest.raises(InputError, match="needs a onepeace model directory or hub id"):
        hear.load_model("")
    torch.manual_seed(0)
    text_only = onepeace.create_model("tiny", layers=1, modalities={"text": {}})
    with pytest.raises(InputError, match="HEAR needs a model with an audio branch; this one has text"):
        hear.load_model(text_only)


def test_loads_a_directory(om, tmp_path):
    om.save_pretrained(tmp_path / "m")
    m = hear.load_model(str(tmp_path / "m"))
    x = _clips(1, 1.0, seed=3)
    torch.testing.assert_close(hear.get_scene_embeddings(x, m), hear.get_scene_embeddings(x, hear.load_model(om)),
                               rtol=0, atol=1e-6)
