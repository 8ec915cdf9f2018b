"""Timestamped window embeddings (onepeace.inference.moments, issue 24): every window is exactly
the clip cut out over its range as ``embed`` embeds it; files are decoded as streams (bounded
memory), windows of all files are batched through the bucketing path; bad input is one line.

The models are tiny (one layer, a small audio stem, 32 px video frames) and run in float64 where
embeddings are compared, so two routes to one window differ only by the float32 cast at the end
of ``embed``: the tolerance is a couple of float32 ulps of the rows' magnitude (unit rows), not
tuned.
"""

from __future__ import annotations

import math
import os
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf
import torch

import onepeace
from conftest import mp3_files, piped_flac, unfinished_wav
from onepeace.config import OFFICIAL_AUDIO_STEM
from onepeace.errors import DecodeError, InputError
from onepeace.inference import moments
from onepeace.inference.moments import check_windows, embed_windows, iter_window_batches
from onepeace.processing.activity import find_activity
from onepeace.processing.audio import resample
from onepeace.processing.stream import (
    BLOCK_SECONDS,
    AudioBlocks,
    Span,
    VideoFrames,
    cut_audio,
    cut_video,
    plan_windows,
)

SR = 16000
CAP = 4.0  # seconds: the audio cap of the models here
EPS32 = float(torch.finfo(torch.float32).eps)
STEM = [[32, k, s] for _, k, s in OFFICIAL_AUDIO_STEM]


def tol(ref: torch.Tensor) -> float:
    """Two routes to one float64 embedding, each cast to float32: at most one ulp apart each way."""
    return 2 * EPS32 * float(ref.abs().max())


def wave(seconds: float, seed: int = 0) -> np.ndarray:
    """Sound whose level and pitch change along it, so every window embeds differently."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    return ((np.sin(2 * np.pi * (200 + 30 * t) * t) + 0.2 * rng.standard_normal(n)) * (0.2 + 0.1 * np.cos(t))
            ).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return onepeace.create_model("tiny", layers=1, layer_scale_init=0.5,
                                 modalities={"text": {}, "audio": {"max_seconds": CAP, "stem": STEM}}).double().eval()


_VIDEO = {}


def video_model(sound: bool = False):
    """A tiny model with a video branch (32 px frames, 4 a clip); ``sound``: the branch decodes sound."""
    if sound not in _VIDEO:
        torch.manual_seed(0)
        _VIDEO[sound] = onepeace.create_model(
            "tiny", layers=1, layer_scale_init=0.5,
            modalities={"text": {}, "image": {"image_size": 32}, "audio": {"max_seconds": CAP, "stem": STEM},
                        "video": {"image_size": 32, "frames": 4, "audio": sound}}).double().eval()
    return _VIDEO[sound]


# ------------------------------------------------------------------------------ window plans
@pytest.mark.parametrize("window,hop", [(4, 4), (4, 2), (5, 3), (3, 1)])
def test_fixed_windows_are_whole_cover_the_file_and_end_at_its_end(window, hop):
    for n in range(1, 40):
        spans = plan_windows(n, window, hop)
        covered = np.zeros(n, bool)
        for s, e in spans:
            covered[s:e] = True
            assert e - s == min(window, n) and 0 <= s < e <= n
        assert covered.all() and spans[-1][1] == n
        assert [s for s, _ in spans] == sorted({s for s, _ in spans})  # in order, no duplicate
        if n <= window:
            assert spans == [(0, n)]
    # HEAR's rule: consecutive cap-long windows, the last cut at the end (as range(0, n, cap))
    for n in range(1, 50):
        assert plan_windows(n, 7, 7, last="cut") == [(s, min(s + 7, n)) for s in range(0, n, 7)]


def test_a_tail_shorter_than_the_slack_gets_no_window_of_its_own():
    """A file a hair longer than its whole windows (ESC-10's 5.001 s clips, a video's last frame
    timed to the millisecond) would get a last window shifted by that hair: a near copy of the one
    before, embedded for nothing. Within ``slack`` units the tail is left out."""
    for n in range(6, 40):
        fit = [(s, s + 5) for s in range(0, n - 4, 2)]
        for slack in (0, 1, 2):
            assert plan_windows(n, 5, 2, slack=slack) == fit + [(n - 5, n)] * (n - fit[-1][1] > slack), (n, slack)
    assert plan_windows(3, 5, 2, slack=4) == [(0, 3)]  # a file shorter than one window is still one window
    assert plan_windows(10_001, 2000, 1000, slack=160) == plan_windows(10_000, 2000, 1000)
    assert plan_windows(10_161, 2000, 1000, slack=160)[-1] == (8_161, 10_161)
    x = np.arange(10_100, dtype=np.float32)
    got = list(cut_audio((x[i : i + 997] for i in range(0, x.size, 997)), 2000, 1000, slack=160))
    assert [(s.start, s.end) for s, _ in got] == plan_windows(10_100, 2000, 1000, slack=160)
    assert [(s.start, s.end) for s, _ in cut_audio([x[:150]], 2000, 1000, slack=160)] == [(0, 150)]


def test_windows_of_a_file_a_hair_longer_than_its_windows(model, tmp_path):
    path = tmp_path / "esc.ogg"
    sf.write(path, wave(5.001), SR)  # 5.001 s, as ESC-10's clips
    w = model.embed_windows(audio=path, window=2.0, hop=1.0)["audio"][0]
    assert w.start.tolist() == [0.0, 1.0, 2.0, 3.0] and w.end[-1] == 5.0 and w.duration == pytest.approx(5.001)


@pytest.mark.parametrize("block", [1, 97, 1000, 16000])
def test_streamed_cuts_are_the_planned_slices_whatever_the_blocks(block):
    x = np.arange(10_007, dtype=np.float32)
    blocks = (x[i : i + block] for i in range(0, x.size, block))
    got = list(cut_audio(blocks, 2000, 700))
    assert [(s.start, s.end) for s, _ in got] == plan_windows(x.size, 2000, 700)
    assert all(np.array_equal(c, x[s.start : s.end]) for s, c in got)
    spans = [Span(0, 300, "onsets"), Span(250, 4000, "onsets"), Span(9_900, 12_000, "onsets"), Span(20_000, 20_100)]
    got = list(cut_audio((x[i : i + block] for i in range(0, x.size, block)), 2000, 700, spans))
    assert [(s.start, s.end) for s, _ in got] == [(0, 300), (250, 4000), (9_900, 10_007)]  # cut at the end
    assert all(np.array_equal(c, x[s.start : s.end]) for s, c in got)


def test_block_resampling_gives_the_whole_file_resampling(tmp_path):
    """soxr's stream over 8 s blocks vs the whole clip at once (processing.audio.resample, as
    embed decodes): the same filter, so they differ at most by the rounding of a float32 sum of
    terms bounded by the signal (a few ulps of its peak; 16 allowed)."""
    rng = np.random.default_rng(1)
    stereo = (0.3 * rng.standard_normal((int(22.3 * 44100), 2))).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    blocks = AudioBlocks(path, SR)
    streamed = np.concatenate(list(blocks))
    whole = resample(stereo.mean(axis=1, dtype=np.float32), 44100, SR)
    assert streamed.shape == whole.shape and blocks.samples == whole.size and not blocks.problems
    assert np.abs(streamed - whole).max() <= 16 * EPS32 * np.abs(whole).max()
    assert len(list(AudioBlocks(path, SR))) > 22.3 / BLOCK_SECONDS  # decoded in blocks, not at once


# ------------------------------------------------------------------------------ audio windows
def test_each_audio_window_is_embed_of_the_clip_cut_over_it(model, tmp_path):
    x = wave(9.3)
    path = tmp_path / "long.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    w = model.embed_windows(audio=[path], window=2.0, hop=0.75)["audio"][0]
    spans = plan_windows(x.size, 2 * SR, 12000)
    assert [(round(s * SR), round(e * SR)) for s, e in zip(w.start, w.end)] == spans
    assert w.kind == ["fixed"] * len(spans) and w.duration == pytest.approx(9.3) and w.problems == []
    assert w.name == str(path) and len(w) == len(spans) and w.embeddings.dtype == torch.float32
    ref = model.embed(audio=[(x[s:e], SR) for s, e in spans])["audio"]
    assert (w.embeddings - ref).abs().max() <= tol(ref)
    assert torch.allclose(w.embeddings.norm(dim=1), torch.ones(len(spans)), atol=1e-6)
    raw = model.embed_windows(audio=[path], window=2.0, hop=0.75, normalize=False)["audio"][0].embeddings
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(spans)))


def test_windows_follow_the_sound_and_equal_embed_of_their_cut(model):
    rng = np.random.default_rng(3)
    x = (0.001 * rng.standard_normal(8 * SR)).astype(np.float32)
    for a, b in [(1.0, 1.4), (3.0, 6.5)]:  # a short burst and one longer than the window
        x[int(a * SR) : int(b * SR)] += wave(b - a, seed=int(a))
    both = model.embed_windows(audio=[(x, SR)], window=2.0, hop=1.0, segment="both")["audio"][0]
    onsets = model.embed_windows(audio=[(x, SR)], window=2.0, hop=1.0, segment="onsets")["audio"][0]
    assert set(both.kind) == {"fixed", "onsets"} and onsets.kind == ["onsets"] * len(onsets)
    starts = sorted(zip(both.start, both.end))
    assert list(zip(both.start, both.end)) == starts  # in order of start
    first = (onsets.start[0], onsets.end[0])
    assert abs(first[0] - 1.0) < 0.1 and abs(first[1] - 1.4) < 0.1  # the burst alone (tiled, not widened)
    long = [(s, e) for s, e in zip(onsets.start[1:], onsets.end[1:])]
    assert all(e - s == pytest.approx(2.0) for s, e in long) and abs(long[0][0] - 3.0) < 0.1
    assert abs(long[-1][1] - 6.5) < 0.1  # cut into whole windows, the last ending with the stretch
    cuts = [(x[round(s * SR) : round(e * SR)], SR) for s, e in zip(onsets.start, onsets.end)]
    ref = model.embed(audio=cuts)["audio"]
    assert (onsets.embeddings - ref).abs().max() <= tol(ref)
    quiet = model.embed_windows(audio=[(x[: SR // 2 * 1], SR)], segment="onsets")["audio"][0]
    assert len(quiet) == 0 and quiet.embeddings.shape == (0, model.config.dim)  # nothing active, no window


def test_windows_of_all_files_go_through_the_bucketing_path_together(model, monkeypatch):
    calls = []
    real = moments.embed_sorted

    def spy(m, name, batch, normalize, batch_size, max_tokens, on_step=None):
        calls.append(batch["waveform"].shape[0])
        return real(m, name, batch, normalize, batch_size, max_tokens, on_step)

    monkeypatch.setattr(moments, "embed_sorted", spy)
    files = [(wave(3.0, 1), SR), (wave(0.6, 2), SR), (wave(5.5, 3), SR)]
    out = embed_windows(model, audio=files, window=2.0, hop=1.0, batch_size=4)["audio"]
    assert [len(w) for w in out] == [2, 1, 5]
    assert calls == [8]  # one pool of all three files' windows (up to SORT_WINDOW * batch_size), sorted inside
    assert out[1].start.tolist() == [0.0] and out[1].end.tolist() == [0.6]  # shorter than a window: the file


def test_iter_window_batches_streams_one_file_and_skips_what_is_done(model, tmp_path):
    x = wave(12.0, 4)
    path = tmp_path / "x.flac"
    sf.write(path, x, SR)
    whole = embed_windows(model, audio=path, window=2.0, hop=1.0)["audio"][0]
    problems, info = [], {}
    batches = list(iter_window_batches(model, "audio", path, window=2.0, hop=1.0, batch_size=3, problems=problems,
                                       info=info))
    assert [len(b.start) for b in batches] == [3, 3, 3, 2]
    assert np.array_equal(np.concatenate([b.start for b in batches]), whole.start)
    z = torch.cat([b.embeddings for b in batches])
    assert (z - whole.embeddings).abs().max() <= tol(whole.embeddings)
    assert problems == [] and info == {"duration": pytest.approx(12.0), "name": str(path)}
    done = set(whole.start[:6].tolist())
    rest = list(iter_window_batches(model, "audio", path, window=2.0, hop=1.0, skip=lambda s, e, k: s in done))
    assert np.concatenate([b.start for b in rest]).tolist() == whole.start[6:].tolist()


# ------------------------------------------------------------------------------ video windows
av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'onepeace[video]')")


def frames_of(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 48, 64, 3), dtype=np.uint8)


def decoded(path) -> list[tuple[float, object]]:
    """Every frame of a video, full size, with its time (the reference the windows are checked on)."""
    with av.open(str(path)) as c:
        return [(float(f.time), f.to_image()) for f in c.decode(video=0)]


def test_each_video_window_is_embed_of_its_frames(tmp_path):
    from onepeace.processing.video import Clip, write_video

    path = tmp_path / "v.mp4"
    write_video(path, frames_of(53), fps=10)
    model = video_model()
    w = model.embed_windows(video=[path], window=2.0, hop=1.0)["video"][0]
    assert list(zip(w.start, w.end)) == [(s / 10, e / 10) for s, e in plan_windows(53, 20, 10)]
    assert w.duration == pytest.approx(5.3) and w.problems == []
    frames = decoded(path)
    clips = [Clip([img for t, img in frames if s - 1e-9 <= t < e - 1e-9]) for s, e in zip(w.start, w.end)]
    ref = model.embed(video=clips)["video"]
    assert (w.embeddings - ref).abs().max() <= tol(ref)


def test_only_the_frames_a_window_samples_are_converted_and_resized(tmp_path, monkeypatch):
    """Converting a decoded frame to RGB and resizing it costs several times its decoding: a
    frame is made into an image only when a window samples it (4 of the ~20 in each window
    here), unless the decoded frames held pass RAW_BYTES; either way the windows are the same."""
    from onepeace.processing import stream
    from onepeace.processing.video import write_video

    path = tmp_path / "v.mp4"
    write_video(path, frames_of(100), fps=10)
    made = []
    small = VideoFrames.small
    monkeypatch.setattr(VideoFrames, "small", lambda self, img: made.append(1) or small(self, img))
    model = video_model()
    lazy = model.embed_windows(video=path, window=2.0, hop=1.0)["video"][0]
    assert len(lazy) == 9 and len(made) <= 4 * len(lazy) < 100
    made.clear()
    monkeypatch.setattr(stream, "RAW_BYTES", 0)  # no decoded frame held: each made as it arrives
    eager = model.embed_windows(video=path, window=2.0, hop=1.0)["video"][0]
    assert len(made) == 100 and torch.equal(eager.embeddings, lazy.embeddings)


def test_video_windows_with_their_sound_when_the_branch_takes_sound(tmp_path):
    from onepeace.processing.video import Clip, write_video

    path = tmp_path / "s.mp4"
    write_video(path, frames_of(40, 1), fps=10, audio=wave(4.0, 5))
    model = video_model(sound=True)
    w = model.embed_windows(video=[path], window=2.0, hop=1.0)["video"][0]
    sound = np.concatenate(list(AudioBlocks(path, SR)))  # the track as PyAV decodes it, from the video's start
    frames = decoded(path)
    clips = []
    for s, e in zip(w.start, w.end):
        part = sound[round(s * SR) : round(e * SR)]
        part = np.pad(part, (0, max(0, round((e - s) * SR) - part.size)))
        clips.append(Clip([img for t, img in frames if s - 1e-9 <= t < e - 1e-9], audio=part, sample_rate=SR))
    ref = model.embed(video=clips)["video"]
    assert (w.embeddings - ref).abs().max() <= tol(ref) and w.problems == []


def write_vfr(path, times: list[float]) -> None:
    """A variable-frame-rate H.264 video: frame i (grey level 25 i) shown at times[i] seconds."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=1000)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        vs.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 25 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)


def test_a_variable_frame_rate_video_is_cut_by_each_frames_timestamp(tmp_path):
    times = [0.0, 0.1, 0.15, 0.5, 1.3, 1.35, 2.0, 2.9, 3.0, 3.05]
    path = tmp_path / "vfr.mp4"
    write_vfr(path, times)
    stream = VideoFrames(path, 32)
    cuts = list(cut_video(stream, 1.0, 0.5))
    assert [(c.span.start, c.span.end) for c in cuts] == [(s / 2, s / 2 + 1) for s in range(5)] + [(2.1, 3.1)]
    assert stream.duration == pytest.approx(3.1)  # the last frame shown for as long as the one before it
    for c in cuts:
        want = [i for i, t in enumerate(times) if c.span.start <= t < c.span.end - 1e-9]
        got = [round(float(np.asarray(img)[..., 0].mean()) / 25) for img in c.frames]
        assert got == want, (c.span, got, want)
    w = video_model().embed_windows(video=path, window=1.0, hop=0.5)["video"][0]
    assert w.end[-1] == pytest.approx(3.1) and len(w) == 6


def test_video_times_are_exact_and_a_millisecond_timed_last_frame_adds_no_window(tmp_path):
    """30 fps: in H.264/MP4 (time base 1/15360) the duration is exactly frames / 30, not a
    microsecond over from adding rounded times; in WebM (times in whole ms, gaps of 33 and 34 ms)
    the last frame may end a millisecond late, which must not add a window shifted by 1 ms."""
    from onepeace.processing.video import write_video

    for n in (59, 60):
        write_video(tmp_path / "a.mp4", frames_of(n), fps=30)
        stream = VideoFrames(tmp_path / "a.mp4", 32)
        assert [f.time for f in stream][-1] == round((n - 1) / 30, 6) and stream.duration == round(n / 30, 6)
    write_video(tmp_path / "b.mp4", frames_of(60), fps=30)
    write_video(tmp_path / "c.webm", frames_of(60), fps=30, codec="libvpx-vp9")
    for name in ("b.mp4", "c.webm"):
        w = video_model().embed_windows(video=tmp_path / name, window=1.0, hop=0.5)["video"][0]
        assert list(zip(w.start, w.end)) == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)], name
        assert abs(w.duration - 2.0) <= 0.001


def test_frames_without_timestamps_are_timed_by_the_frame_rate(tmp_path):
    """A raw H.264 stream (.h264) carries no timestamps: its frames are one frame period apart
    (they were all at 0 s, so 100 frames at 25 fps made one 0.04 s window)."""
    with av.open(str(tmp_path / "raw.h264"), "w", format="h264") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        for i in range(100):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 2 * i, np.uint8), format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    stream = VideoFrames(tmp_path / "raw.h264", 32)
    assert [f.time for f in stream] == [round(i / 25, 6) for i in range(100)] and stream.duration == 4.0
    w = video_model().embed_windows(video=tmp_path / "raw.h264", window=2.0, hop=1.0)["video"][0]
    assert list(zip(w.start, w.end)) == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]


def test_a_video_without_sound_for_a_branch_that_wants_it_is_embedded_from_its_frames(tmp_path):
    from onepeace.processing.video import Clip, write_video

    path = tmp_path / "silent.mp4"
    write_video(path, frames_of(30, 2), fps=10)
    model = video_model(sound=True)
    w = model.embed_windows(video=[path], window=2.0, hop=2.0)["video"][0]
    assert len(w) == 2 and len(w.problems) == 1 and "has no audio track" in w.problems[0]
    assert "frames alone" in w.problems[0] and "\n" not in w.problems[0]
    frames = decoded(path)
    clips = [Clip([img for t, img in frames if s - 1e-9 <= t < e - 1e-9]) for s, e in zip(w.start, w.end)]
    ref = video_model().embed(video=clips)["video"]  # the same weights, frames only
    assert (w.embeddings - ref).abs().max() <= tol(ref)
    onsets = model.embed_windows(video=[path], window=2.0, hop=2.0, segment="onsets")["video"][0]
    assert len(onsets) == 2 and any("fixed windows instead" in p for p in onsets.problems)


def write_late_sound(path, seconds: float, fps: int, late: float, beeps: list[float]) -> None:
    """A video (H.264 + PCM in Matroska, no encoder delay) whose sound track starts ``late``
    seconds after its first frame, with 0.5 s tones at ``beeps`` (seconds of the video)."""
    sound = np.zeros(int((seconds - late) * SR), np.float32)
    for b in beeps:
        i = round((b - late) * SR)
        sound[i : i + SR // 2] = 0.5 * np.sin(2 * np.pi * 660 * np.arange(SR // 2) / SR)
    pcm = (sound * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("pcm_s16le", rate=SR)
        aus.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i % 256, np.uint8), format="rgb24")
            frame.pts = i
            packets = list(vs.encode(frame))
            k = round(i / fps * SR)
            if k < pcm.size:
                a = av.AudioFrame.from_ndarray(pcm[None, k : k + round(SR / fps)].copy(), format="s16", layout="mono")
                a.sample_rate, a.pts, a.time_base = SR, round(late * SR) + k, Fraction(1, SR)
                packets += aus.encode(a)
            for p in packets:
                out.mux(p)
        for p in [*vs.encode(), *aus.encode()]:
            out.mux(p)


def test_activity_windows_of_a_video_whose_sound_starts_late_are_at_the_video_times(tmp_path):
    """The sound track starts 1 s after the first frame: onsets are found in the sound as it plays
    with the video (as the windows' sound is cut), not counted from the track's own start."""
    path = tmp_path / "late.mkv"
    write_late_sound(path, 10.0, 10, 1.0, [3.0, 7.0])
    stream = VideoFrames(path, 32, sample_rate=SR)
    sound = np.concatenate([x[1] for x in stream if isinstance(x, tuple)])
    assert abs(find_activity(sound, SR)[0][0] - 2.95) < 0.03  # the reference: the tone at 3 s
    want = np.array(find_activity(sound, SR))
    for sound_branch in (False, True):
        w = video_model(sound_branch).embed_windows(video=path, window=2.0, hop=1.0, segment="onsets")["video"][0]
        assert np.abs(np.stack([w.start, w.end], 1) - want).max() <= 1e-6 and w.problems == []


# ------------------------------------------------------------------------------ bad input
def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_a_file_shorter_than_one_window_is_one_window(model, tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, wave(0.7), SR)
    w = model.embed_windows(audio=path)["audio"][0]  # default 2 s windows
    assert w.start.tolist() == [0.0] and w.end.tolist() == [pytest.approx(0.7)]
    ref = model.embed(audio=[path])["audio"]
    assert (w.embeddings - ref).abs().max() <= tol(ref)


def test_empty_and_undecodable_files_are_one_line(model, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_bytes(b"these are not the sounds you are looking for" * 10)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DecodeError) as e:
        model.embed_windows(audio=[tmp_path / "empty.wav"])
    assert "empty" in one_line(e) and "empty.wav" in str(e.value)
    with pytest.raises(DecodeError) as e:
        model.embed_windows(audio=[tmp_path / "notes.wav"])
    assert "notes.wav" in one_line(e)
    with pytest.raises(InputError) as e:
        model.embed_windows(audio=[tmp_path / "missing.wav"])
    assert "not found" in one_line(e)
    with pytest.raises(DecodeError) as e:
        video_model().embed_windows(video=[tmp_path / "empty.mp4"])
    assert "empty" in one_line(e)
    (tmp_path / "clips.mp4").mkdir()
    for kw in (dict(audio=[tmp_path / "clips.mp4"]), dict(video=[tmp_path / "clips.mp4"])):
        with pytest.raises(InputError, match="is a directory, not a file") as e:
            video_model().embed_windows(**kw)
        one_line(e)
    from onepeace.processing.video import write_video

    write_video(tmp_path / "v.mp4", frames_of(40), fps=10, audio=wave(4.0))
    (tmp_path / "cut.m4a").write_bytes((tmp_path / "v.mp4").read_bytes()[:3000])  # the index (moov) is at the end
    with pytest.raises(DecodeError, match="cut.m4a.*truncated") as e:
        model.embed_windows(audio=[tmp_path / "cut.m4a"])
    one_line(e)


def test_a_truncated_long_wav_keeps_its_windows_up_to_the_damage(model, tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, wave(60.0), SR, subtype="PCM_16")
    raw = path.read_bytes()
    path.write_bytes(raw[: 44 + 2 * int(25.3 * SR)])  # a 60 s file cut at 25.3 s (44-byte header)
    w = model.embed_windows(audio=[path], window=2.0, hop=1.0)["audio"][0]
    assert w.duration == pytest.approx(25.3) and w.end[-1] == pytest.approx(25.3) and len(w) == 25
    assert w.problems == ["decoding stopped at 25.3 s of 60.0 s: the file is truncated or corrupt"]


def test_an_unfinished_wav_whose_header_declares_no_samples_is_read_to_its_end(model, tmp_path):
    """A recorder stopped before it wrote the data size (0) leaves a WAV libsndfile reads as empty:
    FFmpeg reads it to the end of the file, and a problem line says why."""
    path = tmp_path / "rec.wav"
    x = wave(6.5)
    unfinished_wav(path, x, SR)
    w = model.embed_windows(audio=path, window=2.0, hop=1.0)["audio"][0]
    assert w.duration == pytest.approx(6.5) and w.end[-1] == pytest.approx(6.5) and len(w) == 6
    assert len(w.problems) == 1 and "declares no samples" in w.problems[0]
    ref = model.embed(audio=[(x[round(s * SR) : round(e * SR)], SR) for s, e in zip(w.start, w.end)])["audio"]
    assert (w.embeddings - ref).abs().max() <= tol(ref)


def test_a_flac_of_unknown_length_is_read_whole(model, tmp_path):
    """A FLAC written to a pipe leaves its total sample count 0, 'unknown' (allowed by the
    format): libsndfile then reports an endless length and its reads fail part way (24 s of a
    30 s file, reported as damage); FFmpeg reads it whole, and nothing is wrong with it."""
    x = wave(30.0)
    path = tmp_path / "piped.flac"
    piped_flac(path, x, SR)
    w = model.embed_windows(audio=path, window=2.0, hop=2.0)["audio"][0]
    assert w.duration == pytest.approx(30.0) and len(w) == 15 and w.problems == []
    ref = model.embed(audio=[(x[round(s * SR) : round(e * SR)], SR) for s, e in zip(w.start, w.end)])["audio"]
    assert (w.embeddings - ref).abs().max() <= 1e-3  # FLAC is 16-bit: x as decoded differs by its rounding


def test_an_mp3_without_a_length_header_is_not_reported_cut_short(model, tmp_path):
    """Without a Xing/Info header libsndfile guesses an MP3's length from its size and first
    frame's bit rate (30.4 s for 30.3, or four times too long for variable bit rates): that guess
    is no evidence of damage. With the header, a cut file is still reported."""
    x = np.concatenate([np.zeros(4 * SR, np.float32), wave(6.0)])
    mp3_files(tmp_path, x, SR)
    for name, damaged in (("plain.mp3", False), ("tagged.mp3", False), ("cut.mp3", True)):
        w = model.embed_windows(audio=tmp_path / name, window=2.0, hop=2.0)["audio"][0]
        assert bool(w.problems) == damaged, (name, w.problems)
        assert w.duration == pytest.approx(10.0, abs=0.1) or damaged


def test_a_truncated_webm_keeps_its_windows_up_to_the_damage(tmp_path):
    from onepeace.processing.video import write_video

    path = tmp_path / "long.webm"
    write_video(path, frames_of(80, 3), fps=8, codec="libvpx-vp9")  # 10 s
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    w = video_model().embed_windows(video=[path], window=2.0, hop=1.0)["video"][0]
    assert 2.0 < w.duration < 8.0 and w.end[-1] == pytest.approx(w.duration) and len(w) >= 2
    assert len(w.problems) == 1 and w.problems[0].startswith(f"decoding stopped at {w.duration:.1f} s of 10.0 s")


def test_other_inputs_bytes_file_objects_and_sound_in_other_containers(model, tmp_path):
    """Bytes and binary file objects are read as paths are; what libsndfile does not read (m4a,
    the sound of an mp4) goes through PyAV."""
    from onepeace.processing.video import write_video

    x = wave(3.0, 6)
    path = tmp_path / "a.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    ref = model.embed_windows(audio=[path])["audio"][0].embeddings
    with open(path, "rb") as f:
        got = model.embed_windows(audio=[path.read_bytes(), f])["audio"]
    assert all((g.embeddings - ref).abs().max() <= tol(ref) for g in got)
    assert got[0].name == f"<{path.stat().st_size} bytes>"
    with av.open(str(tmp_path / "a.m4a"), "w") as out:
        s = out.add_stream("aac", rate=SR)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = SR
        for p in [*s.encode(frame), *s.encode(None)]:
            out.mux(p)
    write_video(tmp_path / "v.mp4", frames_of(24), fps=8, audio=x)
    for name in ("a.m4a", "v.mp4"):
        blocks = AudioBlocks(tmp_path / name, SR)
        sound = np.concatenate(list(blocks))
        w = model.embed_windows(audio=[tmp_path / name], window=2.0, hop=1.0)["audio"][0]
        assert abs(w.duration - 3.0) < 0.2 and w.problems == [] and w.end[-1] == pytest.approx(sound.size / SR)
        ref = model.embed(audio=[(sound[round(s * SR) : round(e * SR)], SR) for s, e in zip(w.start, w.end)])["audio"]
        assert (w.embeddings - ref).abs().max() <= tol(ref)


def test_without_pyav_what_soundfile_cannot_read_is_one_line(model, tmp_path, monkeypatch):
    from onepeace.errors import MissingDependencyError
    from onepeace.processing import stream

    def missing():
        raise MissingDependencyError("decoding this file needs PyAV (FFmpeg): pip install 'onepeace[video]'")

    monkeypatch.setattr(stream, "_av", missing)
    (tmp_path / "a.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + bytes(200))
    with pytest.raises(MissingDependencyError, match=r"onepeace\[video\]") as e:
        model.embed_windows(audio=[tmp_path / "a.m4a"])
    one_line(e)
    (tmp_path / "b.wav").write_bytes(b"RIFF" + bytes(100))  # a format libsndfile reads, damaged: the file's fault
    with pytest.raises(DecodeError, match="b.wav") as e:
        model.embed_windows(audio=[tmp_path / "b.wav"])
    one_line(e)


BAD = [(dict(window=0), "positive"), (dict(window=-1.0), "positive"), (dict(window=float("nan")), "positive"),
       (dict(window=float("inf")), "positive"), (dict(window="2"), "number of seconds"),
       (dict(window=True), "number of seconds"), (dict(window=2.0, hop=None), None),
       (dict(window=2.0, hop=3.0), "gaps|never be searched"), (dict(window=2.0, hop=0.001), "shorter than"),
       (dict(window=CAP + 1), "longer than the 4 s"), (dict(window=0.001), "shorter than"),
       (dict(segment="words"), "segment must be one of")]


@pytest.mark.parametrize("options,why", BAD)
def test_windows_and_hops_that_do_not_fit_are_one_line(model, options, why):
    if why is None:  # a window alone hops half of it
        w = model.embed_windows(audio=[(wave(3.0), SR)], **options)["audio"][0]
        assert w.start.tolist() == [0.0, 1.0]
        return
    with pytest.raises(InputError, match=why) as e:
        model.embed_windows(audio=[(wave(3.0), SR)], **options)
    one_line(e)


def test_what_the_model_or_the_call_lacks_is_one_line(model):
    with pytest.raises(InputError, match="no video branch") as e:
        model.embed_windows(video=["x.mp4"])
    one_line(e)
    with pytest.raises(InputError, match="nothing to embed") as e:
        model.embed_windows()
    with pytest.raises(InputError, match="not 'text'"):
        check_windows("text", 2.0, 1.0)
    assert check_windows("video", None, None) == (4.0, 2.0) and check_windows("audio", 3, 1) == (3.0, 1.0)
    with pytest.raises(InputError, match="fps"):
        video_model().embed_windows(video=[(frames_of(4), 0)])
    with pytest.raises(InputError, match=r"^window 0.001 s is shorter than 0.01 s") as e:  # not a hop never given
        video_model().embed_windows(video=[(frames_of(4), 4)], window=0.001)
    one_line(e)
    with pytest.raises(InputError, match=r"^hop 0.0075 s \(half the window\) is shorter than 0.01 s") as e:
        video_model().embed_windows(video=[(frames_of(4), 4)], window=0.015)
    one_line(e)


# ------------------------------------------------------------------------------ bounded memory
def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_an_hour_of_audio_is_embedded_in_bounded_memory(tmp_path):
    """A 1-hour 16 kHz WAV (230 MB as float32): the process's resident memory, sampled every 20 ms,
    grows by less than the windows pooled for one batch can take (three copies: the cut, its
    normalised clip and the collated batch) plus a few blocks, a quarter of the waveform's size.
    A warm-up call on a short file first allocates what any call does (weights touched, kernels)."""
    torch.manual_seed(0)
    m = onepeace.create_model("tiny", layers=1, modalities={"text": {}, "audio": {
        "max_seconds": 15.0, "stem": [[16, 40, 40], [16, 32, 32]]}}).eval()
    block = np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32) * 0.1
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        for i in range(360):
            f.write(block * (1 + 0.5 * math.sin(i)))
    m.embed_windows(audio=[(block, SR)], window=15.0, hop=15.0, batch_size=2)
    base, peak, stop = rss(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        w = m.embed_windows(audio=[path], window=15.0, hop=15.0, batch_size=2)["audio"][0]
    finally:
        stop.set()
        watcher.join()
    assert len(w) == 240 and w.end[-1] == 3600.0 and w.problems == []
    pool = 2 * moments.SORT_WINDOW * 15 * SR * 4
    bound = 3 * pool + 4 * int(BLOCK_SECONDS * SR * 4)
    waveform = 3600 * SR * 4
    assert bound < waveform / 4
    assert max(peak[0], rss()) - base < bound, f"grew {(peak[0] - base) / 1e6:.1f} MB (bound {bound / 1e6:.1f} MB)"
