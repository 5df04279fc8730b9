"""BgBlur: everything but the objects blurred (SPEC 4).

A Gaussian blur whose radius grows with the image (`BLUR_FRACTION` of its longer side), so a
thumbnail and a photo look alike. Object pixels (mask, or box when there is no mask) are
copied unchanged; the edge is hard, so no object pixel is touched. With no objects the whole
image is blurred.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from visprog.registry import tool
from visprog.values import Objects

from .crop import check_objects_image

BLUR_FRACTION = 0.015  # radius = 1.5% of the longer side: ~10 px on a 640 px photo
MIN_RADIUS = 1.0


def blur_radius(size: tuple[int, int]) -> float:
    """The Gaussian radius used for an image of `size` (width, height)."""
    return max(MIN_RADIUS, BLUR_FRACTION * max(size))


@tool("BgBlur", params={"image": "Image", "object": "Objects"}, returns="Image",
      settings={"blur_fraction": BLUR_FRACTION, "min_radius": MIN_RADIUS}, tasks=("imgedit",))
def bg_blur(image: Image.Image, object: Objects) -> Image.Image:  # noqa: A002 (SPEC name)
    """Blurs everything but the objects."""
    rgb = check_objects_image(image, object, "BgBlur")
    blurred = np.asarray(rgb.filter(ImageFilter.GaussianBlur(blur_radius(rgb.size))))
    keep = object.union_mask()[:, :, None]
    return Image.fromarray(np.where(keep, np.asarray(rgb), blurred).astype(np.uint8), mode="RGB")


TOOLS = [bg_blur]
