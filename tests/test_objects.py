"""Objects as parallel arrays: filtering by index lists, slices and boolean masks, Region
views, scores that are always numbers, masks, extra fields with gaps, building, joining,
equality, bad input, and the codec's form of them (round trips and malformed nodes)."""
from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
from PIL import Image

from visprog.traces.json_io import save_trace
from visprog.traces.records import Trace
from visprog.values import Objects, Region, codec
from visprog.values.codec import CodecError
from visprog.values.objects import ABSENT

W, H = 20, 10


def masks3() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((H, W), bool)
    a[1:4, 1:5] = True
    c = np.zeros((H, W), bool)
    c[6:9, 12:19] = True
    c[8, 18] = False
    return a, c


def four() -> Objects:
    """a: masked, scored; b: no mask, no score; c: masked, scored; d: no label, no score.
    `depth` on all, `note` on a and c only (a gap), `pts` a nested value."""
    a, c = masks3()
    return Objects.from_regions([
        Region(box=(1, 1, 5, 4), mask=a, label="cat", score=0.9,
               extra={"depth": 0.2, "note": "x", "pts": [(1, 2)]}),
        Region(box=(6, 0, 10, 5), label="dog", extra={"depth": 0.5, "pts": []}),
        Region(box=(12, 6, 19, 9), mask=c, label="cat", score=0.3,
               extra={"depth": 0.1, "note": None, "pts": [(3, 4), (5, 6)]}),
        Region(box=(0, 8, 2, 10), extra={"depth": 0.9, "pts": []}),
    ], (W, H))


# -- filtering ----------------------------------------------------------------------------

def test_filter_by_score_label_area_and_extra():
    objs = four()
    # regions without a model score count as 1.0: a score filter keeps them
    assert objs[objs.scores > 0.5].labels.tolist() == ["cat", "dog", None]
    assert objs[objs.has_score].labels.tolist() == ["cat", "cat"]
    assert objs[objs.labels == "cat"].scores.tolist() == [0.9, 0.3]
    assert objs[objs.areas >= 20].labels.tolist() == ["dog", "cat"]
    near = objs[objs.extra["depth"] < 0.3]
    assert near.extra["depth"].tolist() == [0.2, 0.1] and near.labels.tolist() == ["cat", "cat"]
    assert objs[objs.has_mask].masks.shape == (2, H, W)


ROWS = {  # index -> the rows (of four()) it selects
    "slice": (slice(1, 3), [1, 2]),
    "reversed": (slice(None, None, -1), [3, 2, 1, 0]),
    "step": (slice(0, None, 2), [0, 2]),
    "empty slice": (slice(2, 2), []),
    "list": ([3, 0], [3, 0]),
    "negative": ([-1, -4], [3, 0]),
    "repeated": ([1, 1], [1, 1]),
    "array": (np.array([2, 1], dtype=np.int32), [2, 1]),
    "uint array": (np.array([0], dtype=np.uint8), [0]),
    "tuple": ((0, 2), [0, 2]),
    "empty list": ([], []),
    "bool list": ([False, True, False, True], [1, 3]),
    "bool array": (np.array([True, False, True, False]), [0, 2]),
    "all false": (np.zeros(4, bool), []),
}


@pytest.mark.parametrize("name", ROWS)
def test_every_column_follows_the_index(name):
    objs = four()
    index, rows = ROWS[name]
    sub = objs[index]
    assert isinstance(sub, Objects) and sub.image_size == (W, H) and len(sub) == len(rows)
    assert sub.boxes.shape == (len(rows), 4) and np.array_equal(sub.boxes, objs.boxes[rows])
    assert sub.scores.tolist() == objs.scores[rows].tolist()
    assert sub.has_score.tolist() == objs.has_score[rows].tolist()
    assert sub.labels.tolist() == objs.labels[rows].tolist()
    assert sub.has_mask.tolist() == objs.has_mask[rows].tolist()
    # the same regions, each with its own mask and extra fields
    assert list(sub) == [objs[i] for i in rows]
    if sub.has_mask.any():
        assert np.array_equal(sub.masks, objs.masks[rows])
    else:
        assert sub.masks is None  # none of the rows has a mask
    # a field no row has is gone; a field every row has has no gap
    assert set(sub.extra) == {k for k in objs.extra if objs.has_extra(k)[rows].any()}
    for k in sub.extra:
        assert sub.has_extra(k).tolist() == objs.has_extra(k)[rows].tolist()
    assert sub == Objects.from_regions([objs[i] for i in rows], (W, H))


@pytest.mark.parametrize("index,error,match", [
    (4, IndexError, "out of range"),
    (-5, IndexError, "out of range"),
    ([0, 4], IndexError, "out of range"),
    ([-5], IndexError, "out of range"),
    (np.array([True, False]), IndexError, "boolean index of length 2 for 4"),
    ([True, False, True], IndexError, "boolean index of length 3"),
    (True, IndexError, "single bool"),
    (np.bool_(False), IndexError, "single bool"),
    (np.zeros((2, 2), int), IndexError, "1-D"),
    (np.array(1), IndexError, "1-D"),
    ([0.5, 1.0], IndexError, "float64"),
    (["a"], IndexError, "<U1"),
    ("depth", TypeError, "extra"),
])
def test_bad_indices_are_refused(index, error, match):
    with pytest.raises(error, match=match):
        four()[index]


def test_int_indexing_and_iteration_give_region_views():
    objs = four()
    a, c = masks3()
    first, second, last = objs[0], objs[np.int64(1)], objs[-1]
    assert first == Region(box=(1.0, 1.0, 5.0, 4.0), mask=a, label="cat", score=0.9,
                           extra={"depth": 0.2, "note": "x", "pts": [(1, 2)]})
    # no model score: the view says None while the array holds 1.0; no mask: None
    assert second.score is None and objs.scores[1] == 1.0 and second.mask is None
    assert "note" not in second.extra and objs.extra["note"][1] is None
    assert objs[2].extra["note"] is None  # a None value is not a missing one
    assert last.label is None and type(first.score) is float and first.box == (1.0, 1.0, 5.0, 4.0)
    assert [r.label for r in objs] == ["cat", "dog", "cat", None] and len(list(objs)) == 4
    assert first.area == 12.0 and objs.areas.tolist() == [12.0, 20.0, 21.0, 4.0]
    assert first in objs and objs.index(objs[2]) == 2 and Region((0, 0, 1, 1)) not in objs
    # a view's mask is read-only; changing a view's extra dict leaves the Objects alone
    assert not first.mask.flags.writeable and np.array_equal(first.mask, a)
    first.extra["depth"] = 99
    assert objs[0].extra["depth"] == 0.2


def test_empty_objects():
    for empty in (Objects.empty((W, H)), Objects([], (W, H)), four()[[]], four()[4:]):
        assert len(empty) == 0 and list(empty) == [] and empty.masks is None
        assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)
        assert empty.labels.shape == (0,) and empty.extra == {}
        assert empty[np.zeros(0, bool)] == empty == empty[:] == Objects.empty((W, H))
        assert not empty.union_mask().any() and empty.union_mask().shape == (H, W)
        assert empty.to_list() == [] and empty.areas.shape == (0,)
        with pytest.raises(IndexError):
            empty[0]


# -- scores, masks, extra fields ----------------------------------------------------------

def test_scores_are_always_numbers_and_unscored_is_remembered():
    unscored = Objects([(0, 0, 2, 2), (1, 1, 3, 3)], (W, H), labels=["a", "b"])
    assert unscored.scores.dtype == np.float64 and unscored.scores.tolist() == [1.0, 1.0]
    assert unscored.has_score.tolist() == [False, False]
    assert [r.score for r in unscored] == [None, None]
    some = Objects([(0, 0, 2, 2), (1, 1, 3, 3)], (W, H), scores=[np.float32(0.25), None])
    assert some.scores.tolist() == [0.25, 1.0] and some.has_score.tolist() == [True, False]
    # a model's 1.0 and "no score" are different values (and hash differently)
    certain = Objects([(0, 0, 2, 2), (1, 1, 3, 3)], (W, H), labels=["a", "b"], scores=[1.0, 1.0])
    assert certain != unscored and codec.digest(certain) != codec.digest(unscored)
    assert unscored.to_list()[0] == {"box": [0.0, 0.0, 2.0, 2.0], "label": "a"}


def test_masks_stack_with_boxes_filled_in_for_regions_without_one():
    objs = four()
    a, c = masks3()
    assert objs.masks.shape == (4, H, W) and objs.masks.dtype == bool
    assert objs.has_mask.tolist() == [True, False, True, False]
    assert np.array_equal(objs.masks[0], a) and np.array_equal(objs.masks[2], c)
    box_b = np.zeros((H, W), bool)
    box_b[0:5, 6:10] = True
    assert np.array_equal(objs.masks[1], box_b) and np.array_equal(objs.region_mask(1), box_b)
    assert np.array_equal(objs.union_mask(), objs.masks.any(axis=0))
    boxes_only = Objects(objs.boxes, (W, H))
    assert boxes_only.masks is None and boxes_only.has_mask.tolist() == [False] * 4
    assert np.array_equal(boxes_only.region_mask(1), box_b)
    assert np.array_equal(boxes_only.union_mask(), np.any([boxes_only.region_mask(i)
                                                           for i in range(4)], axis=0))


def test_an_all_false_mask_is_still_a_mask():
    objs = Objects([(0, 0, 4, 4)], (W, H), masks=[np.zeros((H, W), bool)])
    assert objs.has_mask.tolist() == [True] and not objs[0].mask.any()
    assert objs != Objects([(0, 0, 4, 4)], (W, H))


def test_masks_given_as_one_array_are_owned_and_read_only():
    stack = np.zeros((2, H, W), np.uint8)
    stack[0, 1:3, 1:3] = 7
    objs = Objects([(0, 0, 4, 4), (5, 5, 8, 8)], (W, H), masks=stack)
    assert objs.masks.dtype == bool and objs.masks[0].sum() == 4 and objs.has_mask.all()
    own = np.ones((1, H, W), bool)
    kept = Objects([(0, 0, 4, 4)], (W, H), masks=own)
    own[0, 0, 0] = False  # the caller's array changes; the Objects' does not
    assert kept.masks[0, 0, 0] and own.flags.writeable
    for arr in (objs.boxes, objs.scores, objs.has_score, objs.labels, objs.masks, objs.has_mask,
                four().extra["depth"], four()[[0, 2]].masks, four()[1:].boxes):
        assert not arr.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        objs.boxes = np.zeros((0, 4))  # type: ignore[misc]


def test_with_extra_adds_replaces_and_leaves_gaps():
    objs = four()
    out = objs.with_extra(depth=[1, 2, 3, 4], rank=[0, ABSENT, 1, ABSENT])
    assert out.extra["depth"].tolist() == [1, 2, 3, 4] and objs.extra["depth"][0] == 0.2
    assert out.has_extra("rank").tolist() == [True, False, True, False]
    assert "rank" not in out[1].extra and out[2].extra["rank"] == 1
    assert "note" in out.extra and out.boxes is objs.boxes  # the rest is shared, not copied
    assert "pts" not in objs.with_extra(pts=[ABSENT] * 4).extra
    assert not objs.has_extra("nothing").any()
    with pytest.raises(ValueError, match="3 values for 4"):
        objs.with_extra(depth=[1, 2, 3])


# -- building and joining -----------------------------------------------------------------

def test_from_regions_gives_back_what_iteration_gave():
    objs = four()
    again = Objects.from_regions(list(objs), objs.image_size)
    assert again == objs and again is not objs
    assert objs.with_regions(reversed(objs)) == objs[::-1]


def test_concat_joins_in_order():
    objs = four()
    plain = Objects([(0, 0, 1, 1)], (W, H), labels=["x"], scores=[0.5], extra={"other": [7]})
    joined = Objects.concat([objs[:2], plain, objs[2:]])
    assert joined.labels.tolist() == ["cat", "dog", "x", "cat", None]
    assert joined.has_mask.tolist() == [True, False, False, True, False]
    assert joined.has_score.tolist() == [True, False, True, True, False]
    assert joined.has_extra("other").tolist() == [False, False, True, False, False]
    assert joined.has_extra("note").tolist() == [True, False, False, True, False]
    assert joined[[0, 1, 3, 4]] == objs and joined[2] == plain[0]
    assert Objects.concat([objs]) is objs
    assert Objects.concat([], image_size=(W, H)) == Objects.empty((W, H))
    assert Objects.concat([Objects.empty((W, H)), Objects.empty((W, H))]) == Objects.empty((W, H))
    with pytest.raises(ValueError, match="one image size"):
        Objects.concat([objs, Objects.empty((W + 1, H))])
    with pytest.raises(ValueError, match="no parts"):
        Objects.concat([])
    with pytest.raises(TypeError, match="joins Objects"):
        Objects.concat([objs, [objs[0]]])  # type: ignore[list-item]


def test_equality_is_by_content():
    assert four() == four() and four() != four()[:3] and four() != list(four())
    a = four()
    variants = [
        a.with_extra(depth=[0.2, 0.5, 0.1, 0.91]),
        a.with_extra(note=["x", None, None, ABSENT]),   # a None where the field was missing
        Objects.from_regions([dataclasses.replace(a[0], label="dog"), *a[1:]], (W, H)),
        Objects.from_regions([dataclasses.replace(a[0], score=None), *a[1:]], (W, H)),
        Objects.from_regions([dataclasses.replace(a[0], mask=~a[0].mask), *a[1:]], (W, H)),
        Objects.from_regions([dataclasses.replace(a[1], mask=a.region_mask(1)) if i == 1 else r
                              for i, r in enumerate(a)], (W, H)),  # a mask equal to its box
    ]
    for v in variants:
        assert v != a and codec.digest(v) != codec.digest(a)
    boxes = a[[1, 3]]
    assert Objects.from_regions(boxes, (W + 1, H)) != boxes
    with pytest.raises(TypeError):
        hash(a)


@pytest.mark.parametrize("make,error,match", [
    (lambda: Objects([(0, 0, 1)], (W, H)), ValueError, "4 numbers"),
    (lambda: Objects([(0, 0, 1, 1), (0, 0, 1)], (W, H)), ValueError, "4 numbers"),
    (lambda: Objects([("a", 0, 1, 1)], (W, H)), ValueError, "4 numbers"),
    (lambda: Objects([(0, 0, float("nan"), 1)], (W, H)), ValueError, "non-finite"),
    (lambda: Objects([(0, 0, 1, 1)], (W, 0)), ValueError, "positive"),
    (lambda: Objects([(0, 0, 1, 1)], "big"), ValueError, "image_size"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), labels=["a", "b"]), ValueError, "2 labels for 1"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), labels=[3]), TypeError, "label is a string"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), scores=[]), ValueError, "0 scores for 1"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), scores=["0.5"]), TypeError, "score is a number"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), masks=[None, None]), ValueError, "2 masks for 1"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), masks=np.zeros((1, W, H), bool)), ValueError,
     r"expected \(1, 10, 20\)"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), masks=[np.zeros((H, W + 1))]), ValueError,
     "mask shape"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), extra={"k": [1, 2]}), ValueError,
     "'k' has 2 values for 1"),
    (lambda: Objects([(0, 0, 1, 1)], (W, H), extra={1: [1]}), TypeError, "names are strings"),
    (lambda: Objects([Region((0, 0, 1, 1))], (W, H)), TypeError, "from_regions"),
])
def test_bad_input_is_refused_with_what_was_expected(make, error, match):
    with pytest.raises(error, match=match):
        make()


# -- the codec ------------------------------------------------------------------------------

def _header(data: bytes) -> dict:
    (n,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8:8 + n])


def test_bytes_round_trip_with_one_mask_blob():
    objs = four()
    for raw in (False, True):
        data = codec.encode(objs, raw_images=raw)
        back = codec.decode(data)
        assert back == objs and codec.digest(back) == codec.digest(objs)
        node = _header(data)["v"]
        assert node["masks"]["rows"] == [0, 2] and len(_header(data)["blobs"]) == 1
        assert node["scores"] == [0.9, None, 0.3, None] and node["absent"] == {"note": [1, 3]}
        assert node["labels"] == ["cat", "dog", "cat", None]
    for value in (Objects.empty((W, H)), four()[[1, 3]], four()[[0, 2]], [four(), four()[2:]]):
        back = codec.decode(codec.encode(value))
        assert back == value
    every = codec.decode(codec.encode(four()[[2, 0]]))  # every region masked: the blob's array
    assert every.has_mask.all() and not every.masks.flags.writeable


@pytest.mark.parametrize("inline", [False, True])
def test_trace_documents_round_trip(tmp_path, inline):
    objs = four()
    path = save_trace(Trace("X=Y", inputs={"found": objs, "none": four()[[1]]}),
                      tmp_path / "t.json", inline=inline)
    loaded = Trace.load_json(path)
    assert loaded.inputs["found"] == objs and loaded.inputs["none"] == four()[[1]]
    if not inline:  # the masks are one 1-bit PNG of K*H rows a person can look at
        (png,) = tmp_path.rglob("mask_*.png")
        with Image.open(png) as im:
            assert im.mode == "1" and im.size == (W, 2 * H)


def test_detach_copies_only_mutable_extra_values():
    objs = four()
    copy = codec.detach(objs)
    assert copy == objs and copy is not objs and copy.masks is objs.masks
    assert copy.extra["pts"][2] is not objs.extra["pts"][2]
    assert copy.has_extra("note").tolist() == objs.has_extra("note").tolist()
    scalars = objs.with_extra(pts=[ABSENT] * 4)
    assert codec.detach(scalars) is scalars


def _objects_bytes(node: dict, blobs: tuple[bytes, ...] = ()) -> bytes:
    header = json.dumps({"v": node, "blobs": [len(b) for b in blobs]}).encode()
    return codec.MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)


def _node(**fields) -> dict:
    return {"$type": "objects", "image_size": [8, 6], "boxes": [[0, 0, 1, 1], [1, 1, 2, 2]],
            "labels": ["a", None], "scores": [0.5, None], **fields}


@pytest.mark.parametrize("node,blobs,match", [
    (_node(masks={"rows": [0], "format": "bits", "blob": 0}), (b"\0" * 5,),
     "has 5 bytes, 1 masks of 8x6 needs 6"),
    (_node(masks={"rows": [0, 1], "format": "bits", "blob": 0}), (b"\0" * 6,),
     "2 masks of 8x6 needs 12"),
    (_node(masks={"rows": [2], "format": "bits", "blob": 0}), (b"\0" * 6,), "region numbers"),
    (_node(masks={"rows": [1, 0], "format": "bits", "blob": 0}), (b"\0" * 12,),
     "region numbers"),
    (_node(masks={"rows": [0, 0], "format": "bits", "blob": 0}), (b"\0" * 12,),
     "region numbers"),
    (_node(masks={"rows": [True], "format": "bits", "blob": 0}), (b"\0" * 6,), "region numbers"),
    (_node(masks={"rows": "0", "format": "bits", "blob": 0}), (b"\0" * 6,), "expected a list"),
    (_node(masks={"rows": [0], "format": "gif", "blob": 0}), (b"\0" * 6,), "unknown mask format"),
    (_node(masks={"rows": [0], "blob": 0}), (b"not a png",), "could not read mask"),
    (_node(masks=[0]), (), "bad mask reference"),
    (_node(labels=["a", 3]), (), "label is a string"),
    (_node(labels=["a"]), (), "1 labels for 2"),
    (_node(scores=[0.5, "high"]), (), "score is a number"),
    (_node(scores=[0.5, [1]]), (), "score is a number"),
    (_node(boxes=[[0, 0, 1, 1], [0, 0, 1]]), (), "4 numbers"),
    (_node(boxes="no"), (), "expected a list"),
    (_node(extra=[1]), (), "extra or absent is not a dict"),
    (_node(extra={"k": [1]}), (), "'k' has 1 values for 2"),
    (_node(extra={"k": [1, 2]}, absent={"k": [5]}), (), "region numbers"),
    (_node(extra={"k": [1, 2]}, absent=[]), (), "extra or absent is not a dict"),
    (_node(image_size=[0, 6]), (), "positive"),
])
def test_malformed_objects_nodes_give_a_codec_error(node, blobs, match):
    with pytest.raises(CodecError, match=match):
        codec.decode(_objects_bytes(node, blobs))


def test_a_png_mask_stack_of_the_wrong_height_is_refused(tmp_path):
    from visprog.values.blobs import DocumentBlobs
    from visprog.values.tree import Decoder, Encoder

    store = DocumentBlobs(tmp_path, folder=None)
    node = Encoder(store, exact=False).encode(four())
    node["masks"]["rows"] = [0]  # the PNG holds two masks
    with pytest.raises(CodecError, match="is not 1 masks of 20x10"):
        Decoder(store).decode(node)


def test_extra_columns_cannot_be_changed_in_place():
    objs = four()
    with pytest.raises(TypeError):
        objs.extra["depth"] = np.zeros(4)  # type: ignore[index]
    with pytest.raises(ValueError, match="read-only"):
        objs.extra["depth"][0] = 5.0
