"""Loc and Select end to end with the tiny preset: small random MM-GroundingDINO, SAM 3,
GroundingDINO, OWLv2, SAM and CLIP models built offline, saved with save_pretrained and loaded through the same loaders as
real checkpoints. The outputs are random; the tests check contracts (pixels of the original
image, masks of its H x W, labels from the query, sharing, batching, bad input)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from visprog.config import load_config  # noqa: E402
from visprog.errors import ConfigError  # noqa: E402
from visprog.models import ToolContext  # noqa: E402
from visprog.tools import loc as loc_mod  # noqa: E402
from visprog.tools import select_objects as sel_mod  # noqa: E402
from visprog.models import ModelManager  # noqa: E402
from visprog.values import Objects  # noqa: E402

SIZES = [(97, 31), (640, 480), (300, 900)]
CFG = load_config("tiny")


@pytest.fixture(scope="module")
def ctx():
    return ToolContext(models=ModelManager(device="cpu"))


def make_loc(ctx, **over):
    return loc_mod.Loc.build({**CFG["Loc"], **over}, ctx)


def make_select(ctx, **over):
    return sel_mod.Select.build({**CFG["Select"], **over}, ctx)


def image(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def thirds(size, labels=("dog", "cat", "dog")):
    w, h = size
    return Objects([(0, 0, w / 3, h), (w / 3, 0, 2 * w / 3, h), (2 * w / 3, 0, w, h)],
                   size, labels=list(labels), scores=[0.9, 0.8, 0.7])


# -- pure helpers -----------------------------------------------------------------------------

@pytest.mark.parametrize("boxes, scores, iou, keep", [
    ([], [], 0.5, []),
    ([(0, 0, 10, 10)], [0.3], 0.5, [0]),
    ([(0, 0, 10, 10), (1, 1, 10, 10), (20, 20, 30, 30)], [0.5, 0.9, 0.1], 0.5, [1, 2]),
    ([(0, 0, 10, 10), (5, 0, 15, 10)], [0.9, 0.8], 0.5, [0, 1]),     # IoU 1/3 kept
    ([(0, 0, 10, 10), (5, 0, 15, 10)], [0.9, 0.8], 0.3, [0]),        # IoU 1/3 suppressed
    ([(0, 0, 10, 10), (0, 0, 10, 10)], [0.7, 0.7], 0.5, [0]),        # ties: first wins
])
def test_nms(boxes, scores, iou, keep):
    assert loc_mod.nms(np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores), iou).tolist() == keep


def test_clean_detections_clips_drops_empty_and_caps():
    boxes = np.array([(-5, -5, 50, 50), (120, 0, 130, 10), (0, 0, 10, 10), (60, 60, 70, 70)], float)
    out_boxes, out_scores = loc_mod.clean_detections(boxes, np.array([0.9, 0.8, 0.7, 0.6]),
                                                     (100, 80), nms_iou=0.5, max_detections=2)
    assert out_boxes.tolist() == [[0, 0, 50, 50], [0, 0, 10, 10]]  # (120..130) is off-image
    assert out_scores.tolist() == [0.9, 0.7]


@pytest.mark.parametrize("name, box", [
    ("TOP", (0, 0, 300, 100)), ("BOTTOM", (0, 100, 300, 200)),
    ("LEFT", (0, 0, 150, 200)), ("RIGHT", (150, 0, 300, 200)),
])
def test_halves_need_no_model(name, box):
    fresh = ToolContext(models=ModelManager(device="cpu"))
    out = make_loc(fresh)(image=image((300, 200)), object=f" {name} ")
    assert len(out) == 1 and out[0].box == box and out.labels.tolist() == [name]
    assert fresh.models.loaded() == []


@pytest.mark.parametrize("query, n_parts", [("dog", 1), ("a, b,", 2), (",", 0), ("x,x", 1)])
def test_split_query(query, n_parts):
    assert len(sel_mod.split_query(query)) == n_parts


@pytest.mark.parametrize("label, category, ok", [
    ("dog", "dog", True), ("Dogs", "dog", True), ("dog", "dogs", True), ("tree-merged", "tree", True),
    ("hot dog", "dog", True), ("glass", "glas", False), ("cat", "dog", False), (None, "dog", False),
])
def test_names_category(label, category, ok):
    assert sel_mod.names_category(label, category) is ok


def test_mask_iou():
    a = np.zeros((2, 4, 4), bool)
    a[0, :2] = True
    a[1] = True
    b = np.zeros((1, 4, 4), bool)
    b[0, :2, :2] = True
    assert np.allclose(sel_mod.mask_iou(a, b), [[0.5], [0.25]])
    assert sel_mod.mask_iou(a[:0], b).shape == (0, 1)


# -- Loc ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["mm_grounding_dino", "sam3", "grounding_dino", "owlv2"])
@pytest.mark.parametrize("size", SIZES)
def test_loc_boxes_in_original_pixels(ctx, backend, size):
    w, h = size
    out = make_loc(ctx, backend=backend, box_threshold=0.0, sam3_threshold=0.0, max_detections=50)(
        image=image(size), object="red car")
    assert isinstance(out, Objects) and out.image_size == size and len(out) > 0
    b = out.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
    assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
    # Boxes must reach across the original image, which is larger than the models' inputs
    # (at most 384 px) for 640x480 and 300x900: boxes in model-input pixels could not.
    assert b[:, 2].max() > 0.6 * w and b[:, 3].max() > 0.6 * h
    assert out.labels.tolist() == ["red car"] * len(out)
    scores = out.scores.tolist()
    assert scores == sorted(scores, reverse=True) and out.has_score.all()
    assert len(out) <= 50


@pytest.mark.parametrize("backend", ["mm_grounding_dino", "sam3", "grounding_dino", "owlv2"])
def test_loc_threshold_one_gives_empty(ctx, backend):
    out = make_loc(ctx, backend=backend, box_threshold=1.0, sam3_threshold=1.0)(
        image=image((64, 48)), object="dog")
    assert len(out) == 0 and out.image_size == (64, 48)


def test_loc_nms_and_cap(ctx):
    out = make_loc(ctx, box_threshold=0.0, nms_iou=0.3, max_detections=5)(
        image=image((320, 240)), object="dog")
    assert 0 < len(out) <= 5
    iou = loc_mod.box_iou(out.boxes, out.boxes)
    assert (iou[~np.eye(len(out), dtype=bool)] <= 0.3 + 1e-9).all()


@pytest.mark.parametrize("backend", ["mm_grounding_dino", "sam3", "grounding_dino", "owlv2"])
def test_loc_batch_equals_one_by_one(ctx, backend):
    tool = make_loc(ctx, backend=backend, box_threshold=0.0)
    calls = [{"image": image((200, 150), seed=1), "object": "dog"},
             {"image": image((200, 150), seed=2), "object": "dog"},
             {"image": image((200, 150), seed=3), "object": "TOP"}]
    batched = tool.batch_fn(calls)
    for call, got in zip(calls, batched):
        one = tool(**call)
        assert got.labels.tolist() == one.labels.tolist()
        assert np.allclose(got.boxes, one.boxes, atol=1e-2)
        assert np.allclose(got.scores, one.scores, atol=1e-4)


def test_loc_accepts_non_rgb_images(ctx):
    gray = Image.new("L", (120, 90), 128)
    out = make_loc(ctx, box_threshold=0.0)(image=gray, object="dog")
    assert out.image_size == (120, 90)


def test_loc_settings_and_bad_input(ctx):
    tool = make_loc(ctx, backend="owlv2")
    assert tool.settings["backend"] == "owlv2" and tool.settings["checkpoint"] == "tiny:owlv2"
    assert tool.batch_fn is not None and tool.version
    assert make_loc(ctx, checkpoint="/x")(image=image((8, 8)), object="LEFT").image_size == (8, 8)
    with pytest.raises(ValueError, match="empty"):
        tool(image=image((32, 32)), object="  ")
    with pytest.raises(ConfigError, match="owlv2"):
        make_loc(ctx, backend="yolo")


# -- Select --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sam3", "sam"])
@pytest.mark.parametrize("size", SIZES)
def test_select_masks_are_image_sized_and_candidates_kept(ctx, size, backend):
    cands = thirds(size)
    out = make_select(ctx, backend=backend)(image=image(size), object=cands, query="dog")
    assert out.image_size == size and len(out) >= 1
    cand_boxes = {r.box for r in cands}
    for r in out:
        assert r.box in cand_boxes                       # a candidate, not a new box
        assert r.mask is not None and r.mask.shape == (size[1], size[0])  # SAM's / SAM 3's
        assert r.label == "dog" and r.extra["candidate_label"] in ("dog", "cat")
        assert 0 <= r.extra["match_iou"] <= 1


def test_select_keeps_candidate_masks(ctx):
    size = (120, 80)
    mask = np.zeros((80, 120), bool)
    mask[10:70, 5:115] = True
    cands = Objects([(5, 10, 115, 70)], size, labels=["dog"], masks=[mask])
    out = make_select(ctx)(image=image(size), object=cands, query="dog")
    assert len(out) == 1 and np.array_equal(out[0].mask, mask)


@pytest.mark.parametrize("backend", ["sam3", "sam"])
def test_select_comma_query_selects_each(ctx, backend):
    size = (240, 160)
    out = make_select(ctx, backend=backend)(image=image(size), object=thirds(size),
                                            query="dog, cat")
    assert out.labels.tolist() == ["dog", "cat"]         # one per part, in query order
    assert len({r.box for r in out}) == 2                # different candidates


def test_select_category_narrows_candidates(ctx):
    size = (240, 160)
    cands = thirds(size, labels=("dog", "cat", "dog"))
    out = make_select(ctx)(image=image(size), object=cands, query="dog,cat", category="cats")
    assert len(out) == 1                                 # only one candidate is a cat
    assert out[0].extra["candidate_label"] == "cat" and out[0].box == cands[1].box
    # a category no label names keeps every candidate
    wide = make_select(ctx)(image=image(size), object=cands, query="dog,cat", category="zebra")
    assert len(wide) == 2


@pytest.mark.parametrize("backend", ["sam", "clip"])
def test_select_nothing_to_choose_loads_no_model(backend):
    # (with SAM 3, no candidates means "what SAM 3 finds": tests/test_sam3_presets.py)
    fresh = ToolContext(models=ModelManager(device="cpu"))
    tool = make_select(fresh, backend=backend)
    size = (64, 64)
    assert len(tool(image=image(size), object=Objects.empty(size), query="dog")) == 0
    assert len(tool(image=image(size), object=thirds(size), query=" , ")) == 0
    assert fresh.models.loaded() == []


def test_loc_and_select_share_grounding_dino():
    fresh = ToolContext(models=ModelManager(device="cpu"))
    size = (160, 120)
    found = make_loc(fresh, backend="grounding_dino", box_threshold=0.0)(image=image(size),
                                                                          object="dog")
    make_select(fresh, backend="sam")(image=image(size), object=found[:3], query="dog")
    kinds = sorted(m["kind"] for m in fresh.models.loaded())
    assert kinds == ["grounding_dino", "sam"]
    assert [e["kind"] for e in fresh.models.events].count("grounding_dino") == 1
    assert fresh.models.unload(kind="sam") == 1
    assert [m["kind"] for m in fresh.models.loaded()] == ["grounding_dino"]


@pytest.mark.parametrize("backend", ["sam3", "sam"])
def test_select_batch_equals_one_by_one(ctx, backend):
    tool = make_select(ctx, backend=backend)
    size = (200, 150)
    calls = [{"image": image(size, seed=s), "object": thirds(size), "query": q, "category": None}
             for s, q in [(1, "dog"), (2, "dog,cat"), (3, "cat")]]
    for call, got in zip(calls, tool.batch_fn(calls)):
        one = tool(**call)
        assert got.labels.tolist() == one.labels.tolist()
        assert [r.box for r in got] == [r.box for r in one]
        for a, b in zip(got, one):
            assert (a.mask != b.mask).mean() < 0.01


def test_select_clip_backend(ctx):
    size = (180, 120)
    tool = make_select(ctx, backend="clip")
    assert tool.settings["checkpoints"] == {"clip": "tiny:clip"}
    out = tool(image=image(size), object=thirds(size), query="dog,cat,car,person")
    assert out.labels.tolist() == ["dog", "cat", "car"]   # 3 candidates: one each, 3 parts
    assert len({r.box for r in out}) == 3 and all(r.mask is None for r in out)
    assert all(isinstance(r.extra["clip_score"], float) for r in out)
    batched = tool.batch_fn([{"image": image(size), "object": thirds(size), "query": "dog",
                              "category": "cat"}])
    assert batched[0].labels.tolist() == ["dog"] and batched[0][0].extra["candidate_label"] == "cat"


def test_select_bad_input(ctx):
    tool = make_select(ctx)
    with pytest.raises(ValueError, match="size"):
        tool(image=image((50, 50)), object=thirds((60, 50)), query="dog")
    with pytest.raises(TypeError, match="Objects"):
        tool(image=image((50, 50)), object=[(0, 0, 1, 1)], query="dog")
    with pytest.raises(ConfigError, match="sam, clip"):
        make_select(ctx, backend="yolo")


def test_nms_limit_keeps_the_same_best_boxes():
    from visprog.tools.loc import nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 600, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 100, (300, 2))], axis=1)
    scores = rng.uniform(size=300)
    full = nms(boxes, scores, 0.5)
    assert list(nms(boxes, scores, 0.5, limit=7)) == list(full[:7])
    assert len(nms(boxes, scores, 0.5, limit=0)) == 0
