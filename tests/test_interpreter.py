"""Interpreter: results, aliases, step errors with their trace, inputs left alone, the cache."""
from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from visprog.engine.cache import StepCache
from visprog.errors import CheckError, StepError
from visprog.engine.interpreter import Interpreter
from visprog.language.parser import parse
from visprog.config import find_modules
from visprog.registry import Registry, tool
from visprog.values import Objects

CALLS: Counter = Counter()


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.clear()


@tool("FakeLoc", params={"image": "Image", "object": "Text"}, returns="Objects")
def fake_loc(image, object):
    """A test detector: fixed boxes by name ('car' -> two, 'dog' -> one, else none)."""
    CALLS["FakeLoc"] += 1
    w, h = image.size
    boxes = {"car": [(0, 0, w / 4, h / 4), (w / 2, h / 2, w, h)], "dog": [(1, 1, 5, 5)]}
    found = boxes.get(object, [])
    return Objects(found, image.size, labels=[object] * len(found),
                   scores=[0.9] * len(found))


@tool("Answer", params={"image": "Image", "question": "Text"}, returns="Text", draw_on=None)
def answer(image, question):
    """A test VQA: the question's first word, plus the image's mean grey level."""
    CALLS["Answer"] += 1
    return f"{question.split()[0]}:{int(np.asarray(image).mean())}"


@tool("Sample", params={"image": "Image"}, returns="Number", cacheable=False, draw_on=None)
def sample(image):
    """A test sampling module: must never be cached."""
    CALLS["Sample"] += 1
    return CALLS["Sample"]


@tool("Boom", params={"image": "Image"}, returns="Number", draw_on=None)
def boom(image):
    CALLS["Boom"] += 1
    raise RuntimeError("model exploded")


@tool("Liar", params={"image": "Image"}, returns="Objects")
def liar(image):
    """Declares Objects, returns a string."""
    return "not objects"


@tool("Dictish", params={"image": "Image"}, returns="Any", draw_on=None)
def dictish(image):
    """Returns a value the disk cache can't encode (kept in memory only)."""
    CALLS["Dictish"] += 1
    return {1: "int keys are not encodable"}


@tool("Flat", params={"image": "Image"}, returns="Objects")
def flat(image):
    """A detector that also finds boxes of no area (a line, a point), masks and all."""
    w, h = image.size
    masks = np.zeros((4, h, w), bool)
    masks[0, 2:6, 2:6] = True
    return Objects([(2, 2, 6, 6), (3, 3, 3, 9), (1, 4, 7, 4), (0, 0, 0, 0)], image.size,
                   labels=["sq", "vline", "hline", "point"], scores=[0.5, 1.0, 1.0, 1.0],
                   masks=masks, extra={"rank": [1, 2, 3, 4]})


def make_registry() -> Registry:
    tools = find_modules(plugins=False).plain
    return Registry(tools + [fake_loc, answer, sample, boom, liar, dictish, flat])


def gradient(w: int = 32, h: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture
def registry() -> Registry:
    return make_registry()


@pytest.fixture
def run(registry):
    interp = Interpreter(registry)

    def go(text, **inputs):
        return interp.run(parse(text), inputs or {"IMAGE": gradient()})

    return go


# -- results ----------------------------------------------------------------------------------

RESULT_CASES = [
    # (program, expected result)
    ("N=Eval(expr='1 + 2')", 3),
    ("A=Eval(expr='1')\nB=Eval(expr='2')", 2),  # no Result: the last step
    ("A=Eval(expr='1')\nR=Result(var=A)\nB=Eval(expr='2')", 1),  # the last Result wins over later steps
    ("A=Eval(expr='1')\nR=Result(var=A)\nB=Eval(expr='2')\nS=Result(var=B)", 2),
    ("A=Eval(expr='1')\nA=Eval(expr='{A} + 10')\nB=A", 11),  # re-assignment: reads see the newest
    ("A=Eval(expr='5')\nB=A\nC=B", 5),  # alias of an alias
    ("OBJ=FakeLoc(image=IMAGE, object='car')\nN=Count(box=OBJ)", 2),
    ("OBJ=FakeLoc(image=IMAGE, object='car')\nOBJ=FakeLoc(image=IMAGE, object='dog')\n"
     "N=Count(box=OBJ)", 1),
    ("OBJ=FakeLoc(image=IMAGE, object='cat')\nN=Count(box=OBJ)\n"
     "A=Eval(expr=\"'yes' if {N} > 0 else 'no'\")", "no"),
]


@pytest.mark.parametrize("text,expected", RESULT_CASES)
def test_results(run, text, expected):
    value, trace = run(text)
    assert value == expected
    assert trace.result == expected and trace.ok
    assert len(trace) == len(parse(text))


def test_an_empty_program_does_not_run(run):
    with pytest.raises(CheckError, match="the program has no steps"):
        run("# nothing")


def test_alias_of_an_input_is_the_input(run):
    img = gradient()
    value, trace = run("RESULT=IMAGE", IMAGE=img)
    assert value is img
    assert trace[0].module is None and trace[0].arg_vars == {"var": "IMAGE"}


def test_trace_records_args_outputs_and_lookup_by_target(run):
    img = gradient()
    value, trace = run("OBJ=FakeLoc(image=IMAGE, object='car')\nN=Count(box=OBJ)\n"
                       "A=Eval(expr='{N} * 2')", IMAGE=img)
    assert value == 4
    loc = trace["OBJ"]
    assert loc.module == "FakeLoc" and loc.args["image"] is img and loc.args["object"] == "car"
    assert loc.arg_vars == {"image": "IMAGE"} and isinstance(loc.output, Objects)
    assert trace["N"].args == {"box": loc.output} and trace["N"].output == 2
    assert trace[2].args == {"expr": "{N} * 2", "N": 2}  # Eval shows the variables it read
    assert [r.line for r in trace] == [1, 2, 3]
    assert all(r.duration >= 0 and not r.cached and r.ok for r in trace)


def test_on_step_sees_each_record(registry):
    seen = []
    Interpreter(registry).run(parse("A=Eval(expr='1')\nB=A"), {}, on_step=seen.append)
    assert [(r.index, r.target) for r in seen] == [(0, "A"), (1, "B")]


def test_run_checks_against_the_actual_inputs(registry):
    with pytest.raises(CheckError, match="undefined variable 'IMAGE'"):
        Interpreter(registry).run(parse("N=Answer(image=IMAGE, question='q')"), {})
    with pytest.raises(CheckError, match="IMAGE is Text"):
        Interpreter(registry).run(parse("N=Answer(image=IMAGE, question='q')"), {"IMAGE": "x"})
    assert CALLS["Answer"] == 0  # nothing ran


# -- failures -----------------------------------------------------------------------------------

def test_a_module_that_raises_gives_a_step_error_with_the_trace(run):
    text = ("OBJ=FakeLoc(image=IMAGE, object='car')\n"
            "N=Count(box=OBJ)\n"
            "\n"
            "X=Boom(image=IMAGE)\n"
            "Y=Eval(expr='{N} + 1')\n")
    with pytest.raises(StepError) as info:
        run(text)
    err = info.value
    assert (err.index, err.line, err.target, err.module) == (2, 4, "X", "Boom")
    assert isinstance(err.cause, RuntimeError) and err.__cause__ is err.cause
    assert "step 3 (line 4, X=Boom(...)) failed: model exploded" == str(err)
    trace = err.trace
    assert [r.target for r in trace] == ["OBJ", "N", "X"]  # nothing after the failure
    assert trace["N"].output == 2 and trace["OBJ"].ok  # earlier outputs are kept
    assert trace["X"].error == "RuntimeError: model exploded" and trace["X"].output is None
    assert trace.error == trace["X"].error and not trace.ok
    assert CALLS["Boom"] == 1


def test_a_tool_returning_the_wrong_type_is_a_step_error(run):
    with pytest.raises(StepError) as info:
        run("OBJ=Liar(image=IMAGE)\nN=Count(box=OBJ)")
    err = info.value
    assert (err.target, err.module, err.line) == ("OBJ", "Liar", 1)
    assert isinstance(err.cause, TypeError)
    assert "Liar returned Text" in str(err) and "declared Objects" in str(err)
    assert len(err.trace) == 1


def test_a_failing_step_is_not_cached(registry):
    interp = Interpreter(registry, StepCache(disk_dir=None))
    for _ in range(2):
        with pytest.raises(StepError):
            interp.run(parse("X=Boom(image=IMAGE)"), {"IMAGE": gradient()})
    assert CALLS["Boom"] == 2


# -- inputs are never mutated ------------------------------------------------------------------

MUTATION_PROGRAMS = [
    "OBJ=FakeLoc(image=IMAGE, object='car')\nA=ColorPop(image=IMAGE, object=OBJ)",
    "OBJ=FakeLoc(image=IMAGE, object='car')\nA=BgBlur(image=IMAGE, object=OBJ)",
    "OBJ=FakeLoc(image=IMAGE, object='car')\nA=Crop(image=IMAGE, box=OBJ)",
    "OBJ=FakeLoc(image=IMAGE, object='car')\nA=CropRightOf(image=IMAGE, box=OBJ)",
    "OBJ=FakeLoc(image=IMAGE, object='car')\nA=Tag(image=IMAGE, object=OBJ)",
]


@pytest.mark.parametrize("text", MUTATION_PROGRAMS)
@pytest.mark.parametrize("use_cache", [False, True])
def test_inputs_are_not_mutated(registry, text, use_cache):
    img = gradient()
    before = img.tobytes()
    interp = Interpreter(registry, StepCache(disk_dir=None))
    for _ in range(2):  # the second run may come from the cache
        value, trace = interp.run(parse(text), {"IMAGE": img}, use_cache=use_cache)
        assert isinstance(value, Image.Image) and value is not img
        value.paste((1, 2, 3), (0, 0, 4, 4))  # the caller scribbles on the result
    assert img.tobytes() == before
    assert trace.inputs["IMAGE"] is img


def test_cached_output_is_not_changed_by_the_caller(registry):
    interp = Interpreter(registry, StepCache(disk_dir=None))
    text = "OBJ=FakeLoc(image=IMAGE, object='car')\nA=ColorPop(image=IMAGE, object=OBJ)"
    img = gradient()
    first, _ = interp.run(parse(text), {"IMAGE": img})
    expected = first.tobytes()
    first.paste((1, 2, 3), (0, 0, 32, 24))
    second, trace = interp.run(parse(text), {"IMAGE": img})
    assert trace[1].cached and second.tobytes() == expected


# -- the cache ----------------------------------------------------------------------------------

GQA = ("OBJ=FakeLoc(image=IMAGE, object='car')\n"
       "IMG=Crop(image=IMAGE, box=OBJ)\n"
       "ANS=Answer(image=IMG, question='{q} color?')\n"
       "R=Result(var=ANS)\n")


def gqa(question: str) -> str:
    return GQA.replace("{q}", question)


def test_second_run_calls_no_module(registry, tmp_path):
    interp = Interpreter(registry, StepCache(disk_dir=tmp_path))
    img = gradient()
    first, t1 = interp.run(parse(gqa("what")), {"IMAGE": img})
    assert CALLS == Counter({"FakeLoc": 1, "Answer": 1})
    assert not any(r.cached for r in t1)
    second, t2 = interp.run(parse(gqa("what")), {"IMAGE": img.copy()})  # same pixels, new object
    assert second == first
    assert CALLS == Counter({"FakeLoc": 1, "Answer": 1})  # nothing called again
    assert [r.cached for r in t2] == [True, True, True, True]


def test_a_different_question_reuses_the_shared_steps(registry):
    interp = Interpreter(registry, StepCache(disk_dir=None))
    img = gradient()
    interp.run(parse(gqa("what")), {"IMAGE": img})
    _, trace = interp.run(parse(gqa("which")), {"IMAGE": img})
    assert [r.cached for r in trace] == [True, True, False, False]
    assert CALLS == Counter({"FakeLoc": 1, "Answer": 2})


def test_a_different_image_misses(registry):
    interp = Interpreter(registry, StepCache(disk_dir=None))
    interp.run(parse(gqa("what")), {"IMAGE": gradient(seed=1)})
    _, trace = interp.run(parse(gqa("what")), {"IMAGE": gradient(seed=2)})
    assert not any(r.cached for r in trace)
    assert CALLS == Counter({"FakeLoc": 2, "Answer": 2})


def test_defaults_and_spelling_share_an_entry(registry):
    interp = Interpreter(registry, StepCache(disk_dir=None))
    img = gradient()
    interp.run(parse("OBJ=FakeLoc(image=IMAGE, object='car')"), {"IMAGE": img})
    _, trace = interp.run(parse("O=fake_loc(IMAGE=IMAGE, Object='car')"), {"IMAGE": img})
    assert trace[0].cached and CALLS["FakeLoc"] == 1


def test_use_cache_false_runs_everything_and_stores_nothing(registry):
    cache = StepCache(disk_dir=None)
    interp = Interpreter(registry, cache)
    img = gradient()
    for _ in range(2):
        _, trace = interp.run(parse(gqa("what")), {"IMAGE": img}, use_cache=False)
        assert not any(r.cached for r in trace)
    assert CALLS == Counter({"FakeLoc": 2, "Answer": 2})
    _, trace = interp.run(parse(gqa("what")), {"IMAGE": img})
    assert not any(r.cached for r in trace)  # nothing was stored by the uncached runs


@pytest.mark.parametrize("names", [["Answer"], ["answer"], ["ANSWER", "NoSuchModule"]])
def test_no_cache_for_named_modules(registry, names):
    interp = Interpreter(registry, StepCache(disk_dir=None))
    img = gradient()
    for _ in range(3):
        _, trace = interp.run(parse(gqa("what")), {"IMAGE": img}, no_cache=names)
    assert [r.cached for r in trace] == [True, True, False, True]
    assert CALLS == Counter({"FakeLoc": 1, "Answer": 3})


def test_uncacheable_tools_are_never_cached(registry, tmp_path):
    text = "S=Sample(image=IMAGE)"
    img = gradient()
    interp = Interpreter(registry, StepCache(disk_dir=tmp_path))
    values = [interp.run(parse(text), {"IMAGE": img})[0] for _ in range(3)]
    values.append(Interpreter(registry, StepCache(disk_dir=tmp_path)).run(
        parse(text), {"IMAGE": img})[0])
    assert values == [1, 2, 3, 4] and CALLS["Sample"] == 4
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written to disk


def test_the_cache_is_shared_across_instances_through_disk(tmp_path):
    img = gradient()
    first = Interpreter(make_registry(), StepCache(disk_dir=tmp_path))
    value1, _ = first.run(parse(gqa("what")), {"IMAGE": img})
    second = Interpreter(make_registry(), StepCache(disk_dir=tmp_path))  # fresh memory
    value2, trace = second.run(parse(gqa("what")), {"IMAGE": gradient()})  # equal pixels
    assert value2 == value1
    assert all(r.cached for r in trace)
    assert CALLS == Counter({"FakeLoc": 1, "Answer": 1})


def test_unencodable_values_are_cached_in_memory_only(registry, tmp_path):
    text = "D=Dictish(image=IMAGE)"
    img = gradient()
    interp = Interpreter(registry, StepCache(disk_dir=tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interp.run(parse(text), {"IMAGE": img})
        _, trace = interp.run(parse(text), {"IMAGE": img})
    assert trace[0].cached and CALLS["Dictish"] == 1
    _, trace = Interpreter(registry, StepCache(disk_dir=tmp_path)).run(parse(text), {"IMAGE": img})
    assert not trace[0].cached and CALLS["Dictish"] == 2


@pytest.mark.parametrize("blocked", ["under a file", "is a file"])
def test_an_unusable_cache_dir_warns_and_the_run_succeeds(registry, tmp_path, blocked):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache_dir = blocker / "steps" if blocked == "under a file" else blocker
    interp = Interpreter(registry, StepCache(disk_dir=cache_dir))
    with pytest.warns(UserWarning, match="cache"):
        value, trace = interp.run(parse(gqa("what")), {"IMAGE": gradient()})
    assert value.startswith("what:") and trace.ok
    assert blocker.read_text() == "not a directory"


def test_no_cache_object_at_all(registry):
    interp = Interpreter(registry, None)
    for _ in range(2):
        interp.run(parse(gqa("what")), {"IMAGE": gradient()})
    assert CALLS == Counter({"FakeLoc": 2, "Answer": 2})


def test_a_warm_run_hashes_only_its_inputs(registry, monkeypatch):
    """Outputs read back from the cache keep the digest learnt when first hashed; the keys
    are the same as when everything is hashed by content (a fresh interpreter agrees)."""
    from visprog.values import codec

    hashed = []
    real = codec.digest
    monkeypatch.setattr(codec, "digest", lambda v: hashed.append(type(v).__name__) or real(v))
    cache = StepCache(disk_dir=None)
    interp = Interpreter(registry, cache)
    interp.run(parse(gqa("what")), {"IMAGE": gradient()})
    assert hashed.count("Image") == 2  # the input and the crop, each once
    hashed.clear()
    _, trace = interp.run(parse(gqa("what")), {"IMAGE": gradient()})
    assert all(r.cached for r in trace)
    assert hashed.count("Image") == 1  # the input only, not the cached crop
    hashed.clear()
    _, trace = Interpreter(registry, cache).run(parse(gqa("what")), {"IMAGE": gradient()})
    assert all(r.cached for r in trace) and hashed.count("Image") == 2


# -- what leaves a tool ------------------------------------------------------------------------

def test_regions_of_zero_area_are_dropped_as_they_leave_any_tool(run, registry):
    result, trace = run("F=Flat(image=IMAGE)\nN=Count(box=F)")
    found = trace["F"].output
    assert list(found.labels) == ["sq"] and result == 1  # counted without them
    assert found.extra["rank"].tolist() == [1] and found.masks.shape == (1, 24, 32)
    # in a batch of programs too (the same check on every call's output)
    from visprog.engine.core import run_chunk
    [(ok, value)] = run_chunk(registry.get("Flat"), [{"image": gradient()}])
    assert ok and list(value.labels) == ["sq"]
    # nothing to drop: the tool's own value passes through untouched
    fake = registry.get("FakeLoc")
    [(ok, cars)] = run_chunk(fake, [{"image": gradient(), "object": "car"}])
    assert ok and len(cars) == 2


def test_a_cache_entry_from_before_the_cleaning_leaves_the_cache_cleaned(registry):
    cache = StepCache(disk_dir=None)
    keys, real_put = [], cache.put
    cache.put = lambda key, value: keys.append(key) or real_put(key, value)
    interp = Interpreter(registry, cache)
    interp.run(parse("F=Flat(image=IMAGE)"), {"IMAGE": gradient()})
    [key] = keys
    raw = registry.get("Flat").fn(gradient())  # as an older version cached it: all four
    real_put(key, raw)
    _, trace = interp.run(parse("F=Flat(image=IMAGE)\nN=Count(box=F)"), {"IMAGE": gradient()})
    assert trace["F"].cached and list(trace["F"].output.labels) == ["sq"]
    assert trace["N"].output == 1
