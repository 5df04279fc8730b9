"""Checks of a run's result against its question: small named rules over the trace.

A program can run to the end and still answer nonsense: a colour question answered "yes",
a count of the objects Loc did not find, a crop of the whole image because its box was
empty. Each rule here reads the question, the task and the trace of a finished run and
returns `Finding`s; a run with findings is re-planned with them as feedback (see
`visprog.planning.loop`), like a run whose step raised.

The rules (`CHECKS`, each can be switched off by name):

- `answer_type`: the kind of answer the question asks for (yes/no, a number, a colour, a
  word; an image for editing tasks) against the answer; in a question task an image,
  regions, a video or tracks never answer, whatever the wording. A multiple-choice question
  (its options on lines of their own, "(A) text") is answered by anything that chooses one
  of them: a letter or an option's text (`visprog.values.text.choose_option`).
- `empty_used`: a step that finds regions (Loc, Select, ...) or tracks objects (Track)
  found none of an object the question takes for granted, and a later step used that
  empty result.
- `crop_fallback`: a Crop step got no region and so kept the whole image.
- `vqa_on_missing`: a yes/no question was put to Vqa about a crop of a region that was not
  found.

They are heuristics about wording, on purpose cheap and explainable: each finding says
which step and why, so the LLM (and a person reading the trace) can judge it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from visprog.traces.events import Finding  # a trace records findings (repair and vote events)
from visprog.traces.records import Trace
from visprog.values import Objects, Tracks, Video
from visprog.values.text import choose_option, question_options, show

# First words of a question answered yes or no.
YES_NO_START = {"is", "are", "was", "were", "am", "do", "does", "did", "can", "could", "has",
                "have", "had", "will", "would", "should", "may", "might", "must"}
COLOURS = {"red", "blue", "green", "yellow", "white", "black", "brown", "gray", "grey",
           "orange", "pink", "purple", "silver", "gold", "golden", "beige", "tan", "maroon",
           "navy", "teal", "turquoise", "cyan", "magenta", "violet", "cream", "khaki",
           "blond", "blonde", "dark", "light", "colorful", "colourful", "transparent"}
_YES_NO_WORDS = {"yes", "no", "true", "false"}
_NUMBER_WORDS = {"zero", "none", "one", "two", "three", "four", "five", "six", "seven",
                 "eight", "nine", "ten", "eleven", "twelve"}
# Wording that asks whether something exists: an empty find is then a fair answer.
_EXISTENCE = re.compile(r"\b(is|are|was|were) there\b|\bthere (is|are|was|were)\b|\bany\b|"
                        r"\bhow many\b|\b(do|can) you see\b|\bexists?\b|\bno\b|\bnone\b|"
                        r"\bnobody\b|\bnothing\b|\banyone\b|\banything\b")
_STOP = {"the", "a", "an", "of", "in", "on", "at", "to", "is", "are", "and", "or", "with",
         "that", "this", "what", "which", "who", "image", "picture", "photo", "left", "right",
         "top", "bottom"}
_FINDER_ARGS = ("object", "query", "category")  # the text argument that names what is sought
IMAGE_TASKS = ("imgedit", "knowtag")  # tasks answered with an image; the others with words
NOT_ANSWERS = ("objects", "image", "video", "tracks")  # what never answers a question


@dataclass(frozen=True)
class RunFacts:
    """What a check reads: the question, the task and the finished run."""

    question: str
    task: str
    trace: Trace
    value: Any


@dataclass(frozen=True)
class Check:
    """A named rule: `run(facts)` gives its findings (empty when the run looks right)."""

    name: str
    doc: str
    run: Callable[[RunFacts], list[Finding]]


# --------------------------------------------------------------------------- wording


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def expected_answer(question: str, task: str = "gqa") -> str | None:
    """The kind of answer a question asks for: "yesno", "number", "colour", "word",
    "image", or None when the wording does not say (e.g. "Is it red or blue?")."""
    if task == "nlvr":
        return "yesno"
    if task in IMAGE_TASKS:
        return "image"
    q = " ".join(_words(question))
    words = q.split()
    if not words:
        return None
    if words[0] in YES_NO_START:
        # "Is the cup red or blue?" asks to choose; "Is there a cat or a dog?" is yes/no.
        return None if " or " in f" {q} " else "yesno"
    if q.startswith("how many") or q.startswith("what number"):
        return "number"
    if words[0] in ("what", "which") and any(w in ("color", "colour", "colors", "colours")
                                              for w in words[1:4]):
        return "colour"
    if words[0] in ("what", "which", "who", "whose", "where", "how"):
        return "word"
    return None


def answer_kind(value: Any) -> str:
    """The kind of an answer value: "yesno", "number", "colour", "word", "empty", "image",
    "objects", "video", "tracks" or "other"."""
    if isinstance(value, bool):
        return "yesno"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, Objects):
        return "objects"
    if isinstance(value, Video):
        return "video"
    if isinstance(value, Tracks):
        return "tracks"
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
        return "image"
    if isinstance(value, str):
        if _is_number(value.strip().rstrip(".")):
            return "number"
        words = _words(value)
        if not words:
            return "empty"
        if len(words) == 1 and words[0] in _YES_NO_WORDS:
            return "yesno"
        if len(words) == 1 and (words[0] in _NUMBER_WORDS or _is_number(words[0])):
            return "number"
        if any(w in COLOURS for w in words):
            return "colour"
        return "word"
    return "other" if value is not None else "empty"


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _stem(word: str) -> str:
    for suffix in ("es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[:-len(suffix)]
    return word


def presumes(question: str, thing: str) -> bool:
    """Whether the question takes `thing` for granted: it names it and does not ask
    whether it exists ("What colour is the cup?" yes; "Is there a cup?" no)."""
    if _EXISTENCE.search(question.lower()):
        return False
    asked = {_stem(w) for w in _words(question)}
    named = {_stem(w) for w in _words(thing) if w not in _STOP and len(w) > 2}
    return bool(named & asked)


def _used_later(trace: Trace, index: int, target: str) -> int | None:
    """The first step after `index` that read `target`, or None."""
    for rec in trace.steps[index + 1:]:
        if target in rec.arg_vars.values() or (rec.module == "Eval" and target in rec.args):
            return rec.index
    return None


def _empty_objects_arg(rec: Any) -> tuple[str, str] | None:
    """(argument, variable) of an empty Objects argument of a step, if it had one."""
    for name, value in rec.args.items():
        if isinstance(value, Objects) and len(value) == 0:
            return name, rec.arg_vars.get(name, name)
    return None


def _is_crop(rec: Any) -> bool:
    return bool(rec.module) and rec.module.startswith("Crop")


# --------------------------------------------------------------------------- the rules


def check_answer_type(facts: RunFacts) -> list[Finding]:
    if facts.trace.error is not None:
        return []
    want = expected_answer(facts.question, facts.task)
    got = answer_kind(facts.value)
    shown = show(facts.value, typed=True, limit=60)
    options = question_options(facts.question) if facts.task not in IMAGE_TASKS else {}
    if options:  # multiple choice: whatever chooses an option answers ("B", "two", True)
        if got not in ("empty", "other", *NOT_ANSWERS) \
                and choose_option(facts.value, options) is not None:
            return []
        listed = ", ".join(f"({k})" for k in options)
        return [Finding("answer_type", f"the question asks to choose one of the options "
                                       f"{listed}, but the answer is {shown}, which chooses "
                                       f"none")]
    if want is None:
        # the wording does not say which answer ("Is it to our right or left?"), but a
        # question task's answer is never an image, regions, a video or tracks
        if facts.task in IMAGE_TASKS or got not in NOT_ANSWERS:
            return []
        return [Finding("answer_type", f"the question asks for words (yes/no, a number or a "
                                       f"name), but the answer is {shown}")]
    if want == "image":
        ok = got == "image"
    elif got in ("empty", "other", *NOT_ANSWERS):
        ok = False
    elif want == "word":
        ok = got != "yesno"  # a number or a colour can answer "what"/"which"
    else:
        ok = got == want
    if ok:
        return []
    asks = {"yesno": "yes or no", "number": "a number", "colour": "a colour",
            "word": "a word or name", "image": "an edited image"}[want]
    return [Finding("answer_type", f"the question asks for {asks}, but the answer is {shown}")]


def check_empty_used(facts: RunFacts) -> list[Finding]:
    if facts.task == "nlvr":  # a statement about a missing object is simply false
        return []
    out = []
    for rec in facts.trace.steps:
        if not (isinstance(rec.output, (Objects, Tracks)) and len(rec.output) == 0) \
                or rec.module is None:
            continue
        sought = next((rec.args[a] for a in _FINDER_ARGS if isinstance(rec.args.get(a), str)),
                      None)
        if sought is None or not presumes(facts.question, sought):
            continue
        later = _used_later(facts.trace, rec.index, rec.target)
        if later is None:
            continue
        user = facts.trace.steps[later]
        out.append(Finding(
            "empty_used", f"{rec.target}={rec.module}(...) found no {sought!r}, which the "
            f"question presumes, and step {later + 1} ({user.target}={user.module or 'alias'})"
            f" used that empty result", rec.index))
    return out


def check_crop_fallback(facts: RunFacts) -> list[Finding]:
    out = []
    for rec in facts.trace.steps:
        if not _is_crop(rec) or rec.error is not None:
            continue
        empty = _empty_objects_arg(rec)
        if empty is not None:
            out.append(Finding("crop_fallback", f"{rec.target}={rec.module}(...) got no region "
                               f"({empty[1]} is empty), so it kept the whole image", rec.index))
    return out


def check_vqa_on_missing(facts: RunFacts) -> list[Finding]:
    steps = {rec.target: rec for rec in facts.trace.steps}
    out = []
    for rec in facts.trace.steps:
        if rec.module != "Vqa":
            continue
        question = rec.args.get("question")
        if not isinstance(question, str) or not _words(question) \
                or _words(question)[0] not in YES_NO_START:
            continue
        source = steps.get(rec.arg_vars.get("image", ""))
        if source is None or source.index >= rec.index or not _is_crop(source):
            continue
        empty = _empty_objects_arg(source)
        if empty is not None:
            out.append(Finding("vqa_on_missing", f"{rec.target}=Vqa(...) asked {question!r} of "
                               f"{source.target}, a crop of {empty[1]}, which found nothing: "
                               f"the region does not exist", rec.index))
    return out


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("answer_type", "the answer's kind fits the question (yes/no, number, colour, word)",
          check_answer_type),
    Check("empty_used", "a find the question presumes came back empty and was used later",
          check_empty_used),
    Check("crop_fallback", "a Crop got no region and kept the whole image", check_crop_fallback),
    Check("vqa_on_missing", "Vqa asked a yes/no question about a region that was not found",
          check_vqa_on_missing),
)}


def enabled_checks(setting: Any = True) -> list[str]:
    """The names of the checks a setting turns on.

    Args:
        setting: True (all), False/None (none), a list of names (those), or a mapping
            name -> bool over the default of all on (`{"crop_fallback": False}`).

    Raises:
        ValueError: an unknown check name (the message lists the known ones).
    """
    if setting is True:
        return list(CHECKS)
    if setting is False or setting is None:
        return []
    if isinstance(setting, str):
        setting = [s.strip() for s in setting.split(",") if s.strip()]
    if isinstance(setting, Mapping):
        _known(setting)
        return [n for n in CHECKS if setting.get(n, True)]
    names = list(setting)
    _known(names)
    return [n for n in CHECKS if n in names]


def _known(names: Iterable[str]) -> None:
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check{'s' if len(unknown) != 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; checks are {', '.join(CHECKS)}")


def run_checks(question: str, task: str, trace: Trace, value: Any,
               names: Sequence[str] | None = None) -> list[Finding]:
    """Every finding of the named checks (all when None) on one finished run."""
    facts = RunFacts(question, task, trace, value)
    found: list[Finding] = []
    for name in (list(CHECKS) if names is None else names):
        found += CHECKS[name].run(facts)
    return found
