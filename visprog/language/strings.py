"""Backslash escapes of quoted strings: one rule for program strings and Eval strings.

Known escapes, as in Python: ``\\n \\t \\r \\0 \\\\ \\' \\"``, ``\\xHH``, ``\\uHHHH`` and
``\\UHHHHHHHH``. Any other backslash, including a ``\\x``/``\\u`` without enough hex digits,
is kept as written with the character after it, as Python does (``'a\\qb'`` is the four
characters ``a\\qb``). The rule is the same in both kinds of string because an Eval
expression is itself a program string: its text is unescaped once as the argument, then its
own literals once more, like Python code in a Python string.
"""
from __future__ import annotations

_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}
_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def unescape(body: str) -> str:
    """The text of a quoted string's body (without its quotes)."""
    if "\\" not in body:  # most strings: nothing to do
        return body
    out, i, end = [], 0, len(body)
    while i < end:
        c = body[i]
        if c != "\\" or i + 1 == end:
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _SIMPLE:
            out.append(_SIMPLE[nxt])
            i += 2
            continue
        width = _HEX_WIDTH.get(nxt)
        digits = body[i + 2:i + 2 + width] if width else ""
        if width and len(digits) == width and _HEX_DIGITS.issuperset(digits) \
                and int(digits, 16) <= 0x10FFFF:
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:  # unknown or incomplete: the backslash stays, and so does what follows it
            out.append(c + nxt)
            i += 2
    return "".join(out)
