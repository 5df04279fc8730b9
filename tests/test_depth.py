"""Depth and the depth-aware crops (tools/depth.py) on the tiny random Depth Anything.

The expected depths are computed here from the model itself (loaded with transformers from
the tiny checkpoint, run, and normalised by the documented rule), never made up.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprog import VisProg
from visprog.config import load_config
from visprog.errors import ConfigError
from visprog.models import ModelManager, resolve_checkpoint
from visprog.models import ToolContext
from visprog.tools import depth as depth_mod
from visprog.traces.records import Trace
from visprog.values import Objects, Region

pytest.importorskip("transformers")

SIZE = (160, 120)


def scene(size=SIZE, seed=0) -> Image.Image:
    """A gradient with a few blocks: the random model still gives a varied map."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    base[h // 4:h // 2, w // 5:w // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(base.astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def checkpoint() -> str:
    return resolve_checkpoint("tiny:depth_anything")


def reference_distance(path: str, image: Image.Image) -> np.ndarray:
    """The documented rule, written out: the model's map at the image size, between its 1st
    and 99th percentiles, stretched to 0..1, flipped (Depth Anything gives inverse depth)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForDepthEstimation.from_pretrained(path).eval()
    with torch.inference_mode():
        out = model(**processor(images=[image], return_tensors="pt"))
    raw = processor.post_process_depth_estimation(out, target_sizes=[image.size[::-1]])[0]
    raw = raw["predicted_depth"].numpy().astype(np.float64)
    lo, hi = np.percentile(raw, [1, 99])
    return (1.0 - np.clip((raw - lo) / (hi - lo), 0, 1)).astype(np.float32)


def make_tools(mm=None, **settings):
    section = {**load_config("tiny")["Depth"], **settings}
    built = depth_mod.build(section, ToolContext(models=mm or ModelManager(device="cpu")))
    return {t.name: t for t in built}


def objects(size=SIZE):
    w, h = size
    mask = np.zeros((h, w), bool)
    mask[70:110, 20:60] = True
    return Objects.from_regions((
        Region(box=(100, 10, 150, 50), label="far box", score=0.9, extra={"class_score": 0.5}),
        Region(box=(20, 70, 60, 110), mask=mask, label="masked", score=0.8),
        Region(box=(60, 20, 100, 60), label="middle", score=0.7),
    ), size)


# -- the tiny checkpoint ---------------------------------------------------------------------

def test_tiny_checkpoint_copies_the_small_checkpoints_shape_settings(checkpoint):
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    pre = json.loads((Path(checkpoint) / "preprocessor_config.json").read_text())
    assert cfg["model_type"] == "depth_anything" and cfg["depth_estimation_type"] == "relative"
    assert cfg["patch_size"] == 14 and cfg["backbone_config"]["patch_size"] == 14
    assert cfg["backbone_config"]["image_size"] == 518
    assert pre["size"] == {"height": 518, "width": 518} and pre["keep_aspect_ratio"] is True
    assert pre["ensure_multiple_of"] == 14 and pre["resample"] == 3 and pre["do_pad"] is False
    assert pre["image_mean"] == [0.485, 0.456, 0.406] and pre["image_std"] == [0.229, 0.224, 0.225]


# -- Depth -------------------------------------------------------------------------------------

def test_depth_gives_each_object_its_distance_nearest_first(checkpoint):
    image, objs = scene(), objects()
    dist = reference_distance(checkpoint, image)
    expected = {"far box": float(np.quantile(dist[10:50, 100:150], 0.25)),
                "masked": float(np.median(dist[objs[1].mask])),
                "middle": float(np.quantile(dist[20:60, 60:100], 0.25))}
    out = make_tools()["Depth"](image=image, object=objs)
    assert isinstance(out, Objects) and out.image_size == image.size and len(out) == 3
    got = {r.label: r.extra["depth"] for r in out}
    for label, d in expected.items():
        assert got[label] == pytest.approx(d, abs=2e-3)
    assert [r.extra["depth"] for r in out] == sorted(got.values())  # nearest first
    assert all(0.0 <= r.extra["depth"] <= 1.0 for r in out)
    by_label = {r.label: r for r in out}
    assert by_label["far box"].extra["class_score"] == 0.5  # other fields kept
    assert np.array_equal(by_label["masked"].mask, objs[1].mask) and by_label["middle"].score == 0.7
    picture = out[0].extra["depth_map"]
    assert picture.mode == "L" and max(picture.size) <= 256
    assert all("depth_map" not in r.extra for r in out[1:])


def test_depth_with_no_objects_is_empty_and_runs_no_model():
    mm = ModelManager(device="cpu")
    empty = Objects.empty(SIZE)
    assert make_tools(mm)["Depth"](image=scene(), object=empty) is empty
    assert mm.loaded() == []


def test_depth_refuses_objects_of_another_image():
    with pytest.raises(ValueError, match="found in a 10x10 image"):
        make_tools()["Depth"](image=scene(), object=Objects([(0, 0, 5, 5)], (10, 10)))


def test_output_depth_flips_the_distances():
    image = scene()
    masked = objects()[1:2]
    near = make_tools()["Depth"](image=image, object=masked)[0].extra["depth"]
    far = make_tools(output="depth")["Depth"](image=image, object=masked)[0].extra["depth"]
    assert far == pytest.approx(1.0 - near, abs=2e-4)


# -- the crops ---------------------------------------------------------------------------------

def expected_crop(image: Image.Image, keep: np.ndarray, fill=128) -> np.ndarray:
    if not keep.any():
        return np.full((image.height, image.width, 3), fill, np.uint8)
    ys, xs = np.nonzero(keep)
    px = np.asarray(image)[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()
    px[~keep[ys.min():ys.max() + 1, xs.min():xs.max() + 1]] = fill
    return px


@pytest.mark.parametrize("name, nearer", [("CropFrontOf", True), ("CropInFront", True),
                                          ("CropInFrontOf", True), ("CropAhead", True),
                                          ("CropBehind", False)])
def test_crops_keep_what_is_in_front_or_behind_the_object(checkpoint, name, nearer):
    image, objs = scene(), objects()[2:]  # the first object is 'middle'
    dist = reference_distance(checkpoint, image)
    level = float(np.quantile(dist[20:60, 60:100], 0.25))
    keep = dist < level - 0.05 if nearer else dist > level + 0.05
    out = make_tools()[name](image=image, box=objs)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), expected_crop(image, keep))


def test_nothing_in_front_gives_a_grey_image_and_no_objects_the_whole_image():
    tools = make_tools(margin=1.0, fill=200)
    image = scene()
    grey = tools["CropFrontOf"](image=image, box=objects())
    assert grey.size == image.size and set(np.unique(np.asarray(grey))) == {200}
    mm = ModelManager(device="cpu")
    whole = make_tools(mm)["CropBehind"](image=image, box=Objects.empty(SIZE))
    assert whole is not image and whole.tobytes() == image.tobytes()
    assert mm.loaded() == []


def test_one_depth_map_per_image_and_batches_match_single_calls(monkeypatch):
    calls = []
    real_predict = depth_mod.predict

    def counting_predict(model, processor, images):
        calls.append((len(images), images[0].size))
        return real_predict(model, processor, images)

    monkeypatch.setattr(depth_mod, "predict", counting_predict)
    tools = make_tools()
    a, b, c = scene(), scene(seed=1), scene((90, 140))
    objs_a, objs_c = objects(), Objects([(10, 10, 50, 60)], (90, 140))
    batch = tools["Depth"].batch_fn([{"image": a, "object": objs_a}, {"image": b, "object": objs_a},
                                     {"image": c, "object": objs_c}])
    assert sorted(calls) == [(1, (90, 140)), (2, SIZE)]  # a and b share a pass; c has its own
    tools["CropFrontOf"](image=a, box=objs_a)  # a's map is kept: no new forward
    tools["CropBehind"].batch_fn([{"image": b, "box": objs_a}, {"image": c, "box": objs_c}])
    assert len(calls) == 2
    fresh = make_tools()
    for got, (im, o) in zip(batch, [(a, objs_a), (b, objs_a), (c, objs_c)]):
        alone = fresh["Depth"](image=im, object=o)
        assert [r.extra["depth"] for r in got] == pytest.approx([r.extra["depth"] for r in alone],
                                                                abs=1e-4)


@pytest.mark.parametrize("map_cache, runs", [(0, 3), (8, 1)])
def test_map_cache_zero_keeps_no_maps(monkeypatch, map_cache, runs):
    calls = []
    real_predict = depth_mod.predict
    monkeypatch.setattr(depth_mod, "predict",
                        lambda *a: calls.append(1) or real_predict(*a))
    tools = make_tools(map_cache=map_cache)
    image, objs = scene(), objects()
    first = tools["Depth"](image=image, object=objs)
    again = tools["Depth"](image=image, object=objs)
    tools["CropBehind"](image=image, box=objs)
    assert len(calls) == runs
    assert [r.extra["depth"] for r in again] == [r.extra["depth"] for r in first]
    assert "map_cache" not in tools["Depth"].settings  # speed only: not in the cache key


@pytest.mark.parametrize("settings, message", [
    ({"output": "metres"}, "output must be one of"), ({"margin": 2}, "margin"),
    ({"box_quantile": -0.1}, "box_quantile"), ({"fill": 300}, "fill"),
])
def test_bad_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        make_tools(**settings)


def test_flat_maps_put_everything_level():
    assert np.all(depth_mod.to_distance(np.ones((4, 5)), True) == 0.5)


def test_declarations():
    tools = make_tools()
    assert tools["Depth"].signature() == "Depth(image: Image, object: Objects) -> Objects"
    assert tools["CropBehind"].signature() == "CropBehind(image: Image, box: Objects) -> Image"
    assert all(callable(t.batch_fn) for t in tools.values())
    assert tools["CropFrontOf"].settings != make_tools(margin=0.2)["CropFrontOf"].settings


# -- in a program, and in the trace ---------------------------------------------------------

def test_program_with_depth_and_its_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "cache"))
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    out = vp.execute("""
THINGS=Loc(image=IMAGE, object='car')
NEAREST=Depth(image=IMAGE, object=THINGS)
VIEW=Crop(image=IMAGE, box=NEAREST)
FRONT=CropFrontOf(image=IMAGE, box=NEAREST)
N=Count(box=NEAREST)
FINAL=Result(var=N)
""", image=scene((320, 240)))
    nearest = out.trace["NEAREST"].output
    assert out.value == len(nearest) == len(out.trace["THINGS"].output) > 0
    assert [r.extra["depth"] for r in nearest] == sorted(r.extra["depth"] for r in nearest)
    html = out.trace.to_html()
    assert "depth_map" in html and "depth=" in html
    saved = out.trace.save_json(tmp_path / "trace.json")
    back = Trace.load_json(saved)["NEAREST"].output
    assert back[0].extra["depth_map"].tobytes() == nearest[0].extra["depth_map"].tobytes()
    assert [r.extra["depth"] for r in back] == [r.extra["depth"] for r in nearest]
