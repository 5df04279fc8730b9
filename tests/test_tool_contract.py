"""The contract every tool keeps, checked for each tool of `VisProg(preset="tiny").registry`
(parametrized over the registry, so a new module is covered without being listed here):

- its declaration is valid: a CamelCase name the registry finds, arguments and output in the
  type vocabulary, a one-line doc, a signature that matches its function;
- its settings (part of the cache key) are plain JSON: they round-trip through json;
- a run through the public API gives a value of the declared type, and a second run comes
  from the cache, equal (or, for a sampling module, runs again);
- its batched entry point gives what one-by-one calls give, for calls on images of different
  sizes (Loc and Select padded such a batch into other boxes until they grouped it by size);
- building the registry loads no model and imports no model library;
- a wrong-typed argument (a value outside the vocabulary, which the checker lets through as
  `Any`) or Objects found in another image give a `StepError` naming the module, with the
  module's own message, never a library's.

Samples come from the declared types: an image, Loc-like Objects (boxes, labels, scores,
masks), texts, numbers, text lists; a few arguments whose type alone can't make a valid
value (an Eval expression, an emoji name) have one in `TEXT_FOR`. List asks the scripted
loopback LLM server of tests/llm_server.py through the real OpenAI client.
"""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from PIL import Image

from llm_server import ScriptedServer, scripted_client
from visprog.api import VisProg
from visprog.engine.cache import StepCache
from visprog.errors import StepError
from visprog.values import Objects, Tracks, Video, codec
from visprog.values.types import TYPES, fits, type_of

pytest.importorskip("torch")
pytest.importorskip("transformers")

# The tools, read once at collection (building the registry is cheap: no model loads).
REGISTRY = VisProg(preset="tiny", cache=False, plugins=False).registry
TOOLS = [t.name for t in REGISTRY]

# Three calls of a batch, on images of different sizes.
SIZES = [(160, 120), (96, 128), (200, 90)]
TEXTS = ["dog", "cat", "red car"]
TEXT_FOR = {  # arguments whose type alone can't make a valid value
    ("Eval", "expr"): ["'yes' if 2 > 1 else 'no'", "1 + 2", "'a' == 'b'"],
    ("Emoji", "emoji"): ["smiling_face_with_sunglasses", "face_with_tongue", "dog_face"],
    ("Vqa", "question"): ["what color is it?", "is there a dog?", "how many cats?"],
    ("VideoQa", "question"): ["what color is it?", "is there a dog?", "how many cats?"],
    ("List", "query"): ["kinds of dogs", "colours of cars", "farm animals"],
    ("Region", "box"): [[100, 200, 600, 900], [0, 0, 1000, 1000], [250.5, 10, 260, 990]],
}
LIST_REPLIES = ["beagle\npoodle\nboxer", "1. red\n2. blue", "cow, sheep; goat"]
# A value outside the type vocabulary (type_of says Any): the checker lets it through.
WRONG = [1, 2, 3]


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def loc_like(size: tuple[int, int]) -> Objects:
    """Two regions as a detector and a segmenter would give them: boxes, labels, scores and
    the boxes' masks."""
    w, h = size
    boxes = [(0.1 * w, 0.2 * h, 0.5 * w, 0.7 * h), (0.45 * w, 0.1 * h, 0.9 * w, 0.6 * h)]
    masks = []
    for x1, y1, x2, y2 in boxes:
        m = np.zeros((h, w), dtype=bool)
        m[int(y1):int(y2), int(x1):int(x2)] = True
        masks.append(m)
    return Objects(boxes, size, labels=["dog", "cat"], scores=[0.9, 0.6], masks=masks)


def clip_like(image: Image.Image) -> Video:
    """Three frames of 0.5 s: the image, then it shifted right by 4 and 8 pixels."""
    frames = [image] + [Image.fromarray(np.roll(np.asarray(image), 4 * k, axis=1))
                        for k in (1, 2)]
    return Video(frames, [0.0, 0.5, 1.0], sampling={"fps": 2.0})


def tracks_like(size: tuple[int, int]) -> Tracks:
    """Two objects over three frames: the first seen in frames 0 and 1, the second in 1 and 2."""
    w, h = size
    boxes = np.full((3, 2, 4), np.nan)
    boxes[:2, 0] = (0.1 * w, 0.2 * h, 0.5 * w, 0.7 * h)
    boxes[1:, 1] = (0.45 * w, 0.1 * h, 0.9 * w, 0.6 * h)
    return Tracks([1, 2], ["dog", "cat"], [0.0, 0.5, 1.0], end=1.5, frame_size=size,
                  boxes=boxes, scores=np.full((3, 2), 0.8))


def sample(tool_name: str, types: frozenset[str], name: str, image: Image.Image, i: int) -> Any:
    """A valid value of the declared types for call `i` (of the image passed)."""
    if "Image" in types:
        return image
    if "Objects" in types:
        return loc_like(image.size)
    if "Video" in types:
        return clip_like(image)
    if "Tracks" in types:
        return tracks_like(image.size)
    if "TextList" in types:
        return [TEXTS[i], TEXTS[(i + 1) % 3]]
    if "Text" in types or "Any" in types:
        return TEXT_FOR.get((tool_name, name), TEXTS)[i]
    if "Number" in types:
        return i + 2
    if "Bool" in types:
        return i % 2 == 0
    raise AssertionError(f"{tool_name}.{name}: no sample for {sorted(types)}")


def calls_for(tool, n: int = 3) -> list[dict[str, Any]]:
    calls = []
    for i in range(n):
        image = picture(i + 1, SIZES[i % len(SIZES)])
        calls.append({p.name: sample(tool.name, p.types, p.name, image, i)
                      for p in tool.params if p.required})
    return calls


def program_for(tool, call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`OUT=Tool(arg=A_ARG, ...)` with every argument bound as an input variable."""
    inputs = {f"A_{name.upper()}": value for name, value in call.items()}
    args = ", ".join(f"{name}=A_{name.upper()}" for name in call)
    return f"OUT={tool.name}({args})", inputs


def engine(replies: list[str], cache: Any = False) -> tuple[VisProg, ScriptedServer]:
    server = ScriptedServer(replies).start()
    return VisProg(preset="tiny", cache=cache, plugins=False,
                   llm=scripted_client(server)), server


@pytest.fixture(scope="module")
def vp():
    vp, server = engine(LIST_REPLIES * 20, cache=StepCache(memory=True))
    yield vp
    server.stop()


def same(a: Any, b: Any, where: str = "value") -> None:
    """Assert two outputs are the same value. Floats may differ by a few float32 ulps: a CPU
    kernel run on a batch sums in another order than on one item (CLIP in Classify)."""
    if isinstance(a, (Video, Tracks)):
        assert type(a) is type(b) and codec.digest(a) == codec.digest(b), where
    elif isinstance(a, Objects):
        assert isinstance(b, Objects), where
        assert a.image_size == b.image_size and len(a) == len(b), where
        assert list(a.labels) == list(b.labels), where
        assert np.allclose(a.boxes, b.boxes, atol=1e-3), where
        for k, (ra, rb) in enumerate(zip(a, b)):
            same(ra.score, rb.score, f"{where}[{k}].score")
            assert (ra.mask is None) == (rb.mask is None), where
            if ra.mask is not None:
                assert np.array_equal(ra.mask, rb.mask), f"{where}[{k}].mask"
            assert set(ra.extra) == set(rb.extra), where
            for key in ra.extra:
                same(ra.extra[key], rb.extra[key], f"{where}[{k}].extra[{key}]")
    elif isinstance(a, Image.Image):
        assert isinstance(b, Image.Image), where
        assert (a.mode, a.size) == (b.mode, b.size), where
        assert a.tobytes() == b.tobytes(), f"{where}: other pixels"
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{k}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, (int, float)) and np.isclose(a, b, rtol=1e-5, atol=1e-6), \
            f"{where}: {a!r} != {b!r}"
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


# -- the declaration ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", TOOLS)
def test_declaration_is_valid(vp, name):
    tool = vp.registry.get(name)
    assert name.isidentifier() and name[0].isupper(), "a CamelCase name"
    assert vp.registry.get(name.lower()) is tool and vp.registry.get(name.upper()) is tool
    assert tool.returns and tool.returns <= set(TYPES) and tool.returns != {"None"}
    names = [p.name for p in tool.params]
    assert len({n.lower() for n in names}) == len(names), "argument names differ"
    for p in tool.params:
        assert p.name.isidentifier() and p.types <= set(TYPES) and p.types != {"None"}, p.name
        if not p.required and p.default is None:
            assert "None" in p.types, f"{p.name} defaults to None but does not accept None"
    assert tool.doc.strip() and "\n" not in tool.doc, "a one-line doc (for prompts and help)"
    assert isinstance(tool.version, str) and tool.version
    assert isinstance(tool.cacheable, bool)
    assert tool.batch_fn is None or callable(tool.batch_fn)
    if tool.draw_on is not None:
        drawn = tool.param(tool.draw_on)
        assert drawn is not None and drawn.types & {"Image", "Video"}, \
            "draw_on names an Image (or Video) argument"
    assert tool.signature().startswith(f"{name}(")

    fn_params = inspect.signature(tool.fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in fn_params.values()):
        return  # e.g. a hosted twin: its remote end has the real signature
    refs = any(p.refs for p in tool.params)
    for p in tool.params:
        assert p.name in fn_params, f"{p.name} is declared but not a parameter of the function"
        default = fn_params[p.name].default
        if not p.required and default is not inspect.Parameter.empty:
            assert default == p.default, f"{p.name}: declared default {p.default!r}, fn {default!r}"
    for pname, fp in fn_params.items():
        if fp.default is inspect.Parameter.empty and fp.kind is not fp.VAR_POSITIONAL:
            assert pname in names or (refs and pname == "variables"), \
                f"the function needs {pname!r}, which is not declared"


@pytest.mark.parametrize("name", TOOLS)
def test_settings_serialise(vp, name):
    settings = dict(vp.registry.get(name).settings)
    assert all(isinstance(k, str) for k in settings)
    text = json.dumps(settings, sort_keys=True, allow_nan=False)
    assert json.loads(text) == settings, "settings survive a JSON round trip unchanged"
    assert json.dumps(json.loads(text), sort_keys=True) == text


def test_building_the_registry_loads_no_model():
    """In a fresh interpreter: after building the tiny registry (and asking every tool for its
    signature and settings, as `visprog tools` and the prompts do) no model is loaded and no
    model library is imported."""
    script = (
        "import json, sys\n"
        "from visprog.api import VisProg\n"
        "vp = VisProg(preset='tiny', cache=False, plugins=False)\n"
        "tools = [(t.signature(), json.dumps(dict(t.settings))) for t in vp.registry]\n"
        "heavy = ('torch', 'transformers', 'diffusers', 'cv2', 'skimage', 'scipy', 'ray')\n"
        "print(json.dumps({'tools': len(tools), 'events': vp.models.events,\n"
        "                  'loaded': vp.models.loaded(),\n"
        "                  'imported': [m for m in heavy if m in sys.modules]}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["tools"] == len(TOOLS)
    assert report["events"] == [] and report["loaded"] == []
    assert report["imported"] == []


# -- running -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TOOLS)
def test_a_run_gives_the_declared_type_and_is_cached(vp, name):
    tool = vp.registry.get(name)
    program, inputs = program_for(tool, calls_for(tool, 1)[0])
    first = vp.execute(program, inputs=inputs)
    assert fits({type_of(first.value)}, tool.returns), \
        f"{name} returned {type_of(first.value)}, declared {sorted(tool.returns)}"
    again = vp.execute(program, inputs=inputs)
    assert again.trace["OUT"].cached is tool.cacheable
    same(again.value, first.value)


@pytest.mark.parametrize("name", TOOLS)
def test_batch_equals_one_by_one(vp, name):
    tool = vp.registry.get(name)
    if tool.batch_fn is None:
        pytest.skip(f"{name} has no batched entry point")
    if name == "List":  # its own server, answering the singles and then the batch alike
        vp, server = engine(LIST_REPLIES * 2)
        tool = vp.registry.get(name)
    calls = calls_for(tool)
    try:
        singles = [tool.fn(**c) for c in calls]
        batched = list(tool.batch_fn([dict(c) for c in calls]))
    finally:
        if name == "List":
            server.stop()
    assert len(batched) == len(calls)
    for i, (one, many) in enumerate(zip(singles, batched)):
        same(many, one, f"{name} call {i}")


# -- bad input ---------------------------------------------------------------------------------

WRONG_TYPED = [(t.name, p.name) for t in REGISTRY for p in t.params
               if p.required and "Any" not in p.types]
WITH_OBJECTS = [t.name for t in REGISTRY
                if any("Image" in p.types for p in t.params if p.required)
                and any("Objects" in p.types for p in t.params if p.required)]


def assert_own_error(err: StepError, name: str, *words: str) -> None:
    """The step error names the module, and its cause is the module's own clear message: a
    builtin or visprog exception that says what is wrong, not a library's traceback."""
    assert err.module == name
    cause = err.cause
    assert cause is not None
    origin = type(cause).__module__
    assert origin == "builtins" or origin.startswith("visprog"), \
        f"{name} let a {origin}.{type(cause).__name__} out: {cause}"
    text = str(cause)
    assert "Traceback" not in text and 'File "' not in text
    assert any(w.lower() in text.lower() for w in words), text


@pytest.mark.parametrize("name, param", WRONG_TYPED, ids=[f"{n}-{p}" for n, p in WRONG_TYPED])
def test_wrong_typed_argument_is_a_step_error(vp, name, param):
    tool = vp.registry.get(name)
    call = calls_for(tool, 1)[0]
    call[param] = WRONG
    program, inputs = program_for(tool, call)
    with pytest.raises(StepError) as err:
        vp.execute(program, inputs=inputs)
    assert_own_error(err.value, name, name, param, "list")
    assert err.value.trace.steps[-1].error


@pytest.mark.parametrize("name", WITH_OBJECTS)
def test_objects_of_another_image_are_refused(vp, name):
    tool = vp.registry.get(name)
    call = calls_for(tool, 1)[0]
    for p in tool.params:
        if p.required and "Objects" in p.types:
            call[p.name] = loc_like((80, 60))       # the image is 160x120
    program, inputs = program_for(tool, call)
    with pytest.raises(StepError) as err:
        vp.execute(program, inputs=inputs)
    assert_own_error(err.value, name, "80")
