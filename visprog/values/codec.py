"""Values to bytes and back, and content hashes of values, for the step cache.

No pickle anywhere: a cache file written by someone else must never be able to run code
when it is read. The format is a small JSON tree that describes the value, followed by
binary blobs (PNG images, bit-packed masks) that the tree points to:

    b"VPC1" | u32 header length | header JSON (utf-8) | blob 0 | blob 1 | ...

The header is `{"v": <node>, "blobs": [len0, len1, ...]}`. Each node is tagged
(`{"t": "float", "v": "0x1.8p+1"}`), so int/float/bool/str/None, list/tuple survive a round
trip with their types, and floats are written in hex so they come back bit for bit.

`digest(value)` is a separate, faster path: it hashes raw pixel bytes and mask bytes
rather than encoding, because the cache key is computed for every step, hit or miss.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from visprog.values import Objects, Region

MAGIC = b"VPC1"
_HEADER_LEN = struct.Struct("<I")

# Modes that PNG stores without loss. SPEC values are RGB; the others are accepted so a
# tool that returns, say, a mask image can still be cached.
PNG_MODES = frozenset({"RGB", "RGBA", "L", "LA", "1"})

# PNG level 1: several times faster than the default for photos and only a little larger.
PNG_COMPRESS_LEVEL = 1

# Bits per pixel of the raw form (`raw_images=True`), the same modes as PNG.
_RAW_BITS = {"1": 1, "L": 8, "LA": 16, "RGB": 24, "RGBA": 32}


# -- encode -------------------------------------------------------------------------------

def encode(value: Any, *, raw_images: bool = False) -> bytes:
    """Serialise a SPEC value (Image, Objects, str, int, float, bool, None, lists/tuples).

    Images are stored as PNG (compact: the disk cache), or with `raw_images` as their pixel
    bytes (about 50x faster to write and read than PNG for a photo, and 2-3x larger: for
    sending values to a model host, where time matters more than bytes).

    Raises:
        TypeError: the value (or something inside it) is of a kind this codec does not
            store; the caller then simply doesn't cache it.
    """
    blobs: list[bytes] = []
    try:
        tree = _encode_node(value, blobs, raw_images)
    except RecursionError as e:
        raise TypeError("value is nested too deeply to cache") from e
    header = json.dumps({"v": tree, "blobs": [len(b) for b in blobs]},
                        ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"".join([MAGIC, _HEADER_LEN.pack(len(header)), header, *blobs])


def _encode_node(value: Any, blobs: list[bytes], raw: bool) -> dict[str, Any]:
    # bool before int: bool is a subclass of int.
    if value is None:
        return {"t": "none"}
    if isinstance(value, (bool, np.bool_)):
        return {"t": "bool", "v": bool(value)}
    if isinstance(value, (int, np.integer)):
        return {"t": "int", "v": str(int(value))}
    if isinstance(value, (float, np.floating)):
        return {"t": "float", "v": float(value).hex()}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, (list, tuple)):
        return {"t": "list" if isinstance(value, list) else "tuple",
                "v": [_encode_node(v, blobs, raw) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only dicts with str keys can be cached")
        return {"t": "dict", "v": [[k, _encode_node(v, blobs, raw)] for k, v in value.items()]}
    if isinstance(value, Image.Image):
        return _encode_image(value, blobs, raw)
    if isinstance(value, Objects):
        return _encode_objects(value, blobs, raw)
    raise TypeError(f"can't cache a value of type {type(value).__name__}")


def _add_blob(blobs: list[bytes], data: bytes) -> int:
    blobs.append(data)
    return len(blobs) - 1


def _encode_image(im: Image.Image, blobs: list[bytes], raw: bool) -> dict[str, Any]:
    if im.mode not in PNG_MODES:
        raise TypeError(f"can't cache an image of mode {im.mode!r}")
    if raw:
        return {"t": "image", "mode": im.mode, "size": list(im.size), "format": "raw",
                "blob": _add_blob(blobs, im.tobytes())}
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return {"t": "image", "mode": im.mode, "size": list(im.size),
            "blob": _add_blob(blobs, buf.getvalue())}


def _encode_objects(objs: Objects, blobs: list[bytes], raw: bool) -> dict[str, Any]:
    w, h = objs.image_size
    regions = []
    for r in objs.regions:
        mask = None
        if r.mask is not None:
            mask = _add_blob(blobs, np.packbits(np.asarray(r.mask, dtype=bool).ravel()).tobytes())
        regions.append({
            "box": [float(v).hex() for v in r.box],
            "mask": mask,
            "label": _encode_node(r.label, blobs, raw),
            "score": _encode_node(r.score, blobs, raw),
            "extra": _encode_node(dict(r.extra), blobs, raw),
        })
    return {"t": "objects", "size": [w, h], "regions": regions}


# -- decode -------------------------------------------------------------------------------

def decode(data: bytes) -> Any:
    """The value `encode` wrote.

    Raises:
        ValueError: the bytes are not a well-formed encoding (truncated, wrong magic,
            inconsistent lengths, an unknown node). Never runs code from the data.
    """
    view = memoryview(data)
    if len(view) < len(MAGIC) + _HEADER_LEN.size or bytes(view[:4]) != MAGIC:
        raise ValueError("not a visprog cache value (bad magic or too short)")
    (hlen,) = _HEADER_LEN.unpack_from(view, 4)
    start = 4 + _HEADER_LEN.size
    if start + hlen > len(view):
        raise ValueError("cache value is truncated (header)")
    try:
        header = json.loads(bytes(view[start:start + hlen]).decode("ascii"))
        lengths = header["blobs"]
        tree = header["v"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"cache value has a bad header: {e}") from e
    if not isinstance(lengths, list) or not all(isinstance(n, int) and n >= 0 for n in lengths):
        raise ValueError("cache value has bad blob lengths")
    blobs, pos = [], start + hlen
    for n in lengths:
        blobs.append(view[pos:pos + n])
        pos += n
    if pos != len(view):
        raise ValueError(f"cache value length mismatch: expected {pos} bytes, got {len(view)}")
    try:
        return _decode_node(tree, blobs)
    except ValueError:
        raise
    except Exception as e:  # any malformed tree is a bad value, never a crash
        raise ValueError(f"cache value is malformed: {type(e).__name__}: {e}") from e


def _decode_node(node: dict[str, Any], blobs: list[memoryview]) -> Any:
    t = node["t"]
    if t == "none":
        return None
    if t == "bool":
        return bool(node["v"])
    if t == "int":
        return int(node["v"])
    if t == "float":
        return float.fromhex(node["v"])
    if t == "str":
        if not isinstance(node["v"], str):
            raise ValueError("str node without a string")
        return node["v"]
    if t == "list":
        return [_decode_node(v, blobs) for v in node["v"]]
    if t == "tuple":
        return tuple(_decode_node(v, blobs) for v in node["v"])
    if t == "dict":
        return {str(k): _decode_node(v, blobs) for k, v in node["v"]}
    if t == "image":
        return _decode_image(node, blobs)
    if t == "objects":
        return _decode_objects(node, blobs)
    raise ValueError(f"unknown node type {t!r}")


def _decode_image(node: dict[str, Any], blobs: list[memoryview]) -> Image.Image:
    mode, size = node["mode"], tuple(int(v) for v in node["size"])
    if node.get("format", "png") == "raw":
        return _decode_raw_image(mode, size, blobs[int(node["blob"])])
    # PngImageFile directly: only PNG is accepted, and PIL's decompression-bomb check
    # (which lives in Image.open) does not refuse a large image that we wrote ourselves.
    im = PngImagePlugin.PngImageFile(io.BytesIO(bytes(blobs[int(node["blob"])])))
    im.load()
    if im.mode != mode or im.size != size:
        raise ValueError(f"image is {im.mode} {im.size}, header says {mode} {size}")
    # A plain in-memory image, detached from the PNG reader and its info dict.
    return im.copy() if type(im) is not Image.Image else im


def _decode_raw_image(mode: str, size: tuple[int, ...], blob: memoryview) -> Image.Image:
    if mode not in _RAW_BITS or len(size) != 2 or min(size) < 1:
        raise ValueError(f"bad raw image header: {mode} {size}")
    w, h = size
    expected = (w * _RAW_BITS[mode] + 7) // 8 * h
    if len(blob) != expected:
        raise ValueError(f"raw image of {mode} {w}x{h} needs {expected} bytes, got {len(blob)}")
    return Image.frombytes(mode, (w, h), bytes(blob))


def _decode_objects(node: dict[str, Any], blobs: list[memoryview]) -> Objects:
    w, h = (int(v) for v in node["size"])
    regions = []
    for rn in node["regions"]:
        mask = None
        if rn["mask"] is not None:
            bits = np.frombuffer(blobs[int(rn["mask"])], dtype=np.uint8)
            if bits.size != (w * h + 7) // 8:
                raise ValueError("mask blob has the wrong length")
            mask = np.unpackbits(bits, count=w * h).reshape(h, w).astype(bool)
        box = tuple(float.fromhex(v) for v in rn["box"])
        extra = _decode_node(rn["extra"], blobs)
        regions.append(Region(box=box, mask=mask, label=_decode_node(rn["label"], blobs),
                              score=_decode_node(rn["score"], blobs), extra=extra))
    return Objects(tuple(regions), (w, h))


# -- digest -------------------------------------------------------------------------------

_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")


def digest(value: Any) -> str:
    """A sha256 hex digest of a value's content.

    Images hash by mode, size and raw pixel bytes (two images with equal pixels have equal
    digests whatever their object identity or file format); Objects by every box, mask
    bit, label, score and extra field; scalars by type and value (so 1, True, 1.0 and "1"
    all differ); lists and tuples elementwise (a list and a tuple with the same items are
    the same TextList, so they hash the same).

    Raises:
        TypeError: a value of a kind that has no content hash (the step is then not cached).
    """
    h = hashlib.sha256()
    try:
        _feed(h, value)
    except RecursionError as e:
        raise TypeError("value is nested too deeply to hash") from e
    return h.hexdigest()


def _feed_bytes(h: "hashlib._Hash", tag: bytes, data: bytes | memoryview) -> None:
    # Every item is tag + length + bytes, so no two different values share a byte stream.
    h.update(tag)
    h.update(_U64.pack(len(data)))
    h.update(data)


def _feed(h: "hashlib._Hash", value: Any) -> None:
    if value is None:
        h.update(b"N")
    elif isinstance(value, (bool, np.bool_)):
        h.update(b"B1" if value else b"B0")
    elif isinstance(value, (int, np.integer)):
        _feed_bytes(h, b"I", str(int(value)).encode("ascii"))
    elif isinstance(value, (float, np.floating)):
        v = float(value)
        h.update(b"F")
        # all NaNs are one value for caching purposes
        h.update(_F64.pack(math.nan if math.isnan(v) else v))
    elif isinstance(value, str):
        _feed_bytes(h, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (list, tuple)):
        h.update(b"L")
        h.update(_U64.pack(len(value)))
        for v in value:
            _feed(h, v)
    elif isinstance(value, dict):
        h.update(b"D")
        h.update(_U64.pack(len(value)))
        for k in sorted(value, key=str):
            _feed(h, str(k))
            _feed(h, value[k])
    elif isinstance(value, Image.Image):
        _feed_bytes(h, b"M", value.mode.encode("ascii"))
        h.update(_U64.pack(value.size[0]) + _U64.pack(value.size[1]))
        _feed_bytes(h, b"P", value.tobytes())
    elif isinstance(value, Objects):
        _feed_objects(h, value)
    elif isinstance(value, np.ndarray):
        _feed_bytes(h, b"A", f"{value.dtype.str}{value.shape}".encode("ascii"))
        _feed_bytes(h, b"a", np.ascontiguousarray(value).data.cast("B"))
    else:
        raise TypeError(f"can't hash a value of type {type(value).__name__} for the cache")


def _feed_objects(h: "hashlib._Hash", objs: Objects) -> None:
    w, h_ = objs.image_size
    h.update(b"O" + _U64.pack(w) + _U64.pack(h_) + _U64.pack(len(objs)))
    for r in objs.regions:
        h.update(b"r" + struct.pack("<4d", *r.box))
        if r.mask is None:
            h.update(b"m0")
        else:
            _feed_bytes(h, b"m1", np.ascontiguousarray(r.mask, dtype=bool).data.cast("B"))
        _feed(h, r.label)
        _feed(h, r.score)
        _feed(h, dict(r.extra))


# -- detaching ----------------------------------------------------------------------------

def detach(value: Any) -> Any:
    """A copy of `value` that shares no mutable object with it.

    Images are copied; lists/tuples are rebuilt; Objects are immutable except for each
    region's `extra` dict, which is copied (masks are read-only arrays and are shared).
    Scalars and strings are immutable and returned as they are.
    """
    if isinstance(value, Image.Image):
        return value.copy()
    if isinstance(value, list):
        return [detach(v) for v in value]
    if isinstance(value, tuple):
        return tuple(detach(v) for v in value)
    if isinstance(value, dict):
        return {k: detach(v) for k, v in value.items()}
    if isinstance(value, Objects):
        if not any(r.extra for r in value.regions) and all(
                r.mask is None or not r.mask.flags.writeable for r in value.regions):
            return value
        return value.with_regions(
            replace(r, extra=detach(dict(r.extra)),
                    mask=None if r.mask is None else _readonly_copy(r.mask))
            for r in value.regions)
    return value


def _readonly_copy(mask: np.ndarray) -> np.ndarray:
    if not mask.flags.writeable:
        return mask
    out = mask.copy()
    out.setflags(write=False)
    return out
