"""The one value codec: every value type through every blob store, exact versus record
encoding, the schema the cache, the wire and the trace share, and malformed input."""
from __future__ import annotations

import hashlib
import json
import math
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from visprog.engine.cache import MISS, DiskCache
from visprog.hosting.client import decode_request, encode_request
from visprog.traces.json_io import save_trace
from visprog.traces.records import Trace
from visprog.values import Objects, Region, codec
from visprog.values.codec import (BytesBlobs, CodecError, Decoder, DocumentBlobs, Encoder,
                                  ReprValue)

load_trace = Trace.load_json


def rgb(w: int = 8, h: int = 6, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def masked_objects() -> Objects:
    m1 = np.zeros((6, 8), bool)
    m1[1:3, 2:7] = True
    m2 = np.ones((6, 8), bool)
    m2[5, 7] = False  # the last bit matters
    return Objects.from_regions((
        Region(box=(0.1, 0.2, 3.3333333333333335, 5.999999), mask=m1, label="cat",
               score=0.87654321, extra={"n": 3, "ok": True, "none": None, "s": "täg"}),
        Region(box=(1 / 3, 0, 8, 6), mask=m2, label=None, score=None),
        Region(box=(2, 2, 4, 4), label="dog", score=np.float32(0.25)),
    ), (8, 6))


VALUES = {
    "rgb": rgb(), "1x1": rgb(1, 1), "rgba": rgb().convert("RGBA"), "gray": rgb().convert("L"),
    "la": rgb().convert("LA"), "bilevel": rgb(13, 5).convert("1"),
    "objects": masked_objects(), "empty objects": Objects.empty((640, 480)),
    "text": "a red car", "empty text": "", "unicode": "café 🐱 \"q\" {b} \n\t\x00",
    "int": 3, "big int": -(10 ** 40), "float": 0.1 + 0.2, "-0.0": -0.0, "inf": math.inf,
    "-inf": -math.inf, "nan": math.nan, "tiny float": 5e-324, "true": True, "false": False,
    "none": None, "text list": ["cat", "dog"], "tuple": ("a", ("b",)), "empty list": [],
    "dict": {"a": 1, "b": [2.5, None]}, "dict with $type": {"$type": "image", "x": 1},
    "numpy scalars": [np.int64(7), np.float64(0.5), np.bool_(True)],
    "mixed": [rgb(seed=3), masked_objects(), {"k": (1, rgb(2, 2))}],
}


def same(a, b):
    if isinstance(a, (np.integer, np.floating, np.bool_)):
        a = a.item()
    if isinstance(a, Image.Image):
        assert isinstance(b, Image.Image) and (a.mode, a.size, a.tobytes()) == (b.mode, b.size,
                                                                                 b.tobytes())
    elif isinstance(a, Objects):
        assert isinstance(b, Objects) and a.image_size == b.image_size and len(a) == len(b)
        for ra, rb in zip(a, b):
            assert ra.box == rb.box and ra.label == rb.label and dict(ra.extra) == dict(rb.extra)
            assert ra.score == rb.score and type(rb.score) in (float, type(None))
            assert (ra.mask is None) == (rb.mask is None)
            if ra.mask is not None:
                assert rb.mask.dtype == bool and np.array_equal(ra.mask, rb.mask)
    elif isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b)
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert type(a) is type(b) and a == b
        if isinstance(a, float):
            assert math.copysign(1, a) == math.copysign(1, b)  # -0.0 stays -0.0


def _bytes_store(raw):
    return lambda tmp_path: BytesBlobs("raw" if raw else "png")


STORES = {
    "bytes png (cache)": _bytes_store(False),
    "bytes raw (wire)": _bytes_store(True),
    "document files": lambda tmp_path: DocumentBlobs(tmp_path, folder=tmp_path / "files"),
    "document inline": lambda tmp_path: DocumentBlobs(tmp_path),
}


def through(store, value, *, exact=True):
    """Encode into `store`, through JSON text (the tree must be plain JSON), and back."""
    node = json.loads(json.dumps(Encoder(store, exact=exact).encode(value), allow_nan=False))
    if isinstance(store, DocumentBlobs):  # read back as a loader would: a fresh store
        store = DocumentBlobs(store.base_dir, table=json.loads(json.dumps(store.table)))
    return Decoder(store, exact=exact).decode(node)


@pytest.mark.parametrize("store", list(STORES.values()), ids=list(STORES))
@pytest.mark.parametrize("value", list(VALUES.values()), ids=list(VALUES))
def test_every_value_through_every_store(tmp_path, store, value):
    same(value, through(store(tmp_path), value))


@pytest.mark.parametrize("raw", [False, True], ids=["png", "raw"])
@pytest.mark.parametrize("value", list(VALUES.values()), ids=list(VALUES))
def test_every_value_as_bytes_keeps_its_digest(value, raw):
    back = codec.decode(codec.encode(value, raw_images=raw))
    same(value, back)
    assert codec.digest(back) == codec.digest(value)


def test_one_schema_for_cache_wire_and_trace(tmp_path):
    """The same value is the same tree everywhere; only the blob references differ."""
    value = {"answer": ("yes", 2, 0.5, math.nan), "found": masked_objects(), "image": rgb()}

    def without_refs(node):
        if isinstance(node, list):
            return [without_refs(v) for v in node]
        if isinstance(node, dict):
            return {k: without_refs(v) for k, v in node.items()
                    if k not in ("blob", "file", "format")}
        return node

    def header_tree(data):
        (n,) = struct.unpack_from("<I", data, 4)
        return json.loads(data[8:8 + n])["v"]

    cache = header_tree(codec.encode(value))
    wire = header_tree(codec.encode(value, raw_images=True))
    path = save_trace(Trace("X=Y", inputs={"v": value}), tmp_path / "t.json")
    trace = json.loads(path.read_text())["inputs"]["v"]
    assert without_refs(cache) == without_refs(wire) == without_refs(trace)
    assert wire["image"]["format"] == "raw" and "format" not in cache["image"]
    # the Objects' masks are one blob: packed bits, or a PNG a person can look at
    assert cache["found"]["masks"]["format"] == "bits" and cache["found"]["masks"]["rows"] == [0, 1]
    assert trace["found"]["masks"]["file"].endswith(".png")
    assert cache["found"]["scores"][1] is None  # no model score: null, as before
    # plain JSON where JSON can say it: a trace stays readable
    assert cache["answer"] == {"$type": "tuple", "items": ["yes", 2, 0.5,
                                                           {"$type": "float", "value": "nan"}]}


def test_the_wire_carries_the_codecs_bytes():
    calls = [{"image": rgb(), "box": masked_objects(), "n": 2}]
    data = encode_request(calls)
    assert data.startswith(codec.MAGIC) and b'"format":"raw"' in data
    same(calls, decode_request(data))


def test_one_image_in_many_calls_crosses_the_wire_once():
    """A batch's calls often share their image (four questions about one photo): the
    request carries its pixels once, and the replica gets one image for them all. Equal
    pixels in another object still travel apart (no hashing on the wire)."""
    photo, twin = rgb(64, 48, seed=1), rgb(64, 48, seed=1)
    calls = [{"image": photo, "q": "a"}, {"image": photo, "q": "b"}, {"image": twin, "q": "c"}]
    data = encode_request(calls)
    assert len(data) < 2 * 64 * 48 * 3 + 1000  # two blobs of pixels, not three
    back = decode_request(data)
    same(calls, back)
    assert back[0]["image"] is back[1]["image"] and back[2]["image"] is not back[0]["image"]


# -- exact (cache, wire) versus record (trace) -----------------------------------------------

class Opaque:
    def __repr__(self):
        return "<opaque>"


@pytest.mark.parametrize("value, kept", [
    (Opaque(), lambda b: isinstance(b, ReprValue) and b.text == "<opaque>"
     and b.type_name.endswith("test_codec.Opaque")),
    (np.arange(6, dtype=np.float32).reshape(2, 3),
     lambda b: b.dtype == np.float32 and b.tolist() == [[0, 1, 2], [3, 4, 5]]),
    (np.array([1.0, math.nan]), lambda b: b[0] == 1.0 and math.isnan(b[1])),
    ({1: "one", (2, 3): "pair"}, lambda b: b == {1: "one", (2, 3): "pair"}),
    (Image.new("CMYK", (3, 2), (1, 2, 3, 4)), lambda b: b.mode == "RGB" and b.size == (3, 2)),
    (Image.new("P", (3, 2), 5), lambda b: b.mode == "P" and b.convert("RGB").tobytes()
     == Image.new("P", (3, 2), 5).convert("RGB").tobytes()),  # PNG may renumber the palette
    (np.zeros(10_000), lambda b: isinstance(b, ReprValue)),  # too big for a record
], ids=["object", "array", "array with nan", "other keys", "cmyk", "palette", "big array"])
def test_a_record_keeps_what_an_exact_encoding_refuses(tmp_path, value, kept):
    with pytest.raises(TypeError):
        Encoder(BytesBlobs(), exact=True).encode(value)
    with pytest.raises(TypeError):
        codec.encode(value)
    assert kept(through(DocumentBlobs(tmp_path), value, exact=False))


def test_an_exact_decoder_refuses_record_only_nodes():
    for node in ({"$type": "repr", "type": "x", "repr": "y"},
                 {"$type": "ndarray", "dtype": "<i2", "shape": [1], "data": [1]}):
        with pytest.raises(CodecError, match="unknown value type"):
            Decoder(BytesBlobs(), exact=True).decode(node)
        assert Decoder(BytesBlobs()).decode(node) is not None


def test_too_deep_is_a_type_error_not_a_crash():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(TypeError, match="nested too deeply"):
        codec.encode(deep)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_the_codec_nests_values_as_deep_as_the_limit_and_no_deeper():
    """Values are checked where they come in (MAX_NESTING); the codec is the backstop: an
    exact encoding refuses deeper ones (not cached), a record keeps a note in their place,
    and a decoder refuses them before any recursion runs out."""
    from visprog.values import MAX_NESTING

    ok = nested(MAX_NESTING)
    assert codec.decode(codec.encode(ok)) == ok
    deep = nested(MAX_NESTING + 2)
    with pytest.raises(TypeError, match=f"more than {MAX_NESTING} deep"):
        codec.encode(deep)
    node = Encoder(BytesBlobs(), exact=False).encode(deep)
    innermost = node
    while isinstance(innermost, list):
        innermost = innermost[0]
    assert innermost["$type"] == "repr" and f"more than {MAX_NESTING}" in innermost["repr"]
    for node in (json.loads(json.dumps(deep)), {"a": nested(MAX_NESTING + 1)},
                 {"$type": "tuple", "items": [nested(MAX_NESTING + 1)]}):
        with pytest.raises(CodecError, match=f"more than {MAX_NESTING} deep"):
            Decoder(BytesBlobs()).decode(node)


# -- documents: each image once, one object per image ---------------------------------------

def test_a_document_stores_each_image_once_and_shares_it_on_reading(tmp_path):
    im = rgb(seed=5)
    objs = masked_objects()
    store = DocumentBlobs(tmp_path, folder=tmp_path / "f")
    enc = Encoder(store, exact=False)
    nodes = [enc.encode(v) for v in (im, im.copy(), [im, objs], objs, rgb(seed=6))]
    files = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert len(files) == 2 + 1  # two distinct images, one blob of the Objects' masks
    dec = Decoder(DocumentBlobs(tmp_path))
    values = [dec.decode(n) for n in nodes]
    assert values[0] is values[1] is values[2][0] and values[4] is not values[0]
    same(im, values[0])


# -- malformed input ------------------------------------------------------------------------

def _bytes_with(tree, blobs=()):
    header = json.dumps({"v": tree, "blobs": [len(b) for b in blobs]}).encode()
    return codec.MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)


@pytest.mark.parametrize("tree, blobs, message", [
    ({"$type": "martian"}, (), "unknown value type 'martian'"),
    ({"$type": "tuple", "items": 3}, (), "malformed 'tuple' value"),
    ({"$type": "tuple"}, (), "malformed 'tuple' value: KeyError"),
    ({"$type": "float", "value": 1}, (), "malformed 'float' value"),
    ({"$type": "float", "value": "many"}, (), "malformed 'float' value"),
    ({"$type": "image", "mode": "RGB", "size": [2, 2], "blob": 5}, (b"x",),
     "refers to blob 5, but there are 1"),
    ({"$type": "image", "mode": "RGB", "size": [2, 2], "blob": True}, (b"x",), "refers to blob"),
    ({"$type": "image", "mode": "RGB", "size": [2, 2], "blob": 0}, (b"not a png",),
     "could not read image blob 0"),
    ({"$type": "image", "mode": "RGB", "size": [2, 2], "blob": 0, "format": "gif"}, (b"x",),
     "unknown image format 'gif'"),
    ({"$type": "image", "mode": "RGB", "size": [2, 2], "blob": 0, "format": "raw"}, (b"x" * 11,),
     "needs 12 bytes, got 11"),
    ({"$type": "image", "mode": "P", "size": [2, 2], "blob": 0, "format": "raw"}, (b"x" * 4,),
     "bad raw image header"),
    ({"$type": "objects", "image_size": [8, 6], "regions": [
        {"box": [0, 0, 1, 1], "mask": {"format": "bits", "blob": 0}}]}, (b"\x00" * 5,),
     "has 5 bytes, a 8x6 mask needs 6"),
    ({"$type": "objects", "image_size": [8, 6], "regions": [
        {"box": [0, 0, 1, 1], "mask": {"format": "jpeg", "blob": 0}}]}, (b"x",),
     "unknown mask format"),
    ({"$type": "objects", "image_size": [8, 6], "regions": [{"box": [0, 0, 1]}]}, (),
     "malformed 'objects' value"),
    ({"$type": "objects", "image_size": [8, 6], "regions": [{"box": [0, 0, 1, 1], "extra": 3}]},
     (), "extra is not a dict"),
    ({"$type": "objects", "image_size": [0, 6], "regions": []}, (), "malformed 'objects'"),
    ({"$type": "dict", "items": [[[1, [2]], 3]]}, (), None),  # list keys become tuples: fine
])
def test_malformed_trees_give_a_clear_codec_error(tree, blobs, message):
    data = _bytes_with(tree, blobs)
    if message is None:
        assert codec.decode(data) == {(1, (2,)): 3}
        return
    with pytest.raises(CodecError, match=message) as info:
        codec.decode(data)
    assert isinstance(info.value, ValueError)


def test_a_png_that_disagrees_with_its_node_is_refused():
    store = BytesBlobs()
    node = Encoder(store).encode(rgb())
    for key, wrong in (("mode", "L"), ("size", [6, 8])):
        data = _bytes_with({**node, key: wrong}, store.blobs)
        with pytest.raises(CodecError, match=r"image blob 0 is RGB \(8, 6\), its node says"):
            codec.decode(data)


def test_the_old_bytes_format_is_refused_and_old_cache_entries_are_quiet_misses(tmp_path):
    payload = b'{"v":{"t":"str","v":"x"},"blobs":[]}'
    old = b"VPC1" + struct.pack("<I", len(payload)) + payload
    with pytest.raises(CodecError, match="bad magic"):
        codec.decode(old)
    cache = DiskCache(tmp_path)
    path = cache.path_for("ab" + "0" * 62)
    path.parent.mkdir(parents=True)
    # the disk cache's own header as the version before the one codec wrote it
    path.write_bytes(struct.pack("<4sHQ32s", b"VPSC", 1, len(old), hashlib.sha256(old).digest())
                     + old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a miss, not a warning
        assert cache.get("ab" + "0" * 62) is MISS
    assert not path.exists() and cache.errors == 0
    assert cache.put("ab" + "0" * 62, "x") and cache.get("ab" + "0" * 62) == "x"


def test_a_trace_with_a_broken_value_names_its_file(tmp_path):
    path = save_trace(Trace("X=Y", inputs={"IMAGE": rgb()}), tmp_path / "t.json")
    doc = json.loads(path.read_text())
    doc["inputs"]["IMAGE"]["size"] = [3, 3]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"t\.json: image file .* its node says RGB \(3, 3\)"):
        load_trace(path)


def test_a_trace_keeps_text_that_utf8_cannot_write(tmp_path):
    odd = "half an emoji \ud83d and café"
    path = save_trace(Trace("X=Y", inputs={"t": odd}, result=[odd]), tmp_path / "t.json")
    loaded = load_trace(path)
    assert loaded.inputs["t"] == odd and loaded.result == [odd]
    plain = save_trace(Trace("X=Y", inputs={"t": "café"}), tmp_path / "p.json")
    assert "café" in plain.read_text(encoding="utf-8")  # readable text stays unescaped
