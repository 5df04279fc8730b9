"""FaceDet and Seg: contracts with real detectors and tiny random models, offline.

FaceDet's `cascade` backend is a real face detector (the LBP cascade inside scikit-image), so
these tests check it finds the astronaut's face wherever the picture is put. Its `yunet`
backend runs through OpenCV on `tiny:yunet`, a random network with YuNet's contract. Seg runs a tiny
random Mask2Former built with save_pretrained and loaded through the model manager like a
real checkpoint: its segments are meaningless, so only the contracts are checked.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("torch")
pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")

from visprog.models import ToolContext  # noqa: E402
from visprog.tools import facedet, seg  # noqa: E402
from visprog.models import ModelLoadError, ModelManager  # noqa: E402
from visprog.values import Objects  # noqa: E402

# the astronaut's face in skimage.data.astronaut() (512 x 512), by eye
FACE = (170.0, 60.0, 270.0, 165.0)


@pytest.fixture(scope="module")
def ctx():
    return ToolContext(models=ModelManager(device="cpu"))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def astronaut_on(canvas: tuple[int, int], scale: float, offset: tuple[int, int]):
    """The astronaut scaled by `scale` and pasted at `offset` on a gray canvas, and where its
    face then is."""
    side = round(512 * scale)
    image = Image.new("RGB", canvas, (120, 120, 120))
    image.paste(Image.fromarray(skimage_data.astronaut()).resize((side, side)), offset)
    face = tuple(v * scale + offset[i % 2] for i, v in enumerate(FACE))
    return image, face


# -- FaceDet ----------------------------------------------------------------------------------

FACE_CASES = {  # name: (canvas, scale, offset)
    "original 512x512": ((512, 512), 1.0, (0, 0)),
    "small 256x256": ((256, 256), 0.5, (0, 0)),
    "wide 800x500": ((800, 500), 0.8, (300, 40)),
    "tall 300x700": ((300, 700), 0.5, (20, 300)),
    "large 1600x1000, scaled down to detect": ((1600, 1000), 1.5, (100, 100)),
}


@pytest.mark.parametrize("canvas, scale, offset", FACE_CASES.values(), ids=FACE_CASES.keys())
def test_facedet_finds_the_astronauts_face(ctx, canvas, scale, offset):
    tool = facedet.FaceDet.build({"backend": "cascade"}, ctx)
    image, face = astronaut_on(canvas, scale, offset)
    found = tool(image=image)
    assert isinstance(found, Objects) and found.image_size == image.size
    assert len(found) >= 1 and set(found.labels) == {"face"}
    w, h = image.size
    assert ((found.boxes >= 0) & (found.boxes <= [w, h, w, h])).all()
    best = max(iou(tuple(b), face) for b in found.boxes)
    assert best > 0.5, f"no box near the face {face}: {found.boxes.round()}"


@pytest.mark.parametrize("size", [(200, 150), (97, 61), (10, 10), (1, 1)])
def test_facedet_blank_or_tiny_image_gives_no_faces(ctx, size):
    found = facedet.FaceDet.build({"backend": "cascade"}, ctx)(image=Image.new("RGB", size, "white"))
    assert len(found) == 0 and found.image_size == size


def test_facedet_batch_equals_one_by_one(ctx):
    tool = facedet.FaceDet.build({"backend": "cascade"}, ctx)
    images = [astronaut_on(*case)[0] for case in list(FACE_CASES.values())[:3]]
    images.append(Image.new("RGB", (120, 90), "black"))
    batch = tool.batch_fn([{"image": im} for im in images])
    for one, im in zip(batch, images):
        assert np.array_equal(one.boxes, tool(image=im).boxes)


def test_facedet_settings_and_declaration(ctx):
    tool = facedet.FaceDet.build({"backend": "cascade", "min_neighbors": 6}, ctx)
    assert tool.name == "FaceDet" and tool.returns == {"Objects"} and tool.cacheable
    assert tool.settings["backend"] == "cascade" and tool.settings["min_neighbors"] == 6
    with pytest.raises(ValueError, match="unknown backend 'haar'"):
        facedet.FaceDet.build({"backend": "haar"}, ctx)


def test_facedet_yunet_missing_model_file_says_where_to_put_it(ctx, monkeypatch, tmp_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: the hub lookup fails at once
    tool = facedet.FaceDet.build({"backend": "yunet", "url": ""}, ctx)
    with pytest.raises(ModelLoadError) as err:
        tool(image=Image.new("RGB", (64, 64)))
    msg = str(err.value)
    assert "face_detection_yunet_2023mar.onnx" in msg
    assert str(tmp_cache / "models" / "face_detection_yunet_2023mar.onnx") in msg
    assert 'backend = "cascade"' in msg


def test_facedet_yunet_configured_path_missing(ctx, tmp_path):
    missing = tmp_path / "nowhere" / "yunet.onnx"
    tool = facedet.FaceDet.build({"backend": "yunet", "model": str(missing)}, ctx)
    with pytest.raises(ModelLoadError, match="nowhere/yunet.onnx"):
        tool(image=Image.new("RGB", (64, 64)))


# YuNet's detection path, through OpenCV, on `tiny:yunet` (a random network with YuNet's
# inputs and outputs): its faces are meaningless, so the contract and the scaling are checked.
TINY_YUNET = {"backend": "yunet", "model": "tiny:yunet", "score_threshold": 0.5}


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def yunet(ctx):
    pytest.importorskip("onnx", reason="tiny:yunet is exported with torch.onnx, which needs onnx")
    pytest.importorskip("cv2")
    return facedet.FaceDet.build({**TINY_YUNET, "max_side": 320}, ctx)


@pytest.mark.parametrize("size", [(320, 240), (640, 480), (1000, 1600)])
def test_facedet_yunet_boxes_are_opencvs_scaled_back(yunet, size):
    """What `cv2.FaceDetectorYN` finds on the scaled-down copy, in original pixels, with its
    landmarks and scores, best first."""
    import cv2

    from visprog.models import resolve_checkpoint

    image = noise(*size)
    found = yunet(image=image)
    assert isinstance(found, Objects) and found.image_size == image.size
    assert len(found) > 0 and set(found.labels) == {"face"}
    w, h = size
    assert ((found.boxes >= 0) & (found.boxes <= [w, h, w, h])).all()
    assert list(found.scores) == sorted(found.scores, reverse=True)
    assert all(0.5 <= s <= 1.0 for s in found.scores)
    assert all(len(landmarks) == 5 for landmarks in found.extra["landmarks"])

    scale = min(1.0, 320 / max(w, h))
    small = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR) if scale < 1 else image
    det = cv2.FaceDetectorYN.create(resolve_checkpoint("tiny:yunet") + "/yunet.onnx", "",
                                    small.size, 0.5, 0.3, 5000)
    _, faces = det.detect(np.ascontiguousarray(np.asarray(small)[:, :, ::-1]))
    assert faces is not None and len(faces) == len(found)
    best = faces[np.argsort(-faces[:, 14], kind="stable")]
    x, y, bw, bh = (best[0, :4] / scale).tolist()
    expected = np.clip([x, y, x + bw, y + bh], 0, [w, h, w, h])
    assert np.allclose(found.boxes[0], expected, atol=1e-3)
    assert np.allclose(found.extra["landmarks"][0][0], best[0, 4:6] / scale, atol=1e-3)


def test_facedet_yunet_thresholds_and_top_k(ctx, yunet):
    image = noise(320, 240, seed=3)
    loose = facedet.FaceDet.build({**TINY_YUNET, "score_threshold": 0.3}, ctx)(image=image)
    strict = facedet.FaceDet.build({**TINY_YUNET, "score_threshold": 0.99}, ctx)(image=image)
    few = facedet.FaceDet.build({**TINY_YUNET, "score_threshold": 0.3, "top_k": 3}, ctx)(image=image)
    assert len(strict) < len(loose) and min(strict.scores) >= 0.99
    assert 0 < len(few) <= 3


def test_facedet_yunet_batch_equals_one_by_one_and_loads_once(ctx, yunet):
    images = [noise(320, 240, seed=i) for i in range(3)] + [noise(64, 48, seed=9)]
    batch = yunet.batch_fn([{"image": im} for im in images])
    for one, im in zip(batch, images):
        alone = yunet(image=im)
        assert np.array_equal(one.boxes, alone.boxes)
        assert one.scores.tolist() == alone.scores.tolist()
    assert [m["kind"] for m in ctx.models.loaded()].count("yunet") == 1


# -- Seg --------------------------------------------------------------------------------------

TINY_SEG = {"checkpoint": "tiny:mask2former", "threshold": 0.0,
            "overlap_mask_area_threshold": 0.0}


def scene(w: int, h: int) -> Image.Image:
    """Sky, grass and a red ball: a few regions for the random model to cut up."""
    im = Image.new("RGB", (w, h), (30, 120, 200))
    d = ImageDraw.Draw(im)
    d.rectangle([0, h * 2 // 3, w, h], fill=(40, 160, 40))
    d.ellipse([w // 4, h // 4, w // 2, h * 3 // 4], fill=(220, 30, 30))
    return im


SEG_SIZES = {"landscape 320x240": (320, 240), "odd 97x61": (97, 61),
             "tall 61x200": (61, 200), "square 300x300": (300, 300)}


@pytest.mark.parametrize("backend", ["mask2former", "maskformer"])
@pytest.mark.parametrize("size", SEG_SIZES.values(), ids=SEG_SIZES.keys())
def test_seg_masks_labels_boxes(ctx, size, backend):
    tool = seg.Seg.build({**TINY_SEG, "backend": backend, "checkpoint": f"tiny:{backend}"}, ctx)
    found = tool(image=scene(*size))
    w, h = size
    assert found.image_size == size and len(found) >= 1
    names = {seg.clean_label(n) for n in seg.TINY_LABELS}
    covered = np.zeros((h, w), bool)
    for r in found:
        assert r.mask.shape == (h, w) and r.mask.dtype == bool and r.mask.any()
        assert r.label in names and r.extra["raw_label"] in seg.TINY_LABELS
        assert 0.0 <= r.score <= 1.0
        ys, xs = np.nonzero(r.mask)  # the box is the tight box around the mask
        assert r.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert not (covered & r.mask).any(), "panoptic segments must not overlap"
        covered |= r.mask
    assert found.scores.tolist() == sorted(found.scores, reverse=True)


def test_seg_large_image_masks_scaled_back_to_full_size(ctx):
    tool = seg.Seg.build({**TINY_SEG, "mask_max_side": 200}, ctx)
    found = tool(image=scene(640, 360))
    assert len(found) >= 1 and all(r.mask.shape == (360, 640) for r in found)


def test_seg_batch_equals_one_by_one(ctx):
    tool = seg.Seg.build(TINY_SEG, ctx)
    images = [scene(97, 61), scene(97, 61).transpose(Image.FLIP_LEFT_RIGHT), scene(61, 200),
              scene(97, 61).transpose(Image.FLIP_TOP_BOTTOM)]
    batch = tool.batch_fn([{"image": im} for im in images])
    for got, im in zip(batch, images):
        one = tool(image=im)
        assert got.labels.tolist() == one.labels.tolist()
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(got, one))
        assert np.allclose(got.scores, one.scores, atol=1e-5)


def test_seg_loads_once_per_checkpoint(ctx):
    a, b = seg.Seg.build(TINY_SEG, ctx), seg.Seg.build({**TINY_SEG, "threshold": 0.3}, ctx)
    a(image=scene(64, 64))
    b(image=scene(64, 64))
    assert sum(e["kind"] == "mask2former" for e in ctx.models.loaded()) == 1
    assert a.settings != b.settings  # different thresholds, different cache keys


@pytest.mark.parametrize("raw, clean", [("sky-other-merged", "sky"), ("wall-brick", "wall brick"),
                                        ("person", "person"), ("tree-merged", "tree")])
def test_seg_clean_label(raw, clean):
    assert seg.clean_label(raw) == clean


def test_seg_missing_checkpoint_names_it(tmp_path):
    missing = str(tmp_path / "no-such-model")
    tool = seg.Seg.build({"checkpoint": missing}, ToolContext(models=ModelManager(device="cpu")))
    with pytest.raises(ModelLoadError, match="no-such-model"):
        tool(image=scene(64, 64))


def test_seg_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        seg.Seg.build({"backend": "oneformer"}, ToolContext())


def test_facedet_and_seg_through_the_interpreter():
    from visprog.api import VisProg

    # tiny's FaceDet mirrors default's (YuNet, here a random one): the real cascade finds the face
    vp = VisProg(preset="tiny", config={"FaceDet": {"backend": "cascade"}}, cache=False,
                 plugins=False)
    image, _ = astronaut_on((400, 300), 0.5, (100, 20))
    out = vp.execute("FACES=FaceDet(image=IMAGE)\nSEGS=Seg(image=IMAGE)\n"
                     "N=Count(box=FACES)\nRESULT=Result(var=N)", image=image)
    assert out.value >= 1
    segs = out.trace["SEGS"].output
    assert len(segs) >= 1 and all(r.mask.shape == (300, 400) for r in segs)
    kinds = {e["kind"] for e in vp.models.loaded()}
    assert kinds == {"face_cascade", "mask2former"}  # only what the program uses
