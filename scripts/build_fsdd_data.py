"""Build ``fsdd.npz``, the real recorded speech of ``make demo-adapt``, in src/onepeace_train/demo/assets.

Source: the Free Spoken Digit Dataset (FSDD), https://github.com/Jakobovski/free-spoken-digit-dataset
(commit 26eb9aa, "Merge pull request #42"), licensed Creative Commons Attribution-ShareAlike 4.0
International (CC BY-SA 4.0): six people recorded the digits zero..nine, 50 takes each, 8 kHz mono
16-bit WAV named ``{digit}_{speaker}_{take}.wav``. This script keeps the first ``--takes`` takes of
every digit of every speaker, unchanged (same samples, same 8 kHz), packed into one ``.npz``; the
file stays under CC BY-SA 4.0 with this attribution (see the assets' README.md). Users never run it.

    git clone https://github.com/Jakobovski/free-spoken-digit-dataset /tmp/fsdd
    .venv/bin/python scripts/build_fsdd_data.py /tmp/fsdd
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "onepeace_train" / "demo" / "assets" / "fsdd.npz"
NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
SOURCE = "https://github.com/Jakobovski/free-spoken-digit-dataset (commit 26eb9aa), CC BY-SA 4.0"


def collect(folder: Path, takes: int) -> list[tuple[str, int, int, Path]]:
    """(speaker, digit, take, path) of the first ``takes`` takes of every digit of every speaker."""
    rows = []
    for path in sorted((folder / "recordings").glob("*.wav")):
        m = NAME.match(path.name)
        if m and int(m.group(3)) < takes:
            rows.append((m.group(2), int(m.group(1)), int(m.group(3)), path))
    if not rows:
        raise SystemExit(f"build_fsdd_data: no recordings/{{digit}}_{{speaker}}_{{take}}.wav under {folder}")
    return sorted(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fsdd", type=Path, help="a checkout of free-spoken-digit-dataset")
    ap.add_argument("--takes", type=int, default=10, help="takes kept per speaker and digit (of 50)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = collect(args.fsdd, args.takes)
    speakers = sorted({r[0] for r in rows})
    clips, offsets = [], [0]
    for _, _, _, path in rows:
        wave, sr = sf.read(path, dtype="int16")
        if sr != 8000 or wave.ndim != 1:
            raise SystemExit(f"build_fsdd_data: {path} is not 8 kHz mono")
        clips.append(wave)
        offsets.append(offsets[-1] + len(wave))
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, audio=np.concatenate(clips), offsets=np.asarray(offsets, np.int64),
                        labels=np.asarray([r[1] for r in rows], np.uint8),
                        speaker=np.asarray([speakers.index(r[0]) for r in rows], np.uint8),
                        take=np.asarray([r[2] for r in rows], np.uint8), speakers=np.asarray(speakers),
                        sample_rate=np.int32(8000), source=np.asarray(SOURCE))
    tmp.replace(args.out)
    print(f"{args.out}: {len(rows)} clips of {len(speakers)} speakers ({', '.join(speakers)}), "
          f"{args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
