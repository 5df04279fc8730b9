"""Checker: unknown names with suggestions, arguments, variables, types; all errors at once."""
from __future__ import annotations


import pytest

from visprog.language.checker import DEFAULT_INPUTS, check, check_or_raise
from visprog.errors import CheckError
from visprog.language.parser import parse
from visprog.config import find_modules
from visprog.registry import Registry, tool
from visprog.values import Objects


@tool("FakeLoc", params={"image": "Image", "object": "Text"}, returns="Objects")
def fake_loc(image, object):
    """A test detector: no model, no objects."""
    return Objects.empty(image.size)


@tool("Join", params={"words": "TextList"}, returns="Text", draw_on=None)
def join(words):
    return " ".join(words)


@tool("Label", params={"image": "Image", "text": "Text|None"}, returns="Image")
def label(image, text=None):
    return image


@pytest.fixture(scope="module")
def registry() -> Registry:
    tools = find_modules(plugins=False).plain
    return Registry(tools + [fake_loc, join, label])


LOC = "OBJ=FakeLoc(image=IMAGE, object='car')\n"


def problems(registry, text, inputs=None):
    return [(d.line, d.column, d.text, d.message, d.hint)
            for d in check(parse(text), registry, inputs)]


# -- programs that check -----------------------------------------------------------------------

OK_PROGRAMS = [
    LOC + "N=Count(box=OBJ)",
    LOC + "A=CROP_LEFTOF(image=IMAGE, box=OBJ)",
    LOC + "A=croprightof(image=IMAGE, box=OBJ)",
    LOC + "A=Crop_Below(Image=IMAGE, BOX=OBJ)",  # argument names match case-insensitively
    "OBJ=fakeloc(IMAGE=LEFT, Object='dog')\nN=COUNT(Box=OBJ)",
    LOC + "N=Count(box=OBJ)\nA=Eval(expr=\"'yes' if {N} > 0 else 'no'\")\nR=Result(var=A)",
    "A=IMAGE\nB=A\nOBJ=FakeLoc(image=B, object='x')",  # aliases carry the type on
    "R=Result(var=IMAGE)\nOBJ=FakeLoc(image=R, object='x')",  # Result passes the type through
    LOC + "OBJ=FakeLoc(image=IMAGE, object='dog')\nN=Count(box=OBJ)",  # re-assignment
    "T=Join(words=['a', \"b\"])",
    "T=Join(words=[])",
    "I=Label(image=IMAGE)",
    "I=Label(image=IMAGE, text=None)",
    "I=Label(image=IMAGE, text='x')",
    LOC + "A=ColorPop(image=RIGHT, object=OBJ)",
]


@pytest.mark.parametrize("text", OK_PROGRAMS)
def test_valid_programs_have_no_problems(registry, text):
    assert problems(registry, text) == []
    check_or_raise(parse(text), registry)


# -- one problem each ------------------------------------------------------------------------

ONE_PROBLEM = [
    # (id, program, inputs or None, (line, column), message part, hint part)
    ("only comments", "# nothing but a comment\n\n# and another", None, (1, 1),
     "the program has no steps", "NAME=Module"),
    ("assigns True", "True=Eval(expr='1')", None, (1, 1),
     "can't assign to True: 'True' is a reserved word", "a name of its own"),
    ("assigns None by alias", "None=IMAGE", None, (1, 1), "can't assign to None", ""),
    ("assigns a default input", LOC + "LEFT=Crop(image=IMAGE, box=OBJ)", None, (2, 1),
     "can't assign to LEFT: 'LEFT' is an input of the program", ""),
    ("assigns a declared input", "Q=Eval(expr='1')\nQUESTION=Eval(expr='2')",
     {"QUESTION": "Text"}, (2, 1), "'QUESTION' is an input", ""),
    ("unknown module", "N=Cout(box=OBJ)", {"OBJ": "Objects"}, (1, 3),
     "unknown module 'Cout'", "did you mean 'Count'?"),
    ("unknown module lenient", LOC + "A=CROP_LEFT(image=IMAGE, box=OBJ)", None, (2, 3),
     "unknown module 'CROP_LEFT'", "did you mean 'CropLeftOf'?"),
    ("unknown module far from all", "A=Zzzzqqq(x=1)", None, (1, 3), "unknown module 'Zzzzqqq'",
     "known modules: BgBlur"),
    ("unknown argument", LOC + "N=Count(bx=OBJ, box=OBJ)", None, (2, 9),
     "Count has no argument 'bx'", "did you mean 'box'?"),
    ("unknown argument, no close name", LOC + "N=Count(box=OBJ, zzz=1)", None, (2, 18),
     "no argument 'zzz'", "Count takes box"),
    ("missing argument", "N=Count()", None, (1, 3), "Count needs argument 'box'",
     "add box=<Objects|Tracks>"),
    ("missing one of two", "A=FakeLoc(image=IMAGE)", None, (1, 3),
     "FakeLoc needs argument 'object'", "add object=<Text>"),
    ("duplicate argument", LOC + "N=Count(box=OBJ, BOX=OBJ)", None, (2, 18),
     "argument 'box' given twice", "keep one"),
    ("undefined variable", "N=Count(box=OBJ)", None, (1, 9), "undefined variable 'OBJ'",
     "no earlier step or input"),
    ("undefined variable close to one", LOC + "N=Count(box=OBJ1)", None, (2, 9),
     "undefined variable 'OBJ1'", "did you mean 'OBJ'?"),
    ("read before defined", "N=Count(box=OBJ)\n" + LOC, None, (1, 9),
     "undefined variable 'OBJ'", ""),
    ("alias of undefined", "A=NOPE", None, (1, 3), "undefined variable 'NOPE'", ""),
    ("undefined in a list", "T=Join(words=['a', W])", None, (1, 8), "undefined variable 'W'", ""),
    ("image where objects", "N=Count(box=IMAGE)", None, (1, 9),
     "Count's 'box' takes Objects or Tracks; IMAGE is Image", "Loc"),
    ("objects where image", LOC + "A=Crop(image=OBJ, box=OBJ)", None, (2, 8),
     "'image' takes Image; OBJ is Objects", "pass the image itself"),
    ("number where text", "OBJ=FakeLoc(image=IMAGE, object=3)", None, (1, 26),
     "'object' takes Text; got Number", "quotes"),
    ("bool where text", "OBJ=FakeLoc(image=IMAGE, object=True)", None, (1, 26),
     "'object' takes Text; got Bool", "quotes"),
    ("none where required text", "OBJ=FakeLoc(image=IMAGE, object=None)", None, (1, 26),
     "'object' takes Text; got None", ""),
    ("text literal where image", "OBJ=FakeLoc(image='photo.jpg', object='x')", None, (1, 13),
     "'image' takes Image; got Text", ""),
    ("text where TextList", "T=Join(words='a')", None, (1, 8), "'words' takes TextList; got Text",
     ""),
    ("mixed list where TextList", "T=Join(words=['a', 1])", None, (1, 8),
     "'words' takes TextList; got a list that is not all text", "texts only"),
    ("number variable where objects", LOC + "N=Count(box=OBJ)\nM=Count(box=N)", None, (3, 9),
     "N is Number", ""),
    ("alias keeps the type", "A=IMAGE\nN=Count(box=A)", None, (2, 9), "A is Image", ""),
    ("Result keeps the type", "R=Result(var=IMAGE)\nN=Count(box=R)", None, (2, 9),
     "R is Image", ""),
    ("Eval reads undefined", "A=Eval(expr='{N} + 1')", None, (1, 8),
     "expression reads undefined variable 'N'", ""),
    ("Eval reads a misspelt name", LOC + "N=Count(box=OBJ)\nA=Eval(expr='{NN} > 0')", None,
     (3, 8), "undefined variable 'NN'", "did you mean 'N'?"),
    ("Eval bad syntax", "A=Eval(expr='{N +')", None, (1, 8), "bad expression", "Eval"),
    ("Eval unbalanced", LOC + "N=Count(box=OBJ)\nA=Eval(expr='({N} > 0')", None, (3, 8),
     "bad expression", ""),
    ("Eval expr not text", "A=Eval(expr=3)", None, (1, 8), "'expr' takes Text; got Number", ""),
    ("custom input typed", "N=Count(box=BOXES)", {"BOXES": "Image"}, (1, 9), "BOXES is Image",
     ""),
    ("no default inputs when inputs given", "N=Count(box=OBJ)\nA=Crop(image=IMAGE, box=OBJ)",
     {"OBJ": "Objects"}, (2, 8), "undefined variable 'IMAGE'", ""),
    # a forgotten input is an input, not a string without quotes (issue 20 item 15)
    ("IMAGE not given", "OBJ=FakeLoc(image=IMAGE, object='x')", {}, (1, 13),
     "undefined variable 'IMAGE': the input IMAGE was not given",
     "pass it: image=... in Python (vp.execute, vp.run), --image PATH on the command line"),
    ("IMAGE read where a pair is bound", "OBJ=FakeLoc(image=IMAGE, object='x')",
     {"LEFT": "Image", "RIGHT": "Image"}, (1, 13), "the input IMAGE was not given",
     "this run's inputs are LEFT, RIGHT: read one of them, or pass it: image=..."),
    ("RIGHT not given", "OBJ=FakeLoc(image=RIGHT, object='x')", {"LEFT": "Image"}, (1, 13),
     "the input RIGHT was not given", "--right PATH on the command line"),
    ("Eval reads a missing input", "A=Eval(expr='{IMAGE} == 1')", {}, (1, 8),
     "expression reads undefined variable 'IMAGE': the input IMAGE was not given", "image="),
    ("alias of a missing input", "A=LEFT", {}, (1, 3), "the input LEFT was not given",
     "--left PATH"),
    # articles and plurals (issue 20 item 17)
    ("text where objects", "A=Crop(image=IMAGE, box='x')", None, (1, 21),
     "'box' takes Objects; got Text", "pass Objects"),
    ("text where image", LOC + "A=Crop(image='x', box=OBJ)", None, (2, 8),
     "'image' takes Image; got Text", "pass an Image"),
]


@pytest.mark.parametrize("text,inputs,where,message,hint", [c[1:] for c in ONE_PROBLEM],
                         ids=[c[0] for c in ONE_PROBLEM])
def test_one_problem(registry, text, inputs, where, message, hint):
    found = check(parse(text), registry, inputs)
    assert len(found) == 1, found
    d = found[0]
    assert (d.line, d.column) == where, d
    assert message in d.message, d
    assert hint in d.hint, d
    assert d.hint and d.text


def test_unknown_module_reports_the_variables_it_reads(registry):
    found = problems(registry, "A=Sgment(image=Q)")
    assert [m for *_, m, _ in found] == ["unknown module 'Sgment'", "undefined variable 'Q'"]


def test_unknown_argument_still_checks_its_value(registry):
    found = problems(registry, LOC + "N=Count(box=OBJ, y=Z)")
    assert [m for *_, m, _ in found] == ["Count has no argument 'y'", "undefined variable 'Z'"]


def test_suggestion_is_only_a_hint(registry):
    """A misspelt module is never silently replaced by the nearest one."""
    with pytest.raises(CheckError) as info:
        check_or_raise(parse("N=Cont(box=OBJ)"), registry, {"OBJ": "Objects"})
    assert "did you mean 'Count'?" in str(info.value)


def test_all_errors_are_reported_at_once(registry):
    text = ("OBJ=FakeLoc(image=IMAGE, object=3)\n"       # 1: number where text
            "N=Cout(box=OBJ)\n"                          # 2: unknown module
            "C=Crop(image=IMAGE, bx=OBJ)\n"              # 3: unknown arg + missing box
            "M=Count(box=IMAGE)\n"                       # 4: type mismatch
            "A=Eval(expr='{Q} + {M}')\n"                  # 5: Eval reads undefined Q
            "B=MISSING\n"                                # 6: alias of undefined
            "R=Result(var=UNDEF)\n")                     # 7: undefined variable
    found = check(parse(text), registry)
    assert [d.line for d in found] == [1, 2, 3, 3, 4, 5, 6, 7]
    with pytest.raises(CheckError) as info:
        check_or_raise(parse(text), registry)
    assert len(info.value.diagnostics) == 8
    assert str(info.value).startswith("8 errors in program")


def test_later_steps_are_checked_after_an_unknown_module(registry):
    # The unknown step's output type is unknown: no cascade of type errors from it...
    assert [d.line for d in check(parse("X=Nope(a=1)\nN=Count(box=X)"), registry)] == [1]
    # ...but its target is defined, so later reads are not "undefined".
    found = check(parse("X=Nope(a=1)\nN=Count(box=X)\nM=Count(box=Y)"), registry)
    assert [(d.line, d.message) for d in found][1:] == [(3, "undefined variable 'Y'")]


def test_default_inputs_are_three_images_and_a_video(registry):
    assert dict(DEFAULT_INPUTS) == {"IMAGE": "Image", "LEFT": "Image", "RIGHT": "Image",
                                    "VIDEO": "Video"}
    assert problems(registry, "A=Result(var=LEFT)\nB=Result(var=RIGHT)\nC=Result(var=VIDEO)") == []


@pytest.mark.parametrize("inputs,ok", [
    ({"QUESTION": "Text", "IMAGE": "Image"}, True),
    ({"QUESTION": "Number", "IMAGE": "Image"}, False),
    ({"QUESTION": "Text|Number", "IMAGE": "Image"}, True),  # a union fits if one member does
    ({"QUESTION": "Any", "IMAGE": "Image"}, True),
    ({"IMAGE": "Image"}, False),  # QUESTION not bound
])
def test_custom_inputs(registry, inputs, ok):
    text = "OBJ=FakeLoc(image=IMAGE, object=QUESTION)"
    assert (problems(registry, text, inputs) == []) is ok


@pytest.mark.parametrize("text", ["", "\n \n", "# nothing"])
def test_an_empty_program_has_no_steps(registry, text):
    found = check(parse(text), registry)
    assert [(d.line, d.column, d.message) for d in found] == [(1, 1, "the program has no steps")]
    with pytest.raises(CheckError, match="no steps"):
        check_or_raise(parse(text), registry)
