"""Parser: every form of SPEC section 1, positions and source text, and malformed programs."""
from __future__ import annotations

import pytest

from visprog.errors import ParseError
from visprog.language.parser import parse
from visprog.language.program import Var


def only_step(text: str):
    program = parse(text)
    assert len(program) == 1, program
    return program[0]


def arg_values(text: str) -> dict:
    return {a.name: a.value for a in only_step(text).args}


# -- forms that parse -----------------------------------------------------------------------

VALUE_CASES = [
    # (argument text, parsed value)
    ("'single'", "single"),
    ('"double"', "double"),
    (r"'it\'s'", "it's"),
    (r'"say \"hi\""', 'say "hi"'),
    (r"'a\\b'", "a\\b"),
    (r"'line\nbreak\ttab'", "line\nbreak\ttab"),
    (r"'\u00e9\x41'", "éA"),
    ("'日本語 🙂 café'", "日本語 🙂 café"),
    ("'has # hash'", "has # hash"),
    ("'{N} > 0'", "{N} > 0"),  # braces are plain text outside of Eval's own parsing
    ("''", ""),
    ("0", 0),
    ("42", 42),
    ("-7", -7),
    ("+3", 3),
    ("1.5", 1.5),
    ("-0.25", -0.25),
    (".5", 0.5),
    ("1e3", 1000.0),
    ("-1.5e-2", -0.015),
    ("True", True),
    ("False", False),
    ("None", None),
    ("IMAGE", Var("IMAGE")),
    ("_private1", Var("_private1")),
    ("Trueish", Var("Trueish")),  # a keyword prefix is still a name
    ("[]", ()),
    ("[1]", (1,)),
    ("['a', \"b\",]", ("a", "b")),
    ("[1, [2, 'x'], []]", (1, (2, "x"), ())),
    ("[X, Y]", (Var("X"), Var("Y"))),
    ("[True, None, -1.5]", (True, None, -1.5)),
]


@pytest.mark.parametrize("written,expected", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_values(written, expected):
    value = arg_values(f"A=Foo(x={written})")["x"]
    assert value == expected
    assert type(value) is type(expected)


def test_number_types_are_int_or_float():
    values = arg_values("A=Foo(a=3, b=3.0, c=-2, d=2e0)")
    assert [type(v) for v in values.values()] == [int, float, int, float]


PROGRAM_CASES = [
    # (program, [(target, module, alias_of, arg names)])
    ("A=Foo()", [("A", "Foo", None, [])]),
    ("A=Foo(x=1)", [("A", "Foo", None, ["x"])]),
    ("A=Foo(x=1,)", [("A", "Foo", None, ["x"])]),
    ("A=Foo(x=1, y='b',)", [("A", "Foo", None, ["x", "y"])]),
    ("  A  =  Foo ( x = 1 , y = 2 )  ", [("A", "Foo", None, ["x", "y"])]),
    ("\tA=Foo(x=1)\t", [("A", "Foo", None, ["x"])]),
    ("RESULT=IMAGE0", [("RESULT", None, "IMAGE0", [])]),
    ("B = A  # alias with a comment", [("B", None, "A", [])]),
    ("# only a comment", []),
    ("", []),
    ("\n\n\n", []),
    ("   \n\t\n", []),
    ("# one\n\n# two\nA=Foo(x=1)  # trailing\n\n", [("A", "Foo", None, ["x"])]),
    ("A=Foo(x=1)\nB=Bar(y=A)\nC=B", [("A", "Foo", None, ["x"]), ("B", "Bar", None, ["y"]),
                                      ("C", None, "B", [])]),
    ("A=Foo(x=1)\r\nB=Bar(y=A)\r\n", [("A", "Foo", None, ["x"]), ("B", "Bar", None, ["y"])]),
    ("A=Foo(x=1)", [("A", "Foo", None, ["x"])]),  # no final newline
    ("A=Foo(\n  x=1,\n  y=[1,\n     2],\n)\nB=A", [("A", "Foo", None, ["x", "y"]),
                                                  ("B", None, "A", [])]),
    ("A=Foo(  # comment inside a call\n  x=1\n)", [("A", "Foo", None, ["x"])]),
    ("A=CROP_LEFTOF(image=IMAGE, box=B)", [("A", "CROP_LEFTOF", None, ["image", "box"])]),
    ("A=Foo(x=1)\nA=Foo(x=2)", [("A", "Foo", None, ["x"]), ("A", "Foo", None, ["x"])]),
    ("A=Foo(x=1)#c\nB=A#c", [("A", "Foo", None, ["x"]), ("B", None, "A", [])]),
]


@pytest.mark.parametrize("text,expected", PROGRAM_CASES, ids=[repr(c[0])[:40] for c in PROGRAM_CASES])
def test_programs(text, expected):
    program = parse(text)
    got = [(s.target, s.module, s.alias_of, [a.name for a in s.args]) for s in program]
    assert got == expected
    assert program.source == text.replace("\r\n", "\n")  # line ends as LF (values.textfiles)


def test_crlf_program_matches_lf_program():
    lf = "A=Foo(x='a b', y=[1, 2])\n# c\nB=Bar(\n  z=A,\n)\n"
    crlf = lf.replace("\n", "\r\n")
    a, b = parse(lf), parse(crlf)
    assert [(s.target, s.module, s.args, s.line, s.column, s.source) for s in a] == \
        [(s.target, s.module, s.args, s.line, s.column, s.source) for s in b]
    assert all("\r" not in s.source for s in b)


# -- positions and source text ---------------------------------------------------------------

def test_positions_of_steps_and_args():
    text = ("# header\n"
            "\n"
            "OBJ = Loc(image=IMAGE, object='car')\n"
            "  N=Count(\n"
            "      box=OBJ,\n"
            "  )\n"
            "ANSWER=N\n")
    program = parse(text)
    loc, count, alias = program
    assert (loc.line, loc.column, loc.module_column) == (3, 1, 7)
    assert [(a.name, a.line, a.column) for a in loc.args] == [("image", 3, 11), ("object", 3, 24)]
    assert (count.line, count.column, count.module_column) == (4, 3, 5)
    assert [(a.name, a.line, a.column) for a in count.args] == [("box", 5, 7)]
    assert (alias.line, alias.column, alias.module_column) == (7, 1, 8)


def test_step_source_is_the_text_as_written():
    text = "A = Foo( x=1 )   # why\n\nB=Bar(\n  y=A,\n  z='q'\n)\nC=B\n"
    a, b, c = parse(text)
    assert a.source == "A = Foo( x=1 )   # why"
    assert b.source == "B=Bar(\n  y=A,\n  z='q'\n)"
    assert c.source == "C=B"


def test_step_arg_lookup_is_case_insensitive():
    step = only_step("A=Foo(Image=IMAGE, Box=B)")
    assert step.arg("image").value == Var("IMAGE")
    assert step.arg("BOX").value == Var("B")
    assert step.arg("missing") is None


def test_parse_rejects_non_text():
    with pytest.raises(TypeError, match="str"):
        parse(b"A=Foo()")  # type: ignore[arg-type]


def test_same_text_gives_equal_programs():
    text = "A=Foo(x=[1, 'b'])\nB=A"
    assert parse(text) == parse(text)


# -- malformed programs -----------------------------------------------------------------------

ERROR_CASES = [
    # (id, program, line, column, message part, hint part)
    ("missing close paren", "A=Foo(x=1", 1, 10, "end of program", "')'"),
    ("missing close paren mid-program", "A=Foo(x=1\nB=Bar(y=2)", 1, 6, "'(' is never closed", "add ')' at the end of line 1"),
    ("missing comma", "A=Foo(x=1 y=2)", 1, 11, "unexpected 'y'", "separate arguments with ','"),
    ("unterminated single quote", "A=Foo(x='abc)", 1, 9, "unterminated string", "'"),
    ("unterminated double quote", 'A=Foo(x=1)\nB=Foo(y="abc\nC=D', 2, 9, "unterminated string",
     '"'),
    ("bare call", "Foo(x=1)", 1, 4, "unexpected '('", "TARGET=Module"),
    ("bare name", "A", 1, 2, "end of program", "TARGET=Module"),
    ("bare name then a step", "A\nB=C", 1, 2, "new line", "TARGET=Module"),
    ("chained assignment", "A=B=C", 1, 4, "unexpected '='", "one '=' per step"),
    ("braces outside Eval", "A=Foo(x={N})", 1, 9, "'{'", "Eval"),
    ("plus operator", "A=Foo(x=N+1)", 1, 10, "'+1'", "operators"),
    ("times operator", "A=Foo(x=N*2)", 1, 10, "'*'", "operators"),
    ("comparison", "A=Foo(x=N > 2)", 1, 11, "'>'", "operators"),
    ("empty value", "A=Foo(x=)", 1, 9, "unexpected ')'", "value is missing"),
    ("empty value before comma", "A=Foo(x=, y=1)", 1, 9, "unexpected ','", "value is missing"),
    ("empty argument", "A=Foo(x=1,,y=2)", 1, 11, "unexpected ','", "argument is missing"),
    ("leading comma", "A=Foo(,)", 1, 7, "unexpected ','", "argument is missing"),
    ("positional argument", "A=Foo(1)", 1, 7, "unexpected '1'", "name=value"),
    ("positional variable", "A=Foo(IMAGE)", 1, 12, "unexpected ')'", "name=value"),
    ("stray close paren", "A=Foo(x=1))", 1, 11, "unexpected ')'", "one ')' too many"),
    ("stray paren on its own line", "A=Foo(x=1)\n)", 2, 1, "unexpected ')'", "one ')' too many"),
    ("list not closed", "A=Foo(x=[1,2)", 1, 13, "unexpected ')'", "']'"),
    ("two steps on a line", "A=Foo(x=1) B=Bar()", 1, 12, "unexpected 'B'", "own line"),
    ("missing module after =", "A=Foo(x=1)\nB=", 2, 3, "end of program", "incomplete"),
    ("target is a string", "'A'=Foo()", 1, 1, "unexpected \"'A'", "name it assigns"),
    ("target is a number", "1=Foo()", 1, 1, "unexpected '1'", "name it assigns"),
    ("dotted module", "A=vis.Foo()", 1, 6, "'.'", "operators"),
    ("semicolon", "A=Foo(x=1);", 1, 11, "';'", "TARGET=Module"),
]


@pytest.mark.parametrize("text,line,column,message,hint", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_malformed_programs(text, line, column, message, hint):
    with pytest.raises(ParseError) as info:
        parse(text)
    (d,) = info.value.diagnostics
    assert (d.line, d.column) == (line, column), d
    assert message in d.message, d
    assert hint in d.hint, d
    assert d.hint, "every parse error carries a hint"
    assert d.text == text.splitlines()[line - 1].strip()
    assert f"line {line}, col {column}" in str(info.value)


def test_parse_error_is_data_not_a_lark_exception():
    with pytest.raises(ParseError) as info:
        parse("A=Foo(x=1")
    err = info.value
    assert err.__cause__ is None and err.__suppress_context__  # no Lark chain shown
    assert err.source == "A=Foo(x=1"
    assert err.diagnostics[0].to_dict()["hint"]


def test_error_position_with_crlf_line_ends():
    with pytest.raises(ParseError) as info:
        parse("A=Foo(x=1)\r\nB=Foo(y=2))\r\n")
    d = info.value.diagnostics[0]
    assert (d.line, d.column) == (2, 11)
    assert d.text == "B=Foo(y=2))"


def test_error_on_a_later_line_of_a_multiline_call():
    text = "A=Foo(\n  x=1,\n  y=2 z=3\n)"
    with pytest.raises(ParseError) as info:
        parse(text)
    d = info.value.diagnostics[0]
    assert (d.line, d.column) == (3, 7)
    assert d.text == "y=2 z=3"
