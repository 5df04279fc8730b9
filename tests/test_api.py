"""The Python facade: VisProg on paths, PIL images and numpy arrays; pairs; extra inputs;
registering modules; checking; saving traces; the cache through the facade."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from visprog.api import RunResult, VisProg
from visprog.errors import CheckError, ImageError, ParseError, StepError
from visprog.registry import tool
from visprog.traces.records import Trace
from visprog.values import Objects

CALLS: Counter = Counter()

HALVES = ("L=Loc(image=IMAGE, object='LEFT')\n"
          "N=Count(box=L)\n"
          "IMG=ColorPop(image=IMAGE, object=L)\n"
          "R=Result(var=N)\n")


@tool("MeanGrey", params={"image": "Image"}, returns="Number", draw_on=None)
def mean_grey(image):
    """A test module: the image's mean grey level, rounded."""
    CALLS["MeanGrey"] += 1
    return round(float(np.asarray(image.convert("L")).mean()))


@tool("Scribble", params={"image": "Image"}, returns="Image")
def scribble(image):
    """A badly behaved test module that draws on its input."""
    image.paste((255, 0, 0), (0, 0, 4, 4))
    return image.copy()


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.clear()


@pytest.fixture(scope="module")
def vp() -> VisProg:
    return VisProg(preset="tiny", cache=False)


def photo(w: int = 40, h: int = 30, value: int = 100) -> Image.Image:
    return Image.new("RGB", (w, h), (value, value, value))


def test_image_as_path_pil_and_numpy(vp, tmp_path):
    path = tmp_path / "in.png"
    photo().save(path)
    sources = [str(path), path, path.read_bytes(), photo(), np.full((30, 40, 3), 100, np.uint8),
               photo().convert("RGBA"), np.full((30, 40), 100, np.uint8)]
    for source in sources:
        out = vp.execute(HALVES, image=source)
        assert isinstance(out, RunResult)
        assert out.value == 1
        assert out.trace["L"].output.boxes.tolist() == [[0.0, 0.0, 20.0, 30.0]]
        assert out.trace["IMG"].output.size == (40, 30)
        assert out.program[0].module == "Loc" and out.trace.meta["preset"] == "tiny"


def test_program_may_be_parsed_already(vp):
    prog = vp.parse(HALVES)
    assert vp.parse(prog) is prog
    assert vp.execute(prog, image=photo()).value == 1


def test_left_and_right(vp):
    text = ("A=Loc(image=LEFT, object='TOP')\n"
            "B=Loc(image=RIGHT, object='BOTTOM')\n"
            "NA=Count(box=A)\nNB=Count(box=B)\n"
            "ANS=Eval(expr='{NA} + {NB}')\n")
    out = vp.execute(text, left=photo(40, 30), right=photo(10, 20))
    assert out.value == 2
    assert out.trace["A"].output.boxes.tolist() == [[0.0, 0.0, 40.0, 15.0]]
    assert out.trace["B"].output.boxes.tolist() == [[0.0, 10.0, 10.0, 20.0]]
    assert set(out.trace.inputs) == {"LEFT", "RIGHT"}


def test_extra_inputs(vp):
    text = "ANS=Eval(expr=\"'yes' if {WORD} == 'cat' else 'no'\")"
    assert vp.execute(text, inputs={"WORD": "cat"}).value == "yes"
    assert vp.execute(text, inputs={"WORD": "dog"}).value == "no"
    # an image bound under another name is read like IMAGE
    out = vp.execute("P=Loc(image=PHOTO, object='RIGHT')",
                     inputs={"PHOTO": np.zeros((8, 12, 3), np.uint8)})
    assert out.trace.inputs["PHOTO"].mode == "RGB"
    assert out.value.boxes.tolist() == [[6.0, 0.0, 12.0, 8.0]]


def test_inputs_are_exactly_what_the_caller_binds(vp):
    with pytest.raises(CheckError, match="undefined variable 'IMAGE'"):
        vp.execute(HALVES, left=photo())
    with pytest.raises(CheckError, match="'WORD' takes|WORD is Number|undefined"):
        vp.execute("N=Count(box=WORD)", inputs={"WORD": 3})


def test_errors_before_running(vp):
    with pytest.raises(ParseError):
        vp.execute("A=Loc(image=IMAGE", image=photo())
    with pytest.raises(CheckError) as info:
        vp.execute("A=Lco(image=IMAGE, object='x')\nN=Count(box=IMAGE)", image=photo())
    assert len(info.value.diagnostics) == 2
    assert "did you mean 'Loc'?" in str(info.value)
    with pytest.raises(ImageError, match="not found"):
        vp.execute(HALVES, image="/no/such/image.png")


def test_max_pixels(tmp_path):
    small = VisProg(preset="tiny", cache=False, max_pixels=100, plugins=False)
    with pytest.raises(ImageError, match="over the limit of 100"):
        small.execute(HALVES, image=photo())
    assert small.execute(HALVES, image=photo(10, 10)).value == 1


def test_check(vp):
    assert vp.check(HALVES) == []
    problems = vp.check("N=Count(box=IMAGE)\nM=Count(box=X)")
    assert [(d.line, d.column) for d in problems] == [(1, 9), (2, 9)]
    assert vp.check("N=Count(box=OBJ)", {"OBJ": "Objects"}) == []
    with pytest.raises(ParseError):
        vp.check("N=Count(")


def test_register_a_module():
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    assert vp.register(mean_grey) is mean_grey
    assert "MeanGrey" in [t.name for t in vp.tools]
    assert vp.execute("G=mean_grey(image=IMAGE)", image=photo(value=77)).value == 77
    with pytest.raises(Exception, match="already registered"):
        vp.register(mean_grey)

    @tool("MeanGrey", params={"image": "Image"}, returns="Number")
    def always_one(image):
        return 1
    vp.register(always_one, replace=True)
    assert vp.execute("G=MeanGrey(image=IMAGE)", image=photo()).value == 1


def test_a_module_that_draws_on_its_input_cannot_touch_the_callers_image():
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    vp.register(scribble)
    for source in (photo(), np.full((30, 40, 3), 100, np.uint8)):
        before = np.asarray(source).copy()
        vp.execute("A=Scribble(image=IMAGE)", image=source)
        assert np.array_equal(np.asarray(source), before)


def test_a_failing_step_through_the_facade():
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    vp.register(tool("Fails", params={"image": "Image"}, returns="Number")(
        lambda image: 1 / 0))
    with pytest.raises(StepError) as info:
        vp.execute("L=Loc(image=IMAGE, object='TOP')\nX=Fails(image=IMAGE)", image=photo())
    assert info.value.module == "Fails" and info.value.line == 2
    assert info.value.trace["L"].output is not None and "ZeroDivisionError" in info.value.trace.error


def test_save_html_and_json(vp, tmp_path):
    out = vp.execute(HALVES + "T=Eval(expr=\"'<b>&'\")\n", image=photo())
    html = out.save_html(tmp_path / "t.html")
    text = html.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html")
    assert "&lt;b&gt;&amp;" in text and "<b>&'" not in text
    for inline in (False, True):
        path = out.save_json(tmp_path / f"t{inline}.json", inline=inline)
        json.loads(path.read_text())  # valid JSON
        back = Trace.load_json(path)
        assert [r.target for r in back] == ["L", "N", "IMG", "R", "T"]
        assert back["N"].output == back.result == 1 and back["T"].output == "<b>&"
        assert isinstance(back["L"].output, Objects)
        assert back["IMG"].output.tobytes() == out.trace["IMG"].output.tobytes()


# -- the cache through the facade -------------------------------------------------------------

COUNTED = "L=Loc(image=IMAGE, object='LEFT')\nIMG=Crop(image=IMAGE, box=L)\nG=MeanGrey(image=IMG)"


def counting_vp(**kwargs) -> VisProg:
    vp = VisProg(preset="tiny", plugins=False, **kwargs)
    vp.register(mean_grey)
    return vp


def test_cache_on_disk_across_instances(tmp_path):
    first = counting_vp(cache_dir=tmp_path / "c")
    assert first.execute(COUNTED, image=photo()).value == 100
    again = first.execute(COUNTED, image=photo())
    assert all(r.cached for r in again.trace) and CALLS["MeanGrey"] == 1
    fresh = counting_vp(cache_dir=tmp_path / "c").execute(COUNTED, image=photo())
    assert all(r.cached for r in fresh.trace) and CALLS["MeanGrey"] == 1
    assert (tmp_path / "c").is_dir()


def test_default_cache_dir_follows_the_environment(tmp_cache):
    vp = counting_vp()
    vp.execute(COUNTED, image=photo())
    assert any(p.is_file() for p in tmp_cache.rglob("*"))


def test_per_run_switches(tmp_path):
    vp = counting_vp(cache_dir=tmp_path)
    vp.execute(COUNTED, image=photo())
    out = vp.execute(COUNTED, image=photo(), use_cache=False)
    assert not any(r.cached for r in out.trace) and CALLS["MeanGrey"] == 2
    out = vp.execute(COUNTED, image=photo(), no_cache=["meangrey"])
    assert [r.cached for r in out.trace] == [True, True, False] and CALLS["MeanGrey"] == 3


def test_cache_false_means_no_cache():
    vp = counting_vp(cache=False)
    assert vp.cache is None
    for _ in range(2):
        out = vp.execute(COUNTED, image=photo())
    assert not any(r.cached for r in out.trace) and CALLS["MeanGrey"] == 2


def test_an_unwritable_cache_dir_warns_and_the_run_succeeds(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    vp = counting_vp(cache_dir=blocker / "cache")
    with pytest.warns(UserWarning, match="cache"):
        out = vp.execute(COUNTED, image=photo())
    assert out.value == 100 and out.trace.ok


def test_run_batch_takes_program_texts(vp):
    """A program text is an item of its own (no inputs); a mapping or a query value beside
    it keeps its inputs (issue 20 item 14)."""
    results = vp.run_batch([{"program": HALVES, "image": photo()}, "N=Eval(expr='2 * 3')",
                            "P=Loc(image=IMAGE, object='dog')", vp.image(photo()).loc("LEFT")])
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[0].value == 1 and results[1].value == 6 and results[1].id == 1
    assert "the input IMAGE was not given" in str(results[2].error)
    assert "image=... in Python" in str(results[2].error)
    with pytest.raises(TypeError, match="run_batch item 1: unknown key 'imgae'"):
        vp.run_batch([{"program": HALVES}, {"program": HALVES, "imgae": photo()}])
    with pytest.raises(TypeError, match="run_batch item 0: expected a mapping.*got int"):
        vp.run_batch([3])


def test_a_forgotten_input_says_how_to_pass_it(vp):
    with pytest.raises(CheckError, match="the input IMAGE was not given") as e:
        vp.execute(HALVES)
    assert "image=... in Python" in str(e.value) and "--image PATH" in str(e.value)
    assert "quotes" not in str(e.value)
