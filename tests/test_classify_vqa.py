"""Classify and Vqa end to end with the tiny preset (small random SigLIP2, CLIP, BLIP and ViLT
models built offline and loaded through the real loaders), plus programs run through
`VisProg`. The chat VLM and endpoint backends of Vqa are in test_vqa_vlm.py."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from visprog.config import load_config  # noqa: E402
from visprog.errors import ConfigError  # noqa: E402
from visprog.models import ToolContext  # noqa: E402
from visprog.tools import classify as cls_mod  # noqa: E402
from visprog.tools import vqa as vqa_mod  # noqa: E402
from visprog.models import ModelManager  # noqa: E402
from visprog.values import Objects  # noqa: E402

CFG = load_config("tiny")


@pytest.fixture(scope="module")
def ctx():
    return ToolContext(models=ModelManager(device="cpu"))


def image(size=(160, 120), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def objects(size=(160, 120), n=4):
    w, h = size
    boxes = [(i * w / n, 0, (i + 1) * w / n, h) for i in range(n)]
    return Objects(boxes, size, labels=["face"] * n, scores=[0.9 - 0.1 * i for i in range(n)])


# -- pure helpers -----------------------------------------------------------------------------

@pytest.mark.parametrize("scores, pairs", [
    ([[0.9, 0.1], [0.8, 0.2]], [(0, 0), (1, 1)]),          # object 1 prefers 0 too, but 0 is taken
    ([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], [(0, 1), (1, 0)]),
    ([[0.3, 0.3, 0.4]], [(0, 2)]),
    (np.zeros((0, 2)), []),
])
def test_assign_one_to_one(scores, pairs):
    assert sorted(cls_mod.assign_one_to_one(np.asarray(scores, float))) == sorted(pairs)


@pytest.mark.parametrize("box, context, size", [
    ((10, 10, 50, 30), 0.0, (40, 20)),
    ((30, 20, 50, 30), 0.5, (40, 20)),       # 10 px and 5 px more on each side
    ((10, 10, 50, 30), 0.5, (70, 40)),       # ... clipped at the left and top
    ((0, 0, 200, 100), 0.5, (100, 50)),       # clipped to the image
    ((30, 30, 30, 30), 0.0, (1, 1)),          # zero-area box: still a 1x1 crop
    ((100, 50, 100, 50), 0.2, (1, 1)),        # on the far corner
])
def test_crop_region(box, context, size):
    assert cls_mod.crop_region(Image.new("RGB", (100, 50)), box, context).size == size


@pytest.mark.parametrize("raw, clean", [
    ("Yes", "yes"), ("  Two  Dogs. ", "two dogs"), ("red.", "red"), ("", ""), ("3", "3"),
])
def test_clean_answer(raw, clean):
    assert vqa_mod.clean_answer(raw) == clean


# -- Classify -----------------------------------------------------------------------------------

CLASSIFIERS = ["siglip2", "clip"]


def classifier(backend, ctx):
    return cls_mod.Classify.build({**CFG["Classify"], "backend": backend}, ctx)


@pytest.mark.parametrize("backend", CLASSIFIERS)
@pytest.mark.parametrize("n_objects, categories", [
    (4, ["dog", "cat"]), (2, ["dog", "cat", "car"]), (3, ["dog", "cat", "dog"]), (1, ["red car"]),
])
def test_classify_one_object_per_category(ctx, backend, n_objects, categories):
    objs = objects(n=n_objects)
    out = classifier(backend, ctx)(image=image(), object=objs, categories=categories)
    distinct = list(dict.fromkeys(categories))
    assert len(out) == min(n_objects, len(distinct))
    assert len(set(out.labels)) == len(out) and set(out.labels) <= set(distinct)
    in_boxes = [r.box for r in objs]
    assert len({r.box for r in out}) == len(out) and all(r.box in in_boxes for r in out)
    scores = [r.extra["class_score"] for r in out]
    assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
    for r in out:  # the detection score is kept
        assert r.score == objs[in_boxes.index(r.box)].score


@pytest.mark.parametrize("backend", CLASSIFIERS)
def test_classify_empty_inputs_load_no_model(backend):
    fresh = ToolContext(models=ModelManager(device="cpu"))
    tool = classifier(backend, fresh)
    assert len(tool(image=image(), object=Objects.empty((160, 120)), categories=["a"])) == 0
    assert len(tool(image=image(), object=objects(), categories=[])) == 0
    assert fresh.models.loaded() == []


@pytest.mark.parametrize("backend", CLASSIFIERS)
def test_classify_batch_equals_one_by_one(ctx, backend):
    tool = classifier(backend, ctx)
    calls = [{"image": image(seed=1), "object": objects(n=3), "categories": ["dog", "cat"]},
             {"image": image(seed=2), "object": objects(n=2), "categories": ["car", "person", "dog"]},
             {"image": image(seed=3), "object": objects(n=0), "categories": ["dog"]}]
    for call, got in zip(calls, tool.batch_fn(calls)):
        one = tool(**call)
        assert got.labels.tolist() == one.labels.tolist()
        assert [r.box for r in got] == [r.box for r in one]
        assert np.allclose([r.extra["class_score"] for r in got],
                           [r.extra["class_score"] for r in one], atol=1e-5)


@pytest.mark.parametrize("backend", CLASSIFIERS)
def test_classify_single_string_category_and_bad_input(ctx, backend):
    tool = classifier(backend, ctx)
    assert tool(image=image(), object=objects(), categories="dog").labels.tolist() == ["dog"]
    with pytest.raises(ValueError, match="size"):
        tool(image=image((10, 10)), object=objects(), categories=["dog"])


def test_classify_presets_and_settings(ctx):
    assert cls_mod.Classify.build(CFG["Classify"], ctx).settings == {
        "backend": "siglip2", "checkpoint": "tiny:siglip2", "prompt": "this is a photo of {}.",
        "crop_context": 0.1}
    # CLIP keeps today's keys, so its cache keys did not change
    assert classifier("clip", ctx).settings == {"checkpoint": "tiny:clip",
                                                "prompt": "a photo of {}", "crop_context": 0.1}
    assert load_config("default")["Classify"]["backend"] == "siglip2"
    assert cls_mod.Classify.build(load_config("classic")["Classify"], ctx).settings == {
        "checkpoint": "openai/clip-vit-base-patch32", "prompt": "a photo of {}",
        "crop_context": 0.1}
    assert classifier("clip", ctx).settings != cls_mod.Classify.build(
        {**CFG["Classify"], "backend": "clip", "prompt": "a {}"}, ctx).settings
    with pytest.raises(ConfigError, match="siglip2, clip"):
        classifier("blip", ctx)


def test_siglip2_keeps_the_crops_aspect_and_scores_each_pair_by_sigmoid(ctx):
    """NaFlex: a thin crop gets a thin patch grid (not a squashed square); the class scores
    are the sigmoids of SigLIP2's logits, independent per pair."""
    tool = cls_mod.Classify({**CFG["Classify"], "crop_context": 0.0}, ctx)
    bundle = ctx.models.get("siglip2", "tiny:siglip2", cls_mod.load_siglip2)
    crops = [Image.new("RGB", (320, 40)), Image.new("RGB", (40, 320))]
    shapes = bundle[1](images=crops, text=["a"], return_tensors="pt")["spatial_shapes"].tolist()
    assert shapes[0][1] > 4 * shapes[0][0] and shapes[1][0] > 4 * shapes[1][1]
    im, objs = image(), objects(n=2)
    import torch

    with torch.inference_mode():  # as the base runs forward
        logits = tool.forward([(im, objs, ["dog", "cat"])])[0]
    out = tool.postprocess((im, objs, ["dog", "cat"]), logits)
    want = 1 / (1 + np.exp(-logits))
    for r in out:
        row = [o.box for o in objs].index(r.box)
        assert np.isclose(r.extra["class_score"], want[row, ["dog", "cat"].index(r.label)])


# -- Vqa ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["blip", "vilt", "vlm"])
@pytest.mark.parametrize("size", [(97, 31), (640, 480), (300, 900)])
def test_vqa_answers_lower_case_text(ctx, backend, size):
    tool = vqa_mod.Vqa.build({**CFG["Vqa"], "backend": backend}, ctx)
    answer = tool(image=image(size), question="What color is the car?")
    assert isinstance(answer, str) and answer == vqa_mod.clean_answer(answer)
    if backend == "vilt":
        assert answer in vqa_mod.TINY_ANSWERS


@pytest.mark.parametrize("backend", ["blip", "vilt"])
def test_vqa_batch_equals_one_by_one(ctx, backend):
    tool = vqa_mod.Vqa.build({**CFG["Vqa"], "backend": backend}, ctx)
    calls = [{"image": image(seed=1), "question": "how many dogs are there?"},
             {"image": image(seed=2), "question": "is the car red?"},
             {"image": image(seed=3), "question": "what color?"}]
    assert tool.batch_fn(calls) == [tool(**c) for c in calls]
    assert tool.batch_fn([]) == []


def test_vqa_settings_and_bad_input(ctx):
    tool = vqa_mod.Vqa.build({**CFG["Vqa"], "backend": "vilt"}, ctx)
    assert tool.settings["checkpoint"] == "tiny:vilt" and tool.settings["backend"] == "vilt"
    assert vqa_mod.Vqa.build({**CFG["Vqa"], "checkpoint": "/m"}, ctx).settings["checkpoint"] == "/m"
    with pytest.raises(ValueError, match="question"):
        tool(image=image(), question=" ")
    with pytest.raises(ConfigError, match="blip, vilt"):
        vqa_mod.Vqa.build({**CFG["Vqa"], "backend": "gpt"}, ctx)


def test_build_without_settings_uses_default_checkpoints():
    tool = vqa_mod.Vqa.build({}, ToolContext())
    assert tool.settings["checkpoint"] == load_config("default")["Vqa"]["checkpoints"]["vlm"]
    assert tool.settings["checkpoint"] == "Qwen/Qwen3-VL-2B-Instruct"
    assert (cls_mod.Classify.build({}, ToolContext()).settings["checkpoint"]
            == "google/siglip2-base-patch16-naflex")


# -- through the interpreter ----------------------------------------------------------------------

api = pytest.importorskip("visprog.api")


def test_program_using_only_vqa_loads_one_model():
    vp = api.VisProg(preset="tiny", cache=False)
    out = vp.execute("ANSWER=Vqa(image=IMAGE, question='what color is the car?')\n"
                     "RESULT=Result(var=ANSWER)", image=image())
    assert isinstance(out.value, str) and out.value == out.value.lower()
    assert [m["kind"] for m in vp.models.loaded()] == ["vlm"]


def test_program_with_every_module_of_this_file():
    vp = api.VisProg(preset="tiny", cache=False, config={"Loc": {"box_threshold": 0.0}})
    program = ("OBJ0=Loc(image=IMAGE, object='dog')\n"
               "OBJ1=Select(image=IMAGE, object=OBJ0, query='dog,cat', category=None)\n"
               "OBJ2=Classify(image=IMAGE, object=OBJ0, categories=['dog', 'cat'])\n"
               "N=Count(box=OBJ1)\n"
               "ANSWER=Vqa(image=IMAGE, question='is there a dog?')\n"
               "RESULT=Result(var=OBJ2)")
    out = vp.execute(program, image=image((200, 150)))
    assert isinstance(out.value, Objects) and out.value.image_size == (200, 150)
    assert set(out.value.labels) <= {"dog", "cat"}
    kinds = sorted(m["kind"] for m in vp.models.loaded())
    assert kinds == ["mm_grounding_dino", "sam3", "siglip2", "vlm"], kinds
    assert isinstance(out.trace["ANSWER"].output, str)
