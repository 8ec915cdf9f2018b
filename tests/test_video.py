"""The video modality plug-in: decoding and sampling, the adapter (inflation from the image
branch, space-time buckets, tube masking), the fused audio-visual embedding, bad input, and the
surfaces that take video (embed, zeroshot, the index and the server). Clips are made here with
PyAV: a few frames of 32-64 px."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'onepeace[video]')")

import onepeace  # noqa: E402
from onepeace.errors import ConfigError, InputError  # noqa: E402
from onepeace.processing.video import VideoProcessor, read_video, sample_indices, write_video  # noqa: E402

TINY_STEM = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]
SR = 16000


def frames_of(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """n distinct frames: frame i has red level 40*i (so each decoded frame can be recognised),
    plus a moving green bar and a little noise."""
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 30, (n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        f[i, :, :, 0] = min(255, 40 * i)
        f[i, (4 * i) % size : (4 * i) % size + 4, :, 1] = 255
    return f


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def red_levels(batch: torch.Tensor) -> list[int]:
    """Per frame of processed [T, 3, S, S] frames: the red level in 0..255 (undoing CLIP's norm)."""
    from onepeace.processing.image import CLIP_MEAN, CLIP_STD

    red = batch[:, 0].mean((1, 2)) * CLIP_STD[0] + CLIP_MEAN[0]
    return [int(round(float(v) * 255 / 40)) for v in red]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    out = {}
    write_video(d / "six.mp4", frames_of(6), fps=8, audio=tone(1.0))
    write_video(d / "six.webm", frames_of(6), fps=8, codec="libvpx-vp9")
    write_video(d / "six.mkv", frames_of(6), fps=8, codec="mpeg4")
    write_video(d / "three.mp4", frames_of(3), fps=8, audio=tone(0.5))
    write_video(d / "silent.mp4", frames_of(6, seed=1), fps=8)
    for k in ("six.mp4", "six.webm", "six.mkv", "three.mp4", "silent.mp4"):
        out[k] = d / k
    out["dir"] = d
    return out


# ------------------------------------------------------------------------------ processor
def test_uniform_and_stride_sampling_indices():
    assert sample_indices(16, 4, "uniform") == [2, 6, 10, 14]  # centres of 4 equal segments
    assert sample_indices(16, 4, "stride", 2) == [4, 6, 8, 10]  # a span of 7 frames, centred (rounded down)
    # shorter clips than T: uniform holds each frame evenly, stride repeats the last
    assert sample_indices(3, 8, "uniform") == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_indices(3, 4, "stride", 2) == [0, 2, 2, 2]
    with pytest.raises(InputError, match="sampling"):
        sample_indices(3, 4, "random")


@pytest.mark.parametrize("name", ["six.mp4", "six.webm", "six.mkv"])
def test_containers_decode_to_the_sampled_frames(clips, name):
    proc = VideoProcessor(frames=3, image_size=32)
    batch = proc([clips[name]])
    assert set(batch) == {"frames"} and batch["frames"].shape == (1, 3, 3, 32, 32)
    assert red_levels(batch["frames"][0]) == [1, 3, 5]  # frames 1, 3, 5 of 0..5 (lossy codecs: rounded)
    stride = VideoProcessor(frames=2, sampling="stride", stride=2, image_size=32)
    assert red_levels(stride.one(clips[name])) == [1, 3]


def test_a_loaded_clip_is_processed_as_its_file(clips):
    """The server decodes uploads first (load) and embeds the decoded clip: the same frames."""
    for proc in (VideoProcessor(frames=3, image_size=32), VideoProcessor(frames=2, sampling="stride", stride=2,
                                                                         image_size=32)):
        clip = proc.load(clips["six.mkv"])
        assert torch.equal(proc([clip])["frames"], proc([clips["six.mkv"]])["frames"])


def test_a_clip_shorter_than_the_frames_asked_holds_its_frames(clips):
    proc = VideoProcessor(frames=8, image_size=32)
    assert red_levels(proc.one(clips["three.mp4"])) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_arrays_frames_lists_and_bytes_are_videos_too(clips):
    proc = VideoProcessor(frames=3, image_size=32)
    f = frames_of(6)
    from_array = proc([f])["frames"]
    assert red_levels(from_array[0]) == [1, 3, 5]
    assert torch.equal(proc([list(f)])["frames"], from_array)
    assert torch.equal(proc([clips["six.mp4"].read_bytes()])["frames"], proc([clips["six.mp4"]])["frames"])


def test_the_sound_is_the_audio_processors_batch_of_the_frames_span(clips):
    model = small_model()
    proc = model.processor.get("video")
    batch = proc([clips["six.mp4"]], audio=True)
    assert set(batch) == {"frames", "audio.waveform", "audio.padding_mask"}
    clip = read_video(clips["six.mp4"], 4, audio=True)
    assert abs(clip.audio.size - SR * 6 / 8) <= SR / 8  # the 0.75 s of the six frames, not the 1 s track
    ref = model.processor.get("audio")([(clip.audio, SR)])
    assert torch.equal(batch["audio.waveform"], ref["waveform"])


def test_the_data_loader_protocol_carries_the_sound_as_companion_keys(clips):
    from onepeace.processing import split_companions

    proc = small_model().processor.get("video")
    plain = proc.collate([proc.sample(clips["six.mp4"]), proc.sample(clips["three.mp4"])])
    assert set(plain) == {"frames"} and plain["frames"].shape == (2, 4, 3, 64, 64)
    both = proc.collate([proc.sample(clips["six.mp4"], audio=True), proc.sample(clips["three.mp4"], audio=True)])
    own, carried = split_companions(both)
    assert torch.equal(own["frames"], plain["frames"]) and set(carried) == {"audio"}
    assert set(carried["audio"]) == {"waveform", "padding_mask"} and carried["audio"]["waveform"].shape[0] == 2
    with pytest.raises(InputError, match="mixes"):
        proc.collate([proc.sample(clips["six.mp4"], audio=True), proc.sample(clips["three.mp4"])])


# ------------------------------------------------------------------------------ bad input
def _zero_frame_video(path):
    """A Matroska file with a video stream that holds no frame (only its audio track has packets)."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=8)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("libopus", rate=48000)
        aus.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone(0.5)[None], format="fltp", layout="mono")
        frame.sample_rate = SR
        frame = av.AudioResampler(format="fltp", layout="mono", rate=48000).resample(frame)
        for fr in frame:
            for p in aus.encode(fr):
                out.mux(p)
        for p in aus.encode(None):
            out.mux(p)


@pytest.fixture(scope="module")
def bad(clips):
    from PIL import Image

    d = clips["dir"] / "bad"
    d.mkdir()
    (d / "notes.mp4").write_text("these are not the frames you are looking for\n" * 20)
    Image.fromarray(frames_of(1)[0]).save(d / "still.png")
    (d / "still.mp4").write_bytes((d / "still.png").read_bytes())
    data = clips["six.mp4"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # mp4: its index (moov) is at the end
    write_video(d / "long.webm", frames_of(30), fps=8, codec="libvpx-vp9")
    webm = (d / "long.webm").read_bytes()
    (d / "truncated.webm").write_bytes(webm[: len(webm) * 2 // 3])  # still demuxes: the header says longer
    assert data.count(b"avc1") >= 1
    (d / "codec.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))  # an unknown codec tag
    _zero_frame_video(d / "empty.mkv")
    return d


BAD = [("notes.mp4", "not a video file"), ("still.mp4", "is an image"), ("truncated.mp4", "truncated"),
       ("truncated.webm", "is truncated"), ("codec.mp4", "codec"), ("empty.mkv", "no frames")]


@pytest.mark.parametrize("name,why", BAD)
def test_bad_videos_are_one_clear_error_naming_the_file(bad, name, why):
    with pytest.raises(InputError, match=why) as e:
        VideoProcessor(frames=4, image_size=32)([bad / name])
    assert str(bad / name) in str(e.value) and "\n" not in str(e.value)


def test_no_audio_track_when_the_sound_is_asked_for(clips):
    model = small_model()
    with pytest.raises(InputError, match="no audio track") as e:
        model.embed_fused(video=[clips["silent.mp4"]])
    assert str(clips["silent.mp4"]) in str(e.value)
    assert model.embed(video=[clips["silent.mp4"]])["video"].shape == (1, 128)  # the frames alone are fine


def test_options_are_checked():
    for bad_opts, what in [({"pool": 3}, "pool"), ({"frames": 20}, "frames"), ({"image_size": 40}, "image_size"),
                           ({"sampling": "random"}, "sampling")]:
        with pytest.raises(ConfigError, match=what):
            onepeace.create_model("tiny", layers=1, modalities={"video": {"image_size": 64, **bad_opts}})


# ------------------------------------------------------------------------------ adapter
_SMALL = {}


def small_model(**video):
    """A tiny tri-modal model (64 px images, a small audio stem) grown by a video branch."""
    from onepeace_train.trainer import add_modalities

    key = json.dumps(video, sort_keys=True)
    if key not in _SMALL:
        torch.manual_seed(0)
        base = onepeace.create_model("tiny", layers=2, layer_scale_init=0.5,
                                     modalities={"text": {}, "image": {"image_size": 64},
                                                 "audio": {"stem": TINY_STEM}})
        with torch.no_grad():  # a "trained" image relative table, so that inflation has something to copy
            base.adapters["image"].rel_tables[0].weight.normal_(0, 0.5)
        opts = {"image_size": 64, "frames": 4, **video}
        _SMALL[key] = add_modalities(base, {"video": opts}).eval()
    return _SMALL[key]


def test_an_inflated_branch_embeds_a_one_frame_clip_as_the_image_branch_does():
    """pool=1: a one-frame clip is, in exact arithmetic, the image's own sequence (stem, positions,
    CLS, the relative table of frame offset 0, every FFN, the norm and the projection are the image
    branch's; the temporal embedding is 0). Checked in float64; with more frames of the same image
    the embedding stays near the image's (the CLS then weighs less against T copies)."""
    model = small_model(pool=1).double()
    img = frames_of(1, size=64)[0]
    pixels = model.processor.get("image")([img])["pixels"]
    with torch.no_grad():
        z_img = model.embed_batch("image", {"pixels": pixels})
        z_one = model.embed_batch("video", {"frames": pixels[:, None]})
    assert z_img.dtype == torch.float64 and (z_img - z_one).abs().max() < 1e-12
    z_four = model.embed(video=[np.stack([img] * 4)])["video"].double()
    other = model.embed(image=[frames_of(1, size=64, seed=3)[0][::-1].copy()])["image"].double()
    assert float(z_four @ z_img.T) > float(other @ z_img.T)
    model.float()
    a, b = model.adapters["video"], model.adapters["image"]
    assert torch.equal(a.stem.conv3.weight, b.stem.conv3.weight)
    layer = model.encoder.layers[1]
    assert all(torch.equal(p, q) for p, q in zip(layer.ffns["video"].parameters(), layer.ffns["image"].parameters()))
    assert torch.equal(model.proj["video"].weight, model.proj["image"].weight)


def test_without_a_donor_the_branch_starts_fresh():
    model = small_model(inflate_from=None)
    assert not torch.equal(model.adapters["video"].stem.conv1.weight, model.adapters["image"].stem.conv1.weight)
    assert not torch.equal(model.proj["video"].weight, model.proj["image"].weight)


def test_space_time_buckets_hold_the_image_table_per_frame_offset():
    from onepeace.modalities.relpos import grid_buckets

    a = small_model(pool=1).adapters["video"]
    g, per, s = a.grid, a.per_frame, (2 * a.grid - 1) ** 2
    table = a.bucket_table()
    img = grid_buckets(g)
    assert table.shape == (a.max_tokens(),) * 2 and int(table.max()) == a.num_buckets() - 1
    o = a.options.max_frames - 1
    same = table[1 : 1 + per, 1 : 1 + per]  # frame 0 with itself: offset slot max_frames - 1
    assert torch.equal(same - o * s, img[1:, 1:])
    later = table[1 + per : 1 + 2 * per, 1 : 1 + per]  # frame 1 attending to frame 0: one slot up
    assert torch.equal(later - (o + 1) * s, img[1:, 1:])
    pooled = small_model().adapters["video"]  # pool 2: offsets counted in image patches
    assert pooled.bucket_table()[1, 2] == (pooled.grid - 1) * (2 * pooled.grid - 1) + pooled.grid - 1 - 2 \
        + (pooled.options.max_frames - 1) * (2 * pooled.grid - 1) ** 2


def test_token_budget_and_temporal_order():
    model = small_model()  # 64 px, pool 2: 4 tokens a frame
    a = model.adapters["video"]
    f = torch.randn(2, 4, 3, 64, 64)
    assert a(f).x.shape == (2, 4 * 4 + 1, 128)
    with torch.no_grad():
        a.temporal.normal_()
    z = model.embed_batch("video", {"frames": f})
    z_rev = model.embed_batch("video", {"frames": f.flip(1)})
    assert (z - z_rev).abs().max() > 1e-3  # frame order matters once the temporal embedding is learned
    with torch.no_grad():
        a.temporal.zero_()
    with pytest.raises(InputError, match="1 to 16 frames"):
        a(torch.randn(1, 17, 3, 64, 64))


def test_tube_masking_hides_the_same_patches_in_every_frame():
    a = small_model(pool=1).adapters["video"]
    f = torch.zeros(3, 4, 3, 64, 64)
    keep = a.sample_keep((f,), 0.5, torch.Generator().manual_seed(0))
    assert keep.shape == (3, 4 * a.per_frame + 1) and keep[:, 0].all()
    per_frame = keep[:, 1:].view(3, 4, a.per_frame)
    assert torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame))
    assert (per_frame[:, 0].sum(1) == a.per_frame // 2).all()


# ------------------------------------------------------------------------------ fused
def test_fused_audio_visual_embedding_is_one_pass_over_frames_and_soundtrack(clips):
    model = small_model()
    p = clips["six.mp4"]
    fused = model.embed_fused(video=[p, clips["three.mp4"]], batch_size=1)
    assert fused.shape == (2, 128) and torch.allclose(fused.norm(dim=-1), torch.ones(2))
    # the companion sound is the clip's own soundtrack: the same as giving it explicitly
    sound = read_video(p, 4, audio=True).audio
    explicit = model.embed_fused(video=[p], audio=[(sound, SR)])
    assert torch.equal(fused[:1], explicit)
    alone = model.embed(video=[p])["video"]
    assert (fused[:1] - alone).abs().max() > 1e-4
    with pytest.raises(InputError, match="two segments"):
        model.embed_fused(video=[p], companions=False)
    # late fusion: separate passes, the mean of the two embeddings (unit vectors; float32 ulps only)
    late = model.embed_fused(video=[p], fusion="late")
    separate = torch.nn.functional.normalize(alone + model.embed(audio=[(sound, SR)])["audio"], dim=-1)
    assert (late - separate).abs().max() < 1e-5 and (late - fused[:1]).abs().max() > 1e-4
    with pytest.raises(InputError, match="fusion"):
        model.embed_fused(video=[p], fusion="early")


# ------------------------------------------------------------------------------ surfaces
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("video-model") / "model"
    small_model().save_pretrained(d)
    return d


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onepeace.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_embed_video_files_folders_and_fused(saved, clips, tmp_path):
    out = tmp_path / "e.npz"
    r = cli("embed", "--model", saved, "--video", clips["six.mp4"], clips["six.webm"], "--text", "a bar",
            "--out", out)
    assert r.returncode == 0, r.stderr
    z = np.load(out)
    assert z["video"].shape == (2, 128) and list(z["video_inputs"]) == [str(clips["six.mp4"]), str(clips["six.webm"])]
    assert "video x text" in r.stdout or "text x video" in r.stdout
    fused = tmp_path / "f.npz"
    r = cli("embed", "--model", saved, "--video", clips["six.mp4"], clips["three.mp4"], "--out", fused,
            "--dtype", "fp32", "--fuse-audio")  # a bare --fuse-audio: one joint sequence
    assert r.returncode == 0, r.stderr
    z = np.load(fused)
    assert z["video+audio"].shape == (2, 128) and "video" not in z.files
    ref = small_model().embed_fused(video=[clips["six.mp4"], clips["three.mp4"]]).numpy()
    assert np.abs(z["video+audio"] - ref).max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name,why", BAD)
def test_cli_bad_video_exits_2_naming_the_file(saved, bad, name, why):
    r = cli("embed", "--model", saved, "--video", bad / name)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("onepeace embed: error:") and str(bad / name) in line and why in line


@pytest.mark.slow
def test_cli_fuse_audio_of_a_silent_video_exits_2(saved, clips):
    r = cli("embed", "--model", saved, "--video", clips["silent.mp4"], "--fuse-audio")
    assert r.returncode == 2 and "no audio track" in r.stderr and str(clips["silent.mp4"]) in r.stderr


@pytest.mark.slow
def test_cli_eval_retrieval_between_video_and_text(saved, clips, tmp_path):
    lines = [{"video": str(clips[k]), "text": f"clip {k}"} for k in ("six.mp4", "three.mp4", "silent.mp4")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = cli("eval", "retrieval", "--model", saved, "--data", tmp_path / "m.jsonl", "--query", "video",
            "--gallery", "text", "--out", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r.json").read_text())["video->text"]
    assert m["queries"] == 3 and m["gallery"] == 3 and m["skipped"] == 0


@pytest.mark.slow
def test_cli_zeroshot_video(saved, clips):
    r = cli("zeroshot", "--model", saved, "--labels", "bar,dot,cat", "--video", clips["six.mp4"], "--top-k", "2")
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith(str(clips["six.mp4"]))]
    assert len(line.split(",")) == 2


@pytest.fixture(scope="module")
def video_index(saved, clips, tmp_path_factory):
    """An index of a folder with three videos and an image, built by the ordinary index build."""
    pytest.importorskip("lancedb")
    from PIL import Image

    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    root = tmp_path_factory.mktemp("video-index")
    media = root / "media"
    media.mkdir()
    for k in ("six.mp4", "three.mp4", "six.webm"):
        (media / k).write_bytes(clips[k].read_bytes())
    Image.fromarray(frames_of(1, 64)[0]).save(media / "still.png")
    model = onepeace.OnePeace.from_pretrained(saved)
    counts = build(root / "index", model, [media], batch_size=2, workers=0, progress=False)
    assert counts["added"] == 4 and counts["skipped"] == 0, counts
    return model, Index.open(root / "index")


def test_index_and_server_take_videos(video_index, clips):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from onepeace.serve.app import create_app

    model, index = video_index
    assert index.modality_counts() == {"video": 3, "image": 1}
    with TestClient(create_app(model, index)) as c:
        assert c.get("/health").json()["file_types"]["video"][0] == ".mp4"
        r = c.post("/search", data={"modality": "video", "k": "3"},
                   files={"video": ("q.mp4", clips["six.mp4"].read_bytes(), "video/mp4")})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert [h["modality"] for h in hits] == ["video"] * 3 and hits[0]["name"] == "six.mp4"
        assert hits[0]["score"] > 0.999 and hits[0]["media_type"] == "video/mp4"
        thumb = c.get(hits[0]["thumb_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
        assert c.get(hits[0]["media_url"]).content == clips["six.mp4"].read_bytes()
        import base64

        b64 = base64.b64encode(clips["six.webm"].read_bytes()).decode()
        r = c.post("/search", json={"video": f"data:video/webm;base64,{b64}", "modality": "video", "k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["name"] == "six.webm"
        r = c.post("/v1/embeddings", json={"input": [b64], "modality": "video"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 128
        r = c.post("/search", files={"video": ("bad.mp4", b"not a video at all" * 10, "video/mp4")})
        assert r.status_code == 400 and "video upload" in r.json()["error"]["message"]
        r = c.post("/search", json={"smell": "x"})
        assert r.status_code == 400 and "unknown field 'smell'" in r.json()["error"]["message"]


@pytest.mark.browser
def test_the_web_page_uploads_a_video_and_plays_video_results(video_index, clips, tmp_path):
    """A real headless Chromium: the page grows a video slot from the server's file types, an
    uploaded clip queries the index, and video hits show a player with its middle frame as poster."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable on PATH (apt-get install chromium)")
    from onepeace.serve.app import ServerThread, create_app

    model, index = video_index
    with sync_api.sync_playwright() as p, ServerThread(create_app(model, index)) as server:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(server.url + "/")
        sync_api.expect(page.locator("#info")).to_contain_text("3 video", timeout=20_000)
        assert page.locator("#video").get_attribute("accept").startswith(".mp4")
        page.set_input_files("#video", str(clips["six.mp4"]))
        sync_api.expect(page.locator("#video-slot .hint")).to_have_text("six.mp4")
        page.check('#target input[value="video"]')
        page.click("#search")
        sync_api.expect(page.locator("#status")).to_contain_text("3 results for video", timeout=30_000)
        players = page.locator("#results li.result.video video")
        assert players.count() == 3
        assert "/media/" in players.first.get_attribute("poster") and players.first.get_attribute("controls") is not None
        page.wait_for_function("fetch(document.querySelector('#results video').poster).then(r => r.ok)")
        page.screenshot(path=str(tmp_path / "video-search.png"), full_page=True)
        assert not problems, problems
        browser.close()


# ------------------------------------------------------------------------------ the recipe page
@pytest.mark.slow
def test_the_recipe_pages_imu_plugin_works_as_an_installed_entry_point(tmp_path):
    """docs/new-modality.md's IMU plug-in, installed as a package's entry point: the command line
    finds it (an --imu flag), embeds its files with text, and a bad file is one clear error."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "new-modality.md").read_text()
    code = next(block.split("```", 1)[0] for block in doc.split("```python\n")[1:] if block.startswith("# imu.py"))
    site = tmp_path / "site"
    (site / "imu_example-0.1.dist-info").mkdir(parents=True)
    (site / "imu_example.py").write_text(code)
    (site / "imu_example-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: imu-example\nVersion: 0.1\n")
    (site / "imu_example-0.1.dist-info" / "entry_points.txt").write_text("[onepeace.modalities]\nimu = imu_example\n")
    rng = np.random.default_rng(0)
    (tmp_path / "walks").mkdir()
    for i in range(2):
        np.save(tmp_path / "walks" / f"walk{i}.npy", rng.standard_normal((200 + 50 * i, 6)).astype(np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((100, 3), np.float32))
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    make = ("import onepeace, torch; torch.manual_seed(0); "
            "onepeace.create_model('tiny', layers=1, modalities={'text': {}, 'imu': {}}).save_pretrained(%r)"
            % str(tmp_path / "model"))
    subprocess.run([sys.executable, "-c", make], check=True, env=env, timeout=300)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "onepeace.cli", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)

    r = run("embed", "--model", tmp_path / "model", "--imu", tmp_path / "walks", "--text", "someone walking",
            "--dtype", "fp32", "--out", tmp_path / "e.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "e.npz")["imu"].shape == (2, 128)
    r = run("embed", "--model", tmp_path / "model", "--imu", tmp_path / "bad.npy")
    assert r.returncode == 2 and str(tmp_path / "bad.npy") in r.stderr and "[samples, 6]" in r.stderr
    # without the package, a saved model with the branch names what is missing
    r = subprocess.run([sys.executable, "-m", "onepeace.cli", "info", str(tmp_path / "model")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "unknown modality 'imu'" in r.stderr and "onepeace.modalities" in r.stderr
