"""Scoring answers, as the VQA-style benchmarks do it: a prediction is right when its normal
form equals the reference's. The normaliser (`normalize`: booleans and true/false as yes/no,
numbers without a useless decimal part, lowercase, no punctuation or articles, number words as
digits) is the one votes count answers by too, in `visprog.values.text`.
"""
from __future__ import annotations

from typing import Any

from visprog.values.text import normalize

__all__ = ["is_correct", "normalize"]


def is_correct(prediction: Any, answer: Any) -> bool:
    """Whether a prediction matches the reference answer after normalisation. An empty
    prediction is never right."""
    pred = normalize(prediction)
    return bool(pred) and pred == normalize(answer)
