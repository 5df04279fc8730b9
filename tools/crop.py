"""Crop and its variants (SPEC 4): cut the part of an image a question is about.

Choices (all documented here, tested in tests/test_image_tools.py):

- `Crop` keeps the FIRST object's box grown by `CONTEXT_MARGIN` of its own width on the left
  and right and of its own height above and below, so a question about the object still sees
  a little of what surrounds it. The grown box is rounded outward to whole pixels and clipped
  to the image.
- `CropLeftOf`, `CropRightOf`, `CropAbove`, `CropBelow` keep the side of the image from its
  edge up to the first object's CENTRE line, so half the object stays in view (what is "left
  of the bench" is easier to judge with part of the bench in the picture).
- `CropFrontOf`, `CropInFront`, `CropInFrontOf`, `CropBehind`, `CropAhead` are depth-aware
  and live in tools/depth.py (they need a depth model).
- With no objects every crop returns a copy of the whole image.
- Never a 0-pixel image: a zero-area box, or a centre line on the image's edge that leaves
  nothing on that side, gives a 1-pixel-wide (or -high) strip at that place instead. We
  prefer the strip to the whole image because the whole image would show the object itself,
  which is not what "left of it" asks about.
- Objects found in another image (their `image_size` is not the image's) are refused with
  a ValueError, since their boxes would point at the wrong pixels.
"""
from __future__ import annotations

import math
from typing import Callable

from PIL import Image

from visprog.registry import Tool, tool
from visprog.values import Objects

# How much context `Crop` adds on each side, as a fraction of the box's own width/height.
CONTEXT_MARGIN = 0.25

PixelBox = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive


def check_objects_image(image: Image.Image, objects: Objects, tool_name: str) -> Image.Image:
    """The image as RGB, after checking `objects` were found in an image of its size.

    Shared by the image tools. Returns `image` itself when it is already RGB (callers must
    not draw into it), else a converted copy.

    Raises:
        TypeError: `image` is not a PIL image or `objects` is not an `Objects`.
        ValueError: the objects belong to an image of another size.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"{tool_name}: image must be a PIL image, got {type(image).__name__}")
    if not isinstance(objects, Objects):
        raise TypeError(f"{tool_name}: expected Objects, got {type(objects).__name__}")
    if tuple(objects.image_size) != tuple(image.size):
        w, h = image.size
        ow, oh = objects.image_size
        raise ValueError(f"{tool_name}: the objects were found in a {ow}x{oh} image, but this "
                         f"image is {w}x{h}; pass the image they were found in")
    return image if image.mode == "RGB" else image.convert("RGB")


def _at_least_one(lo: int, hi: int, size: int) -> tuple[int, int]:
    """[lo, hi) within [0, size), widened to 1 pixel when it is empty."""
    lo = min(max(lo, 0), size)
    hi = min(max(hi, 0), size)
    if hi > lo:
        return lo, hi
    lo = min(lo, size - 1)
    return lo, lo + 1


def _round(v: float) -> int:
    return int(math.floor(v + 0.5))  # half up, not Python's round-half-to-even


def context_box(box: tuple[float, float, float, float], size: tuple[int, int],
                margin: float = CONTEXT_MARGIN) -> PixelBox:
    """The pixel rectangle `Crop` keeps: `box` grown by `margin`, clipped, >= 1 px."""
    w, h = size
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, right = _at_least_one(math.floor(x1 - dx), math.ceil(x2 + dx), w)
    top, bottom = _at_least_one(math.floor(y1 - dy), math.ceil(y2 + dy), h)
    return left, top, right, bottom


def side_box(box: tuple[float, float, float, float], size: tuple[int, int],
             side: str) -> PixelBox:
    """The pixel rectangle from the image's `side` edge to the box's centre line, >= 1 px."""
    w, h = size
    x1, y1, x2, y2 = box
    cx, cy = _round((x1 + x2) / 2), _round((y1 + y2) / 2)
    if side == "left":
        left, right = _at_least_one(0, cx, w)
        return left, 0, right, h
    if side == "right":
        left, right = _at_least_one(cx, w, w)
        return left, 0, right, h
    if side == "above":
        top, bottom = _at_least_one(0, cy, h)
        return 0, top, w, bottom
    if side == "below":
        top, bottom = _at_least_one(cy, h, h)
        return 0, top, w, bottom
    raise ValueError(f"unknown side {side!r}")


def _crop_with(name: str, region: Callable[[Objects, tuple[int, int]], PixelBox],
               image: Image.Image, box: Objects) -> Image.Image:
    rgb = check_objects_image(image, box, name)
    if len(box) == 0:
        return rgb.copy()
    return rgb.crop(region(box, rgb.size))  # PIL's crop returns a new image


def _make_context_crop(name: str, doc: str) -> Tool:
    def crop(image: Image.Image, box: Objects) -> Image.Image:
        return _crop_with(name, lambda objs, size: context_box(objs[0].box, size), image, box)

    crop.__name__ = f"crop_{name.lower()}"
    return tool(name, params={"image": "Image", "box": "Objects"}, returns="Image",
                doc=doc, settings={"context_margin": CONTEXT_MARGIN},
                tasks=("gqa", "agent", "video"))(crop)


def _make_side_crop(name: str, side: str) -> Tool:
    def crop(image: Image.Image, box: Objects) -> Image.Image:
        return _crop_with(name, lambda objs, size: side_box(objs[0].box, size, side), image, box)

    crop.__name__ = f"crop_{side}"
    doc = (f"The part of the image {side}{' of' if side in ('left', 'right') else ''} the first "
           "object, up to its centre; the whole image when there is none.")
    return tool(name, params={"image": "Image", "box": "Objects"}, returns="Image",
                doc=doc, tasks=("gqa", "agent"))(crop)


_CROP_DOC = ("Crops around the first object, enlarged for context; the whole image when "
             "there is none.")
TOOLS = [
    _make_context_crop("Crop", _CROP_DOC),
    _make_side_crop("CropLeftOf", "left"),
    _make_side_crop("CropRightOf", "right"),
    _make_side_crop("CropAbove", "above"),
    _make_side_crop("CropBelow", "below"),
]
