"""The value types of SPEC section 2, and how inputs become them.

`Objects` is an immutable, ordered list of `Region`s of one image (best first). Boxes are
clipped to the image on construction; masks are checked to be the image's H x W.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# The closed vocabulary a tool declares its inputs and output in. "Any" is for Result and
# aliases; "None" marks an optional argument that may be passed None.
TYPES = ("Image", "Objects", "Text", "Number", "Bool", "TextList", "Any", "None")

# What an input image must be, checked when it is bound (settings of `VisProg` and
# `load_image`, None for no limit): at most 64 megapixels, no side under 8 pixels, and the
# long side at most 20 times the short one (models resize by the short side, so a 20000x1
# strip would become an image of zero height, or of billions of pixels). `load_image` on its
# own checks only the pixel limit by default.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 8
DEFAULT_MAX_ASPECT = 20.0

# The deepest lists (and dicts) may nest in any value: written in a program, bound as an
# input, returned by a tool or read from a saved trace. Values go through recursive walks
# (checker, cache keys, codec, traces), so deeper ones are refused where they come in.
MAX_NESTING = 32


def type_of(value: Any) -> str:
    """The SPEC type name of a runtime value (used by the checker for literals and inputs)."""
    if isinstance(value, Image.Image):
        return "Image"
    if isinstance(value, Objects):
        return "Objects"
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "Number"
    if isinstance(value, str):
        return "Text"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "TextList"
    return "Any"


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """How deep lists, tuples and dicts nest in `value` (0 for a scalar, 1 for `[1, 2]`),
    counted without recursion and only up to `limit + 1`: enough to tell it is too deep."""
    containers = (list, tuple, dict)
    if not isinstance(value, containers):
        return 0
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        items = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in items if isinstance(v, containers))
    return deepest


@dataclass(frozen=True, eq=False)
class Region:
    """One detected or segmented region of an image."""

    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    label: str | None = None
    score: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (masks are left out; see the trace writer for those)."""
        d: dict[str, Any] = {"box": [round(v, 2) for v in self.box]}
        if self.label is not None:
            d["label"] = self.label
        if self.score is not None:
            d["score"] = round(float(self.score), 4)
        d.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool))})
        return d


def _clip_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers (x1, y1, x2, y2), got {len(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        raise ValueError(f"box has a non-finite coordinate: {box}")
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return (x1, y1, x2, y2)


@dataclass(frozen=True, eq=False)
class Objects(Sequence[Region]):
    """Regions of one image of size `image_size` = (width, height), best first.

    Indexing with an int gives a `Region`; with a slice, a list of ints or a boolean array it
    gives a new `Objects` of the same image, like supervision's Detections.
    """

    regions: tuple[Region, ...]
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        w, h = (int(v) for v in self.image_size)
        if w <= 0 or h <= 0:
            raise ValueError(f"image_size must be positive (width, height), got {self.image_size}")
        object.__setattr__(self, "image_size", (w, h))
        fixed = []
        for r in self.regions:
            if not isinstance(r, Region):
                raise TypeError(f"Objects holds Region values, got {type(r).__name__}")
            mask = r.mask
            if mask is not None:
                mask = np.asarray(mask)
                if mask.shape != (h, w):
                    raise ValueError(f"mask shape {mask.shape} is not the image's (H, W) = {(h, w)}")
                if mask.dtype != bool:
                    mask = mask > 0 if mask.dtype.kind in "iub" else mask > 0.5
                mask.setflags(write=False)
            box = _clip_box(r.box, w, h)
            fixed.append(replace(r, box=box, mask=mask) if (box != r.box or mask is not r.mask) else r)
        object.__setattr__(self, "regions", tuple(fixed))

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Objects":
        return cls((), image_size)

    @classmethod
    def from_boxes(cls, boxes: Iterable[Sequence[float]], image_size: tuple[int, int], *,
                   labels: Iterable[str | None] | None = None,
                   scores: Iterable[float | None] | None = None,
                   masks: Iterable[np.ndarray | None] | None = None) -> "Objects":
        boxes = [tuple(float(v) for v in b) for b in boxes]
        n = len(boxes)
        labels = list(labels) if labels is not None else [None] * n
        scores = list(scores) if scores is not None else [None] * n
        masks = list(masks) if masks is not None else [None] * n
        if not (len(labels) == len(scores) == len(masks) == n):
            raise ValueError("boxes, labels, scores and masks must have the same length")
        regions = tuple(Region(box=b, mask=m, label=l, score=None if s is None else float(s))
                        for b, l, s, m in zip(boxes, labels, scores, masks))
        return cls(regions, image_size)

    # -- sequence protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, (int, np.integer)):
            return self.regions[int(index)]
        if isinstance(index, slice):
            return Objects(self.regions[index], self.image_size)
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} objects")
            idx = np.flatnonzero(idx)
        return Objects(tuple(self.regions[int(i)] for i in idx), self.image_size)

    def __repr__(self) -> str:
        labels = [r.label for r in self.regions]
        return f"Objects(n={len(self)}, image_size={self.image_size}, labels={labels})"

    # -- views --------------------------------------------------------------------------
    @property
    def boxes(self) -> np.ndarray:
        return np.array([r.box for r in self.regions], dtype=np.float64).reshape(-1, 4)

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.regions]

    @property
    def scores(self) -> list[float | None]:
        return [r.score for r in self.regions]

    def region_mask(self, i: int) -> np.ndarray:
        """The region's mask, or its box filled in when it has none."""
        r = self.regions[i]
        if r.mask is not None:
            return r.mask
        w, h = self.image_size
        m = np.zeros((h, w), dtype=bool)
        x1, y1, x2, y2 = r.box
        m[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
        return m

    def union_mask(self) -> np.ndarray:
        w, h = self.image_size
        out = np.zeros((h, w), dtype=bool)
        for i in range(len(self)):
            out |= self.region_mask(i)
        return out

    def with_regions(self, regions: Iterable[Region]) -> "Objects":
        return Objects(tuple(regions), self.image_size)

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.regions]


# -- images -----------------------------------------------------------------------------

def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; alpha is composited over white, 16-bit is scaled to 8-bit."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        lo = arr.min() if arr.size else 0.0
        if im.mode.startswith("I") and lo >= 0 and hi <= 65535:
            # 16-bit data (I;16, or I holding 16-bit values): a fixed scale, so a grey stays
            # that grey (a min-max stretch would turn a flat image black).
            arr8 = np.rint(arr / 257.0).astype(np.uint8)
        else:
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            arr8 = ((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


@dataclass(frozen=True)
class _Limits:
    """What an image must be to be read (see `load_image`); None for no limit."""

    max_pixels: int | None
    min_side: int | None
    max_aspect: float | None

    def check(self, size: tuple[int, int], name: str = "image") -> None:
        """Raises `ImageError` naming what is wrong, the limit and the setting to change."""
        w, h = size
        if w <= 0 or h <= 0:
            raise ImageError(f"{name} is empty ({w}x{h})")
        if self.max_pixels is not None and w * h > self.max_pixels:
            raise ImageError(f"{name} is {w}x{h} = {w * h:,} pixels, over the limit of "
                             f"{self.max_pixels:,}; resize it or raise max_pixels")
        if self.min_side is not None and min(w, h) < self.min_side:
            raise ImageError(f"{name} is {w}x{h}: its shorter side is under the minimum of "
                             f"{self.min_side} pixels; use a larger image or lower min_side")
        if self.max_aspect is not None and max(w, h) > self.max_aspect * min(w, h):
            raise ImageError(f"{name} is {w}x{h}: its long side is {max(w, h) / min(w, h):.1f} "
                             f"times its short side, over the limit of {self.max_aspect:g}; "
                             "crop it or raise max_aspect")


def load_image(source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_side: int | None = None, max_aspect: float | None = None) -> Image.Image:
    """Read a path, bytes, PIL image or numpy array as an RGB PIL image.

    EXIF orientation is applied. Images over `max_pixels`, with a side under `min_side` or
    with the long side over `max_aspect` times the short one are refused (before their pixels
    are decoded); None turns a limit off. The caller's object is never modified: a new image
    is returned.

    Raises:
        ImageError: missing file, not an image, truncated, empty, too large, too small or
            too elongated.
    """
    limits = _Limits(max_pixels, min_side, max_aspect)
    if isinstance(source, Image.Image):
        im = source
        limits.check(im.size, "image")
        try:
            out = _to_rgb(ImageOps.exif_transpose(im))
        except Exception as e:  # a lazily loaded PIL image can still fail here
            raise ImageError(f"could not read image: {e}") from e
        return out.copy() if out is source else out
    if isinstance(source, np.ndarray):
        return _array_to_image(source, limits)
    if isinstance(source, (bytes, bytearray)):
        return _open_image(io.BytesIO(bytes(source)), "<bytes>", limits)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"image file not found: {path}")
        if path.is_dir():
            raise ImageError(f"expected an image file, got a directory: {path}")
        return _open_image(path, str(path), limits)
    raise ImageError(f"can't read an image from a {type(source).__name__}; "
                     "pass a path, bytes, a PIL image or a numpy array")


def _open_image(fp: Any, name: str, limits: _Limits) -> Image.Image:
    try:
        # Our own limit is checked from the header below; PIL's bomb check would only
        # warn or raise with a less helpful message, so it is lifted for this open.
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        limits.check(im.size, name)
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"not an image (or an unsupported format): {name}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"could not read image {name}: {e}") from e


def _array_to_image(arr: np.ndarray, limits: _Limits) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(f"an image array is H x W or H x W x {{1,3,4}}, got shape {a.shape}")
    limits.check((a.shape[1], a.shape[0]), "image array")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        # floats are taken as 0..1 when they fit there, else as 0..255
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        a = np.nan_to_num(a).clip(0, 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        return _to_rgb(Image.fromarray(a.astype(np.int32), mode="I")) if a.ndim == 2 else \
            Image.fromarray((a >> 8).astype(np.uint8)).convert("RGB")
    elif a.dtype != np.uint8:
        a = a.clip(0, 255).astype(np.uint8)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a)))
