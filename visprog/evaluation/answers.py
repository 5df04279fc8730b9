"""Scoring answers, as the VQA-style benchmarks do it: a prediction is right when its normal
form equals the reference's. The normaliser (`normalize`: booleans and true/false as yes/no,
numbers without a useless decimal part, lowercase, no punctuation or articles, number words as
digits) is the one votes count answers by too, in `visprog.values.text`.

Multiple-choice items (V*Bench, HR-Bench, NExT-QA, EgoSchema) are scored by the option the prediction chooses,
as those benchmarks' scripts score the option a model chose (V*Bench's official script: the
option it ranks first must be the right one; HR-Bench in VLMEvalKit: the option read from the
answer must be the right letter): `choose_option` reads a letter ("B", "(B)", "B. blue",
"answer: B") or an option's text, and a prediction that names no option, or several, is wrong.
It lives with the answer normaliser (`visprog.values.text`), as the result checks of the
planning loop read it too.
"""
from __future__ import annotations

from typing import Any, Mapping

from visprog.values.text import choose_option, normalize

__all__ = ["is_correct", "normalize", "choose_option"]


def is_correct(prediction: Any, answer: Any, options: Mapping[str, str] | None = None) -> bool:
    """Whether a prediction matches the reference answer after normalisation; with
    `options` (a multiple-choice item, `answer` its right letter), whether the option it
    chooses is the right one. An empty prediction is never right."""
    if options:
        chosen = choose_option(prediction, options)
        return chosen is not None and chosen == str(answer).strip().strip("()").upper()
    pred = normalize(prediction)
    return bool(pred) and pred == normalize(answer)
