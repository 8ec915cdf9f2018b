"""Regenerate the bundled sample inputs (src/onepeace/assets/samples): three drawn images and three
one-second sounds, all synthetic and tiny, so `onepeace demo` needs no data from anywhere."""

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

out = Path(__file__).resolve().parents[1] / "src" / "onepeace" / "assets" / "samples"
out.mkdir(parents=True, exist_ok=True)

shapes = {
    "red_circle.png": ("red", lambda d: d.ellipse((16, 16, 80, 80), fill=(220, 30, 30))),
    "blue_square.png": ("blue", lambda d: d.rectangle((20, 20, 76, 76), fill=(30, 60, 220))),
    "green_triangle.png": ("green", lambda d: d.polygon([(48, 12), (86, 84), (10, 84)], fill=(30, 170, 60))),
}
for name, (_, draw) in shapes.items():
    img = Image.new("RGB", (96, 96), (245, 245, 240))
    draw(ImageDraw.Draw(img))
    img.save(out / name, optimize=True)

sr = 16000
t = np.arange(sr) / sr
rng = np.random.default_rng(0)
sounds = {
    "tone_440hz.wav": 0.3 * np.sin(2 * np.pi * 440 * t),
    "noise.wav": 0.1 * rng.standard_normal(sr),
    "chirp.wav": 0.3 * np.sin(2 * np.pi * (200 + 1800 * t / 2) * t),
}
for name, wav in sounds.items():
    sf.write(out / name, wav.astype(np.float32), sr, subtype="PCM_16")
print(f"wrote {len(shapes) + len(sounds)} files to {out}")
