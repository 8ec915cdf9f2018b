"""A classical yardstick for the demo's spoken digits: nearest neighbour by dynamic time warping.

How hard is the held-out TTS engine (festival) for something that is not a neural network? Each
clip becomes 12 MFCCs per 10 ms frame (25 ms Hamming windows, 40 mel bands, the clip's mean
removed: cepstral mean normalisation, which takes out a fixed channel colouring), and is labelled
with the digit of its nearest training clip under dynamic time warping (cosine frame distance,
path cost over the two lengths). No learning, no augmentation; numpy and scipy only.

    python benchmarks/demo_dtw_baseline.py          # writes benchmarks/results/demo-dtw.json

Figures: accuracy (%) on the unseen espeak-ng test voices and on the held-out festival voices,
training on the espeak-ng training voices alone and with the added voices (espeak-ng variants and
flite), the same splits the demo trains and tests on. Takes a few minutes on one core.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench import machine_facts, write_json_atomic  # noqa: E402

SR = 16000


def _mel_filters(n_fft: int = 512, n_mels: int = 40, lo: float = 50.0, hi: float = 8000.0) -> np.ndarray:
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = np.floor((n_fft + 1) * to_hz(np.linspace(to_mel(lo), to_mel(hi), n_mels + 2)) / SR).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for i in range(n_mels):
        a, b, c = edges[i : i + 3]
        fb[i, a:b] = (np.arange(a, b) - a) / max(1, b - a)
        fb[i, b:c] = (c - np.arange(b, c)) / max(1, c - b)
    return fb


_FB = _mel_filters()


def mfcc(x: np.ndarray, n: int = 12) -> np.ndarray:
    """[frames, n] unit-length, mean-normalised MFCCs (c1..cn) of a 16 kHz clip."""
    from scipy.fft import dct

    x = np.pad(np.asarray(x, np.float64), (200, 200))
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160] * np.hamming(400)
    power = np.abs(np.fft.rfft(frames, 512, axis=1)) ** 2
    c = dct(np.log(power @ _FB.T + 1e-8), axis=1, norm="ortho")[:, 1 : n + 1]
    c -= c.mean(axis=0)
    return c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-8)


def dtw_cost(a: np.ndarray, b: np.ndarray) -> float:
    """Dynamic time warping of two MFCC sequences: the cheapest monotone path's cosine distance
    over both lengths (steps: diagonal, horizontal, vertical)."""
    d = 1.0 - a @ b.T
    n, m = d.shape
    prev = np.full(m + 1, np.inf)
    prev[0] = 0.0
    for i in range(n):
        cur = np.full(m + 1, np.inf)
        for j in range(m):
            cur[j + 1] = d[i, j] + min(prev[j], prev[j + 1], cur[j])
        prev = cur
    return float(prev[m] / (n + m))


def nearest_neighbour(train: list[np.ndarray], train_labels: np.ndarray, test: list[np.ndarray],
                      test_labels: np.ndarray) -> dict:
    pred = np.array([train_labels[int(np.argmin([dtw_cost(t, g) for g in train]))] for t in test])
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (test_labels.astype(int), pred.astype(int)), 1)
    return {"accuracy": round(float((pred == test_labels).mean() * 100), 2), "clips": len(test),
            "confusion (rows: spoken digit, columns: predicted)": confusion.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results" / "demo-dtw.json"))
    args = ap.parse_args()
    from onepeace_train.demo.data import load_speech

    t0 = time.perf_counter()
    feats = {}
    for split in ("train", "extra", "test", "heldout"):
        waves, labels, _ = load_speech(split)
        feats[split] = ([mfcc(w) for w in waves], labels)
    results = {}
    for name, splits in (("train voices", ("train",)), ("train + added voices", ("train", "extra"))):
        tr = [f for s in splits for f in feats[s][0]]
        tl = np.concatenate([feats[s][1] for s in splits])
        for test in ("test", "heldout"):
            key = f"{name} -> {'unseen espeak-ng voices (test)' if test == 'test' else 'held-out engine (festival)'}"
            results[key] = nearest_neighbour(tr, tl, *feats[test])
            print(f"{key}: {results[key]['accuracy']:.1f}%", flush=True)
    out = {"schema": 1, "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "method": "1-nearest-neighbour, DTW over 12 mean-normalised MFCCs per 10 ms frame (chance 10%)",
           "machine": machine_facts(), "results": results, "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(Path(args.out), out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
