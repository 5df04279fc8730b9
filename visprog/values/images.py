"""How inputs become Images (SPEC 2): any path, bytes, PIL image or array -> RGB PIL image."""
from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visprog.errors import ImageError

# What an input image must be, checked when it is bound (settings of `VisProg` and
# `load_image`, None for no limit): at most 64 megapixels, no side under 8 pixels, and the
# long side at most 20 times the short one (models resize by the short side, so a 20000x1
# strip would become an image of zero height, or of billions of pixels). `load_image` on its
# own checks only the pixel limit by default.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 8
DEFAULT_MAX_ASPECT = 20.0

# Images given as http(s) URLs are downloaded (as transformers' `load_image` does): at most
# this many bytes, and each read of the connection waits at most this many seconds, so a
# server that never answers, or one that streams forever, ends in an ImageError.
URL_MAX_BYTES = 100 * 1024 * 1024
URL_TIMEOUT_S = 20.0
_URL_SCHEMES = ("http://", "https://")


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
    """Read a path, an http(s) URL, bytes, PIL image or numpy array as an RGB PIL image.

    EXIF orientation is applied. Images over `max_pixels`, with a side under `min_side` or
    with the long side over `max_aspect` times the short one are refused (before their pixels
    are decoded); None turns a limit off. The caller's object is never modified: a new image
    is returned.

    Raises:
        ImageError: missing file, a URL that can't be downloaded, not an image, truncated,
            empty, too large, too small or too elongated.
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
    if isinstance(source, str) and source[:8].lower().startswith(_URL_SCHEMES):
        return _open_image(io.BytesIO(_download(source)), source, limits)
    if isinstance(source, str) and "://" in source[:16]:
        scheme = source.split("://", 1)[0]
        raise ImageError(f"can't read an image from a {scheme}:// address: {source}; "
                         "give an http(s) URL, a file path, bytes, a PIL image or an array")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"image file not found: {path}")
        if path.is_dir():
            raise ImageError(f"expected an image file, got a directory: {path}")
        return _open_image(path, str(path), limits)
    raise ImageError(f"can't read an image from a {type(source).__name__}; "
                     "pass a path, an http(s) URL, bytes, a PIL image or a numpy array")


def _download(url: str, *, timeout: float = URL_TIMEOUT_S,
              max_bytes: int = URL_MAX_BYTES) -> bytes:
    """The body of an http(s) URL, at most `max_bytes` (refused beyond, before reading all).

    Raises:
        ImageError: the server can't be reached, answers with an error status, is too slow,
            or sends more than `max_bytes`.
    """
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "visprog"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise ImageError(f"image at {url} is {int(length):,} bytes, over the limit of "
                                 f"{max_bytes:,}")
            # Read in chunks against one deadline: a server that trickles bytes forever
            # would pass a per-read timeout.
            end = time.monotonic() + timeout
            chunks, size = [], 0
            while size <= max_bytes:
                chunk = resp.read(min(1 << 16, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if time.monotonic() > end:
                    raise ImageError(f"could not download image {url}: no complete answer "
                                     f"within {timeout:g} s")
            data = b"".join(chunks)
    except ImageError:
        raise
    except urllib.error.HTTPError as e:
        raise ImageError(f"could not download image {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ImageError(f"could not download image {url}: {reason}") from e
    if len(data) > max_bytes:
        raise ImageError(f"image at {url} is over the limit of {max_bytes:,} bytes")
    return data


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
