"""The one value codec: values to bytes or JSON documents and back, and content hashes of
values (cache keys).

Every place a value leaves the process uses it: the step cache (bytes on disk), the Ray
wire (requests and replies) and saved traces (JSON documents). All three write one tree of
JSON nodes (`visprog.values.tree`) and differ only in where the blobs (pixels, mask bits)
go, a store of `visprog.values.blobs` (bytes after a header, with images as PNG for the
cache or raw pixels for the wire; files beside a document or base64 in it), and in how
strict the encoder is (exact for the cache and the wire, a record for traces).

`encode`/`decode` wrap one value as bytes for the cache and the wire:

    b"VPC2" | u32 header length | header JSON (ascii) | blob 0 | blob 1 | ...

with the header `{"v": <node>, "blobs": [len0, len1, ...]}`. (VPC1, before the codec was
one, tagged every node; its entries are not read back: the step cache's file version says
so, and they are recomputed.) No pickle anywhere: a cache file written by someone else must
never be able to run code when it is read.

`digest(value)` is a separate, faster path: it hashes raw pixel bytes and mask bytes
rather than encoding, because the cache key is computed for every step, hit or miss.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import numpy as np
from PIL import Image

from visprog.values.blobs import BlobError, BlobStore, BytesBlobs, DocumentBlobs
from visprog.values.objects import ABSENT, Objects
from visprog.values.video import Tracks, Video
from visprog.values.tree import (PNG_COMPRESS_LEVEL, PNG_MODES, TAG, CodecError, Decoder,
                                 Encoder, ReprValue)

__all__ = ["BlobError", "BlobStore", "BytesBlobs", "CodecError", "Decoder", "DocumentBlobs",
           "Encoder", "MAGIC", "PNG_COMPRESS_LEVEL", "PNG_MODES", "ReprValue", "TAG", "decode",
           "detach", "digest", "encode"]

MAGIC = b"VPC2"
_HEADER_LEN = struct.Struct("<I")


# -- one value as bytes (the step cache, the Ray wire) ------------------------------------

def encode(value: Any, *, raw_images: bool = False) -> bytes:
    """Serialise a SPEC value (Image, Objects, str, int, float, bool, None, lists/tuples,
    dicts with str keys) exactly.

    Images are stored as PNG (compact: the disk cache), or with `raw_images` as their pixel
    bytes (about 50x faster to write and read than PNG for a photo, and 2-3x larger: for
    sending values to a model host, where time matters more than bytes).

    Raises:
        TypeError: the value (or something inside it) is of a kind this codec does not
            store exactly; the caller then simply doesn't cache it.
    """
    store = BytesBlobs("raw" if raw_images else "png")
    tree = Encoder(store, exact=True).encode(value)
    header = json.dumps({"v": tree, "blobs": [len(b) for b in store.blobs]},
                        ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    return b"".join([MAGIC, _HEADER_LEN.pack(len(header)), header, *store.blobs])


def decode(data: bytes) -> Any:
    """The value `encode` wrote.

    Raises:
        CodecError: (a ValueError) the bytes are not a well-formed encoding (truncated, wrong
            magic, inconsistent lengths, an unknown node). Never runs code from the data.
    """
    view = memoryview(data)
    if len(view) < len(MAGIC) + _HEADER_LEN.size or bytes(view[:4]) != MAGIC:
        raise CodecError("not a visprog value (bad magic or too short)")
    (hlen,) = _HEADER_LEN.unpack_from(view, 4)
    start = 4 + _HEADER_LEN.size
    if start + hlen > len(view):
        raise CodecError("value is truncated (header)")
    try:
        header = json.loads(bytes(view[start:start + hlen]).decode("ascii"))
        lengths = header["blobs"]
        tree = header["v"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CodecError(f"value has a bad header: {e}") from e
    if not isinstance(lengths, list) or not all(type(n) is int and n >= 0 for n in lengths):
        raise CodecError("value has bad blob lengths")
    blobs, pos = [], start + hlen
    for n in lengths:
        blobs.append(view[pos:pos + n])
        pos += n
    if pos != len(view):
        raise CodecError(f"value length mismatch: expected {pos} bytes, got {len(view)}")
    return Decoder(BytesBlobs(blobs=blobs), exact=True).decode(tree)


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
    elif isinstance(value, Video):
        _feed_bytes(h, b"V", _video_digest(value))
    elif isinstance(value, Tracks):
        _feed_tracks(h, value)
    elif isinstance(value, np.ndarray):
        _feed_bytes(h, b"A", f"{value.dtype.str}{value.shape}".encode("ascii"))
        _feed_bytes(h, b"a", np.ascontiguousarray(value).data.cast("B"))
    else:
        raise TypeError(f"can't hash a value of type {type(value).__name__} for the cache")


def _feed_objects(h: "hashlib._Hash", objs: Objects) -> None:
    # Region by region, as when Objects were a list of records: the step-cache keys of
    # values hashed then must not change (tests/fixtures/objects_v1).
    w, h_ = objs.image_size
    h.update(b"O" + _U64.pack(w) + _U64.pack(h_) + _U64.pack(len(objs)))
    for i, box in enumerate(objs.boxes.tolist()):
        h.update(b"r" + struct.pack("<4d", *box))
        if objs.has_mask[i]:
            _feed_bytes(h, b"m1", np.ascontiguousarray(objs.masks[i]).data.cast("B"))
        else:
            h.update(b"m0")
        _feed(h, objs.labels[i])
        _feed(h, float(objs.scores[i]) if objs.has_score[i] else None)
        _feed(h, objs.region_extra(i))


def _video_digest(video: Video) -> bytes:
    """A video's content hash: its frames' pixels, their times, where it ends and how it was
    sampled (not where it came from). Computed once per Video (it never changes): a long
    clip is many megabytes of pixels, and every step that reads it needs its key."""
    if video._digest is None:
        h = hashlib.sha256()
        _feed(h, video.times.tolist())
        _feed(h, float(video.end))
        _feed(h, dict(video.sampling))
        for frame in video.frames:
            _feed(h, frame)
        object.__setattr__(video, "_digest", h.digest())
    return video._digest


def _feed_tracks(h: "hashlib._Hash", tracks: Tracks) -> None:
    h.update(b"K")
    _feed(h, tracks.ids.tolist())
    _feed(h, tracks.labels.tolist())
    _feed(h, tracks.times.tolist())
    _feed(h, float(tracks.end))
    _feed(h, list(tracks.frame_size))
    _feed(h, tracks.boxes)
    _feed(h, tracks.scores)
    if tracks.masks is None:
        h.update(b"m0")
    else:
        _feed_bytes(h, b"m1", np.packbits(tracks.masks.ravel()).tobytes())


# -- detaching ----------------------------------------------------------------------------

def detach(value: Any) -> Any:
    """A copy of `value` that shares no mutable object with it.

    Images are copied; lists/tuples are rebuilt; Objects are immutable (read-only arrays)
    except for mutable values in their extra fields, which are copied. Videos and Tracks
    are immutable and shared (a clip's frames are many megabytes; the tools that draw on a
    frame copy it first).
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
        # every array of Objects is read-only; only extra fields can hold mutable values
        if all(_immutable(v) for col in value.extra.values() for v in col):
            return value
        return value.with_extra(**{
            name: [detach(v) if has else ABSENT for v, has in zip(col, value.has_extra(name))]
            for name, col in value.extra.items()})
    return value


def _immutable(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.generic))
