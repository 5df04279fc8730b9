"""Scoring answers, as the VQA-style benchmarks do it: a prediction is right when its normal
form equals the reference's. The normaliser (`normalize`: booleans and true/false as yes/no,
numbers without a useless decimal part, lowercase, no punctuation or articles, number words as
digits) is the one votes count answers by too, in `visprog.values.text`.

Multiple-choice items (V*Bench, HR-Bench) are scored by the option the prediction chooses,
as those benchmarks' scripts score the option a model chose (V*Bench's official script: the
option it ranks first must be the right one; HR-Bench in VLMEvalKit: the option read from the
answer must be the right letter): `choose_option` reads a letter ("B", "(B)", "B. blue",
"answer: B") or an option's text, and a prediction that names no option, or several, is wrong.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from visprog.values.text import normalize

__all__ = ["is_correct", "normalize", "choose_option"]

_LETTER_ALONE = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LETTER_SAID = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*"
                          r"[:\-]?\s*\(?([A-Za-z])\)?(?:[.:)]|\s|$)", re.IGNORECASE)
_LETTER_LEADS = re.compile(r"^(?:\(([A-Za-z])\)|([A-Z])[.:)])\s")


def choose_option(prediction: Any, options: Mapping[str, str]) -> str | None:
    """The letter of the option `prediction` chooses, or None when it chooses none or is
    ambiguous.

    First a letter of the options, alone or said as one ("b", "(B)", "B.", "Answer: B",
    "(B) blue", "B. blue"); else the option whose text (in normal form) equals the
    prediction's, else the one option whose text holds the prediction's words in a row, or
    whose words the prediction holds ("left" chooses "The ladder is on the left side.").

    >>> choose_option("(B)", {"A": "red", "B": "blue"})
    'B'
    >>> choose_option("dark blue", {"A": "red", "B": "blue"})
    'B'
    >>> choose_option("purple", {"A": "red", "B": "blue"}) is None
    True
    """
    letters = {str(k).upper(): str(v) for k, v in options.items()}
    raw = str(prediction).strip() if isinstance(prediction, str) else ""
    for pattern in (_LETTER_ALONE, _LETTER_SAID, _LETTER_LEADS):
        m = pattern.match(raw)
        if m:
            letter = next(g for g in m.groups() if g).upper()
            if letter in letters:
                return letter
    said = normalize(prediction)
    if not said:
        return None
    forms = {k: normalize(v) for k, v in letters.items()}
    equal = [k for k, v in forms.items() if v and v == said]
    if equal:
        return equal[0] if len(equal) == 1 else None
    within = [k for k, v in forms.items()
              if v and (f" {said} " in f" {v} " or f" {v} " in f" {said} ")]
    return within[0] if len(within) == 1 else None


def is_correct(prediction: Any, answer: Any, options: Mapping[str, str] | None = None) -> bool:
    """Whether a prediction matches the reference answer after normalisation; with
    `options` (a multiple-choice item, `answer` its right letter), whether the option it
    chooses is the right one. An empty prediction is never right."""
    if options:
        chosen = choose_option(prediction, options)
        return chosen is not None and chosen == str(answer).strip().strip("()").upper()
    pred = normalize(prediction)
    return bool(pred) and pred == normalize(answer)
