"""The codec's tree: values to JSON nodes and back, blobs to a store (`visprog.values.blobs`).

One schema for the step cache, the Ray wire and saved traces. None, bools, ints, finite
floats, strings, lists and dicts with string keys are themselves (JSON keeps ints and floats
apart, and Python writes floats so they come back bit for bit). Everything else is a dict
tagged with "$type":

- ``image``: ``{"$type": "image", "mode": "RGB", "size": [W, H], <ref>}``, plus
  ``"format": "raw"`` when the blob is raw pixels instead of PNG. <ref> is what the blob
  store made: ``"blob": 0`` (bytes), ``"file": "run_files/img_0.png"`` or ``"blob": "img_0"``
  (documents).
- ``objects``: ``{"$type": "objects", "image_size": [W, H], "regions": [{"box": [x1, y1,
  x2, y2], "label": <node>, "score": <node>, "extra": <node> (left out when empty),
  "mask": <ref> (left out when there is none; plus ``"format": "bits"`` for packed bits)}]}``.
- ``tuple`` (``"items"``), ``float`` (non-finite: ``"value": "nan"``), ``dict`` (a dict
  whose keys are not all strings, or that has a "$type" key: ``"items": [[k, v], ...]``).
- Only in records (``exact=False``, the trace): ``ndarray`` (small numeric arrays) and
  ``repr`` (anything else: its type name and repr, loaded back as a `ReprValue`).

`exact=True` (cache and wire) refuses what would not come back equal, with a TypeError
(the step is then simply not cached); a trace keeps what it can. Decoding never runs code
from the data (no pickle) and refuses malformed input with a `CodecError` (a ValueError).
Traces saved before the codec was one still load: their nodes are this schema without the
images' mode and size. Lists, tuples and dicts nest at most `MAX_NESTING` deep (a level more
for the dict a document wraps values in): values are checked where they come in, so deeper
ones are refused here as a backstop (a TypeError when exact, a ``repr`` note in a record) and
on decoding (a `CodecError`), before any recursion can run out.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np
from PIL import Image, PngImagePlugin

from visprog.errors import VisProgError
from visprog.values.blobs import BlobError, BlobStore
from visprog.values.objects import Objects, Region
from visprog.values.types import MAX_NESTING

TAG = "$type"

# Modes that PNG stores without loss. SPEC values are RGB; the others are accepted so a
# tool that returns, say, a mask image can still be cached.
PNG_MODES = frozenset({"RGB", "RGBA", "L", "LA", "1"})
# A record (a trace) also keeps palette images; other modes are converted to RGB(A).
_RECORD_MODES = PNG_MODES | {"P"}

# PNG level 1: several times faster than the default for photos and only a little larger.
PNG_COMPRESS_LEVEL = 1

# Bits per pixel of the raw form, the same modes as PNG.
_RAW_BITS = {"1": 1, "L": 8, "LA": 16, "RGB": 24, "RGBA": 32}

# Arrays larger than this are kept as a repr: a trace is a record, not a data store.
_MAX_ARRAY_ITEMS = 4096
_MAX_REPR_CHARS = 2000


class CodecError(VisProgError, ValueError):
    """Input that is not a well-formed encoding of a value; the message says what is wrong."""


@dataclass(frozen=True)
class ReprValue:
    """A value a trace could only keep as text: its type name and repr."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


# -- values to nodes ----------------------------------------------------------------------

class Encoder:
    """Turns values into nodes, putting pixels and masks into `store`.

    One encoder may encode many values of one document: with a deduplicating store, an image
    used by ten steps is stored once.

    Args:
        store: where the blobs go (`visprog.values.blobs`).
        exact: refuse (TypeError) anything that would not decode equal to itself; else keep
            a record of it (arrays, reprs, images in other modes converted).
    """

    def __init__(self, store: BlobStore, *, exact: bool = True):
        self.store = store
        self.exact = exact
        self._stored: dict[str, dict[str, Any]] = {}  # content hash -> reference
        # id -> (the image, its node): one image object used many times (the same photo in
        # every call of a request) is stored once, whatever the store, without hashing it
        self._seen: dict[int, tuple[Image.Image, dict[str, Any]]] = {}

    def encode(self, value: Any) -> Any:
        """The node of `value`.

        Raises:
            TypeError: (`exact`) a value of a kind the codec does not store, or nested too
                deeply.
        """
        try:
            return self._node(value)
        except RecursionError as e:
            raise TypeError("value is nested too deeply to encode") from e

    def _too_deep(self, value: Any) -> Any:
        if self.exact:
            raise TypeError(f"value is nested too deeply to encode (lists or dicts more than "
                            f"{MAX_NESTING} deep)")
        cls = type(value)
        return {TAG: "repr", "type": f"{cls.__module__}.{cls.__qualname__}",
                "repr": f"<nested more than {MAX_NESTING} deep>"}

    def _node(self, value: Any, depth: int = 0) -> Any:
        # bool before int: bool is a subclass of int.
        if value is None or type(value) is str:
            return value
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            v = float(value)
            return v if math.isfinite(v) else {TAG: "float", "value": repr(v)}
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (list, tuple, dict)) and depth > MAX_NESTING:
            return self._too_deep(value)
        if isinstance(value, list):
            return [self._node(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return {TAG: "tuple", "items": [self._node(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            return self._dict(value, depth)
        if isinstance(value, Image.Image):
            return self._image(value)
        if isinstance(value, Objects):
            return self._objects(value, depth)
        if self.exact:
            raise TypeError(f"can't encode a value of type {type(value).__name__}")
        if (isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
                and value.size <= _MAX_ARRAY_ITEMS):
            return {TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                    "data": [self._node(v) for v in value.ravel().tolist()]}
        cls = type(value)
        return {TAG: "repr", "type": f"{cls.__module__}.{cls.__qualname__}",
                "repr": _safe_repr(value)}

    def _dict(self, value: dict[Any, Any], depth: int) -> Any:
        if all(type(k) is str for k in value):
            if TAG not in value:
                return {k: self._node(v, depth + 1) for k, v in value.items()}
        elif self.exact:
            # digest() hashes keys as strings: {1: x} and {"1": x} would share a cache entry
            raise TypeError("only dicts with str keys can be encoded exactly")
        return {TAG: "dict", "items": [[self._node(k, depth + 1), self._node(v, depth + 1)]
                                       for k, v in value.items()]}

    def _put(self, kind: str, fmt: str, pixels: bytes, header: str,
             make: Any) -> dict[str, Any]:
        """The reference to a blob, made once per distinct content when the store dedups."""
        key = None
        if self.store.dedup:
            key = hashlib.sha1(f"{kind}{fmt}{header}".encode() + pixels).hexdigest()
            if key in self._stored:
                return dict(self._stored[key])
        ref = self.store.put(make(), kind)
        if key is not None:
            self._stored[key] = ref
        return dict(ref)

    def _image(self, im: Image.Image) -> dict[str, Any]:
        seen = self._seen.get(id(im))
        if seen is not None and seen[0] is im:
            return dict(seen[1])
        node = self._new_image(im)
        self._seen[id(im)] = (im, node)  # holding the image keeps its id from being reused
        return dict(node)

    def _new_image(self, im: Image.Image) -> dict[str, Any]:
        if im.mode not in PNG_MODES:
            if self.exact:
                raise TypeError(f"can't encode an image of mode {im.mode!r} exactly")
            if im.mode not in _RECORD_MODES:
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        fmt = self.store.image_format if im.mode in _RAW_BITS else "png"
        node: dict[str, Any] = {TAG: "image", "mode": im.mode, "size": list(im.size)}
        if fmt == "raw":
            node["format"] = "raw"
            pixels = im.tobytes()
            node.update(self._put("img", fmt, pixels, f"{im.mode}{im.size}", lambda: pixels))
        else:
            pixels = im.tobytes() if self.store.dedup else b""
            node.update(self._put("img", fmt, pixels, f"{im.mode}{im.size}", lambda: _png(im)))
        return node

    def _mask(self, mask: np.ndarray) -> dict[str, Any]:
        mask = np.asarray(mask, dtype=bool)
        bits = np.packbits(mask.ravel()).tobytes()
        if self.store.mask_format == "bits":
            return {"format": "bits", **self._put("mask", "bits", bits, str(mask.shape),
                                                  lambda: bits)}
        return self._put("mask", "png", bits, str(mask.shape),
                         lambda: _png(Image.fromarray(mask)))

    def _objects(self, objs: Objects, depth: int) -> dict[str, Any]:
        regions = []
        for r in objs.regions:
            d: dict[str, Any] = {"box": [float(v) for v in r.box],
                                 "label": self._node(r.label, depth + 1),
                                 "score": self._node(r.score, depth + 1)}
            if r.extra:
                d["extra"] = self._node(dict(r.extra), depth + 1)
            if r.mask is not None:
                d["mask"] = self._mask(r.mask)
            regions.append(d)
        return {TAG: "objects", "image_size": list(objs.image_size), "regions": regions}


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as e:  # a broken __repr__ must not stop the trace from saving
        text = f"<{type(value).__name__} (repr failed: {e})>"
    return text if len(text) <= _MAX_REPR_CHARS else text[:_MAX_REPR_CHARS] + "..."


# -- nodes to values ----------------------------------------------------------------------

class Decoder:
    """Turns nodes back into values, reading blobs from `store`.

    Each distinct blob reference is decoded once, so an image that many steps of a trace
    share comes back as one object, as it was when saved.

    Args:
        store: where the blobs are.
        exact: refuse the record-only tags (ndarray, repr): what the cache or the wire
            hands back must be a value an exact encoder could have written.
    """

    def __init__(self, store: BlobStore, *, exact: bool = False):
        self.store = store
        self.exact = exact
        self._images: dict[Hashable, Image.Image] = {}

    def decode(self, node: Any) -> Any:
        """The value of `node`.

        Raises:
            CodecError: the node is malformed, of an unknown type, or its blob is missing
                or does not hold what the node says.
        """
        try:
            return self._value(node)
        except RecursionError as e:
            raise CodecError("value is nested too deeply") from e

    def _value(self, node: Any, depth: int = 0) -> Any:
        if not isinstance(node, (list, dict)):
            if node is None or isinstance(node, (bool, int, float, str)):
                return node
            raise CodecError(f"not a value node: {type(node).__name__}")
        if depth > MAX_NESTING:
            raise CodecError(f"a value nests lists or dicts more than {MAX_NESTING} deep")
        if isinstance(node, list):
            return [self._value(v, depth + 1) for v in node]
        tag = node.get(TAG)
        if tag is None:
            return {k: self._value(v, depth + 1) for k, v in node.items()}
        try:
            if tag == "image":
                return self._image(node)
            if tag == "objects":
                return self._objects(node, depth)
            if tag == "tuple":
                return tuple(self._value(v, depth + 1) for v in _list(node["items"]))
            if tag == "float":
                return float(_str(node["value"]))
            if tag == "dict":
                return {_hashable(self._value(k, depth + 1)): self._value(v, depth + 1)
                        for k, v in _list(node["items"])}
            if not self.exact and tag == "ndarray":
                data = [self._value(v) for v in _list(node["data"])]
                return np.array(data, dtype=np.dtype(node["dtype"])).reshape(node["shape"])
            if not self.exact and tag == "repr":
                return ReprValue(str(node.get("type", "?")), str(node.get("repr", "")))
        except (CodecError, RecursionError):
            raise
        except BlobError as e:
            raise CodecError(str(e)) from e
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise CodecError(f"malformed {tag!r} value: {type(e).__name__}: {e}") from e
        raise CodecError(f"unknown value type {tag!r:.80}")

    def _image(self, node: dict[str, Any]) -> Image.Image:
        fmt = node.get("format", "png")
        mode = node.get("mode")
        size = None if node.get("size") is None else tuple(int(v) for v in _list(node["size"]))
        key, data, label = self.store.read(node, "image")
        key = (key, fmt, mode, size)
        if key in self._images:
            return self._images[key]
        if fmt == "raw":
            im = _raw_image(mode, size, data)
        elif fmt == "png":
            im = _read_png(data, label)
            # traces saved before the codec was one don't say: then whatever the PNG holds
            if (mode is not None and im.mode != mode) or (size is not None and im.size != size):
                raise CodecError(f"{label} is {im.mode} {im.size}, its node says {mode} {size}")
        else:
            raise CodecError(f"unknown image format {fmt!r:.40}")
        self._images[key] = im
        return im

    def _mask(self, ref: Any, w: int, h: int) -> np.ndarray:
        if not isinstance(ref, dict):
            raise CodecError(f"bad mask reference: {ref!r:.80}")
        fmt = ref.get("format", "png")
        _, data, label = self.store.read(ref, "mask")
        if fmt == "bits":
            bits = np.frombuffer(data, dtype=np.uint8)
            if bits.size != (w * h + 7) // 8:
                raise CodecError(f"{label} has {bits.size} bytes, a {w}x{h} mask needs "
                                 f"{(w * h + 7) // 8}")
            return np.unpackbits(bits, count=w * h).reshape(h, w).astype(bool)
        if fmt != "png":
            raise CodecError(f"unknown mask format {fmt!r:.40}")
        mask = np.asarray(_read_png(data, label).convert("L")) > 0
        if mask.shape != (h, w):
            raise CodecError(f"mask shape {mask.shape} does not fit image size {(w, h)}")
        return mask

    def _objects(self, node: dict[str, Any], depth: int) -> Objects:
        w, h = (int(v) for v in _list(node["image_size"]))
        regions = []
        for r in _list(node["regions"]):
            mask = None if r.get("mask") is None else self._mask(r["mask"], w, h)
            extra = self._value(r.get("extra", {}), depth + 1)
            if not isinstance(extra, dict):
                raise CodecError("a region's extra is not a dict")
            regions.append(Region(box=tuple(float(v) for v in _list(r["box"])), mask=mask,
                                  label=self._value(r.get("label"), depth + 1),
                                  score=self._value(r.get("score"), depth + 1), extra=extra))
        return Objects(tuple(regions), (w, h))


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _read_png(data: bytes | memoryview, label: str) -> Image.Image:
    # PngImageFile directly: only PNG is accepted, and PIL's decompression-bomb check
    # (which lives in Image.open) does not refuse a large image that we wrote ourselves.
    try:
        im = PngImagePlugin.PngImageFile(io.BytesIO(bytes(data)))
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise CodecError(f"could not read {label}: {e}") from e
    # A plain in-memory image, detached from the PNG reader and its info dict.
    return im.copy()


def _raw_image(mode: Any, size: tuple[int, ...] | None, blob: bytes | memoryview) -> Image.Image:
    if mode not in _RAW_BITS or size is None or len(size) != 2 or min(size) < 1:
        raise CodecError(f"bad raw image header: {mode!r:.20} {size}")
    w, h = size
    expected = (w * _RAW_BITS[mode] + 7) // 8 * h
    if len(blob) != expected:
        raise CodecError(f"raw image of {mode} {w}x{h} needs {expected} bytes, got {len(blob)}")
    return Image.frombytes(mode, (w, h), bytes(blob))
