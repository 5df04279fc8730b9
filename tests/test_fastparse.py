"""The fast path gives Lark's own result on every text Lark accepts, and gives up on the rest.

`visprog.fastparse.FastPath` runs the grammar's LALR table with its own lexer loop; any
difference from Lark would be a silent change of the language, so it is compared here with
Lark's parser (contextual lexer) on hand-written edge cases, the shipped programs and a few
thousand random programs.
"""
from __future__ import annotations

import random
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from visprog.values.textfiles import normalize_newlines
from lark.exceptions import UnexpectedInput

from visprog.errors import ParseError
from visprog.language.fastparse import FastPath, NoFastPath
from visprog.language.parser import _fast_path, _parser, parse

ROOT = Path(__file__).resolve().parents[1]


def lark_result(text: str):
    return _parser().parse(text)


def assert_same(text: str) -> None:
    expected = lark_result(text)
    got = _fast_path().parse(text)
    assert got == expected, text
    # positions are part of the result (diagnostics and traces use them)
    assert [(s.line, s.column, s.end_line, s.module_column) for s in got] == \
        [(s.line, s.column, s.end_line, s.module_column) for s in expected]


EDGE_CASES = [
    "",
    "\n\n",
    "# only a comment",
    "# c1\n\n# c2\n",
    "X=Loc(image=IMAGE, object='cat')",
    "X=Loc(image=IMAGE,object='cat')\n",
    "  X = Loc ( image = IMAGE , object = 'cat' )  # trailing comment\n",
    "X=Loc(image=IMAGE, object='cat')\r\nY=Count(box=X)\r\n",
    "X=Loc(\n    image=IMAGE,\n    # a comment inside\n    object='cat',\n)\nN=Count(box=X)",
    "X=Foo()\nY=Foo(\n)\n",
    "A=B\nC=A",
    "X=F(a=True, b=False, c=None, d=[], e=[1, -2.5, +3e2, .5, 1.], f=[[a], 'x'])",
    "X=F(a=[\n 1,\n 2,\n], b='#not a comment')",
    r"X=F(s='it\'s', t=" + '"say \\"hi\\""' + r", u='\u00e9\x41\n')",
    "X=F(s='日本語 🙂')",
    # keyword-like names where only a NAME can stand: Lark's contextual lexer takes them
    "True=F(a=1)", "X=None", "X=F(True=1)", "NoneX=F(a=TrueX, b=None_)",
    "X=F(a=Truex)",
    "\tX=F(a=1)\n\n\n   \nY=F(b=X)   \n",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_match_lark(text):
    try:
        lark_result(text)
    except UnexpectedInput:
        with pytest.raises(NoFastPath):
            _fast_path().parse(text)
        return
    assert_same(text)


def shipped_programs() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples").glob("*.vp"))]
    for f in sorted(resources.files("visprog.planning").joinpath("examples").iterdir()):
        if f.name.endswith(".toml"):
            data = tomllib.loads(f.read_text(encoding="utf-8"))
            texts += [ex["program"] for ex in data.get("example", []) if "program" in ex]
    return texts


def test_shipped_programs_match_lark():
    texts = shipped_programs()
    assert len(texts) >= 10
    for text in texts:
        assert_same(text)


# -- random programs ---------------------------------------------------------------------------

NAMES = ["IMAGE", "BOX0", "x", "_y", "True", "False", "None", "TrueX", "none", "Loc", "a1_b2"]


def rand_name(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(NAMES)
    first = rng.choice("abcXYZ_")
    return first + "".join(rng.choice("abcXYZ_019") for _ in range(rng.randrange(6)))


def rand_value(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(8 if depth < 2 else 7)
    if kind == 0:
        return rand_name(rng)
    if kind == 1:
        q = rng.choice("'\"")
        body = "".join(rng.choice(["a", " ", "#", "é", "\\n", "\\" + q, "{X}", "🙂", ",", ")"])
                       for _ in range(rng.randrange(6)))
        return q + body + q
    if kind == 2:
        return rng.choice(["0", "42", "-7", "+3", "1.5", "-0.25", "1e3", "2.5E-2", ".5", "7."])
    if kind in (3, 4, 5):
        return rng.choice(["True", "False", "None"])
    if kind == 6:
        return rand_name(rng)
    items = [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return "[" + sep(rng).join(items) + (rng.choice(["", ","]) if items else "") + "]"


def sep(rng: random.Random) -> str:
    return rng.choice([",", ", ", " ,", ",\n   ", "\n,", ", # note\n "])


def space(rng: random.Random) -> str:
    return rng.choice(["", "", " ", "\t", "  "])


def rand_step(rng: random.Random) -> str:
    target = rand_name(rng)
    if rng.random() < 0.15:
        return f"{space(rng)}{target}{space(rng)}={space(rng)}{rand_name(rng)}{space(rng)}"
    args = [f"{rand_name(rng)}{space(rng)}={space(rng)}{rand_value(rng)}"
            for _ in range(rng.randrange(4))]
    opener = rng.choice(["(", "(", "(\n  "])
    closer = rng.choice(["", "", ",", "\n"]) if args else ""
    return f"{space(rng)}{target}={rand_name(rng)}{opener}{sep(rng).join(args)}{closer})"


def rand_program(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randrange(1, 8)):
        r = rng.random()
        if r < 0.1:
            lines.append(rng.choice(["", "   ", "# a comment", "  # indented comment"]))
        else:
            lines.append(rand_step(rng) + rng.choice(["", "", "  # why"]))
    return rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n", "\n\n"])


def mutate(rng: random.Random, text: str) -> str:
    """A near-miss: one character deleted, doubled or replaced (often no longer valid)."""
    if not text:
        return "("
    i = rng.randrange(len(text))
    op = rng.randrange(3)
    if op == 0:
        return text[:i] + text[i + 1:]
    if op == 1:
        return text[:i] + text[i] + text[i:]
    return text[:i] + rng.choice("=(),[]'\"#\n x1-.") + text[i + 1:]


def test_random_programs_match_lark():
    rng = random.Random(20261123)
    accepted = 0
    for _ in range(1500):
        text = rand_program(rng)
        lark_result(text)  # the generator writes valid programs only
        assert_same(text)
        accepted += 1
    assert accepted == 1500


def test_near_misses_match_lark_or_give_up():
    """Broken programs: the fast path agrees with Lark when Lark accepts, else gives up;
    `parse` reports Lark's error either way."""
    rng = random.Random(7)
    rejected = 0
    for _ in range(1500):
        # parse() reads a lone CR as a line end (values.textfiles), as the grammar reads LF
        text = normalize_newlines(mutate(rng, rand_program(rng)))
        try:
            lark_result(text)
        except UnexpectedInput:
            rejected += 1
            with pytest.raises(NoFastPath):
                _fast_path().parse(text)
            with pytest.raises(ParseError):
                parse(text + f"\n# {rng.random()}")  # a new text: not a remembered parse
            continue
        assert_same(text)
    assert rejected > 300  # the mutations do break programs


def test_fast_path_is_built_from_the_grammar_artifacts():
    fp = FastPath(_parser())
    # the keyword-like terminals are found from the grammar, not listed by hand
    assert fp._keywords == {"NAME": {"True": "TRUE", "False": "FALSE", "None": "NONE"}}
    with pytest.raises(NoFastPath):
        fp.parse("X=F(a=1")
    with pytest.raises(NoFastPath):
        fp.parse("X=F(a=@)")
