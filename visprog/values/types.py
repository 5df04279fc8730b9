"""The one home of value types (SPEC 2): the vocabulary, reading type strings, the type of a
runtime value, and the single compatibility rule that the checker, the constrained-decoding
grammar and the engine's output check all use.

The rule (`fits`) is "may fit": a value whose possible types share one with what a parameter
accepts is let through, and `Any` on either side fits everything. A runtime value has exactly
one type, so for it the rule reads "its type is declared, or the declaration says Any".
"""
from __future__ import annotations

from typing import Any, Iterable

from PIL import Image

from visprog.errors import ToolDeclarationError
from visprog.values.objects import Objects
from visprog.values.video import Tracks, Video

# The closed vocabulary a tool declares its inputs and output in. "Any" is for Result and
# aliases; "None" marks an optional argument that may be passed None. A Video is a clip's
# sampled frames with their times, Tracks are objects followed through one (values/video.py).
TYPES = ("Image", "Objects", "Text", "Number", "Bool", "TextList", "Any", "None", "Video",
         "Tracks")

Types = frozenset[str]
ANY: Types = frozenset({"Any"})
# A list whose items are not all text (`[1, 2]`, `[OBJ, 'a']`) is none of the types: the empty
# set, which `fits` lets through only where Any is declared (Result).
NOT_TEXT_LIST: Types = frozenset()

# The deepest lists (and dicts) may nest in any value: written in a program, bound as an
# input, returned by a tool or read from a saved trace. Values go through recursive walks
# (checker, cache keys, codec, traces), so deeper ones are refused where they come in.
MAX_NESTING = 32


def parse_types(spec: str | Iterable[str]) -> Types:
    """'Text|None' (or an iterable of names) -> {'Text', 'None'}; each name must be in TYPES.

    Raises:
        ToolDeclarationError: an unknown or empty type.
    """
    names = [s.strip() for s in (spec.split("|") if isinstance(spec, str) else spec)]
    unknown = [n for n in names if n not in TYPES]
    if unknown or not names:
        raise ToolDeclarationError(f"unknown type {unknown or spec!r}; types are {', '.join(TYPES)}")
    return frozenset(names)


def type_of(value: Any) -> str:
    """The SPEC type name of a runtime value (used by the checker for literals and inputs)."""
    if isinstance(value, Image.Image):
        return "Image"
    if isinstance(value, Objects):
        return "Objects"
    if isinstance(value, Video):
        return "Video"
    if isinstance(value, Tracks):
        return "Tracks"
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "Text"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "TextList"
    return "Any"


def list_types(items: Iterable[Types]) -> Types:
    """The possible types of a list written in a program, from its items' possible types:
    TextList when every item may be Text, anything when an item may be anything, else none."""
    items = list(items)
    if all("Text" in t or "Any" in t for t in items):
        return frozenset({"TextList"})
    return ANY if any("Any" in t for t in items) else NOT_TEXT_LIST


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """How deep lists, tuples and dicts nest in `value` (0 for a scalar, 1 for `[1, 2]`),
    counted without recursion and only up to `limit + 1`: enough to tell it is too deep."""
    containers = (list, tuple, dict)
    if not isinstance(value, containers):
        return 0
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        items = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in items if isinstance(v, containers))
    return deepest


def fits(given: Iterable[str], accepted: Iterable[str]) -> bool:
    """Whether a value of the possible types `given` may be passed where `accepted` is declared."""
    given, accepted = frozenset(given), frozenset(accepted)
    return "Any" in given or "Any" in accepted or bool(given & accepted)


def describe(types: Iterable[str]) -> str:
    """{'Text', 'None'} -> 'None or Text' (for messages)."""
    return " or ".join(sorted(types)) or "a list that is not all text"


def type_str(types: Iterable[str]) -> str:
    """{'Text', 'None'} -> 'None|Text' (for signatures)."""
    return "|".join(sorted(types))


def check_output(tool_name: str, returns: Iterable[str], value: Any) -> None:
    """A tool must return what it declared; one that doesn't fails at its own step instead of
    confusing a later one.

    Raises:
        TypeError: naming the tool, what it returned and what it declared, or that it
            nests lists deeper than `MAX_NESTING` (whatever it declared).
    """
    if nesting_depth(value) > MAX_NESTING:
        raise TypeError(f"{tool_name} returned lists nested more than {MAX_NESTING} deep")
    got = type_of(value)
    if got in returns or "Any" in returns:  # the common case, checked first (every step)
        return
    if got == "Any":
        # a value outside the vocabulary (a dict, a list of numbers...) fits only Any
        raise TypeError(f"{tool_name} returned {type(value).__name__}, which is none of the "
                        f"value types; declared {type_str(returns)}")
    if not fits({got}, returns):
        raise TypeError(f"{tool_name} returned {got} ({type(value).__name__}), "
                        f"declared {type_str(returns)}")
