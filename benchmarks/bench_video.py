"""Video embedding cost at base width (random weights): clips/s and peak memory at 8 and 16 frames.

Per frame count, one child process (fresh memory) builds the ``base`` preset with a video branch
(256 px frames, the default 2x2 patch pooling: 64 tokens a frame) and times, alternating:

* ``video``: ``embed_batch("video", ...)`` on a batch of clips (T frames each, already decoded), and
* ``frames_as_images``: the usual way to use an image model on video — the same T frames of each
  clip embedded as T images (257 tokens each) to be averaged,

then measures the peak resident memory (VmHWM, reset before each) of one call of each. The
GEMM peak is measured in the same run, so the GFLOP/s read as a share of this machine's peak, and
the process's CPU time per clip is recorded next to the wall time (on a shared host the steadier
figure; ``clips_per_s_quiet`` = threads / CPU seconds per clip, what idle cores would give).
``pool=1`` (every patch: 256 tokens a frame) at 8 frames shows what the pooling saves. Decoding is
timed apart: PyAV decode + sampling + resize of a 2 s, 30 fps, 320x240 H.264 clip.

    python benchmarks/bench_video.py            # ~5 min on 2 quiet cores
    python benchmarks/bench_video.py --quick    # tiny preset, seconds (a smoke test)
    python benchmarks/bench_video.py --fused-from runs/demo-video   # after `make demo-video`

Writes ``benchmarks/results/video.json`` (``video-quick.json`` with ``--quick``).

``--fused-from RUN`` instead measures what the fused audio-visual embedding (``embed_fused``: a
clip and its soundtrack as one sequence) does for retrieval, on the held-out clips of a finished
``onepeace demo-video`` run: video -> text R@1 over the ten digit captions for the clip alone, its
sound alone, the fused pass, and the late fusion of the two separate embeddings (their normalised
mean), with chance. Writes ``benchmarks/results/video-fused.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _bench as B

RUNS = {"base": 2, "tiny": 2}
BATCH = 1


def _model(preset: str, frames: int, pool: int):
    import torch

    import onepeace

    torch.manual_seed(B.SEED)
    # the model of a video-aligned deployment: text, image and video (audio left out: its FFNs are
    # not used by a video pass and only add resident memory)
    m = onepeace.create_model(preset, modalities={"text": {}, "image": {},
                                                  "video": {"frames": frames, "pool": pool}})
    with torch.no_grad():  # official init leaves layer scale at 1e-6; give the layers real weight
        for layer in m.encoder.layers:
            layer.gamma_1.fill_(0.5)
            layer.gamma_2.fill_(0.5)
    return m.eval()


def worker_embed(spec: dict) -> dict:
    import torch

    torch.set_num_threads(B.THREADS)
    frames, pool, preset, batch, runs = spec["frames"], spec["pool"], spec["preset"], spec["batch"], spec["runs"]
    model = _model(preset, frames, pool)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(batch, frames, 3, 256, 256, generator=g)
    adapter = model.adapters["video"]
    tokens = frames * adapter.per_frame + 1
    loaded = B.proc_status().get("VmRSS", 0)

    def video():
        with torch.inference_mode():
            return model.embed_batch("video", {"frames": clips})

    def images():
        with torch.inference_mode():
            z = model.embed_batch("image", {"pixels": clips.flatten(0, 1)})
            return torch.nn.functional.normalize(z.view(batch, frames, -1).mean(1), dim=-1)

    fns = {"video": video} if spec.get("video_only") else {"video": video, "frames_as_images": images}
    cpu: dict[str, list[float]] = {k: [] for k in fns}

    def with_cpu(k, fn):  # the process's CPU seconds too: steadier than wall time on a shared host
        def run():
            t0 = time.process_time()
            out = fn()
            cpu[k].append(time.process_time() - t0)
            return out
        return run

    times = B.time_alternating({k: with_cpu(k, fn) for k, fn in fns.items()}, runs, warmup=1)
    cpu = {k: v[-runs:] for k, v in cpu.items()}  # the warm-up call left out
    peaks = {}
    for k, fn in fns.items():
        B.reset_hwm()
        fn()
        peaks[k] = B.proc_status().get("VmHWM", 0)
    flops = {"video": B.transformer_flops(cfg, batch, tokens),
             "frames_as_images": B.transformer_flops(cfg, batch * frames, 257)}
    out = {"frames": frames, "pool": pool, "tokens_per_clip": tokens, "batch": batch, "runs": runs,
           "model_rss_gb": B.r(loaded / B.GB)}
    for k in fns:
        s = B.median(times[k])
        c = B.median(cpu[k])
        out[k] = {"median_s_per_batch": B.r(s), "clips_per_s": B.r(batch / s), "s_per_clip": B.r(s / batch),
                  "cpu_s_per_clip": B.r(c / batch),
                  "clips_per_s_quiet": B.r(B.THREADS * batch / c),  # what the CPU time allows on idle cores
                  "encoder_gflop_per_clip": B.r(flops[k] / batch / 1e9, 1),
                  "encoder_gflops": B.r(flops[k] / s / 1e9, 1),
                  "peak_rss_gb": B.r(peaks[k] / B.GB), "peak_over_model_gb": B.r((peaks[k] - loaded) / B.GB),
                  "all_s": [B.r(x) for x in times[k]]}
    return out


def decode_timing(frames_list: list[int]) -> dict:
    import numpy as np

    from onepeace.processing.video import VideoProcessor, write_video

    rng = np.random.default_rng(0)
    n = 60
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    clip = np.stack([np.roll(base, 4 * i, axis=1) for i in range(n)])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clip.mp4"
        write_video(path, clip, fps=30)
        out = {"clip": "2 s, 30 fps, 320x240 H.264", "bytes": path.stat().st_size}
        for t in frames_list:
            proc = VideoProcessor(frames=t, image_size=256)
            proc([path])
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                proc([path])
                ts.append(time.perf_counter() - t0)
            out[f"{t}_frames_ms"] = B.r(1000 * B.median(ts), 1)
    return out


def fused_retrieval(run: Path) -> dict:
    """Held-out clips of a demo-video run: R@1 (class level, ten captions) of each way to embed."""
    import torch
    import torch.nn.functional as F

    import onepeace

    model = onepeace.OnePeace.from_pretrained(run / "model", dtype="fp32").eval()
    manifest = run / "data" / "video-test" / "clips.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    clips = [str(manifest.parent / r["video"]) for r in rows]
    labels = torch.tensor([r["label"] for r in rows])
    captions = sorted({(r["label"], r["text"]) for r in rows})
    text = model.embed(text=[c for _, c in captions])["text"]
    caption_labels = torch.tensor([lab for lab, _ in captions])
    proc = model.processor.get("video")
    sounds = [(proc.read(c, audio=True).audio, proc.sample_rate) for c in clips]
    t0 = time.perf_counter()
    video = model.embed(video=clips, batch_size=16)["video"]
    t_video = time.perf_counter() - t0
    audio = model.embed(audio=sounds, batch_size=16)["audio"]
    t0 = time.perf_counter()
    fused = model.embed_fused(video=clips, batch_size=16)
    t_fused = time.perf_counter() - t0
    ways = {"video": video, "audio (its soundtrack)": audio, "fused video+audio (one sequence)": fused,
            "late fusion (mean of the two embeddings)": F.normalize(video + audio, dim=-1)}
    if all("audio" in r for r in rows):  # the clips' sound as a clean file too (the demo's .wav)
        wavs = [str(manifest.parent / r["audio"]) for r in rows]
        clean = model.embed(audio=wavs, batch_size=16)["audio"]
        ways["audio (the .wav)"] = clean
        ways["fused video + the .wav"] = model.embed_fused(video=clips, audio=wavs, batch_size=16)
        ways["late fusion with the .wav"] = F.normalize(video + clean, dim=-1)

    def r1(z):
        return round(100.0 * float((caption_labels[(z @ text.T).argmax(1)] == labels).float().mean()), 2)

    return {"run": str(run), "clips": len(clips), "captions": len(captions),
            "chance": round(100.0 / len(captions), 2),
            "video->text R@1": {k: r1(z) for k, z in ways.items()},
            "seconds": {"video": B.r(t_video, 1), "fused (decoding the sound included)": B.r(t_fused, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset (a smoke test of the script)")
    ap.add_argument("--fused-from", metavar="RUN", type=Path,
                    help="a finished `onepeace demo-video` run: fused audio-visual retrieval instead")
    ap.add_argument("--_worker")
    ap.add_argument("--_spec")
    ap.add_argument("--_out")
    a = ap.parse_args()
    if a._worker:
        B.worker_main({"embed": worker_embed}, a._worker, a._spec, a._out)
        return
    if a.fused_from:
        import torch

        torch.set_num_threads(B.THREADS)
        res = {"benchmark": "fused audio-visual embedding vs its parts, video -> text",
               "machine": B.machine_facts(), **fused_retrieval(a.fused_from)}
        B.write_json_atomic(B.RESULTS / "video-fused.json", res)
        print(json.dumps(res["video->text R@1"], indent=1), f"chance {res['chance']}")
        print(f"wrote {B.RESULTS / 'video-fused.json'}")
        return
    preset = "tiny" if a.quick else "base"
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    print(f"bench_video: {preset}, batch {BATCH}, {B.THREADS} threads", flush=True)
    peak = B.gemm_peak(dtypes=("fp32",), linear3d=False)
    print(f"  GEMM peak fp32 {peak['fp32']['median_gflops']} GFLOP/s", flush=True)
    runs = []
    specs = [{"frames": 8, "pool": 2}, {"frames": 16, "pool": 2}, {"frames": 8, "pool": 1, "video_only": True}]
    for s in specs:
        spec = {**s, "preset": preset, "batch": BATCH, "runs": RUNS[preset]}
        res = B.run_worker("embed", spec, rss_limit=0.6 * B.mem_available(), label=f"{s}", script=__file__)
        runs.append(res)
        if "video" in res:
            v = res["video"]
            line = (f"  {s['frames']:>2} frames, pool {s['pool']}: {res['tokens_per_clip']} tokens, "
                    f"{v['clips_per_s']} clips/s ({v['cpu_s_per_clip']} CPU s a clip), peak {v['peak_rss_gb']} GB "
                    f"(+{v['peak_over_model_gb']} over the model)")
            if "frames_as_images" in res:
                f = res["frames_as_images"]
                line += (f"; frames as images: {f['clips_per_s']} clips/s ({f['cpu_s_per_clip']} CPU s), "
                         f"peak {f['peak_rss_gb']} GB")
            print(line, flush=True)
    peak_after = B.gemm_peak(dtypes=("fp32",), linear3d=False)
    result = {
        "benchmark": "video embedding throughput and peak memory",
        "started": started,
        "machine": B.machine_facts(),
        "gemm_peak_before": peak, "gemm_peak_after": peak_after,
        "loadavg_1min_end": B.r(os.getloadavg()[0], 2),
        "preset": preset,
        "note": "random weights; frames already decoded (decoding is timed apart); encoder GFLOP counts "
                "GEMMs only (transformer_flops), not the stem",
        "runs": runs,
        "decode": decode_timing([8, 16]),
    }
    name = "video-quick.json" if a.quick else "video.json"
    B.write_json_atomic(B.RESULTS / name, result)
    print(f"  decode: {result['decode']}")
    print(f"wrote {B.RESULTS / name}")


if __name__ == "__main__":
    sys.exit(main())
