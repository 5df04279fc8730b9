"""A broken fast path changes nothing but speed: whatever way it fails (a Lark release that
renamed what it reads, a table it misreads, wrong results), parsing falls back to Lark with
one warning, and every program and every error comes out as before."""
from __future__ import annotations

import warnings

import lark.parsers.lalr_analysis
import pytest

from test_fastparse import EDGE_CASES, shipped_programs
from visprog.errors import ParseError
from visprog.language import parser as P
from visprog.language.fastparse import FastPath, FastPathWarning, NoFastPath, SafeFastPath

BROKEN = ["X=Loc(image=IMAGE", "X=F(a=1))", "X=F(a='unterminated)", "1X=F()", "X=F(a={N})",
          "X=F(a=1 b=2)", "X=F(a=1)\nY=", "X=F(a=[1, 2)", "X=F(a=1) Y=G()", "X==F()"]
CORPUS = EDGE_CASES + shipped_programs() + BROKEN


def outcome(text: str):
    try:
        return P.parse(text)
    except ParseError as e:
        return ("error", str(e), e.diagnostics)


@pytest.fixture(scope="module")
def expected():
    P._parse_text.cache_clear()
    safe = P._fast_path()
    got = {text: outcome(text) for text in CORPUS}
    assert safe.off is None and safe._path is not None  # the intact fast path was used
    assert any(isinstance(v, tuple) for v in got.values())  # some texts are errors
    return got


def _with(monkeypatch, safe: SafeFastPath) -> None:
    monkeypatch.setattr(P, "_fast_path", lambda: safe)
    P._parse_text.cache_clear()  # remembered parses would hide the fast path


def _fresh() -> SafeFastPath:
    return SafeFastPath(lambda: FastPath(P._parser()), P._parser().parse, P._PROBES)


def _check_same_as_before(monkeypatch, safe, expected, reason):
    _with(monkeypatch, safe)
    with pytest.warns(FastPathWarning, match=reason) as record:
        got = {text: outcome(text) for text in CORPUS}
    assert got == expected
    assert len([w for w in record if w.category is FastPathWarning]) == 1  # warned once
    assert safe.off is not None
    with pytest.raises(NoFastPath):  # off for good: no second warning, no retry
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            safe.parse("X=F(a=1)")
    P._parse_text.cache_clear()


def test_a_lark_without_the_name_it_imports(monkeypatch, expected):
    monkeypatch.delattr(lark.parsers.lalr_analysis, "Shift")
    _check_same_as_before(monkeypatch, _fresh(), expected, "could not be used.*ImportError")


def test_a_lark_whose_private_table_was_renamed(monkeypatch, expected):
    lalr = P._parser().parser.parser
    monkeypatch.setattr(lalr, "_parse_tables", lalr._parse_table, raising=False)
    monkeypatch.delattr(lalr, "_parse_table")
    _check_same_as_before(monkeypatch, _fresh(), expected, "could not be used.*AttributeError")


def test_a_fast_path_that_fails_while_parsing(monkeypatch, expected):
    safe = _fresh()
    assert safe.parse("X=F(a=1)")  # built and checked
    safe._path._goto = {}  # a table read wrongly: the first reduction fails with KeyError
    _check_same_as_before(monkeypatch, safe, expected, "failed while parsing.*KeyError")


def test_a_fast_path_that_would_give_wrong_results(monkeypatch, expected):
    monkeypatch.setattr(FastPath, "parse", lambda self, text: [])
    _check_same_as_before(monkeypatch, _fresh(), expected, "differently from Lark")


def test_the_checked_fast_path_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        safe = _fresh()
        assert safe.parse(P._PROBES[1]) == P._parser().parse(P._PROBES[1])
        with pytest.raises(NoFastPath):
            safe.parse("X=F(a=1")  # an ordinary give-up is not a failure
    assert safe.off is None
