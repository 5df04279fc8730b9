"""Drawing Objects over images, for tools (Tag) and trace renderings.

Every function here returns a new image and leaves its input untouched: a trace keeps the
images a run saw, so drawing into them would change the record.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from visprog.values import Objects

# Distinct, saturated colours; region i gets PALETTE[i % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
    (170, 110, 40), (255, 225, 25), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (0, 0, 128), (220, 190, 255), (255, 215, 180), (128, 128, 128), (0, 0, 0),
)

MASK_ALPHA = 0.45  # how strongly a mask tints the pixels under it


def color_for(i: int) -> tuple[int, int, int]:
    """The colour of the i-th region."""
    return PALETTE[i % len(PALETTE)]


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow >= 10.1 ships a scalable default font (needs FreeType); older or FreeType-less
    # builds fall back to the fixed bitmap font, which still works, just small.
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _scaled(objects: Objects, size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Boxes and masks of `objects` mapped onto an image of `size` (it may be a thumbnail)."""
    w, h = size
    ow, oh = objects.image_size
    boxes = objects.boxes.copy()
    if (ow, oh) != (w, h):
        boxes *= np.array([w / ow, h / oh, w / ow, h / oh])
    masks: list[np.ndarray | None] = []
    for i, has in enumerate(objects.has_mask):
        m = objects.masks[i] if has else None
        if m is not None and (ow, oh) != (w, h):
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        masks.append(m)
    return boxes, masks


def _tag_text(label: str | None, score: float | None, labels: bool, scores: bool) -> str:
    parts = []
    if labels and label:
        parts.append(str(label))
    if scores and score is not None:
        parts.append(f"{float(score):.2f}")
    return " ".join(parts)


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    # dark text on light colours, white on dark ones (perceived luminance)
    r, g, b = fill
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw_objects(image: Image.Image, objects: Objects, *, masks: bool = True, labels: bool = True,
                 scores: bool = True, width: int | None = None) -> Image.Image:
    """Draw regions over a copy of `image`.

    Each region gets its own colour: its mask (when it has one and `masks` is on) as a
    translucent overlay, its box outlined, and its label and score in a small filled tag.
    If `image` is not the size the Objects were found on (e.g. a thumbnail), boxes and masks
    are scaled to it.

    Args:
        image: the picture to draw on; it is not modified.
        objects: the regions.
        masks: tint mask pixels.
        labels: write each region's label in its tag.
        scores: write each region's score in its tag.
        width: box line width in pixels; by default scaled to the image size.

    Returns:
        A new RGB image.
    """
    out = image.convert("RGB")  # a new image even when `image` is already RGB
    if len(objects) == 0:
        return out
    w, h = out.size
    boxes, region_masks = _scaled(objects, out.size)
    short = min(w, h)
    line = max(1, int(round(short / 200))) if width is None else max(1, int(width))
    font = _font(max(10, min(48, int(round(short / 28)))))

    if masks and any(m is not None for m in region_masks):
        arr = np.asarray(out, dtype=np.float32).copy()
        for i, m in enumerate(region_masks):
            if m is not None and m.any():
                arr[m] = (1 - MASK_ALPHA) * arr[m] + MASK_ALPHA * np.array(color_for(i), np.float32)
        out = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(out)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        color = color_for(i)
        # Keep the outline inside the picture; a zero-area box still shows as a small mark.
        left, top = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
        right, bottom = min(max(x2 - 1, left), w - 1), min(max(y2 - 1, top), h - 1)
        draw.rectangle([left, top, right, bottom], outline=color, width=line)
    # Tags go on after all boxes so no outline crosses a tag's text.
    for i, (x1, y1, _x2, _y2) in enumerate(boxes):
        score = objects.scores[i] if objects.has_score[i] else None
        text = _tag_text(objects.labels[i], score, labels, scores)
        if not text:
            continue
        color = color_for(i)
        tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tr - tl, tb - tt
        pad = max(1, th // 5)
        bw, bh = tw + 2 * pad, th + 2 * pad
        # Above the box when there is room, else just inside its top edge.
        bx = int(min(max(x1, 0), max(w - bw, 0)))
        by = int(y1 - bh) if y1 - bh >= 0 else int(min(max(y1, 0), max(h - bh, 0)))
        draw.rectangle([bx, by, bx + bw - 1, by + bh - 1], fill=color)
        draw.text((bx + pad - tl, by + pad - tt), text, fill=_text_color(color), font=font)
    return out


def thumbnail(image: Image.Image, max_side: int = 256) -> Image.Image:
    """A copy of `image` whose longer side is at most `max_side` (never enlarged)."""
    out = image.copy()
    if max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.LANCZOS)
    return out


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """A boolean (or 0/1, 0..255, 0.0..1.0) H x W mask as a black/white "L" image."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask is H x W, got shape {m.shape}")
    if m.dtype != bool:
        m = m > (0.5 if m.dtype.kind == "f" else 0)
    return Image.fromarray(m.astype(np.uint8) * 255, "L")
