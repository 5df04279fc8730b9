"""The one home of types: parsing type strings, the one compatibility rule, type_of and the
output check, shared by the checker, the constrained-decoding grammar and the engine."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visprog.engine import core
from visprog.errors import ToolDeclarationError
from visprog.language import checker
from visprog.planning import llm_grammar
from visprog.values import Objects, types


def test_one_rule_everywhere():
    assert checker.fits is types.fits
    assert llm_grammar.fits is types.fits
    assert core.check_output is types.check_output
    # the checker keeps no vocabulary of its own
    assert checker.ANY is types.ANY and checker.describe is types.describe
    assert checker.list_types is types.list_types and checker.parse_types is types.parse_types
    assert not hasattr(checker, "_describe") and checker.Types is types.Types
    assert not hasattr(llm_grammar, "type_set")  # the alias is gone: parse_types is the name


@pytest.mark.parametrize("items, expected", [
    ([], {"TextList"}), (["Text", "Text"], {"TextList"}), (["Text|None", "Any"], {"TextList"}),
    (["Text", "Number"], set()), (["Objects", "Any"], {"Any"}), (["Image"], set()),
])
def test_list_types(items, expected):
    """A list written in a program: a TextList, or none of the types (it fits only Any)."""
    got = types.list_types(types.parse_types(t) for t in items)
    assert got == expected
    assert types.fits(got, {"Any"}) and types.fits(got, {"TextList"}) is ("TextList" in got
                                                                          or "Any" in got)


def test_describe():
    assert types.describe({"Text", "None"}) == "None or Text"
    assert types.describe(types.NOT_TEXT_LIST) == "a list that is not all text"


@pytest.mark.parametrize("given, accepted, ok", [
    ("Image", "Image", True), ("Objects", "Image", False), ("Bool|Number|Text", "Text", True),
    ("Bool|Number", "Text", False), ("Any", "Objects", True), ("Number", "Any", True),
    ("None", "Text|None", True), ("TextList", "Text", False),
])
def test_fits(given, accepted, ok):
    assert types.fits(types.parse_types(given), types.parse_types(accepted)) is ok


def test_parse_types_refuses_unknown_names():
    assert types.parse_types("Text | None") == {"Text", "None"}
    with pytest.raises(ToolDeclarationError, match="unknown type"):
        types.parse_types("Txt")
    with pytest.raises(ToolDeclarationError):
        types.parse_types([])


@pytest.mark.parametrize("value, name", [
    (Image.new("RGB", (2, 2)), "Image"), (Objects.empty((4, 4)), "Objects"), (True, "Bool"),
    (3, "Number"), (2.5, "Number"), ("a", "Text"), (None, "None"), (["a", "b"], "TextList"),
    ({"a": 1}, "Any"), ([1, 2], "Any"), (np.zeros(2), "Any"),
])
def test_type_of(value, name):
    assert types.type_of(value) == name


def test_check_output():
    types.check_output("Vqa", {"Text"}, "red")
    types.check_output("Result", {"Any"}, {"anything": 1})
    with pytest.raises(TypeError, match="Vqa returned Number .*declared Text"):
        types.check_output("Vqa", {"Text"}, 42)
    with pytest.raises(TypeError, match="none of the value types"):
        types.check_output("Count", {"Number"}, {"n": 3})
