"""Composed queries (visprog.query): built queries equal hand-written programs in text and in
runs (values, traces, cache keys, batching); methods come from the registry, plug-ins
included; mistakes raise QueryError at the caller's line before anything runs; operators
build Eval expressions and anything that would need Python to evaluate a value is refused."""
from __future__ import annotations

import inspect
import itertools
import pydoc
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprog.api import VisProg
from visprog.engine.batch import BatchItem
from visprog.engine.cache import StepCache
from visprog.errors import CheckError
from visprog.language.expr import evaluate
from visprog.query import ImageQuery, NoSuchMethod, ObjectsQuery, Query, QueryError
from visprog.registry import tool
from visprog.traces.records import Trace
from visprog.values import Objects

CALLS: list[str] = []


@tool("MeanGrey", params={"image": "Image"}, returns="Number", draw_on=None)
def mean_grey(image):
    """A plug-in: the image's mean grey level, rounded."""
    CALLS.append("MeanGrey")
    return round(float(np.asarray(image.convert("L")).mean()))


@tool("Widest", params={"box": "Objects", "margin": "Number"}, returns="Number", draw_on=None)
def widest(box, margin=0):
    """A plug-in on Objects: the widest box's width plus a margin."""
    CALLS.append("Widest")
    return max((r.box[2] - r.box[0] for r in box), default=0) + margin


@tool("Twice", params={"x": "Number"}, returns="Number", draw_on=None)
def twice(x):
    """A plug-in on Numbers."""
    return 2 * x


@tool("Shout", params={"text": "Text"}, returns="Text", draw_on=None)
def shout(text):
    """A plug-in whose first argument is text: a vp.fn function only."""
    return text.upper()


@tool("Noise", params={"image": "Image"}, returns="Number", cacheable=False, draw_on=None)
def noise(image):
    """A sampling plug-in (not cacheable)."""
    return float(np.random.default_rng().random())


PLUGINS = [mean_grey, widest, twice, shout, noise]


def photo(seed: int = 0, w: int = 64, h: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def vp() -> VisProg:
    engine = VisProg(preset="tiny", cache=StepCache(memory=True), plugins=False)
    for t in PLUGINS:
        engine.register(t)
    return engine


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.clear()


# --------------------------------------------------------------------------- programs

def gqa(vp, img):
    """How many flags are left of the person? (yes/no: are there any?)"""
    person = vp.image(img).loc("person")
    flags = vp.image(img).crop_left_of(person).loc("flag")
    return (flags.count() > 0).then("yes", "no")


GQA = """\
PERSON=Loc(image=IMAGE, object='person')
CROP_LEFT_OF=CropLeftOf(image=IMAGE, box=PERSON)
FLAG=Loc(image=CROP_LEFT_OF, object='flag')
COUNT=Count(box=FLAG)
EVAL=Eval(expr="'yes' if {COUNT} > 0 else 'no'")
"""


def nlvr(vp, img):
    left, right = vp.pair(img, photo(1))
    return (left.loc("dog").count() + right.loc("dog").count() == 2).named("ANSWER")


NLVR = """\
DOG=Loc(image=LEFT, object='dog')
COUNT=Count(box=DOG)
DOG_2=Loc(image=RIGHT, object='dog')
COUNT_2=Count(box=DOG_2)
ANSWER=Eval(expr='{COUNT} + {COUNT_2} == 2')
"""


def edit(vp, img):
    image = vp.image(img)
    red = image.select(image.loc("car"), "red car")
    return image.replace(red, prompt="a blue car")


EDIT = """\
CAR=Loc(image=IMAGE, object='car')
RED_CAR=Select(image=IMAGE, object=CAR, query='red car')
REPLACE=Replace(image=IMAGE, object=RED_CAR, prompt='a blue car')
"""


def vqa_and_count(vp, img):
    image = vp.image(img)
    answer = image.vqa("is the cup red?")
    return vp.fn.eval("'yes' if {A} == 'yes' and {N} >= 1 else 'no'",
                      A=answer, N=image.loc("cup").count())


VQA_AND_COUNT = """\
VQA=Vqa(image=IMAGE, question='is the cup red?')
CUP=Loc(image=IMAGE, object='cup')
COUNT=Count(box=CUP)
EVAL=Eval(expr="'yes' if {VQA} == 'yes' and {COUNT} >= 1 else 'no'")
"""


def shared(vp, img):
    """One sub-query read twice, and an equal one built again: one step each."""
    image = vp.image(img)
    halves = image.loc("LEFT")
    again = vp.image(img).loc("LEFT")
    return image.color_pop(halves).tag(image.classify(again, ["cat", "dog"], ))


SHARED = """\
LEFT_2=Loc(image=IMAGE, object='LEFT')
COLOR_POP=ColorPop(image=IMAGE, object=LEFT_2)
CLASSIFY=Classify(image=IMAGE, object=LEFT_2, categories=['cat', 'dog'])
TAG=Tag(image=COLOR_POP, object=CLASSIFY)
"""  # LEFT is an input's name (a step may not assign to it): the step steps around it


def keywords_and_defaults(vp, img):
    image = vp.image(img)
    objs = image.seg()
    return vp.fn.select(image, query="the sky", object=objs, category="stuff").named("SKY")


KEYWORDS = """\
SEG=Seg(image=IMAGE)
SKY=Select(image=IMAGE, object=SEG, query='the sky', category='stuff')
"""


def texts(vp, img):
    """A Text sub-expression is a step of its own (Eval reads a variable's text again)."""
    image = vp.image(img)
    colour = image.vqa("what colour?")
    return (colour + " car" == "red car").or_(image.face_det().count() > 2)


TEXTS = """\
VQA=Vqa(image=IMAGE, question='what colour?')
EVAL=Eval(expr="{VQA} + ' car'")
FACE_DET=FaceDet(image=IMAGE)
COUNT=Count(box=FACE_DET)
EVAL_2=Eval(expr="{EVAL} == 'red car' or {COUNT} > 2")
"""


def plugins(vp, img):
    image = vp.image(img)
    return vp.fn.result(image.loc("TOP").widest(margin=image.mean_grey()).twice())


PLUGIN = """\
TOP=Loc(image=IMAGE, object='TOP')
MEAN_GREY=MeanGrey(image=IMAGE)
WIDEST=Widest(box=TOP, margin=MEAN_GREY)
TWICE=Twice(x=WIDEST)
RESULT=Result(var=TWICE)
"""

CASES = {"gqa": (gqa, GQA), "nlvr": (nlvr, NLVR), "edit": (edit, EDIT),
         "vqa_and_count": (vqa_and_count, VQA_AND_COUNT), "shared": (shared, SHARED),
         "keywords": (keywords_and_defaults, KEYWORDS), "texts": (texts, TEXTS),
         "plugin": (plugins, PLUGIN)}


@pytest.mark.parametrize("case", list(CASES))
def test_built_query_is_the_hand_written_program(vp, case):
    build, text = CASES[case]
    q = build(vp, photo())
    assert q.program == text
    assert vp.check(q.program) == []


def run_kwargs(q):
    inputs = q.inputs
    if "LEFT" in inputs:
        return {"left": inputs["LEFT"], "right": inputs["RIGHT"]}
    return {"image": inputs["IMAGE"]}


def same_value(a, b):
    if isinstance(a, Image.Image):
        return isinstance(b, Image.Image) and np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, Objects):
        return isinstance(b, Objects) and np.allclose(a.boxes, b.boxes) \
            and list(a.labels) == list(b.labels)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("case", ["gqa", "nlvr", "edit", "vqa_and_count", "shared", "texts",
                                  "plugin"])
def test_built_query_runs_as_its_text(vp, case, tmp_path):
    """The query runs (computing every step), then its hand-written text, saved as a .vp file
    and read back, runs on the same inputs: the same trace, every step a hit of the cache
    entries the query made (the same cache keys), the same value."""
    build, text = CASES[case]
    img = photo(10 + list(CASES).index(case))  # an image no other test computed on
    q = build(vp, img)
    out = q.run()
    assert not any(s.cached for s in out.trace)
    (tmp_path / "q.vp").write_text(text)
    by_hand = vp.execute((tmp_path / "q.vp").read_text(), **run_kwargs(q))
    assert all(s.cached for s in by_hand.trace)
    assert same_value(out.value, by_hand.value) and same_value(q.value, out.value)
    assert out.trace.program == by_hand.trace.program == text
    assert [(s.target, s.module, s.source, sorted(s.args)) for s in out.trace] == \
        [(s.target, s.module, s.source, sorted(s.args)) for s in by_hand.trace]
    for mine, theirs in zip(out.trace, by_hand.trace):
        assert same_value(mine.output, theirs.output), mine.target


def test_results_are_python_values(vp):
    image = vp.image(photo())
    halves = image.loc("LEFT")
    assert isinstance(halves.value, Objects) and len(halves.value) == 1
    assert isinstance(halves.count().value, int)
    assert isinstance((halves.count() > 0).value, bool)
    assert isinstance(image.vqa("what is it?").value, str)
    assert isinstance(image.crop(halves).value, Image.Image)
    assert isinstance(image.crop(halves).trace, Trace)
    assert image.crop(halves).trace["CROP"].module == "Crop"


def test_objects_len_iteration_and_indexing(vp):
    image = vp.image(photo())
    objs = image.seg()
    n = len(objs)
    assert n == len(objs.value) == objs.count().value
    assert n >= 2, "the tiny panoptic model finds several regions"
    regions = list(objs)
    assert len(regions) == n and all(isinstance(r, ObjectsQuery) for r in regions)
    assert [r.value.boxes.tolist() for r in regions] == [[b] for b in objs.value.boxes.tolist()]
    crop = image.crop(objs[-1])
    assert crop.program == f"CROP=Crop(image=IMAGE, box=SEG_{n - 1})\n"
    assert crop.inputs[f"SEG_{n - 1}"].boxes.tolist() == [objs.value.boxes.tolist()[-1]]
    by_hand = vp.execute(crop.program, image=photo(), inputs={f"SEG_{n - 1}": objs.value[-1:]})
    assert same_value(crop.value, by_hand.value)
    assert objs[:2].value.boxes.tolist() == objs.value.boxes.tolist()[:2]
    with pytest.raises(QueryError, match="out of range"):
        objs[n]


def test_concrete_values_become_bound_inputs(vp):
    img = photo()
    objs = vp.image(img).loc("TOP").value
    q = vp.image(img).crop_below(objs)
    assert q.program == "CROP_BELOW=CropBelow(image=IMAGE, box=OBJECTS)\n"
    assert q.inputs["OBJECTS"] is objs
    q2 = vp.fn.crop(img, vp.image(img).loc("TOP"))  # a PIL image as an argument
    assert q2.program.splitlines()[-1] == "CROP=Crop(image=IMAGE, box=TOP)"


def test_two_images_get_two_names(vp):
    a, b = vp.image(photo(0)), vp.image(photo(1))
    q = a.mean_grey() + b.mean_grey()
    assert q.program.splitlines() == ["MEAN_GREY=MeanGrey(image=IMAGE)",
                                      "MEAN_GREY_2=MeanGrey(image=IMAGE_2)",
                                      "EVAL=Eval(expr='{MEAN_GREY} + {MEAN_GREY_2}')"]
    assert q.value == mean_grey.fn(photo(0)) + mean_grey.fn(photo(1))


def test_sampling_calls_stay_apart_and_equal_calls_merge(vp):
    image = vp.image(photo())
    q = image.noise() + image.noise() + image.mean_grey() + image.mean_grey()
    assert q.program.splitlines()[:3] == ["NOISE=Noise(image=IMAGE)", "NOISE_2=Noise(image=IMAGE)",
                                          "MEAN_GREY=MeanGrey(image=IMAGE)"]
    assert "{NOISE} + {NOISE_2} + {MEAN_GREY} + {MEAN_GREY}" in q.program
    named = image.noise()
    assert (named + named.named("N")).program.count("Noise(") == 1  # named: the same call


# --------------------------------------------------------------------------- methods

def test_methods_come_from_the_registry(vp):
    image, objs = vp.image(photo()), vp.image(photo()).loc("x")
    for name in ("loc", "crop_left_of", "crop_in_front_of", "vqa", "select", "replace",
                 "bg_blur", "color_pop", "face_det", "seg", "classify", "emoji", "tag",
                 "mean_grey"):
        assert name in dir(image), name
    assert "count" in dir(objs) and "widest" in dir(objs) and "loc" not in dir(objs)
    assert "twice" in dir(image.mean_grey()) and "count" not in dir(image)
    fns = dir(vp.fn)
    assert {"eval", "list", "result", "shout", "loc", "count", "twice"} <= set(fns)
    assert "shout" not in dir(image.vqa("q"))  # a Text first argument: vp.fn only
    assert "eval" not in dir(image) and "list" not in dir(image)


def test_help_shows_signature_and_docstring(vp):
    image = vp.image(photo())
    assert str(inspect.signature(image.loc)) == "(object: 'Text') -> 'Objects'"
    assert str(inspect.signature(image.select)) == \
        "(object: 'Objects', query: 'Text', category: 'None|Text' = None) -> 'Objects'"
    assert str(inspect.signature(vp.fn.count)) == "(box: 'Objects|Tracks') -> 'Number'"
    text = pydoc.render_doc(image.mean_grey, renderer=pydoc.plaintext)
    assert "MeanGrey(image: Image) -> Number" in text
    assert "the image's mean grey level" in text
    assert "Widest(box: Objects, margin: Number = 0)" in vp.fn.widest.__doc__


def test_a_tool_registered_later_is_a_method_of_new_values():
    engine = VisProg(preset="tiny", cache=False, plugins=False)
    before = engine.image(photo())
    assert not hasattr(before, "mean_grey")
    engine.register(mean_grey)
    after = engine.image(photo())
    assert after.mean_grey().program == "MEAN_GREY=MeanGrey(image=IMAGE)\n"
    assert after.mean_grey().value == mean_grey.fn(photo())


def test_snake_case_names():
    from visprog.query import snake_case
    assert [snake_case(n) for n in ("CropLeftOf", "BgBlur", "FaceDet", "Vqa", "OCRText",
                                    "My_Tool", "Lambda")] == \
        ["crop_left_of", "bg_blur", "face_det", "vqa", "ocr_text", "my_tool", "lambda_"]


# --------------------------------------------------------------------------- checked as written

def raises_here(fn, match):
    """Call fn; it must raise QueryError located at the line that called it (the lambda's
    line in the caller of this helper)."""
    line = inspect.stack()[1].lineno
    with pytest.raises(QueryError, match=match) as err:
        fn()
    assert err.value.filename == __file__
    assert err.value.lineno == line
    assert isinstance(err.value, CheckError)
    return err.value


def test_type_errors_are_located_at_the_calling_line(vp):
    image = vp.image(photo())
    people = image.loc("person")
    n = people.count()
    err = raises_here(lambda: people.vqa("what?"), r"vqa\(\) is not a method of Objects.*Image")
    assert isinstance(err, NoSuchMethod) and isinstance(err, AttributeError)
    assert not hasattr(people, "vqa")
    raises_here(lambda: image.crop_left_of(image), r"crop_left_of\(\).*'box' takes Objects; "
                                                     r"IMAGE is Image")
    raises_here(lambda: image.loc(), r"loc\(\): Loc needs argument 'object'")
    raises_here(lambda: image.loc(objekt="x"), r"no argument 'objekt'.*did you mean 'object'")
    raises_here(lambda: image.loc("a", "b"), r"loc\(\) takes at most 1 positional")
    raises_here(lambda: image.vqa(question=people), r"'question' takes Text; the Loc result is "
                                                    r"Objects")
    raises_here(lambda: people.widest(margin="wide"), r"'margin' takes Number")
    # len, not print: an in-process Ray Serve replica (tests/test_hosting.py) swaps print
    raises_here(lambda: image.loc(len), r"can't pass a builtin_function_or_method")
    raises_here(lambda: image.loc(float("nan")), r"not a number the language can write")
    raises_here(lambda: n.named("2x"), r"not a variable name")
    for taken in ("LEFT", "image", "None"):  # a step can't assign to an input or a literal
        raises_here(lambda: n.named(taken), rf"named\(\): '{taken}' is the name of an input")
    other = VisProg(preset="tiny", cache=False, plugins=False).image(photo())
    raises_here(lambda: image.crop(other.loc("x")), r"another VisProg")
    assert CALLS == []  # nothing ran


def test_wrong_type_method_says_where_it_lives(vp):
    objs = vp.image(photo()).loc("x")
    err = raises_here(lambda: objs.shout(), r"shout\(\) is not a method of Objects")
    assert "vp.fn.shout" in str(err)
    with pytest.raises(AttributeError, match="did you mean 'count'"):
        objs.cuont()


@pytest.mark.parametrize("make, match", [
    (lambda n: bool(n > 0), "no truth value before it runs"),
    (lambda n: (n > 0) and (n < 3), "no truth value"),
    (lambda n: 0 < n < 3, "no truth value"),  # chained: Python's `and`
    (lambda n: [n][0] if n else 0, "no truth value"),
    (lambda n: f"there are {n}", "can't be converted or formatted"),
    (lambda n: str(n), "can't be converted or formatted"),
    (lambda n: int(n), "can't be converted or formatted"),
    (lambda n: float(n), "can't be converted or formatted"),
    (lambda n: round(n), "can't be converted or formatted"),
    (lambda n: abs(n), "can't be converted or formatted"),
    (lambda n: range(n), "can't be converted or formatted"),
    (lambda n: (n > 0) & (n < 3), "not part of the language"),
    (lambda n: ~(n > 0), "not part of the language"),
    (lambda n: 3 in n, "not part of the language"),
    (lambda n: len(n), "not a sequence"),
    (lambda n: list(n), "not a sequence"),
    (lambda n: n + "cats", r"'\+' can't combine Number and Text"),
    (lambda n: n < "3", r"'<' can't combine Number and Text"),
    (lambda n: (n > 0).then("a", "b") - "x", r"'-' can't combine"),
    (lambda n: n == [1], "can't be part of an expression"),
    (lambda n: n + None, "can't be part of an expression"),
])
def test_python_evaluation_is_refused(vp, make, match):
    n = vp.image(photo()).loc("x").count()
    with pytest.raises(QueryError, match=match):
        make(n)


def test_objects_and_images_take_no_operators(vp):
    image = vp.image(photo())
    objs = image.loc("x")
    raises_here(lambda: objs + 1, r"not Objects.*count Objects with \.count\(\)")
    raises_here(lambda: objs > 0, r"not Objects")
    raises_here(lambda: image == image, r"not Image")
    raises_here(lambda: objs.count() + objs, r"can't use a Objects value|Objects")
    with pytest.raises(QueryError, match="no truth value"):
        bool(objs)  # not len(): that would run it


def test_eval_text_is_parsed_by_the_eval_grammar(vp):
    n = vp.image(photo()).loc("x").count()
    raises_here(lambda: vp.fn.eval("{N} > {M}", N=n), r"reads \{M\}, which is not given")
    raises_here(lambda: vp.fn.eval("{N} >", N=n), r"bad expression: expression ends too early")
    raises_here(lambda: vp.fn.eval("__import__('os')", N=n), r"bad expression")
    raises_here(lambda: vp.fn.eval("{N} > 1", N=n, X=3), r"X given but not read")
    raises_here(lambda: vp.fn.eval(n), r"takes one expression text")
    q = vp.fn.eval("0 < {N} < {LIMIT}", N=n, LIMIT=5)
    assert q.program.splitlines()[-1] == "EVAL=Eval(expr='0 < {COUNT} and {COUNT} < 5')"
    assert vp.fn.eval("'{N}'", N=n).program.splitlines()[-1] == "EVAL=Eval(expr=\"'{COUNT}'\")"
    assert vp.fn.eval("{N}", N=n).program.splitlines()[-1] == "EVAL=Eval(expr='{COUNT}')"


# --------------------------------------------------------------------------- expressions

BINARY = [lambda a, b: a + b * 2, lambda a, b: (a + b) * 2, lambda a, b: a - (b - 1),
          lambda a, b: a - b - 1, lambda a, b: -a ** 2, lambda a, b: (-a) ** 2,
          lambda a, b: 2 ** -b, lambda a, b: a ** b ** 2, lambda a, b: (a ** b) ** 2,
          lambda a, b: a / (b + 1), lambda a, b: a // 2 % 3, lambda a, b: a // (2 % 3 + b),
          lambda a, b: -(a - b), lambda a, b: +a - -b, lambda a, b: (a > b) + 1,
          lambda a, b: (a == b) == (b == a), lambda a, b: 10 - a * (b - -2),
          lambda a, b: (a < b) < (b < a), lambda a, b: a * 1.5 > b / 4]


@pytest.mark.parametrize("index", range(len(BINARY)))
def test_operators_write_what_python_would_compute(vp, index):
    """The written expression, evaluated by Eval, gives what Python gives for numbers:
    precedence and parentheses are right."""
    fn = BINARY[index]
    image = vp.image(photo())
    a, b = image.loc("x").count().named("A"), image.loc("y").count().named("B")
    expr = fn(a, b).program.splitlines()[-1]
    text = expr[len("EVAL=Eval(expr='"):-2]
    for x, y in itertools.product([0, 1, 2, 3], [0, 1, 4]):
        try:
            want = fn(x, y)
        except ZeroDivisionError:
            continue
        assert evaluate(text, {"A": x, "B": y}) == want, (text, x, y)


LOGIC = [(lambda a, b: (a > 1).and_(b > 1), lambda x, y: x > 1 and y > 1),
         (lambda a, b: (a > 1).or_(b > 1).not_(), lambda x, y: not (x > 1 or y > 1)),
         (lambda a, b: (a > 1).xor(b > 1), lambda x, y: (x > 1) != (y > 1)),
         (lambda a, b: (a > b).then(a, b) * 2, lambda x, y: (x if x > y else y) * 2),
         (lambda a, b: (a > 0).then(b > 0, a > 2).or_(a == b),
          lambda x, y: ((y > 0) if x > 0 else (x > 2)) or x == y),
         (lambda a, b: (a + 1).then(b, 0), lambda x, y: y if x + 1 else 0)]


@pytest.mark.parametrize("index", range(len(LOGIC)))
def test_logic_methods_write_eval_logic(vp, index):
    build, python = LOGIC[index]
    image = vp.image(photo())
    a, b = image.loc("x").count().named("A"), image.loc("y").count().named("B")
    text = build(a, b).program.splitlines()[-1][len("EVAL=Eval(expr='"):-2]
    for x, y in itertools.product([0, 1, 2, 3], [0, 2]):
        assert evaluate(text, {"A": x, "B": y}) == python(x, y), (text, x, y)


@pytest.mark.parametrize("text", ["it's", 'say "hi"', "both ' and \"", "back\\slash \\n",
                                  "line\nbreak\ttab", "{N}", "{ COUNT }", "\x01 ctrl", "ünï"])
def test_any_text_survives_the_program_and_the_expression(vp, text):
    image = vp.image(photo())
    halves = image.loc("LEFT")  # no model: the left half
    q = (halves.count() > 0).then(text, "no")
    assert vp.execute(q.program, image=photo()).value == text == q.value
    assert vp.parse(image.vqa(text).program)[0].arg("question").value == text


def test_text_from_models_is_read_as_eval_reads_variables(vp):
    image = vp.image(photo())
    halves = image.loc("LEFT")
    yes = (halves.count() > 0).then("yes", "no")  # a Text step, read again as a variable
    assert yes.then(1, 2).value == 1 and yes.not_().value is False
    number = (halves.count() > 0).then("2", "x")
    assert (number + 1).value == 3


# --------------------------------------------------------------------------- batches

def test_run_batch_of_built_queries_batches_like_program_texts():
    engine = VisProg(preset="tiny", cache=False, plugins=False)
    images = [photo(i % 5) for i in range(20)]
    objects = ["cat", "dog", "cup", "car"]
    queries = []
    for i, img in enumerate(images):
        image = engine.image(img)
        found = image.loc(objects[i % 4])
        queries.append((found.count() > 0).and_(image.vqa(f"is there a {objects[i % 4]}?")
                                                  == "yes"))
    texts = [{"program": q.program, "image": img} for q, img in zip(queries, images)]
    assert len({q.program for q in queries}) == 4
    built = engine.run_batch(queries, batch_size=8)
    stats_built = engine.engine.last_stats
    by_text = engine.run_batch(texts, batch_size=8)
    stats_text = engine.engine.last_stats
    assert all(r.ok for r in built + by_text)
    assert [r.value for r in built] == [r.value for r in by_text]
    assert [r.trace.meta["batch"] for r in built] == [r.trace.meta["batch"] for r in by_text]
    assert stats_built == stats_text
    assert stats_built.batch_calls < stats_built.steps  # model calls went in batches
    assert max(m["chunk"] for r in built for m in r.trace.meta["batch"]) > 1
    mixed = engine.run_batch([queries[0], texts[1], {"program": queries[2], "id": "q2"},
                              BatchItem(program=queries[3], id="q3")], batch_size=8)
    assert [r.value for r in mixed] == [r.value for r in by_text[:4]]
    assert [r.id for r in mixed] == [0, 1, "q2", "q3"]


def test_query_values_are_query_instances(vp):
    image = vp.image(photo())
    assert isinstance(image, ImageQuery) and isinstance(image.loc("x"), Query)
    assert image.loc("x").types == frozenset({"Objects"})
    assert "Objects query CAR=Loc" in repr(image.loc("car"))
    assert "not run" in repr(image.loc("car"))


def test_readme_queries_write_the_programs_beside_them(vp):
    """The README's composed queries and the programs shown beside them agree."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = r"```{}\n((?:(?!```).)*)```"
    pairs = re.findall(r"<tr><td>\s*" + block.format("python") + r"\s*</td><td>\s*" +
                       block.format(""), readme, re.DOTALL)
    assert len(pairs) == 3
    left, right = vp.pair(photo(1), photo(2))
    for code, program in pairs:
        names = {"img": vp.image(photo()), "left": left, "right": right}
        exec(compile(code, "README.md", "exec"), names)  # our own documentation's code
        last = re.findall(r"^(\w+) = ", code, re.MULTILINE)[-1]
        assert names[last].program == program


def test_names_and_depth_limits(vp):
    image = vp.image(photo())
    n = image.loc("LEFT").count()
    total = sum([n] * 40)  # sum() starts at 0 + n: __radd__ builds the expression
    assert total.program.splitlines()[-1] == \
        "EVAL=Eval(expr='0 + " + " + ".join(["{COUNT}"] * 40) + "')"
    assert total.value == 40
    raises_here(lambda: sum([n] * 150), "nested too deeply")
    part = sum([n] * 90).named("PART")
    assert (part + sum([n] * 90)).value == 180
    clash = n.named("X") + (n + 1).named("X")
    raises_here(lambda: clash.program, "two different steps are named 'X'")


def test_list_and_result_are_functions(vp):
    image = vp.image(photo())
    breeds = vp.fn.list("dog breeds", max=3)
    tagged = image.tag(image.classify(image.loc("dog"), breeds))
    assert tagged.program == ("DOG=Loc(image=IMAGE, object='dog')\n"
                              "LIST=List(query='dog breeds', max=3)\n"
                              "CLASSIFY=Classify(image=IMAGE, object=DOG, categories=LIST)\n"
                              "TAG=Tag(image=IMAGE, object=CLASSIFY)\n")
    raises_here(lambda: image.classify(image.loc("dog"), image.vqa("which?")),
                r"'categories' takes TextList; the Vqa result is Text")


def test_messages_write_articles_and_plurals(vp):
    """'an Image query value', 'pass Objects', 'there is 1 object' (issue 20 item 17)."""
    image = vp.image(photo())
    with pytest.raises(QueryError, match="an Objects query value can't be converted"):
        str(image.loc("x"))
    with pytest.raises(QueryError, match="an Image query value is not a sequence"):
        len(image)
    err = raises_here(lambda: image.crop(box="x"), r"Crop's 'box' takes Objects")
    assert "(hint: pass Objects)" in str(err) and "a Objects" not in str(err)
    one = vp.image(photo()).loc("LEFT")
    assert len(one) == 1
    with pytest.raises(QueryError, match="there is 1 object$"):
        one[3]
    assert "(1 step, not run)" in repr(vp.image(photo()).loc("cup"))


def test_a_known_value_shows_itself_an_unknown_one_is_refused(vp):
    """An input is its own value, and a query that ran has one: repr and str show it.
    Before a run, Python can't format a query (that would need the run)."""
    image = vp.image(photo())
    assert repr(image) == "<Image input IMAGE: image 64x48>" and str(image) == "image 64x48"
    half = image.loc("LEFT")
    assert repr(half).endswith("(1 step, not run)>")
    with pytest.raises(QueryError, match="can't be converted or formatted"):
        str(half)
    assert len(half) == 1  # runs it
    assert repr(half).endswith("(1 step, ran): 1 region (LEFT)>")
    assert str(half) == str(half.value) and str(half).startswith("1 region on a 64x48 image")
    region = half[0]  # a region is an input of the programs that use it
    assert repr(region) == "<Objects input LEFT_0: 1 region (LEFT)>"
    assert str(region).splitlines()[1].split()[:2] == ["0", "LEFT"]
    assert f"{region}" == str(region)
    # a notebook: before the run, the program (nothing runs); after, the regions drawn
    # over the image they were found in, as the trace draws them
    other = image.loc("RIGHT")
    assert "not run" in other._repr_html_() and "<img" not in other._repr_html_()
    assert "LEFT" in half._repr_html_()
    drawn = re.findall(r'<img src="([^"]+)"', half._repr_html_())
    assert drawn and drawn[0] in half.trace.to_html()
    n = half.count()
    with pytest.raises(QueryError, match="can't be converted or formatted"):
        f"{n}"
    n.value
    assert (str(n), f"{n:>3}") == ("1", "  1")
