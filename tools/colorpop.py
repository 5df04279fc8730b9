"""ColorPop: the objects in colour, everything else grayscale (SPEC 4).

An object's mask is used where it has one, its box where it has none (`Objects.union_mask`).
With no objects the whole image turns gray.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from visprog.registry import tool
from visprog.values import Objects

from .crop import check_objects_image


@tool("ColorPop", params={"image": "Image", "object": "Objects"}, returns="Image",
      tasks=("imgedit",))
def color_pop(image: Image.Image, object: Objects) -> Image.Image:  # noqa: A002 (SPEC name)
    """Keeps the objects in colour and turns the rest of the image grayscale."""
    rgb = check_objects_image(image, object, "ColorPop")
    colour = np.asarray(rgb)
    # Gray as PIL computes it (ITU-R 601 luma), repeated over the three channels.
    gray = np.asarray(rgb.convert("L"))[:, :, None]
    keep = object.union_mask()[:, :, None]
    return Image.fromarray(np.where(keep, colour, gray).astype(np.uint8), mode="RGB")


TOOLS = [color_pop]
