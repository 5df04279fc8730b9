"""Synthetic clips for the video tests, written with PyAV (real files, real decoding): a red
square moving across green (its true box in every frame known), optionally a cut to another
scene where it is gone, and frames with text drawn on them.

Importing this needs PyAV only when a clip is written."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = (160, 120)
SQUARE = 30   # side of the square, pixels
STEP = 8      # pixels it moves right each frame


def square_box(i: int) -> tuple[int, int, int, int]:
    """The square's box (x1, y1, x2, y2, far edges exclusive) in frame i."""
    x = 5 + STEP * i
    return x, 40, x + SQUARE, 40 + SQUARE


def square_frames(n: int, cut: int | None = None, size=SIZE) -> list[Image.Image]:
    """n frames of the moving square; from frame `cut` on, a blue scene without it."""
    frames = []
    for i in range(n):
        if cut is not None and i >= cut:
            im = Image.new("RGB", size, (30, 40, 150))
            ImageDraw.Draw(im).ellipse([60, 30, 100, 90], fill=(240, 240, 240))
        else:
            im = Image.new("RGB", size, (40, 110, 40))
            ImageDraw.Draw(im).rectangle([v - d for v, d in zip(square_box(i), (0, 0, 1, 1))],
                                         fill=(220, 30, 30))
        frames.append(im)
    return frames


def write_clip(path: str | Path, frames: Sequence[Image.Image], fps: int = 8,
               codec: str = "mpeg4", lossless: bool = False) -> Path:
    """The frames as a video file (the container from the file's suffix); `lossless`: the
    highest quality the codec has, so fine detail (text) survives."""
    import av

    path = Path(path)
    w, h = frames[0].size
    with av.open(str(path), "w") as c:
        st = c.add_stream(codec, rate=fps)
        st.width, st.height = w, h
        st.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if lossless and codec == "mpeg4":
            st.options = {"qscale": "1"}
            st.bit_rate = 20_000_000
        for im in frames:
            for packet in st.encode(av.VideoFrame.from_image(im)):
                c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    return path


def text_frame(text: str, size=(320, 240)) -> Image.Image:
    """Black words on a white card over grey, large enough to read after encoding."""
    im = Image.new("RGB", size, (120, 120, 120))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=36)
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    x, y = (size[0] - (r - l)) // 2, (size[1] - (b - t)) // 2
    draw.rectangle([x - 12, y - 12, x + (r - l) + 12, y + (b - t) + 12], fill=(255, 255, 255))
    draw.text((x - l, y - t), text, font=font, fill=(0, 0, 0))
    return im


def blank_frames(n: int, size=(320, 240)) -> list[Image.Image]:
    return [Image.new("RGB", size, (120, 120, 120)) for _ in range(n)]


def mean_color(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0)
