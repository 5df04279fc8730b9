"""How a value reads as text: the one renderer (`show`) and the one answer normaliser
(`normalize`, with `answer_key` for votes).

`show` is what every face prints for a value (the CLI, the demo, HTML captions, result
lines, the repair loop's trace summaries and findings): one short line, never the whole
value. Its two forms:

- plain (`show(v)`): `yes`/`no` for a boolean when the task is a question (`task="gqa"`),
  `True`/`False` otherwise; numbers without a useless decimal part (`2.0` -> `2`, else six
  significant digits); text as it is; lists joined with ", "; `image 320x240`;
  `2 regions (cat, dog)`; `video 320x240, 16 frames, 0-8 s`; `2 tracks (car) over 16
  frames`; "" for None.
- typed (`show(v, typed=True)`, what the LLM reads in a trace summary): `Objects: 2 regions
  (cat, dog)`, `Image: 320x240`, `Bool: True`, `Number: 3`, `Text: 'blue'`, `TextList: [...]`.

Counts and type names in messages read as English through `plural` (`1 region`, `2 regions`)
and `a` (`an Image`, `a Number`).

`normalize` is how answers compare, as the VQA-style benchmarks do it; scoring compares the
normal forms of a prediction and its reference, and a vote counts runs by theirs
(`answer_key`), so "two", "2" and 2.0 are one answer everywhere. The rules, in order:

- booleans become `yes`/`no`; so do the words `true`/`false` (NLVR2 labels are "True"/"False",
  GQA answers are "yes"/"no", and an Eval step returns a Python bool);
- numbers print without a useless decimal part (`2.0` -> `2`);
- text is lowercased; punctuation is removed (a period between digits is kept: `1.5`),
  apostrophes are dropped (`man's` -> `mans`);
- number words up to twenty become digits (`two` -> `2`);
- the articles `a`, `an`, `the` are dropped; whitespace is collapsed.

Values that are not answers (an image, a list of objects) normalise to a marker that can
never equal a reference answer; `answer_key` tells them apart by content instead, so two
runs that made the same image vote together.

A multiple-choice question lists its options one a line as "(A) text" (`question_options`
reads them back); `choose_option` is the option an answer chooses (a letter, or an option's
text), what the benchmarks score and what the result checks accept as an answer.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from visprog.values.codec import digest
from visprog.values.objects import Objects
from visprog.values.video import Tracks, Video

__all__ = ["show", "record_value", "normalize", "answer_key", "choose_option",
           "question_options", "plural", "a",
           "NUMBER_WORDS"]

SHOWN_LABELS = 5  # labels listed for Objects; the rest are "..."
TYPED_TEXT_LIMIT = 80  # a typed Text/TextList shows its repr up to this many characters
RECORD_TEXT_LIMIT = 200  # text answers kept in records (events, critic prompts)

# Tasks whose answers to yes/no questions are the words yes and no (GQA's convention);
# other tasks (NLVR: True/False statements) and no task keep True/False.
_YES_NO_TASKS = frozenset({"gqa", "knowtag", "imgedit"})


def show(value: Any, *, task: str | None = None, typed: bool = False,
         limit: int | None = None) -> str:
    """`value` as one short line (see the module docstring).

    Args:
        value: any value.
        task: how a boolean reads: "gqa" (and the other question tasks) yes/no; "nlvr" or
            None True/False.
        typed: prefix the type (`Number: 3`) and quote text: what a trace summary shows.
        limit: cut the text to this many characters ("..." at the end).
    """
    text = _typed(value) if typed else _plain(value, task)
    if limit is not None and len(text) > limit:
        text = text[:max(0, limit - 3)] + "..."
    return text


def record_value(value: Any, limit: int = RECORD_TEXT_LIMIT) -> Any:
    """A value as a record (an event, a result line) keeps it: None, booleans and numbers as
    they are, anything else as its plain short text (`show`) cut to `limit`, so that a
    record reads as the value itself would (`image 320x240` in both)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    return show(value, limit=limit)


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 region`, `2 regions`, `0 regions` (`many`: the plural when it is not word + s)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def a(word: str, noun: str | None = None) -> str:
    """A type (or any) name as a message writes it after a verb: `an Image`, `a Number`,
    `Objects` (a plural), `None`, `any value`; with `noun`: `an Objects query value`."""
    article = "an" if word[:1].lower() in "aeiou" else "a"
    if noun:
        return f"{article} {word} {noun}"
    if word in ("Objects", "None"):
        return word
    if word == "Any":
        return "any value"
    return f"{article} {word}"


def _number(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if math.isfinite(v) and v.is_integer():
        return str(int(v))
    return f"{v:.6g}"


def _labels(objs: Objects) -> str:
    labels = [str(label) for label in objs.labels if label]
    if not labels:
        return ""
    more = ", ..." if len(labels) > SHOWN_LABELS else ""
    return f" ({', '.join(labels[:SHOWN_LABELS])}{more})"


def _regions(objs: Objects) -> str:
    return f"{plural(len(objs), 'region')}{_labels(objs)}"


def _video(video: Video) -> str:
    w, h = video.size
    return f"video {w}x{h}, {plural(len(video), 'frame')}, {video.times[0]:.3g}-{video.end:.3g} s"


def _tracks(tracks: Tracks) -> str:
    labels = list(dict.fromkeys(str(x) for x in tracks.labels))
    more = ", ..." if len(labels) > SHOWN_LABELS else ""
    named = f" ({', '.join(labels[:SHOWN_LABELS])}{more})" if labels else ""
    return f"{plural(len(tracks), 'track')}{named} over {plural(len(tracks.times), 'frame')}"


def _is_image(value: Any) -> bool:
    return hasattr(value, "size") and hasattr(value, "mode") and hasattr(value, "tobytes")


def _plain(value: Any, task: str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        if task in _YES_NO_TASKS:
            return "yes" if value else "no"
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _number(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Objects):
        return _regions(value)
    if isinstance(value, Video):
        return _video(value)
    if isinstance(value, Tracks):
        return _tracks(value)
    if _is_image(value):
        return f"image {value.size[0]}x{value.size[1]}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v, task) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v, task)}" for k, v in value.items())
    if type(value).__name__ == "ReprValue":  # a value a saved trace kept as text
        return str(value)
    return f"<{type(value).__name__}>"


def _typed(value: Any) -> str:
    if isinstance(value, Objects):
        return f"Objects: {_regions(value)}"
    if isinstance(value, Video):
        return f"Video: {_video(value)[len('video '):]}"
    if isinstance(value, Tracks):
        return f"Tracks: {_tracks(value)}"
    if _is_image(value):
        return f"Image: {value.size[0]}x{value.size[1]}"
    if isinstance(value, (bool, np.bool_)):
        return f"Bool: {bool(value)}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"Number: {_number(value)}"
    if isinstance(value, str):
        return f"Text: {show(repr(value), limit=TYPED_TEXT_LIMIT)}"
    if isinstance(value, (list, tuple)):
        return f"TextList: {show(repr(list(value)), limit=TYPED_TEXT_LIMIT)}"
    if value is None:
        return "None"
    return type(value).__name__


# --------------------------------------------------------------------------- answers

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
    if isinstance(answer, (bool, np.bool_)):
        return "yes" if answer else "no"
    if isinstance(answer, (int, float, np.integer, np.floating)):
        return _answer_number(answer)
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


def answer_key(value: Any) -> str:
    """What a vote counts a run's answer as: its normal form (`normalize`), so "Yes.", "yes"
    and True vote together and so do "two", "2" and 2.0; a value that is not an answer (an
    image, Objects) by its type and content digest, so equal pixels vote together."""
    if value is None or isinstance(value, (bool, int, float, str, list, tuple, np.bool_,
                                            np.integer, np.floating)):
        try:
            return normalize(value)
        except RecursionError:
            pass
    try:
        return f"{type(value).__name__}:{digest(value)[:16]}"
    except TypeError:
        return f"{type(value).__name__}:{value!r:.200}"


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


OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.*\S)\s*$")  # "(A) text": an option on its own line


def question_options(question: str) -> dict[str, str]:
    """The options a multiple-choice question lists, one a line as "(A) text" (as the
    evaluation gives them to the planner): letter -> text; {} when it lists fewer than two."""
    found: dict[str, str] = {}
    for line in str(question).split("\n"):
        m = OPTION_LINE.match(line.strip())
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    return found if len(found) >= 2 else {}


def _answer_number(x: Any) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    v = float(x)
    if v.is_integer():
        return str(int(v))
    return str(v)


def _number_text(word: str) -> str:
    """'2.0' -> '2', '02' -> '2'; other words unchanged."""
    try:
        value = float(word)
    except ValueError:
        return word
    if word.isdigit():
        return str(int(word))
    if re.fullmatch(r"-?\d+\.\d+", word):
        return _answer_number(value)
    return word
