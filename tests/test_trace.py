"""Traces: inspection, JSON round trip (files and inline), load errors, HTML page, drawing."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from visprog.traces.draw import draw_objects, mask_to_image, thumbnail
from visprog.errors import VisProgError
from visprog.traces.events import Event, ModelEvent
from visprog.traces.records import StepRecord, Trace
from visprog.traces.json_io import ReprValue, TraceLoadError, save_trace

load_trace = Trace.load_json
from visprog.values import Objects, Region

PROGRAM = ("OBJ0=Loc(image=IMAGE, object='cat')\n"
           "IMAGE0=Crop(image=IMAGE, box=OBJ0)\n"
           "ANSWER0=Vqa(image=IMAGE0, question='What colour is the cat?')\n"
           "FINAL=Result(var=ANSWER0)")
XSS_LABEL = "<script>alert(1)</script>"
ANSWER = 'a "quoted" & <odd> answer'


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _objects(size=(96, 64)) -> Objects:
    w, h = size
    mask = np.zeros((h, w), bool)
    mask[10:30, 5:40] = True
    return Objects.from_regions((
        Region(box=(5.0, 10.0, 40.0, 30.0), mask=mask, label="cat", score=0.91,
               extra={"source": "owlv2", "rank": 1}),
        Region(box=(50.5, 0.0, 96.0, 64.0), label=XSS_LABEL, score=0.4),
        Region(box=(0.0, 0.0, 0.0, 0.0)),  # zero area, no label, no score
    ), size)


def _trace(*, failed: bool = False) -> Trace:
    image = _photo()
    objs = _objects()
    crop = image.crop((5, 10, 40, 30))
    steps = [
        StepRecord(0, 1, "OBJ0=Loc(image=IMAGE, object='cat')", "OBJ0", "Loc",
                   args={"image": image, "object": "cat"}, arg_vars={"image": "IMAGE"},
                   output=objs, duration=0.12, draw_on="image"),
        StepRecord(1, 2, "IMAGE0=Crop(image=IMAGE, box=OBJ0)", "IMAGE0", "Crop",
                   args={"image": image, "box": objs}, arg_vars={"image": "IMAGE", "box": "OBJ0"},
                   output=crop, duration=0.001, cached=True, draw_on="image"),
    ]
    if failed:
        steps.append(StepRecord(2, 3, "ANSWER0=Vqa(image=IMAGE0, question='What colour is the cat?')",
                                "ANSWER0", "Vqa", args={"image": crop, "question": "What colour?"},
                                arg_vars={"image": "IMAGE0"}, error="CUDA out of <memory> & more"))
        return Trace(PROGRAM, steps, inputs={"IMAGE": image}, error="step 3 failed: CUDA out of <memory>",
                     events=[Event("plan", {"attempt": 1, "text": "<i>plan</i>"})])
    steps += [
        StepRecord(2, 3, "ANSWER0=Vqa(image=IMAGE0, question='What colour is the cat?')", "ANSWER0",
                   "Vqa", args={"image": crop, "question": "What colour is the cat?"},
                   arg_vars={"image": "IMAGE0"}, output=ANSWER, duration=0.5),
        StepRecord(3, 4, "FINAL=Result(var=ANSWER0)", "FINAL", "Result",
                   args={"var": ANSWER}, arg_vars={"var": "ANSWER0"}, output=ANSWER),
    ]
    return Trace(PROGRAM, steps, inputs={"IMAGE": image, "n": 3}, result=ANSWER,
                 events=[Event("plan", {"attempt": 1, "ok": True, "text": "OBJ0=..."}),
                         ModelEvent("load", "owlv2", "tiny:owlv2", seconds=1.5)],
                 meta={"preset": "tiny", "seed": 0, "tags": ["a", "b"],
                       "pair": (1, 2), "inf": math.inf, "weird": {"$type": "not mine"},
                       "arr": np.arange(6, dtype=np.int16).reshape(2, 3), "obj": object()})


# -- inspection -------------------------------------------------------------------------

def test_inspection_by_index_and_target():
    t = _trace()
    assert len(t) == 4 and t.ok
    assert t[0].module == "Loc" and t[-1].target == "FINAL"
    assert t["OBJ0"] is t[0]
    assert t["IMAGE0"].inputs["box"] is t[0].output
    assert t.duration == pytest.approx(0.621)


def test_inspection_unknown_target_names_targets():
    with pytest.raises(KeyError, match=r"no step wrote 'NOPE'.*OBJ0"):
        _trace()["NOPE"]


# -- JSON round trip ---------------------------------------------------------------------

def _same_value(a, b):
    if isinstance(a, Image.Image):
        assert isinstance(b, Image.Image) and a.size == b.size and a.mode == b.mode
        assert np.array_equal(np.asarray(a), np.asarray(b))
    elif isinstance(a, Objects):
        assert isinstance(b, Objects) and a.image_size == b.image_size and len(a) == len(b)
        assert np.array_equal(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist() and a.scores.tolist() == b.scores.tolist()
        assert a.has_score.tolist() == b.has_score.tolist()
        for ra, rb in zip(a, b):
            assert (ra.mask is None) == (rb.mask is None)
            if ra.mask is not None:
                assert rb.mask.dtype == bool and np.array_equal(ra.mask, rb.mask)
            assert dict(ra.extra) == dict(rb.extra)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _same_value(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same_value(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    elif type(a) is object:
        assert isinstance(b, ReprValue) and b.type_name == "builtins.object"
    else:
        assert a == b and type(a) is type(b)


def _same_trace(a: Trace, b: Trace):
    assert a.program == b.program and a.error == b.error and len(a) == len(b)
    for sa, sb in zip(a, b):
        for f in ("index", "line", "source", "target", "module", "arg_vars", "duration",
                  "cached", "error", "draw_on"):
            assert getattr(sa, f) == getattr(sb, f), f
        _same_value(sa.args, sb.args)
        _same_value(sa.output, sb.output)
    for f in ("inputs", "result", "events", "meta"):
        _same_value(getattr(a, f), getattr(b, f))


@pytest.mark.parametrize("inline", [False, True])
@pytest.mark.parametrize("failed", [False, True])
def test_json_round_trip(tmp_path, inline, failed):
    t = _trace(failed=failed)
    path = save_trace(t, tmp_path / "run.json", inline=inline)
    assert path == tmp_path / "run.json"
    files = sorted((tmp_path / "run_files").glob("*.png")) if not inline else []
    if inline:
        assert not (tmp_path / "run_files").exists()
    else:
        # the input image is used by three steps but written once; crop once; one mask
        assert len(files) == 3
    loaded = load_trace(path)
    _same_trace(t, loaded)
    assert Trace.load_json(path).program == t.program  # the Trace method delegates here


def test_json_is_plain_and_versioned(tmp_path):
    path = _trace().save_json(tmp_path / "t.json", inline=True)
    doc = json.loads(path.read_text())  # strict JSON: no NaN/Infinity literals
    assert doc["format"] == "visprog-trace" and doc["version"] == 1
    assert doc["steps"][2]["output"] == ANSWER
    assert doc["steps"][0]["output"]["labels"][0] == "cat"


def test_json_image_modes_round_trip(tmp_path):
    modes = {"L": Image.new("L", (5, 4), 7), "RGBA": Image.new("RGBA", (3, 3), (1, 2, 3, 4)),
             "1": Image.new("1", (6, 2), 1)}
    t = Trace("X=Y", inputs=dict(modes))
    loaded = load_trace(save_trace(t, tmp_path / "m.json"))
    for k, im in modes.items():
        _same_value(im, loaded.inputs[k])


def _saved(tmp_path, inline=False):
    return save_trace(_trace(), tmp_path / "run.json", inline=inline)


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("breaker, message", [
    (lambda p: p.write_text("{not json"), r"run\.json: not valid JSON \(line 1"),
    (lambda p: p.write_text("[1, 2]"), r"run\.json: not a visprog trace"),
    (lambda p: _edit(p, lambda d: d.update(version=99)), r"format version 99 is not supported"),
    (lambda p: _edit(p, lambda d: d.pop("program")), r"run\.json: malformed trace: KeyError"),
    (lambda p: _edit(p, lambda d: d["steps"][0].update(output={"$type": "martian"})),
     r"unknown value type 'martian'"),
    (lambda p: _edit(p, lambda d: d["steps"][0]["args"].update(image={"$type": "image",
                                                                        "file": "../../etc/x.png"})),
     r"outside the trace's folder"),
    (lambda p: next((p.parent / "run_files").glob("img_*.png")).unlink(),
     r"run\.json: image file not found: .*run_files.img_\d\.png"),
    (lambda p: next((p.parent / "run_files").glob("mask_*.png")).unlink(),
     r"mask file not found: .*mask_\d\.png"),
    (lambda p: next((p.parent / "run_files").glob("img_*.png")).write_bytes(b"not a png"),
     r"could not read image file .*img_\d\.png"),
])
def test_load_errors_name_the_file(tmp_path, breaker, message):
    path = _saved(tmp_path)
    breaker(path)
    with pytest.raises(TraceLoadError, match=message) as info:
        load_trace(path)
    assert isinstance(info.value, VisProgError) and isinstance(info.value, ValueError)


def test_load_missing_file_and_bad_inline_blob(tmp_path):
    with pytest.raises(TraceLoadError, match=r"trace file not found: .*nothing\.json"):
        load_trace(tmp_path / "nothing.json")
    path = _saved(tmp_path, inline=True)
    _edit(path, lambda d: d["blobs"].update({k: "@@@" for k in d["blobs"]}))
    with pytest.raises(TraceLoadError, match=r"inline image is not valid base64"):
        load_trace(path)
    _edit(path, lambda d: d.pop("blobs"))
    with pytest.raises(TraceLoadError, match=r"missing from \"blobs\""):
        load_trace(path)


# -- HTML --------------------------------------------------------------------------------

def test_html_is_self_contained_and_escaped():
    t = _trace()
    page = t.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # images are embedded, nothing is fetched from anywhere
    assert len(re.findall(r'<img src="data:image/(?:png|jpeg);base64,', page)) >= 5
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'<(?:script|link|iframe)\b', page, re.I)
    assert not re.search(r'src="(?!data:)', page)
    # user and model text is escaped, never raw
    assert XSS_LABEL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert ANSWER not in page
    assert html_escape(ANSWER) in page
    assert "OBJ0=Loc(image=IMAGE, object=&#x27;cat&#x27;)" in page  # the source, escaped
    # step details: cached badge, module names, region table, events
    assert page.count('class="badge cached"') == 1
    for module in ("Loc", "Crop", "Vqa", "Result"):
        assert f"module {module}" in page
    assert "<td>cat</td><td>0.910</td>" in page
    assert "<details><summary>Events (2)</summary>" in page


def html_escape(text):
    import html
    return html.escape(text, quote=True)


def test_html_failed_trace_shows_error_and_omits_later_steps():
    t = _trace(failed=True)
    # a record after the failure (which an interpreter would not write) must not show
    t.steps.append(StepRecord(3, 4, "FINAL=Result(var=ANSWER0)", "FINAL", "Result"))
    page = t.to_html()
    assert 'class="card failed"' in page
    assert "CUDA out of &lt;memory&gt; &amp; more" in page
    assert "CUDA out of <memory>" not in page
    assert "Step 4" not in page and "module Result" not in page
    assert '<div class="bad"><span class="ln">3</span>' in page  # failing line highlighted
    assert "&lt;i&gt;plan&lt;/i&gt;" in page and "<i>plan</i>" not in page


def test_html_of_loaded_trace_and_objects_without_image(tmp_path):
    t = _trace()
    t.result = _objects()  # an Objects result has no image to be drawn over
    loaded = load_trace(save_trace(t, tmp_path / "r.json"))
    page = loaded.to_html()
    assert "3 regions (cat, &lt;script&gt;alert(1)&lt;/script&gt;) on a 96x64 image" in page
    assert isinstance(loaded.meta["obj"], ReprValue)
    assert "&lt;object object at 0x" in page  # kept as its (escaped) repr
    assert "Steps after the failed one" not in page


def test_html_thumbnails_are_bounded():
    big = _photo(1600, 1000, seed=1)
    t = Trace("X=Y", [StepRecord(0, 1, "X=Y", "X", "Y", args={"image": big}, output=big)],
              result=big)
    page = t.to_html()
    import base64
    import io
    uris = re.findall(r'src="data:image/\w+;base64,([^"]+)"', page)
    assert uris
    for b64 in uris:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert max(im.size) <= 320
    assert len(page) < 200_000  # one encoding per distinct image


# -- drawing -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"masks": False}, {"labels": False, "scores": False},
                                    {"width": 5}])
def test_draw_objects_returns_new_image_and_leaves_input(kwargs):
    image = _photo()
    before = np.asarray(image).copy()
    out = draw_objects(image, _objects(), **kwargs)
    assert out is not image and out.size == image.size and out.mode == "RGB"
    assert np.array_equal(np.asarray(image), before)
    assert not np.array_equal(np.asarray(out), before)


def test_draw_objects_mask_tints_inside_only():
    image = Image.new("RGB", (96, 64), (128, 128, 128))
    objs = _objects()[:1]
    with_mask = np.asarray(draw_objects(image, objs, labels=False, scores=False))
    no_mask = np.asarray(draw_objects(image, objs, masks=False, labels=False, scores=False))
    assert not np.array_equal(with_mask[20, 20], [128, 128, 128])  # inside the mask: tinted
    assert np.array_equal(no_mask[20, 20], [128, 128, 128])
    assert np.array_equal(with_mask[50, 70], [128, 128, 128])  # far outside: untouched


@pytest.mark.parametrize("size", [(1, 1), (3, 200), (96, 64)])
def test_draw_objects_edge_cases(size):
    image = Image.new("L", size, 50)  # not RGB: converted on the copy
    empty = draw_objects(image, Objects.empty(size))
    assert empty is not image and empty.mode == "RGB" and empty.size == size
    border = Objects([[0, 0, size[0], size[1]], [size[0], size[1], size[0], size[1]]],
                     size, labels=["edge", "point"], scores=[1.0, 0.0])
    assert draw_objects(image, border).size == size


def test_draw_objects_scales_to_a_thumbnail():
    image = _photo(400, 300)
    objs = Objects([[100, 100, 300, 200]], (400, 300),
                   masks=[np.ones((300, 400), bool)])
    small = thumbnail(image, 100)
    assert small.size == (100, 75) and image.size == (400, 300)
    assert draw_objects(small, objs).size == (100, 75)
    assert thumbnail(small, 1000).size == (100, 75)  # never enlarged


def test_mask_to_image():
    m = np.zeros((4, 5), bool)
    m[1, 2] = True
    im = mask_to_image(m)
    assert im.mode == "L" and im.size == (5, 4) and im.getpixel((2, 1)) == 255
    assert mask_to_image(m.astype(float) * 0.9).getpixel((2, 1)) == 255
    with pytest.raises(ValueError, match="H x W"):
        mask_to_image(np.zeros((2, 2, 3)))


# -- the page's regions: drawn over their image, labelled columns, long tables folded ---------

def _card(page: str, n: int) -> str:
    """The HTML of step card n (1-based)."""
    return page.split('<section class="card')[n]


def _img_srcs(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_html_draws_a_steps_objects_over_the_image_they_were_found_on():
    image, objs = _photo(), _objects()
    steps = [
        StepRecord(0, 1, "OBJ0=Loc(image=IMAGE, object='cat')", "OBJ0", "Loc",
                   args={"image": image, "object": "cat"}, arg_vars={"image": "IMAGE"},
                   output=objs, draw_on="image"),
        StepRecord(1, 2, "N=Count(box=OBJ0)", "N", "Count", args={"box": objs},
                   arg_vars={"box": "OBJ0"}, output=2, draw_on=None),
        StepRecord(2, 3, "B=OBJ0", "B", None, args={"var": objs}, arg_vars={"var": "OBJ0"},
                   output=objs, draw_on=None),
        StepRecord(3, 4, "M=Count(box=B)", "M", "Count", args={"box": objs},
                   arg_vars={"box": "B"}, output=2, draw_on=None),
    ]
    page = Trace("...", steps, inputs={"IMAGE": image}, result=2).to_html()
    found_drawn = _img_srcs(_card(page, 1))[-1]  # OBJ0 = ..., drawn over IMAGE
    grey = Trace("...", [StepRecord(0, 1, "N=Count(box=X)", "N", "Count", args={"box": objs},
                                    arg_vars={"box": "X"}, output=2, draw_on=None)]).to_html()
    assert _img_srcs(_card(page, 2)) == [found_drawn]  # not a blank canvas
    assert _img_srcs(_card(page, 4)) == [found_drawn]  # through an alias too
    assert _img_srcs(_card(grey, 1)) != [found_drawn]  # no image known: the plain canvas
    # and never over an image of another size
    other = StepRecord(0, 1, "C=Crop(image=IMAGE, box=OBJ0)", "C", "Crop",
                       args={"image": _photo(40, 30), "box": objs}, arg_vars={"box": "OBJ0"},
                       output=_photo(10, 10), draw_on="image")
    mixed = Trace("...", [steps[0], other]).to_html()
    assert _img_srcs(_card(mixed, 2))[1] == found_drawn


def test_the_result_and_a_notebook_value_draw_objects_over_their_image_not_grey():
    from visprog.traces.html import render_value_html

    image, objs = _photo(), _objects()
    found = StepRecord(0, 1, "OBJ0=Loc(image=IMAGE, object='cat')", "OBJ0", "Loc",
                       args={"image": image, "object": "cat"}, arg_vars={"image": "IMAGE"},
                       output=objs, draw_on="image")
    alias = StepRecord(1, 2, "R=OBJ0", "R", None, args={"var": objs},
                       arg_vars={"var": "OBJ0"}, output=objs, draw_on=None)
    trace = Trace("...", [found, alias], inputs={"IMAGE": image}, result=objs)
    page = trace.to_html()
    drawn = _img_srcs(_card(page, 1))[-1]
    result = page[page.index("<h2>Result</h2>"):page.index("<h2>Inputs</h2>")]
    assert _img_srcs(result) == [drawn]  # the result is drawn where its step drew it
    alone = render_value_html(trace)
    assert _img_srcs(alone) == [drawn] and "<h2>" not in alone  # the value, nothing else
    # a result that no step made (nothing to draw over) stays on the plain canvas
    plain = Trace("...", [found], inputs={"IMAGE": image}, result=Objects(objs.boxes,
                                                                          objs.image_size))
    assert _img_srcs(render_value_html(plain)) != [drawn]
    # through the Result module, as a program ends (its output is its argument)
    # (a copy of it: the engine's Result gives its own value)
    copy = objs[list(range(len(objs)))]
    ended = StepRecord(1, 2, "RESULT=Result(var=OBJ0)", "RESULT", "Result", args={"var": objs},
                       arg_vars={"var": "OBJ0"}, output=copy, draw_on=None)
    via_result = Trace("...", [found, ended], inputs={"IMAGE": image}, result=copy)
    assert _img_srcs(render_value_html(via_result)) == [drawn]
    page = via_result.to_html()
    assert _img_srcs(page[page.index("<h2>Result</h2>"):page.index("<h2>Inputs</h2>")]) == [drawn]
    failed = Trace("...", [found], error="boom")
    assert "boom" in render_value_html(failed) and "<img" not in render_value_html(failed)


def test_html_region_table_labels_every_column_and_has_only_those_with_content():
    page = _trace().to_html()
    table = page[page.index('<table class="regions">'):]
    head = table[:table.index("</tr>")]
    assert re.findall(r"<th>([^<]*)</th>", head) == [
        "#", "label", "score", "box (x1, y1, x2, y2)", "mask", "extra"]
    bare = Objects([(0, 0, 10, 10), (5, 5, 20, 20)], (32, 32))  # boxes only
    page = Trace("X=Y", result=bare).to_html()
    head = page[page.index('<table class="regions">'):]
    assert re.findall(r"<th>([^<]*)</th>", head[:head.index("</tr>")]) == [
        "#", "box (x1, y1, x2, y2)"]
    assert "<th></th>" not in page


def test_html_long_region_tables_fold_after_their_first_rows():
    from visprog.values.region_table import FOLDED_ROWS, MAX_TABLE_ROWS

    many = Objects([(i, 0, i + 2, 4) for i in range(70)], (100, 10), labels=["dot"] * 70)
    page = Trace("X=Y", result=many).to_html()
    shown, folded = page.split('<details class="more">')
    assert shown[shown.index('<table class="regions">'):].count("<td>dot</td>") == FOLDED_ROWS
    assert "<summary>show all 70 regions</summary>" in folded
    assert folded.count("<td>dot</td>") == MAX_TABLE_ROWS - FOLDED_ROWS
    assert "... 20 more (the JSON trace lists them all)" in folded
    few = Objects([(i, 0, i + 2, 4) for i in range(FOLDED_ROWS + 1)], (100, 10))
    assert '<details class="more">' not in Trace("X=Y", result=few).to_html()


# -- in a REPL and a notebook ----------------------------------------------------------------

def test_trace_prints_as_trace_show_and_shows_its_page_in_a_notebook(tmp_path, capsys):
    from visprog.cli import main

    t = _trace()
    text = str(t)
    assert text.splitlines()[:2] == ["program:", "    1  OBJ0=Loc(image=IMAGE, object='cat')"]
    assert "  [1] line 1: OBJ0 = Loc  120.0 ms  -> 3 regions (cat, <script>alert(1)</script>)" \
        in text
    assert "[2] line 2: IMAGE0 = Crop  1.0 ms cached  -> image 35x20" in text
    assert text.endswith(f"result: {ANSWER}")
    assert "PIL" not in text and "StepRecord" not in text
    assert repr(t) == f"<Trace: 4 steps, result: {ANSWER}>"
    failed = _trace(failed=True)
    assert str(failed).endswith("error: step 3 failed: CUDA out of <memory>")
    assert "ERROR CUDA out of <memory> & more" in str(failed)
    assert repr(failed) == "<Trace: 3 steps, error: step 3 failed: CUDA out of <memory>>"
    # `visprog trace show` prints the same
    t.save_json(tmp_path / "t.json")
    assert main(["trace", "show", str(tmp_path / "t.json")]) == 0
    assert capsys.readouterr().out.rstrip("\n") == str(Trace.load_json(tmp_path / "t.json"))
    # a notebook: the page as one part of another, its style scoped to it
    part = t._repr_html_()
    assert part.startswith('<div class="visprog-trace">') and part.rstrip().endswith("</div>")
    assert "<html" not in part and "<body" not in part
    assert len(re.findall(r'<img src="data:image/(?:png|jpeg);base64,', part)) >= 5
    style = part[part.index("<style>") + 7:part.index("</style>")]
    rules = [r for r in style.split("}") if r]
    assert all(all(sel.startswith(".visprog-trace") for sel in r.split("{")[0].split(","))
               for r in rules)
    assert XSS_LABEL not in part


def test_run_result_and_objects_read_briefly(tmp_path):
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    out = vp.execute("A=Loc(image=IMAGE, object='LEFT')\nN=Count(box=A)", image=_photo())
    assert repr(out) == "<RunResult: 1 (2 steps)>"
    assert str(out) == str(out.trace) and "Image" not in repr(out)
    assert out._repr_html_() == out.trace._repr_html_()
    many = Objects([(i, 0, i + 2, 4) for i in range(30)], (100, 10), labels=["dot"] * 30,
                   scores=[0.5] * 30)
    assert repr(many) == ("Objects(n=30, image_size=(100, 10), labels=['dot', 'dot', 'dot', "
                          "'dot', 'dot', 'dot', 'dot', 'dot', 'dot', 'dot', ...])")
    lines = str(many).splitlines()
    assert lines[0] == "30 regions on a 100x10 image" and len(lines) == 1 + 10 + 1
    assert lines[1].split() == ["0", "dot", "0.500", "[0.0,", "0.0,", "2.0,", "4.0]"]
    assert lines[-1] == "  ... 20 more"
    html = many._repr_html_()
    assert html.startswith("<div>30 regions on a 100x10 image</div><table class=\"regions\">")
    assert "<summary>show all 30 regions</summary>" in html
    masked = _objects()
    assert "mask" in str(masked).splitlines()[1] and "&lt;script&gt;" in masked._repr_html_()
    assert str(Objects.empty((8, 8))) == "0 regions on a 8x8 image"


def test_html_events_and_run_details_read_as_fields_not_json():
    from visprog.traces.events import Finding, PlanAttempt, Repair, RunRecord

    long_line = "X=Eval(expr='" + "9" * 3000 + "')"
    plan = PlanAttempt(index=0, question="Is it?", task="gqa", reply=long_line, text=long_line,
                       ok=True, usage={"prompt_tokens": 30, "total_tokens": 40})
    attempts = [RunRecord(i, program=long_line, answer="no", passed=False,
                          findings=[Finding("answer_type", "not a yes/no <answer>")])
                for i in range(2)]
    t = _trace()
    t.events = [plan, Repair(chosen=1, attempts=attempts)]
    t.meta = {"preset": "tiny", "batch": [{"module": "Loc", "chunk": 2}] * 3, "empty": [],
              "nested": {"a": {"b": {"c": 1}}}}
    page = t.to_html()
    events = page[page.index("<summary>Events (2)</summary>"):page.index("<summary>Run details")]
    assert "<pre>{" not in page and '"kind"' not in events  # no JSON dumps
    assert '<td class="k">plan attempt</td>' in events and '<td class="k">repair</td>' in events
    assert "prompt_tokens: 30, total_tokens: 40" in events
    assert "2, listed under Attempts above" in events
    assert events.count("X=Eval(expr=&#x27;" + "9" * 40) == 2  # the reply and the program
    assert "9" * 500 not in events  # long text is cut (the JSON trace keeps it)
    details = page[page.index("<summary>Run details"):]
    assert '<td class="k">preset</td><td><span class="wrap">tiny</span>' in details
    assert details.count("module: Loc, chunk: 2") == 3 and '<td class="k">empty</td>' not in details
    assert "{&quot;c&quot;: 1}" in details  # deeper than two levels: one line of JSON
    assert "&lt;answer&gt;" in page and "<answer>" not in page
