"""The codec's tree: values to JSON nodes and back, blobs to a store (`visprog.values.blobs`).

One schema for the step cache, the Ray wire and saved traces. None, bools, ints, finite
floats, strings, lists and dicts with string keys are themselves (JSON keeps ints and floats
apart, and Python writes floats so they come back bit for bit). Everything else is a dict
tagged with "$type":

- ``image``: ``{"$type": "image", "mode": "RGB", "size": [W, H], <ref>}``, plus
  ``"format": "raw"`` when the blob is raw pixels instead of PNG. <ref> is what the blob
  store made: ``"blob": 0`` (bytes), ``"file": "run_files/img_0.png"`` or ``"blob": "img_0"``
  (documents).
- ``objects``: parallel lists, ``{"$type": "objects", "image_size": [W, H], "boxes":
  [[x1, y1, x2, y2], ...], "labels": [str or null, ...], "scores": [<node> or null (no
  model score), ...], "extra": {name: [<node>, ...]} (left out when empty), "absent": {name:
  [i, ...]} (the regions that lack a field, left out when none do), "masks": {"rows": [i,
  ...], <ref>} (left out when no region has a mask)}``: the masks of the listed regions as
  one blob of K x H x W bits (plus ``"format": "bits"`` for packed bits; a document's is a
  1-bit PNG of K*H rows). The form written before (``"regions": [{"box", "label", "score",
  "extra", "mask": <ref>}, ...]``, one blob per mask) still reads.
- ``video``: ``{"$type": "video", "times": [s, ...], "end": s, "sampling": {...}, "source":
  str, "frames": [<image node>, ...]}``: each frame an image node (a file of its own in a
  saved trace).
- ``tracks``: ``{"$type": "tracks", "ids": [int, ...], "labels": [str, ...], "times": [...],
  "end": s, "frame_size": [W, H], "boxes": [[[x1, y1, x2, y2] or null (not seen), ...] per
  frame], "scores": [[s or null, ...] per frame], "masks": {"rows": [[t, k], ...], <ref>}}``
  (masks left out when the tracks have none; the listed (frame, track) pairs' masks are one
  blob, as Objects' are).
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

from visprog.errors import CodecError
from visprog.values.blobs import BlobError, BlobStore, MissingBlob
from visprog.values.objects import ABSENT, Objects, Region
from visprog.values.video import Tracks, Video
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
        if isinstance(value, Video):
            return self._video(value, depth)
        if isinstance(value, Tracks):
            return self._tracks(value)
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
        """The reference to a bool array's blob: (H, W), or (K, H, W) stored as one image of
        K*H rows (packed bits, or a 1-bit PNG a person can look at)."""
        mask = np.asarray(mask, dtype=bool)
        bits = np.packbits(mask.ravel()).tobytes()
        if self.store.mask_format == "bits":
            return {"format": "bits", **self._put("mask", "bits", bits, str(mask.shape),
                                                  lambda: bits)}
        flat = mask.reshape(-1, mask.shape[-1])
        return self._put("mask", "png", bits, str(mask.shape), lambda: _png(Image.fromarray(flat)))

    def _objects(self, objs: Objects, depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {
            TAG: "objects", "image_size": list(objs.image_size), "boxes": objs.boxes.tolist(),
            "labels": list(objs.labels),
            "scores": [self._node(s) if has else None
                       for s, has in zip(objs.scores.tolist(), objs.has_score)]}
        if objs.extra:
            # values at the depth they had inside each region's extra dict
            node["extra"] = {name: [self._node(v, depth + 2) if has else None
                                    for v, has in zip(col, objs.has_extra(name))]
                             for name, col in objs.extra.items()}
            absent = {name: np.flatnonzero(~objs.has_extra(name)).tolist() for name in objs.extra}
            if any(absent.values()):
                node["absent"] = {name: rows for name, rows in absent.items() if rows}
        if objs.masks is not None:
            rows = np.flatnonzero(objs.has_mask)
            node["masks"] = {"rows": rows.tolist(), **self._mask(objs.masks[rows])}
        return node


    def _video(self, video: Video, depth: int) -> dict[str, Any]:
        return {TAG: "video", "times": video.times.tolist(), "end": video.end,
                "sampling": self._node(dict(video.sampling), depth + 1), "source": video.source,
                "frames": [self._image(f) for f in video.frames]}

    def _tracks(self, tracks: Tracks) -> dict[str, Any]:
        seen = tracks.seen
        node: dict[str, Any] = {
            TAG: "tracks", "ids": tracks.ids.tolist(), "labels": tracks.labels.tolist(),
            "times": tracks.times.tolist(), "end": tracks.end,
            "frame_size": list(tracks.frame_size),
            "boxes": [[b if s else None for b, s in zip(row, srow)]
                      for row, srow in zip(tracks.boxes.tolist(), seen.tolist())],
            "scores": [[v if s else None for v, s in zip(row, srow)]
                       for row, srow in zip(tracks.scores.tolist(), seen.tolist())]}
        if tracks.masks is not None:
            rows = np.argwhere(seen)
            node["masks"] = {"rows": rows.tolist()}
            if len(rows):
                node["masks"].update(self._mask(tracks.masks[rows[:, 0], rows[:, 1]]))
        return node


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
        missing: None: a blob file that is not there is an error. A list: such an image
            becomes a `ReprValue` that says so (`image 320x240 (file missing)`), such a mask
            is left out, and each missing file's path is appended to the list.
    """

    def __init__(self, store: BlobStore, *, exact: bool = False,
                 missing: list[str] | None = None):
        self.store = store
        self.exact = exact
        self.missing = missing
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
            if tag == "video":
                return self._video(node, depth)
            if tag == "tracks":
                return self._tracks(node)
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
        try:
            key, data, label = self.store.read(node, "image")
        except MissingBlob as e:
            if self.missing is None:
                raise
            if e.path not in self.missing:
                self.missing.append(e.path)
            shape = f" {size[0]}x{size[1]}" if size is not None and len(size) == 2 else ""
            missing_image = ReprValue("PIL.Image.Image", f"image{shape} (file missing)")
            return missing_image  # type: ignore[return-value]
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

    def _mask(self, ref: Any, w: int, h: int, count: int | None = None) -> np.ndarray:
        """The (H, W) mask a reference points to, or with `count` the (count, H, W) stack."""
        if not isinstance(ref, dict):
            raise CodecError(f"bad mask reference: {ref!r:.80}")
        shape = (h, w) if count is None else (count, h, w)
        size = h * w * (1 if count is None else count)
        what = f"a {w}x{h} mask" if count is None else f"{count} masks of {w}x{h}"
        fmt = ref.get("format", "png")
        try:
            _, data, label = self.store.read(ref, "mask")
        except MissingBlob as e:
            if self.missing is None:
                raise
            if e.path not in self.missing:
                self.missing.append(e.path)
            return None  # type: ignore[return-value]
        if fmt == "bits":
            bits = np.frombuffer(data, dtype=np.uint8)
            if bits.size != (size + 7) // 8:
                raise CodecError(f"{label} has {bits.size} bytes, {what} needs "
                                 f"{(size + 7) // 8}")
            return np.unpackbits(bits, count=size).reshape(shape).astype(bool)
        if fmt != "png":
            raise CodecError(f"unknown mask format {fmt!r:.40}")
        mask = np.asarray(_read_png(data, label).convert("L")) > 0
        if mask.shape != (size // w, w):
            raise CodecError(f"{label} of {mask.shape[1]}x{mask.shape[0]} pixels is not {what}")
        return mask.reshape(shape)

    def _objects(self, node: dict[str, Any], depth: int) -> Objects:
        w, h = (int(v) for v in _list(node["image_size"]))
        if "regions" in node:
            return self._objects_v1(node, w, h, depth)
        boxes = [_list(b) for b in _list(node["boxes"])]
        n = len(boxes)
        scores = [None if s is None else self._value(s, depth + 1)
                  for s in _list(node.get("scores", [None] * n))]
        extra = node.get("extra", {})
        absent = node.get("absent", {})
        if not isinstance(extra, dict) or not isinstance(absent, dict):
            raise CodecError("an Objects' extra or absent is not a dict")
        columns = {}
        for name, values in extra.items():
            col = [self._value(v, depth + 2) for v in _list(values)]
            for i in _rows(absent.get(name, []), len(col)):
                col[i] = ABSENT
            columns[name] = col
        masks = None
        if node.get("masks") is not None:
            ref = node["masks"]
            if not isinstance(ref, dict):
                raise CodecError(f"bad mask reference: {ref!r:.80}")
            rows = _rows(ref.get("rows"), n)
            stack = self._mask(ref, w, h, len(rows))
            stack.setflags(write=False)  # so Objects keeps it rather than a copy
            masks = stack if len(rows) == n else [None] * n
            for k, i in enumerate(rows if len(rows) < n else ()):
                masks[i] = stack[k]
        return Objects(boxes, (w, h), scores=scores, labels=_list(node.get("labels", [None] * n)),
                       masks=masks, extra=columns)

    def _objects_v1(self, node: dict[str, Any], w: int, h: int, depth: int) -> Objects:
        # the form written while Objects were a list of records (kept in old cache entries
        # and traces): one node per region, one blob per mask
        regions = []
        for r in _list(node["regions"]):
            mask = None if r.get("mask") is None else self._mask(r["mask"], w, h)
            extra = self._value(r.get("extra", {}), depth + 1)
            if not isinstance(extra, dict):
                raise CodecError("a region's extra is not a dict")
            regions.append(Region(box=tuple(float(v) for v in _list(r["box"])), mask=mask,
                                  label=self._value(r.get("label"), depth + 1),
                                  score=self._value(r.get("score"), depth + 1), extra=extra))
        return Objects.from_regions(regions, (w, h))


    def _video(self, node: dict[str, Any], depth: int) -> Any:
        frames = [self._image(_dict(f)) for f in _list(node["frames"])]
        sampling = self._value(node.get("sampling", {}), depth + 1)
        if not isinstance(sampling, dict):
            raise CodecError("a video's sampling is not a dict")
        times = [_number(t) for t in _list(node["times"])]
        if any(isinstance(f, ReprValue) for f in frames):  # a trace whose files are gone
            return ReprValue("visprog.values.video.Video",
                             f"video of {len(frames)} frames (files missing)")
        return Video(frames, times, end=_number(node["end"]), sampling=sampling,
                     source=_str(node.get("source", "")))

    def _tracks(self, node: dict[str, Any]) -> Tracks:
        w, h = (int(v) for v in _list(node["frame_size"]))
        ids = [int(i) for i in _list(node["ids"])]
        times = [_number(t) for t in _list(node["times"])]
        t, k = len(times), len(ids)
        boxes = np.full((t, k, 4), np.nan)
        rows = _list(node["boxes"])
        if len(rows) != t or any(len(_list(r)) != k for r in rows):
            raise CodecError(f"tracks' boxes are not {t} frames x {k} tracks")
        for i, row in enumerate(rows):
            for j, box in enumerate(row):
                if box is not None:
                    boxes[i, j] = [_number(v) for v in _list(box)]
        scores = np.array([[np.nan if v is None else _number(v) for v in _list(r)]
                           for r in _list(node["scores"])], dtype=np.float64).reshape(t, k)
        masks = None
        if node.get("masks") is not None:
            ref = _dict(node["masks"])
            pairs = [_list(p) for p in _list(ref.get("rows"))]
            if not all(len(p) == 2 and all(type(v) is int for v in p) and 0 <= p[0] < t
                       and 0 <= p[1] < k for p in pairs):
                raise CodecError(f"bad track mask rows {pairs!r:.80}")
            masks = np.zeros((t, k, h, w), dtype=bool)
            if pairs:
                stack = self._mask(ref, w, h, len(pairs))
                if stack is not None:
                    idx = np.array(pairs)
                    masks[idx[:, 0], idx[:, 1]] = stack
        return Tracks(ids, _list(node["labels"]), times, end=_number(node["end"]),
                      frame_size=(w, h), boxes=boxes, scores=scores, masks=masks)


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _rows(value: Any, n: int) -> list[int]:
    """Region numbers listed in a node: ints in 0..n-1, increasing."""
    rows = _list(value)
    if not all(type(i) is int for i in rows) or rows != sorted(set(rows)) \
            or (rows and not 0 <= rows[0] <= rows[-1] < n):
        raise CodecError(f"bad region numbers {rows!r:.80} for {n} regions")
    return rows


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
