"""Answer normalisation for scoring, as the VQA-style benchmarks do it.

Both the prediction and the reference go through `normalize`, and an answer is right when the
two normal forms are equal. The rules, in order:

- booleans become `yes`/`no`; so do the words `true`/`false` (NLVR2 labels are "True"/"False",
  GQA answers are "yes"/"no", and an Eval step returns a Python bool);
- numbers print without a useless decimal part (`2.0` -> `2`);
- text is lowercased; punctuation is removed (a period between digits is kept: `1.5`),
  apostrophes are dropped (`man's` -> `mans`);
- number words up to twenty become digits (`two` -> `2`);
- the articles `a`, `an`, `the` are dropped; whitespace is collapsed.

Values that are not answers (an image, a list of objects) normalise to a marker that can
never equal a reference answer.
"""
from __future__ import annotations

import re
from typing import Any

NUMBER_WORDS = {
    "zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16",
    "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
}
ARTICLES = {"a", "an", "the"}
BOOL_WORDS = {"true": "yes", "false": "no"}

_POINT = "\u2024"  # stands in for a decimal point while punctuation is removed
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_PUNCTUATION = re.compile(r"[^\w\s\u2024]|_")


def normalize(answer: Any) -> str:
    """The normal form of an answer (see the module docstring).

    Examples:
        >>> normalize("The Two Dogs.")
        '2 dogs'
        >>> normalize(True), normalize("False"), normalize(3.0)
        ('yes', 'no', '3')
    """
    if answer is None:
        return ""
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    if isinstance(answer, (int, float)):
        return _number(answer)
    if isinstance(answer, (list, tuple)):
        return ", ".join(normalize(a) for a in answer)
    if not isinstance(answer, str):
        return f"<{type(answer).__name__}>"  # never equal to a text answer
    text = answer.lower().strip()
    text = _DECIMAL_POINT.sub(_POINT, text)
    text = text.replace("'", "").replace("\u2019", "")
    text = _PUNCTUATION.sub(" ", text).replace(_POINT, ".")
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    if len(words) == 1:
        words[0] = BOOL_WORDS.get(words[0], words[0])
        words[0] = _number_text(words[0])
    return " ".join(words)


def is_correct(prediction: Any, answer: Any) -> bool:
    """Whether a prediction matches the reference answer after normalisation. An empty
    prediction is never right."""
    pred = normalize(prediction)
    return bool(pred) and pred == normalize(answer)


def show(value: Any, task: str = "gqa") -> str:
    """A prediction as the benchmark writes answers: `yes`/`no` for GQA, `True`/`False` for
    NLVR; numbers without a useless decimal part; other values by type."""
    if isinstance(value, bool):
        if task == "nlvr":
            return "True" if value else "False"
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return _number(value)
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, (list, tuple)):
        return ", ".join(show(v, task) for v in value)
    return f"<{type(value).__name__}>"


def _number(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _number_text(word: str) -> str:
    """'2.0' -> '2', '02' -> '2'; other words unchanged."""
    try:
        value = float(word)
    except ValueError:
        return word
    if word.isdigit():
        return str(int(word))
    if re.fullmatch(r"-?\d+\.\d+", word):
        return _number(value)
    return word
