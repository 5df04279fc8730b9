"""Batch execution: same results and traces as lone runs, shared identical calls, chunking,
isolated failures, the cache, and the automatic batch size."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from visprog.engine.batch import AutoBatchSize, BatchRunner, FixedBatchSize, make_batch_size
from visprog.engine.cache import StepCache
from visprog.values.codec import digest
from visprog.errors import CheckError, ParseError, StepError
from visprog.engine.interpreter import Interpreter
from visprog.language.parser import parse
from visprog.registry import Registry, tool
from visprog.values import Objects


class Counting:
    """Batched test modules that record every batch they get."""

    def __init__(self):
        self.chunks: dict[str, list[int]] = {"Describe": [], "Detect": []}
        self.singles = 0
        self.samples = 0

    def tools(self):
        def describe_one(image, question):
            if question == "boom":
                raise RuntimeError("cannot answer boom")
            if question == "wrong type":
                return 42  # declared Text: check_output must catch it
            r, g, b = np.asarray(image).reshape(-1, 3).mean(0).round().astype(int)
            return f"{question}|{image.width}x{image.height}|{r},{g},{b}"

        @tool("Describe", params={"image": "Image", "question": "Text"}, returns="Text")
        def describe(image, question):
            self.singles += 1
            return describe_one(image, question)

        def describe_batch(calls):
            self.chunks["Describe"].append(len(calls))
            return [describe_one(**c) for c in calls]  # one bad call fails the whole chunk

        @tool("Detect", params={"image": "Image", "object": "Text"}, returns="Objects")
        def detect(image, object):  # noqa: A002
            self.singles += 1
            return detect_batch([{"image": image, "object": object}], count=False)[0]

        def detect_batch(calls, count=True):
            if count:
                self.chunks["Detect"].append(len(calls))
            out = []
            for c in calls:
                w, h = c["image"].size
                n = len(c["object"]) % 3  # 0, 1 or 2 objects, depending on the name
                boxes = [(i * w / 4, i * h / 4, w / 2 + i, h / 2 + i) for i in range(n)]
                out.append(Objects(boxes, (w, h), labels=[c["object"]] * n))
            return out

        @tool("Sample", params={"question": "Text"}, returns="Text", cacheable=False)
        def sample(question):
            self.samples += 1
            return f"{question}#{self.samples}"

        return [replace(describe, batch_fn=describe_batch),
                replace(detect, batch_fn=detect_batch), sample]


def plain_tools():
    from visprog.config import find_modules

    return find_modules(plugins=False).plain


def make_registry(counting: Counting) -> Registry:
    return Registry(plain_tools() + counting.tools())


def image(color, size=(40, 30)):
    return Image.new("RGB", size, color)


RED, BLUE = image((200, 10, 10)), image((10, 10, 200), (50, 20))

PROGRAMS = {
    "count": "BOX=Detect(image=IMAGE, object='car')\nN=Count(box=BOX)\n"
             "A=Eval(expr=\"'yes' if {N} > 0 else 'no'\")\nR=Result(var=A)",
    "crop_vqa": "BOX=Detect(image=IMAGE, object='car')\nIM=CropRightOf(image=IMAGE, box=BOX)\n"
                "A=Describe(image=IM, question='what color')\nR=Result(var=A)",
    "vqa": "A=Describe(image=IMAGE, question='what color')",
    "alias": "B=Detect(image=IMAGE, object='truck')\nC=B\nN=Count(box=C)\nX=N\n"
             "A=Describe(image=IMAGE, question='is it big')",
    "pair": "A=Describe(image=LEFT, question='left?')\nB=Describe(image=RIGHT, question='right?')\n"
            "R=Eval(expr='{A} == {B}')",
}


def items_for(names_images):
    out = []
    for name, img in names_images:
        inputs = {"LEFT": img, "RIGHT": BLUE} if name == "pair" else {"IMAGE": img}
        out.append((parse(PROGRAMS[name]), inputs))
    return out


MIXED = [("count", RED), ("crop_vqa", RED), ("vqa", BLUE), ("alias", RED), ("count", BLUE),
         ("crop_vqa", RED), ("pair", RED), ("vqa", RED), ("count", RED)]


def same_value(a, b) -> bool:
    return digest(a) == digest(b)


def assert_same_trace(lone, batched):
    assert len(lone.steps) == len(batched.steps)
    for x, y in zip(lone.steps, batched.steps):
        assert (x.index, x.line, x.source, x.target, x.module, x.arg_vars, x.cached, x.error,
                x.draw_on) == (y.index, y.line, y.source, y.target, y.module, y.arg_vars,
                               y.cached, y.error, y.draw_on)
        assert x.args.keys() == y.args.keys()
        assert all(same_value(x.args[k], y.args[k]) for k in x.args)
        assert same_value(x.output, y.output)
    assert lone.error == batched.error
    assert same_value(lone.result, batched.result)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 64, "auto"])
def test_batch_equals_lone_runs(batch_size):
    counting = Counting()
    registry = make_registry(counting)
    items = items_for(MIXED)
    results = BatchRunner(registry, batch_size=batch_size).run(items)
    lone = Interpreter(registry)
    assert [r.id for r in results] == list(range(len(items)))
    for (program, inputs), res in zip(items, results):
        value, trace = lone.run(program, inputs)
        assert res.ok, res.error
        assert same_value(value, res.value)
        assert_same_trace(trace, res.trace)
        assert all(s.duration >= 0 for s in res.trace.steps)


def test_identical_calls_run_once_and_are_counted():
    counting = Counting()
    runner = BatchRunner(make_registry(counting), batch_size=64)
    # 8 programs over 2 images: Detect(car) is asked 8 times but differs only by image
    items = items_for([("count", RED), ("crop_vqa", RED), ("count", BLUE), ("crop_vqa", BLUE)]
                      * 2)
    results = runner.run(items)
    assert all(r.ok for r in results)
    stats = runner.last_stats
    assert counting.chunks["Detect"] == [2]  # one batch: RED and BLUE
    assert stats.by_module["Detect"] == 2
    assert counting.chunks["Describe"] == [2]  # the two crops differ by image only
    assert stats.steps == 8 * 4 - 0  # every program has 4 call steps
    assert stats.shared == stats.steps - stats.module_calls
    assert stats.module_calls < stats.steps
    shared = [m for m in results[0].trace.meta["batch"] if m["step"] == 0][0]
    assert shared == {"step": 0, "chunk": 2, "shared": 4}
    # sharing gives the same object; not one from another image
    assert results[0].trace["BOX"].output is results[4].trace["BOX"].output
    assert results[0].trace["BOX"].output is not results[2].trace["BOX"].output


def test_batch_fn_gets_chunks_of_batch_size():
    counting = Counting()
    colours = [image((i * 30, 5, 5)) for i in range(7)]
    items = [(parse(PROGRAMS["vqa"]), {"IMAGE": c}) for c in colours]
    BatchRunner(make_registry(counting), batch_size=3).run(items)
    assert counting.chunks["Describe"] == [3, 3, 1]
    assert counting.singles == 0


def test_programs_wait_for_each_other_at_model_steps():
    """A program that is one plain step behind catches up, so Describe goes in one batch."""
    counting = Counting()
    items = [(parse(PROGRAMS["crop_vqa"]), {"IMAGE": RED}),
             (parse("A=Describe(image=IMAGE, question='q')"), {"IMAGE": BLUE}),
             (parse("B=Detect(image=IMAGE, object='ab')\nIM=Crop(image=IMAGE, box=B)\n"
                    "A=Describe(image=IM, question='q')"),
              {"IMAGE": BLUE})]
    results = BatchRunner(make_registry(counting), batch_size=8).run(items)
    assert all(r.ok for r in results), [r.error for r in results]
    assert counting.chunks["Detect"] == [2]
    assert counting.chunks["Describe"] == [3]


@pytest.mark.parametrize("question, message", [
    ("boom", "cannot answer boom"),
    ("wrong type", "declared Text"),
])
def test_failing_item_is_isolated(question, message):
    counting = Counting()
    registry = make_registry(counting)
    bad = parse(f"BOX=Detect(image=IMAGE, object='car')\nN=Count(box=BOX)\n"
                f"A=Describe(image=IMAGE, question='{question}')\nR=Result(var=A)")
    items = items_for(MIXED[:3]) + [(bad, {"IMAGE": RED})] + items_for(MIXED[3:])
    results = BatchRunner(registry, batch_size=64).run(items)
    failed = results[3]
    assert not failed.ok and isinstance(failed.error, StepError)
    assert message in str(failed.error)
    assert failed.error.index == 2 and failed.error.target == "A"
    assert failed.value is None
    assert [s.error is None for s in failed.trace.steps] == [True, True, False]
    assert failed.trace.steps[1].output == 0  # ("car": no objects) steps before the failure keep their outputs
    assert failed.trace.error == failed.trace.steps[2].error
    with pytest.raises(StepError) as lone_error:  # a lone run fails the same way
        Interpreter(registry).run(bad, {"IMAGE": RED})
    assert lone_error.value.trace.error == failed.trace.error
    lone = Interpreter(registry)
    for (program, inputs), res in zip(items[:3] + items[4:], results[:3] + results[4:]):
        assert res.ok
        assert same_value(lone.run(program, inputs)[0], res.value)


def test_batch_fn_with_wrong_output_count_is_retried_one_by_one():
    counting = Counting()
    registry = make_registry(counting)
    broken = registry.get("Describe")
    registry.register(replace(broken, batch_fn=lambda calls: ["only one"]), replace=True)
    items = [(parse(PROGRAMS["vqa"]), {"IMAGE": c}) for c in (RED, BLUE)]
    results = BatchRunner(registry, batch_size=4).run(items)
    assert all(r.ok for r in results)
    assert counting.singles == 2  # both calls went through the tool's single entry point


def test_check_error_is_per_item():
    counting = Counting()
    items = [(parse("A=Describe(image=IMAGE, question='q')"), {"IMAGE": RED}),
             (parse("A=Describe(image=MISSING, question='q')"), {"IMAGE": RED})]
    results = BatchRunner(make_registry(counting), batch_size=4).run(items)
    assert results[0].ok
    assert isinstance(results[1].error, CheckError) and results[1].trace.steps == []


def test_cache_is_honoured_like_the_interpreter():
    counting = Counting()
    registry = make_registry(counting)
    cache = StepCache(memory=True)
    items = items_for(MIXED)
    runner = BatchRunner(registry, cache, batch_size=8)
    first = runner.run(items)
    calls_after_first = sum(counting.chunks["Describe"]) + sum(counting.chunks["Detect"])
    second = runner.run(items)
    assert sum(counting.chunks["Describe"]) + sum(counting.chunks["Detect"]) == calls_after_first
    assert all(s.cached for r in second for s in r.trace.steps if s.module)
    assert not any(s.cached for r in first for s in r.trace.steps)
    assert runner.last_stats.cache_hits == runner.last_stats.steps
    lone = Interpreter(registry, cache)  # same cache: a lone run now hits too
    for (program, inputs), res in zip(items, second):
        assert_same_trace(lone.run(program, inputs)[1], res.trace)
    # use_cache=False and no_cache bypass it, as in Interpreter.run
    runner.run(items[:1], use_cache=False)
    assert not any(s.cached for s in runner.run(items[:1], no_cache=["detect"])[0].trace.steps
                   if s.module == "Detect")


def test_uncacheable_modules_are_never_shared():
    counting = Counting()
    items = [(parse("A=Sample(question='q')"), {}) for _ in range(3)]
    results = BatchRunner(make_registry(counting), StepCache(), batch_size=4).run(items)
    assert [r.value for r in results] == ["q#1", "q#2", "q#3"]


def test_on_item_reports_every_item_once():
    counting = Counting()
    seen = []
    items = items_for(MIXED) + [(parse("A=Describe(image=NOPE, question='q')"), {})]
    BatchRunner(make_registry(counting)).run(items, ids=list("abcdefghij"), on_item=seen.append)
    assert sorted(r.id for r in seen) == list("abcdefghij")


def test_run_batch_api_parses_binds_and_isolates(tmp_path):
    from visprog.api import VisProg

    counting = Counting()
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    for t in counting.tools():
        vp.register(t)
    RED.save(tmp_path / "red.png")
    items = [{"program": PROGRAMS["vqa"], "image": str(tmp_path / "red.png"), "id": "a"},
             {"program": PROGRAMS["vqa"], "image": str(tmp_path / "red.png"), "id": "b"},
             {"program": "A=(", "image": RED, "id": "c"},
             {"program": PROGRAMS["vqa"], "image": str(tmp_path / "missing.png"), "id": "d"},
             {"program": PROGRAMS["pair"], "left": RED, "right": BLUE, "id": "e"}]
    results = vp.run_batch(items, batch_size=4)
    assert [r.id for r in results] == list("abcde")
    assert results[0].value == results[1].value == "what color|40x30|200,10,10"
    assert isinstance(results[2].error, ParseError)
    assert results[3].error is not None and results[3].trace is None
    assert results[4].ok and results[4].value is False
    # a and b: one call (same path, same question); e's first step: the other
    assert counting.chunks["Describe"][0] == 2
    assert results[0].trace.meta["batch"][0]["shared"] == 2
    assert results[0].trace.meta["preset"] == "tiny"


def test_auto_batch_size_rule():
    cpu, gpu = AutoBatchSize("cpu"), AutoBatchSize("cuda:0")
    assert cpu.size("Vqa") == 1 and gpu.size("Vqa") == 8
    cpu.observe("Vqa", 1, 100.0)  # warm-up (model load): ignored
    assert cpu.size("Vqa") == 1
    cpu.observe("Vqa", 1, 1.0)
    assert cpu.size("Vqa") == 2  # measured at 1: try 2
    cpu.observe("Vqa", 2, 50.0)  # first chunk at a new size: ignored
    cpu.observe("Vqa", 2, 2.1)  # 1.05 s per call: no better
    assert cpu.size("Vqa") == 1
    cpu.observe("Vqa", 1, 0.01)  # settled: no more probing
    assert cpu.size("Vqa") == 1
    gpu.observe("Loc", 8, 9.0)
    gpu.observe("Loc", 8, 0.8)
    gpu.observe("Loc", 5, 0.01)  # a partial chunk says nothing
    assert gpu.size("Loc") == 16
    for size in (16, 32, 64):  # 0.05 s per call vs 0.1, then no worse: keep growing
        gpu.observe("Loc", size, 99.0)
        gpu.observe("Loc", size, 0.8)
    assert gpu.size("Loc") == 64
    assert gpu.sizes() == {"Loc": 64, "Vqa": 8}


@pytest.mark.parametrize("spec, expected", [(4, 4), ("4", 4), ("auto", None)])
def test_make_batch_size(spec, expected):
    sizer = make_batch_size(spec)
    assert (sizer.size("X") if expected else isinstance(sizer, AutoBatchSize)) in (expected, True)


@pytest.mark.parametrize("bad", [0, -1, "big", 2.5])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError):
        FixedBatchSize(bad) if not isinstance(bad, str) else make_batch_size(bad)
