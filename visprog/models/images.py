"""Images as the model modules and chat models get them: RGB, never so thin that the
processor's resize makes them vanish, and within a pixel bound."""
from __future__ import annotations

import math
from typing import Any

from PIL import Image

from visprog.values.images import load_image

# The most elongated image a model's processor is given. Processors resize by the short side
# up to a cap on the long one (ViLT's real checkpoint: 384 and 640, in multiples of 32), so a
# strip like a CropLeftOf at the image's edge (1 pixel wide) would be resized to zero pixels
# and fail inside the library. Thinner images are padded, black on the right or at the bottom,
# to this; their own pixels keep their coordinates, so a module reads boxes in the padded
# image as boxes in its own and clips boxes and crops masks back to the image's size.
MODEL_MAX_ASPECT = 10.0


def rgb_image(image: Any) -> Image.Image:
    """A step's image argument as RGB: the engine passes RGB images; anything else (another
    mode, an array) goes through `load_image`."""
    if isinstance(image, Image.Image) and image.mode == "RGB":
        return image
    return load_image(image)


def model_image(image: Image.Image) -> Image.Image:
    """`image`, padded (its pixels at the top left) when its long side is more than
    `MODEL_MAX_ASPECT` times the short one; else `image` itself."""
    w, h = image.size
    pw, ph = max(w, math.ceil(h / MODEL_MAX_ASPECT)), max(h, math.ceil(w / MODEL_MAX_ASPECT))
    if (pw, ph) == (w, h):
        return image
    canvas = Image.new("RGB", (pw, ph))
    canvas.paste(image.convert("RGB"), (0, 0))
    return canvas


def model_images(images: Any) -> list[Image.Image]:
    """`model_image` of each image: what a module passes as a processor's `images=`."""
    return [model_image(im) for im in images]


def bound_pixels(image: Image.Image, max_pixels: int, min_pixels: int = 0) -> Image.Image:
    """The image scaled down (aspect ratio kept, bicubic) to at most `max_pixels` pixels, or
    up to at least `min_pixels` (0: never up; a small crop scaled up gives Vqa the detail);
    the image itself when it is within the bounds or the bound is 0 or less. What a chat
    model is sent (Vqa's images, the planner's) is bounded this way, which bounds its image
    tokens."""
    w, h = image.size
    if min_pixels > 0 and w * h < min_pixels:
        scale = math.sqrt(min_pixels / (w * h))
        return image.resize((math.ceil(w * scale), math.ceil(h * scale)),
                            Image.Resampling.BICUBIC)
    if max_pixels <= 0 or w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)
