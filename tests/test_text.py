"""The one renderer of a value as short text (`show`, plain and typed) and the record form
of a value (`record_value`), on every kind of value."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visprog.values import Objects
from visprog.values.codec import ReprValue
from visprog.values.text import answer_key, record_value, show

IMG = Image.new("RGB", (40, 30), "white")
EMPTY = Objects.empty((40, 30))
ONE = Objects([(2, 2, 20, 20)], (40, 30), labels=["cup"])
SEVEN = Objects([(0, 0, 1, 1)] * 7, (40, 30), labels=[f"o{i}" for i in range(7)])


@pytest.mark.parametrize("value, task, text", [
    (True, None, "True"), (False, "nlvr", "False"), (True, "gqa", "yes"), (False, "gqa", "no"),
    (np.bool_(True), "gqa", "yes"), (3, None, "3"), (np.int64(3), None, "3"), (3.0, None, "3"),
    (0.125, None, "0.125"), (1 / 3, None, "0.333333"), (np.float32(2.5), None, "2.5"),
    (float("nan"), None, "nan"), ("red", None, "red"), (None, None, ""),
    (["Mars", "Venus"], None, "Mars, Venus"), ((1, "a"), None, "1, a"),
    ([True, False], "gqa", "yes, no"), (IMG, None, "image 40x30"),
    (EMPTY, None, "0 regions"), (ONE, None, "1 region (cup)"),
    (SEVEN, None, "7 regions (o0, o1, o2, o3, o4, ...)"), ({"a": 1}, None, "a: 1"),
    (ReprValue("x.Y", "<Y thing>"), None, "<Y thing>"), (object(), None, "<object>"),
])
def test_plain(value, task, text):
    assert show(value, task=task) == text


@pytest.mark.parametrize("value, text", [
    (EMPTY, "Objects: 0 regions"), (ONE, "Objects: 1 region (cup)"), (IMG, "Image: 40x30"),
    (True, "Bool: True"), (3, "Number: 3"), (2.0, "Number: 2"), (0.5, "Number: 0.5"),
    ("blue", "Text: 'blue'"), (["a", "b"], "TextList: ['a', 'b']"), (None, "None"),
    ("x" * 100, "Text: '" + "x" * 76 + "..."),  # the repr, cut to 80 characters
])
def test_typed(value, text):
    assert show(value, typed=True) == text


def test_limit_cuts_with_an_ellipsis():
    assert show("abcdefghij", limit=8) == "abcde..." and show("abc", limit=8) == "abc"
    assert len(show(list(range(100)), limit=20)) == 20


def test_record_value_keeps_scalars_and_summarises_the_rest():
    assert record_value(3) == 3 and record_value(True) is True and record_value(None) is None
    assert record_value(np.float32(0.5)) == 0.5 and type(record_value(np.int64(2))) is int
    assert record_value("y" * 300) == "y" * 197 + "..."
    # the rest read as `show` writes them, so a record and the value itself read alike
    assert record_value(ONE) == show(ONE) == "1 region (cup)"
    assert record_value(IMG) == show(IMG) == "image 40x30"
    assert record_value(["a", "b"]) == show(["a", "b"]) == "a, b"


def test_answer_key_tells_non_answers_apart_by_content():
    assert answer_key(ONE) == answer_key(Objects([(2, 2, 20, 20)], (40, 30),
                                                            labels=["cup"]))
    assert answer_key(ONE) != answer_key(EMPTY)
    assert answer_key(IMG) != answer_key(Image.new("RGB", (40, 30), "black"))


def test_plural_and_articles():
    from visprog.values.text import a, plural

    assert [plural(n, "region") for n in (0, 1, 2)] == ["0 regions", "1 region", "2 regions"]
    assert plural(1, "box", "boxes") == "1 box" and plural(3, "box", "boxes") == "3 boxes"
    assert [a(t) for t in ("Image", "Objects", "Text", "Number", "TextList", "None", "Any")] == \
        ["an Image", "Objects", "a Text", "a Number", "a TextList", "None", "any value"]
    assert a("Objects", "query value") == "an Objects query value"
    assert a("int") == "an int" and a("dict") == "a dict"
