"""Reading a count out of a short answer: 'seven', 'Two.', '2 dogs', 'about 3', 'twenty-one'.

Vqa answers to "how many" questions come back in many forms. Eval compares them with
numbers (`{N} >= 7`, VisProg's own NLVR programs do this), so it needs the count inside the
answer. `read_count` accepts, in this order:

1. optional hedging words ("about", "around", "approximately", "roughly", "maybe",
   "probably", "perhaps", "nearly", "almost", "exactly", "only", "just", "there are",
   "there is", "i see", "i count");
2. the number: digits (`3`, `3.5`, `1,200`), or number words up to ninety-nine
   (`seven`, `twenty-one`, `twenty one`), or `none`/`zero`/`no` followed by a noun
   (`no dogs` is 0; a bare `no` is the answer no, not a count);
3. optional trailing words without digits or number words (`dogs`, `people in the photo`).

Trailing punctuation and surrounding quotes are ignored. Anything else ('2 or 3', 'red',
'a few', 'three and a half') is not a count, and `read_count` gives None: guessing a number
from an ambiguous answer would turn a wrong reading into a confident wrong answer.
"""
from __future__ import annotations

import re

UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
        "eighty": 80, "ninety": 90}
HEDGES = ("about", "around", "approximately", "approx", "roughly", "maybe", "probably",
          "perhaps", "nearly", "almost", "exactly", "only", "just", "there are", "there is",
          "i see", "i count")
MAX_COUNT_TEXT = 60  # longer answers are sentences, not counts

_DIGITS = re.compile(r"\d{1,3}(,\d{3})+|\d+(\.\d+)?")
_WORD = re.compile(r"[a-z]+")


def read_count(text: str) -> int | float | None:
    """The count a short answer states, or None when it states none (see the module doc).

    Examples:
        >>> read_count("seven"), read_count("Two."), read_count("2 dogs"), read_count("about 3")
        (7, 2, 2, 3)
        >>> read_count("twenty-one people"), read_count("no cats"), read_count("red")
        (21, 0, None)
    """
    if not isinstance(text, str) or len(text) > MAX_COUNT_TEXT:
        return None
    s = text.strip().strip("\"'").strip().lower().rstrip(".!?,;:").strip()
    s = " ".join(s.replace("-", " ").split())
    for hedge in HEDGES:  # at most one hedge, then the number
        if s.startswith(hedge + " ") or s.startswith(hedge + ". "):
            s = s[len(hedge):].lstrip(". ")
            break
    number, rest = _leading_number(s)
    if number is None or not _is_noun_phrase(rest):
        return None
    return number


def _leading_number(s: str) -> tuple[int | float | None, str]:
    m = _DIGITS.match(s)
    if m:
        if s[m.end():m.end() + 1] not in ("", " "):  # '3rd', '2x': not a plain count
            return None, s
        digits = m.group(0).replace(",", "")
        return (float(digits) if "." in digits else int(digits)), s[m.end():]
    words = s.split(" ")
    first = words[0] if words else ""
    if first in ("none", "zero"):
        return 0, " ".join(words[1:])
    if first == "no":  # 'no dogs' is a count of 0; a bare 'no' stays the answer no
        return (0, " ".join(words[1:])) if len(words) > 1 else (None, s)
    if first in UNITS:
        return UNITS[first], " ".join(words[1:])
    if first in TENS:
        if len(words) > 1 and words[1] in UNITS and 0 < UNITS[words[1]] < 10:
            return TENS[first] + UNITS[words[1]], " ".join(words[2:])
        return TENS[first], " ".join(words[1:])
    return None, s


def _is_noun_phrase(rest: str) -> bool:
    """Trailing words after the number: letters only, and no second number in them."""
    for word in rest.split():
        if not _WORD.fullmatch(word) or word in UNITS or word in TENS or word in ("or", "and", "to"):
            return False
    return True
