"""Replace (tiny random Stable Diffusion inpainting, offline) and List (with a fake LLM client).

Replace's painted pixels are random-model noise; what is checked is the contract: same size
out, every pixel outside the dilated mask identical to the input, repeatable for a seed, the
image unchanged without objects. List is tested with a small scripted client object standing
in for the planner's LLM (SPEC allows a test double for the LLM).
"""
from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
from PIL import Image

from visprog.errors import ConfigError
from visprog.models import ToolContext
from visprog.tools import list_items
from visprog.tools import replace as rep
from visprog.models import ModelLoadError, ModelManager
from visprog.values import Objects, Region

HAS_SD = bool(find_spec("torch") and find_spec("diffusers") and find_spec("transformers"))

TINY_REPLACE = {"backend": "sd", "checkpoint": "tiny:sd_inpaint", "steps": 2, "resolution": 64,
                "mask_dilation": 2, "safety_checker": False, "seed": 0}
# the default backend: a tiny random SDXL inpainting pipeline (two text encoders, time ids)
TINY_SDXL = {**TINY_REPLACE, "backend": "sdxl", "checkpoint": "tiny:sdxl_inpaint"}


@pytest.fixture(scope="module")
def ctx():
    if not HAS_SD:  # List's tests below run without the models extra
        pytest.skip("Replace needs torch, transformers and diffusers")
    return ToolContext(models=ModelManager(device="cpu"))


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def tool(ctx, request):
    return rep.Replace.build(TINY_REPLACE if request.param == "sd" else TINY_SDXL, ctx)


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def ellipse_mask(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((xx - w * 0.6) / (w * 0.2)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2 <= 1


# -- Replace ----------------------------------------------------------------------------------

REPLACE_CASES = {  # name: (size, objects maker)
    "odd 97x61, one box": ((97, 61), lambda s: Objects([(10, 5, 40, 30)], s)),
    "tall 61x200, mask": ((61, 200), lambda s: Objects.from_regions((Region((0, 0, 1, 1),
                                                                          ellipse_mask(*s)),), s)),
    "wide 300x40, box + mask": ((300, 40), lambda s: Objects.from_regions(
        (Region((250, 0, 300, 40)), Region((0, 0, 1, 1), ellipse_mask(*s))), s)),
    "square 64x64, edge box": ((64, 64), lambda s: Objects([(50, 50, 64, 64)], s)),
}


@pytest.mark.parametrize("size, make", REPLACE_CASES.values(), ids=REPLACE_CASES.keys())
def test_replace_keeps_pixels_outside_the_mask(tool, size, make):
    image, objects = noise(*size), make(size)
    out = tool(image=image, object=objects, prompt="a red car")
    assert out.size == image.size and out.mode == "RGB"
    inside = rep.dilate(objects.union_mask(), TINY_REPLACE["mask_dilation"])
    before, after = np.asarray(image), np.asarray(out)
    assert np.array_equal(before[~inside], after[~inside])
    # the masked area was repainted (random weights: anything but the input)
    assert (before[objects.union_mask()] != after[objects.union_mask()]).any()
    assert np.array_equal(np.asarray(image), before)  # the input is untouched


def test_replace_same_seed_same_output_other_seed_differs(ctx, tool):
    image = noise(97, 61)
    objects = Objects([(20, 10, 70, 50)], image.size)
    a = tool(image=image, object=objects, prompt="a blue dog")
    b = tool(image=image, object=objects, prompt="a blue dog")
    base = TINY_REPLACE if "backend" not in tool.settings else TINY_SDXL
    c = rep.Replace.build({**base, "seed": 7}, ctx)(image=image, object=objects, prompt="a blue dog")
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("objects", [Objects.empty((97, 61)),
                                     Objects([(10, 10, 10, 30)], (97, 61))],
                         ids=["no objects", "zero-area box"])
def test_replace_nothing_to_paint_returns_an_unchanged_copy(tool, objects):
    image = noise(97, 61)
    out = tool(image=image, object=objects, prompt="a cat")
    assert out is not image and np.array_equal(np.asarray(out), np.asarray(image))


def test_replace_batch_equals_one_by_one(tool):
    images = [noise(97, 61, 1), noise(97, 61, 2), noise(50, 80, 3), noise(97, 61, 4)]
    calls = [{"image": im, "object": Objects([(5, 5, 40, 40)], im.size), "prompt": p}
             for im, p in zip(images, ["a red car", "a blue sky", "a dog", "a cat"])]
    calls[3]["object"] = Objects.empty(images[3].size)
    batch = tool.batch_fn(calls)
    for got, call in zip(batch, calls):
        one = np.asarray(tool(**call)).astype(int)
        # one model batch vs one by one: float sums in another order, at most 1-2 levels
        assert got.size == call["image"].size
        assert np.abs(np.asarray(got).astype(int) - one).max() <= 2


def test_replace_cacheable_only_with_a_fixed_seed(ctx, tool):
    assert tool.cacheable and tool.settings["seed"] == 0
    for seed in ("random", "", -1):
        sampling = rep.Replace.build({**TINY_REPLACE, "seed": seed}, ctx)
        assert not sampling.cacheable and sampling.settings["seed"] is None
    with pytest.raises(ValueError, match="seed"):
        rep.Replace.build({**TINY_REPLACE, "seed": 1.5}, ctx)


def test_replace_strength_is_099_for_sdxl_and_10_for_sd(ctx):
    # SDXL inpainting rarely works at strength 1.0 (its model card: stay below 1.0, 0.99 in
    # its example); SD 1.5 inpainting keeps 1.0, and the classic preset its cache keys
    from visprog.config import load_config

    assert load_config("default")["Replace"]["strength"] == "auto"
    assert rep.Replace.build(load_config("default")["Replace"], ctx).settings["strength"] == 0.99
    classic = rep.Replace.build(load_config("classic")["Replace"], ctx).settings["strength"]
    assert classic == 1.0 and isinstance(classic, float)
    assert rep.Replace.build({**TINY_SDXL, "strength": 0.5}, ctx).settings["strength"] == 0.5
    assert rep.Replace.build({**TINY_REPLACE, "strength": 0.99}, ctx).settings["strength"] == 0.99
    for bad in (0, 1.5, -0.1, "strong", True, None):
        with pytest.raises(ValueError, match="strength"):
            rep.Replace.build({**TINY_SDXL, "strength": bad}, ctx)
    # the pipeline gets it: diffusers denoises int(steps * strength) of the steps, so at 4
    # steps SDXL's UNet runs 3 times (1.0 would run it 4 times), SD's 4 times
    image = noise(64, 64)
    objects = Objects([(8, 8, 40, 40)], image.size)
    import torch
    from diffusers import UNet2DConditionModel

    for base, runs in ((TINY_SDXL, 3), (TINY_REPLACE, 4)):
        calls = []
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda mod, args, out: calls.append(1) if isinstance(mod, UNet2DConditionModel)
            else None)
        try:
            rep.Replace.build({**base, "steps": 4}, ctx)(image=image, object=objects, prompt="a red car")
        finally:
            hook.remove()
        assert len(calls) == runs, base["backend"]


def test_replace_bad_inputs(tool):
    image = noise(40, 30)
    with pytest.raises(ValueError, match="40x30"):
        tool(image=image, object=Objects([(0, 0, 5, 5)], (50, 50)), prompt="x")
    with pytest.raises(TypeError, match="prompt"):
        tool(image=image, object=Objects([(0, 0, 5, 5)], (40, 30)), prompt=3)


@pytest.mark.parametrize("size, res, want", [((97, 61), 64, (64, 40)), ((61, 200), 64, (16, 64)),
                                             ((1000, 10), 512, (512, 8)),
                                             ((640, 480), 512, (512, 384))])
def test_working_size_keeps_aspect_in_multiples_of_8(size, res, want):
    assert rep.working_size(size, res) == want


def test_replace_missing_checkpoint_names_it(tmp_path):
    missing = str(tmp_path / "no-such-inpainter")
    tool = rep.Replace.build({**TINY_REPLACE, "checkpoint": missing},
                     ToolContext(models=ModelManager(device="cpu")))
    image = noise(32, 32)
    with pytest.raises(ModelLoadError, match="no-such-inpainter"):
        tool(image=image, object=Objects([(0, 0, 9, 9)], image.size), prompt="a")


def test_replace_through_the_interpreter(ctx):
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    image = noise(97, 61)
    out = vp.execute("OBJ=Seg(image=IMAGE)\nIMG=Replace(image=IMAGE, object=OBJ, "
                     "prompt='a blue sky')\nRESULT=Result(var=IMG)", image=image)
    assert isinstance(out.value, Image.Image) and out.value.size == (97, 61)


# -- List -------------------------------------------------------------------------------------

class FakeReply:
    def __init__(self, text: str):
        self.text = text


class FakeLLM:
    """Answers with a scripted text and records what it was asked."""

    def __init__(self, text: str):
        self.text = text
        self.calls: list[tuple[list[dict], dict]] = []

    def chat(self, messages, **sampling):
        self.calls.append((messages, sampling))
        return FakeReply(self.text)

    def describe(self):
        return {"backend": "fake", "model": "scripted"}


PARSE_CASES = {
    "one per line": ("red\ngreen\nblue", 5, ["red", "green", "blue"]),
    "numbered with preamble": ("Here are the colors:\n1. Red\n2) Green\n(3) Blue\n", 5,
                               ["Red", "Green", "Blue"]),
    "bullets and bold": ("- **Paris**\n* Rome.\n• 'Berlin'", 5, ["Paris", "Rome", "Berlin"]),
    "comma list": ("apples, pears; plums.", 5, ["apples", "pears", "plums"]),
    "labelled comma list": ("Fruits: apples, pears", 5, ["apples", "pears"]),
    "dedup case-insensitive": ("Cat\ncat\nDog\n CAT ", 5, ["Cat", "Dog"]),
    "truncated to max": ("a1\nb2\nc3\nd4", 2, ["a1", "b2"]),
    "code fence": ("```\nx\ny\n```", 5, ["x", "y"]),
    "initials kept": ("1. A. Lincoln\n2. J. K. Rowling", 5, ["A. Lincoln", "J. K. Rowling"]),
    "years kept": ("1984\n2001", 5, ["1984", "2001"]),
    "empty": ("", 3, []),
}


@pytest.mark.parametrize("text, limit, want", PARSE_CASES.values(), ids=PARSE_CASES.keys())
def test_list_parse_items(text, limit, want):
    assert list_items.parse_items(text, limit) == want


def test_list_asks_the_llm_and_truncates():
    llm = FakeLLM("1. Mercury\n2. Venus\n3. Earth\n4. Mars")
    tool = list_items.List.build({"temperature": 0.0, "max_tokens": 64}, ToolContext(llm=llm))
    assert tool(query="planets of the solar system", max=3) == ["Mercury", "Venus", "Earth"]
    messages, sampling = llm.calls[0]
    assert "planets of the solar system" in messages[-1]["content"]
    assert "3" in messages[-1]["content"]
    assert sampling == {"temperature": 0.0, "max_tokens": 64}
    assert tool.cacheable and tool.settings["llm"] == {"backend": "fake", "model": "scripted"}


def test_list_batch_equals_one_by_one():
    tool = list_items.List.build({}, ToolContext(llm=FakeLLM("a\nb\nc")))
    calls = [{"query": "letters", "max": 2}, {"query": "more letters", "max": 5}]
    assert tool.batch_fn(calls) == [tool(**c) for c in calls] == [["a", "b"], ["a", "b", "c"]]


def test_list_without_llm_fails_clearly():
    tool = list_items.List.build({}, ToolContext(llm=None))
    with pytest.raises(ConfigError, match="List needs an LLM"):
        tool(query="colors", max=3)


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-2, ValueError), (2.5, ValueError),
                                      ("3", TypeError), (True, TypeError)])
def test_list_bad_max(bad, err):
    with pytest.raises(err):
        list_items.List.build({}, ToolContext(llm=FakeLLM("a")))(query="q", max=bad)


def test_list_sampling_temperature_is_not_cacheable():
    assert not list_items.List.build({"temperature": 0.7}, ToolContext(llm=FakeLLM("a"))).cacheable


def test_list_through_the_interpreter():
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False, plugins=False, llm=FakeLLM("red, green, blue"))
    out = vp.execute("C=List(query='primary colors of light', max=2)\nRESULT=Result(var=C)")
    assert out.value == ["red", "green"]
