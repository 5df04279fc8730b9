"""A fast path through a Lark LALR parser, for text that parses.

Lark's lexer and parser loop spend a few microseconds a token on generality that a valid
program doesn't need (lexer states, line counters, per-token checks); for a 20-step program
that was most of the engine's overhead. `FastPath` runs the same grammar from the artifacts
of the `Lark` object that `parser.py` builds: its terminals (their order, ignored ones,
keywords), its LALR table and its rule callbacks (the transformer). Only the loop is ours:
one compiled alternation for the lexer, the table lookups inline.

It gives up (`NoFastPath`) at the first character no terminal matches or the first token the
table has no action for; the caller then parses with Lark itself, whose errors, positions and
expected-token lists are the ones users see. So this module never reports errors, and a
difference from Lark could only be in accepted text: `tests/test_fastparse.py` compares the
two on edge cases, the shipped programs and thousands of random and broken programs.

Lark internals used (lark 1.x, pinned below 2): `Lark.parser.parser._parse_table` (states,
start and end states), `Lark.parser.parser.parser.callbacks`, `Lark.terminals`, `Lark.rules`,
`Lark.ignore_tokens`, `lark.parsers.lalr_analysis.Shift`, `lark.lexer.PatternStr`. A Lark
release may change any of them, so the parser uses the fast path through `SafeFastPath`: if
building it, checking it against Lark on sample programs, or running it fails in any way of
its own, it warns once and is off for the process: every text then goes to Lark, slower but
never wrong.
"""
from __future__ import annotations

import re
import threading
import warnings
from typing import Any, Callable, Sequence

from lark import Lark, Token

from visprog.errors import VisProgWarning

_new_str = str.__new__


class NoFastPath(Exception):
    """The fast path can't parse this text (it may still be valid: ask Lark)."""


class FastPathWarning(VisProgWarning, RuntimeWarning):
    """The fast path failed and is off: programs still parse, through Lark (slower)."""


class FastPath:
    """Parse with a `Lark(parser="lalr", transformer=...)` object's grammar and callbacks."""

    def __init__(self, lark: Lark, start: str = "start") -> None:
        # Lark's private names are imported here, not at the top: a release without them
        # makes building fail (and the parser fall back to Lark), not importing visprog.
        from lark.parsers.lalr_analysis import Shift

        lalr = lark.parser.parser
        table = lalr._parse_table
        callbacks = lalr.parser.callbacks
        self._start = table.start_states[start]
        self._end = table.end_states[start]
        self._token_callbacks = {k: v for k, v in callbacks.items() if isinstance(k, str)}
        # Terminals that every rule filters out ("=", "(", _NL...) never reach a callback:
        # their plain text stands on the stack instead of a Token.
        kept = {sym.name for rule in lark.rules for sym in rule.expansion
                if sym.is_term and (rule.options.keep_all_tokens or not sym.filter_out)}
        self._untokened = frozenset(
            t.name for t in lark.terminals if t.name not in kept and t.name not in
            self._token_callbacks)
        # Per state: terminal -> the next state (an int: shift) or (rule size, rule origin,
        # callback) for a reduction; and the goto of each rule origin.
        self._actions: dict[int, dict[str, Any]] = {}
        self._goto: dict[int, dict[str, int]] = {}
        for state, actions in table.states.items():
            row, goto = {}, {}
            for name, (action, arg) in actions.items():
                name = str(name)  # Lark's names can be Tokens, whose == is slow
                if action is Shift:
                    row[name] = goto[name] = arg
                else:
                    row[name] = (len(arg.expansion), str(arg.origin.name), callbacks[arg])
            self._actions[state], self._goto[state] = row, goto
        self._lexer_from(lark)

    def _lexer_from(self, lark: Lark) -> None:
        from lark.lexer import PatternStr

        # Lark's own order: priority, then longest possible match, then pattern length.
        terminals = sorted(lark.terminals, key=lambda t: (
            -t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
        flags = lark.options.g_regex_flags
        words = [t for t in terminals if isinstance(t.pattern, PatternStr)]
        # A string terminal ("True") that a regex terminal (NAME) matches whole is found as
        # the regex and becomes the string terminal only where the parser accepts it, as
        # Lark's contextual lexer does.
        self._keywords: dict[str, dict[str, str]] = {}
        embedded = set()
        for t in terminals:
            if isinstance(t.pattern, PatternStr):
                continue
            rx = re.compile(t.pattern.to_regexp(), flags)
            for w in words:
                if w.priority == t.priority and rx.fullmatch(w.pattern.value):
                    self._keywords.setdefault(t.name, {})[w.pattern.value] = w.name
                    embedded.add(w.name)
        kept = [t for t in terminals if t.name not in embedded]
        self._regex = re.compile(
            "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in kept), flags)
        self._ignore = frozenset(lark.ignore_tokens)

    def parse(self, text: str) -> Any:
        """The transformer's result for `text`. Raises `NoFastPath`."""
        match = self._regex.match
        actions, goto, keywords = self._actions, self._goto, self._keywords
        ignore, token_callbacks, untokened = self._ignore, self._token_callbacks, self._untokened
        states, values = [self._start], []
        pos, end, line, line_start = 0, len(text), 1, 0
        final = self._end
        while True:
            if pos < end:
                m = match(text, pos)
                if m is None:
                    raise NoFastPath(pos)
                kind, value, stop = m.lastgroup, m.group(), m.end()
                if stop == pos:
                    raise NoFastPath(pos)
                start, start_line, column = pos, line, pos - line_start + 1
                if "\n" in value:
                    line += value.count("\n")
                    line_start = pos + value.rindex("\n") + 1
                pos = stop
                if kind in ignore:
                    continue
                row = actions[states[-1]]
                if kind in keywords and value in keywords[kind] and keywords[kind][value] in row:
                    kind = keywords[kind][value]
                if kind in untokened:
                    tok = value
                else:
                    tok = _new_str(Token, value)  # Token() costs ~1 us: fill its slots
                    tok.type, tok.value, tok.start_pos, tok.end_pos = kind, value, start, stop
                    tok.line, tok.column = start_line, column
                    tok.end_line, tok.end_column = line, stop - line_start + 1
            else:  # end of text: reduce to the start rule
                kind, tok, row = "$END", None, actions[states[-1]]
            while True:  # reduce until the token shifts
                act = row.get(kind)
                if act is None:
                    raise NoFastPath(pos)
                if act.__class__ is int:  # shift
                    if tok is None:
                        raise NoFastPath(pos)
                    states.append(act)
                    values.append(token_callbacks[kind](tok) if kind in token_callbacks else tok)
                    break
                size, origin, callback = act
                if size:
                    children = values[-size:]
                    del states[-size:], values[-size:]
                else:
                    children = []
                values.append(callback(children))
                states.append(goto[states[-1]][origin])
                if tok is None and states[-1] == final:
                    return values[-1]
                row = actions[states[-1]]


class SafeFastPath:
    """A `FastPath` that can only make parsing faster, never different or broken.

    It is built on the first parse, then checked: each of `probes` must give what
    `reference` (Lark) gives. A failure to build, a failed check, or an error of its own
    while parsing (anything but `NoFastPath`) warns once (`FastPathWarning`) and turns it
    off; from then on `parse` raises `NoFastPath` at once, so the caller uses Lark.

    Args:
        build: makes the fast path (`lambda: FastPath(lark)`).
        reference: parses a text the slow, sure way (`lark.parse`).
        probes: texts whose results the fast path must reproduce before it is used.
        same: how to compare two results (default ==).
    """

    def __init__(self, build: Callable[[], FastPath], reference: Callable[[str], Any],
                 probes: Sequence[str] = (), same: Callable[[Any, Any], bool] | None = None):
        self._build, self._reference, self._probes = build, reference, tuple(probes)
        self._same = same or (lambda a, b: a == b)
        self._path: FastPath | None = None
        self._lock = threading.Lock()
        self.off: str | None = None  # why it is off, once it is

    def parse(self, text: str) -> Any:
        """The fast path's result for `text`. Raises `NoFastPath`: Lark must parse it."""
        path = self._path or self._ready()
        try:
            return path.parse(text)
        except NoFastPath:
            raise
        except Exception as e:  # the fast path's own failure: this text goes to Lark
            self._turn_off(f"failed while parsing ({type(e).__name__}: {e})")
            raise NoFastPath(0) from e

    def _ready(self) -> FastPath:
        with self._lock:
            if self._path is None and self.off is None:
                try:
                    path = self._build()
                    for probe in self._probes:
                        if not self._same(path.parse(probe), self._reference(probe)):
                            raise AssertionError(f"it parses {probe!r} differently from Lark")
                    self._path = path
                except Exception as e:  # NoFastPath on a probe included: it is not usable
                    self._turn_off(f"could not be used ({type(e).__name__}: {e})")
            if self._path is None:
                raise NoFastPath(0)
            return self._path

    def _turn_off(self, why: str) -> None:
        if self.off is not None:
            return
        self.off, self._path = why, None
        warnings.warn(f"the parser's fast path {why}; parsing with Lark from now on "
                      "(slower, same results). Is the installed lark a release visprog was "
                      "not tested with?", FastPathWarning, stacklevel=4)
