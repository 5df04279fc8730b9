"""Backslash escapes mean the same in program strings (fast path and Lark) and Eval strings:
known escapes as in Python, any other backslash kept as written."""
from __future__ import annotations

import pytest

from visprog.api import VisProg
from visprog.language.expr import evaluate
from visprog.language.parser import _fast_path, _parser, parse
from visprog.language.strings import unescape

# (body as written between the quotes, the text it stands for)
CASES = [
    (r"a\qb", "a\\qb"),           # unknown escape: the backslash stays
    (r"\d+\w", "\\d+\\w"),        # e.g. a pattern someone pastes
    (r"C:\path\file", "C:\\path\\file"),
    (r"\x4", "\\x4"),             # incomplete hex escapes stay as written too
    (r"\xZZ", "\\xZZ"),
    (r"\u12", "\\u12"),
    (r"\U00110000", "\\U00110000"),  # past the last code point
    (r"\x41\u00e9\U0001F600", "Aé😀"),
    (r"\n\t\r\0", "\n\t\r\0"),
    (r"it\'s \"q\"", "it's \"q\""),
    (r"a\\qb", "a\\qb"),          # an escaped backslash is one backslash
    (r"\\\\", "\\\\"),
    ("trailing\\", "trailing\\"),  # no grammar lets a body end so; unescape keeps it
    ("plain", "plain"),
    ("", ""),
]


@pytest.mark.parametrize("body, text", CASES)
def test_unescape(body, text):
    assert unescape(body) == text


PROGRAM_CASES = [(b, t) for b, t in CASES if not b.endswith("\\")]


@pytest.mark.parametrize("body, text", PROGRAM_CASES)
def test_program_strings_fast_path_and_lark(body, text):
    source = f"X=F(s='{body}')"
    for steps in (_fast_path().parse(source), _parser().parse(source)):
        assert steps[0].args[0].value == text
    assert parse(source).steps[0].args[0].value == text


@pytest.mark.parametrize("body, text", PROGRAM_CASES)
def test_eval_strings(body, text):
    assert evaluate(f"'{body}'") == text
    assert evaluate(f"'{body}' + ''") == text


def test_an_eval_inside_a_program_unescapes_twice_like_python_code_in_a_string():
    # the program string keeps the unknown escape, then so does Eval's own literal
    vp = VisProg(preset="tiny", cache=False)
    assert vp.execute(r"""X=Eval(expr="'a\qb'")""").value == "a\\qb"
    # an escaped backslash becomes one in the program string, which Eval keeps (\q is unknown)
    assert vp.execute(r"""X=Eval(expr="'a\\qb'")""").value == "a\\qb"
    # \\n: the program string gives \n to Eval, whose literal is then a newline
    assert vp.execute(r"""X=Eval(expr="'a\\nb'")""").value == "a\nb"
