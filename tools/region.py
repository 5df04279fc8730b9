"""Region: Objects from a box the planner writes after looking (agent mode, issue 21).

`R=Region(image=IMAGE, box=[x0, y0, x1, y1])` is one region of IMAGE, labelled "region",
whose box the planner read off an image it was shown. Then `Crop(image=IMAGE, box=R)`
zooms in (with Crop's context margin), and Vqa, Loc, Ocr... work on the crop.

Coordinates are **relative, 0 to 1000** on each axis (x0, y0 the top left corner, x1, y1
the bottom right), as Qwen3-VL writes boxes when it grounds: the planner sees images scaled
to a bound, so pixels of what it saw are not pixels of the image, while a fraction of the
width and height is the same in both. (Qwen2.5-VL writes pixels of its resized input; with
such a planner, the relative form is what the prompt asks for.) A box is refused, with a
message saying why, when it is not four numbers, when a number is outside 0..1000, or when
it is empty (x1 <= x0 or y1 <= y0). The pixel box is rounded outward so it never loses a
pixel the planner pointed at, and is at least one pixel wide and high.

Zooming into a large image helps the model modules: a crop keeps the image's own pixels
(Vqa's `max_pixels` bound then shrinks a small crop much less than the whole image, if at
all), and the processors of the default models scale small crops up themselves (Qwen3-VL to
at least 65536 pixels, BLIP and ViLT to 384, the detectors to 800 or more); Vqa's
`min_pixels` setting scales them up before a chat model whose processor does not.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any

from PIL import Image

from visprog.registry import tool
from visprog.values import Objects

SCALE = 1000  # box coordinates are fractions of the width and height, times this


def pixel_box(box: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A 0..1000 relative box as pixels of an image of `size`, rounded outward, >= 1 pixel.

    Raises:
        ValueError: not four numbers, a number outside 0..1000, or an empty box.
    """
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, Real) and not isinstance(v, bool) for v in box):
        raise ValueError(f"Region: box must be four numbers [x0, y0, x1, y1] from 0 to {SCALE} "
                         f"(fractions of the image's width and height), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    outside = [v for v in (x0, y0, x1, y1) if not 0 <= v <= SCALE]
    if outside:
        raise ValueError(f"Region: box {list(box)} is outside the image: coordinates run from 0 "
                         f"to {SCALE} (fractions of the width and height), not pixels")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"Region: box {list(box)} is empty: x1 must be more than x0 and y1 "
                         f"more than y0 ([left, top, right, bottom])")
    w, h = size
    left, top = math.floor(x0 * w / SCALE), math.floor(y0 * h / SCALE)
    right, bottom = math.ceil(x1 * w / SCALE), math.ceil(y1 * h / SCALE)
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    left, top = min(left, w - 1), min(top, h - 1)
    return left, top, min(right, w), min(bottom, h)


@tool("Region", params={"image": "Image", "box": "Any"}, returns="Objects", tasks=("agent",))
def region(image: Image.Image, box: Any) -> Objects:
    """The part of the image inside box=[x0, y0, x1, y1], coordinates from 0 to 1000 (fractions of the width and height); crop it to zoom in."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"Region: image must be an image, got {type(image).__name__}")
    return Objects([pixel_box(box, image.size)], image.size, labels=["region"])


TOOLS = [region]
