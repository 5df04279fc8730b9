"""Program text -> `Program`, with `grammars/visprog.lark` as the only grammar.

Lark compiles the grammar to an LALR table; a small Transformer, run inside the parser (no
tree is built), turns rules into the frozen dataclasses of `program.py`, so nothing
downstream sees Lark. Text goes first through `fastparse.FastPath` (the same table and
transformer, a leaner loop); what it can't parse goes through Lark itself, whose syntax
errors become `ParseError`s whose `Diagnostic` has the line, column, the offending text and a
hint. Should the fast path fail in any way of its own, every text goes through Lark.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import NamedTuple

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from visprog.errors import Diagnostic, ParseError
from visprog.language.fastparse import FastPath, NoFastPath, SafeFastPath
from visprog.values.textfiles import normalize_newlines
from visprog.language.program import Arg, Program, Step, Var
from visprog.language.strings import unescape as _unescape
from visprog.values.types import MAX_NESTING, nesting_depth

# Readable names for the terminals Lark mentions in "expected" lists.
_TERMINAL_NAMES = {
    "NAME": "a name", "STRING": "a string", "SIGNED_NUMBER": "a number", "EQUAL": "'='",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','",
    "_NL": "a new line", "TRUE": "True", "FALSE": "False", "NONE": "None", "$END": "end of program",
}
_OPENERS = {"LPAR", "LSQB"}
_CLOSERS = {"RPAR", "RSQB"}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    text = resources.files("visprog.grammars").joinpath("visprog.lark").read_text(encoding="utf-8")
    # The transformer runs inside the LALR parser (no tree is built): positions come from
    # tokens, which is why the closing ')' of a call is a named terminal.
    return Lark(text, parser="lalr", maybe_placeholders=True, transformer=_ToProgram())


# What the fast path must parse as Lark does before it is used: every rule and terminal.
_PROBES = (
    "X=Loc(image=IMAGE, object='cat')  # a comment\nY=Count(box=X)\n\nZ=Y\n",
    "A=F(\n  a=[1, -2.5, +3e2, .5, [x]], b=\"q\\\"\\x41\\q\",\n  c=True, d=False, e=None, f=[],\n)\r\n"
    "B=G()",
)


@lru_cache(maxsize=1)
def _fast_path() -> SafeFastPath:
    # Safe: a fast path that fails in any way (a Lark release that changed what it reads)
    # turns itself off, and every text goes to Lark.
    return SafeFastPath(lambda: FastPath(_parser()), _parser().parse, _PROBES)


class _ToProgram(Transformer):
    """Rules -> values, run while parsing. Each method gets the rule's kept children as a
    list (no `v_args` wrapper: this runs a few times per step, so its call layers count).
    Steps come out as `_StepParts`; `_parse_text` adds their source lines."""

    def var(self, c: list) -> Var:
        return Var(str(c[0]))

    def string(self, c: list) -> str:
        return _unescape(c[0][1:-1])

    def number(self, c: list) -> int | float:
        s = str(c[0])
        return float(s) if any(ch in s for ch in ".eE") else int(s)

    def true(self, c: list) -> bool:
        return True

    def false(self, c: list) -> bool:
        return False

    def none(self, c: list) -> None:
        return None

    def list(self, c: list) -> tuple:
        return () if c == [None] else tuple(c)  # `[]` arrives as one None placeholder

    def arg(self, c: list) -> Arg:
        name, value = c
        return Arg(str(name), value, name.line, name.column)

    def args(self, c: list) -> tuple[Arg, ...]:
        return tuple(i for i in c if isinstance(i, Arg))

    def call(self, c: list) -> _StepParts:
        target, module, args, rpar = c
        return _StepParts(str(target), str(module), args or (), target.line, target.column,
                          rpar.end_line, None, module.column)

    def alias(self, c: list) -> _StepParts:
        target, source = c
        return _StepParts(str(target), None, (), target.line, target.column, source.end_line,
                          str(source), source.column)

    def start(self, c: list) -> list:
        return c


class _StepParts(NamedTuple):
    """A parsed step before its source text is known (the grammar sees tokens, not lines)."""

    target: str
    module: str | None
    args: tuple[Arg, ...]
    line: int
    column: int
    end_line: int
    alias_of: str | None
    module_column: int


def parse(text: str) -> Program:
    """Parse program text.

    Programs are immutable, so the last few hundred parses are remembered by text: planners,
    voting and evaluations parse the same program many times.

    Raises:
        ParseError: with one `Diagnostic` for the first syntax error.
    """
    if not isinstance(text, str):
        raise TypeError(f"program text must be a str, got {type(text).__name__}")
    # As editors save them: a byte-order mark, CRLF or lone-CR line ends are plain lines.
    return _parse_text(normalize_newlines(text))


@lru_cache(maxsize=512)
def _parse_text(text: str) -> Program:
    try:
        steps = _fast_path().parse(text)
    except NoFastPath:
        try:  # Lark itself: its errors carry the positions and expected tokens we report
            steps = _parser().parse(text)
        except UnexpectedInput as e:
            raise ParseError([_diagnose(e, text)], text) from None
    if text.count("[") > MAX_NESTING:  # only then can a list be nested too deeply
        _check_nesting(steps, text)
    lines = text.splitlines()
    return Program(tuple(
        Step(p.target, p.module, p.args, p.line, p.column,
             "\n".join(lines[p.line - 1:p.end_line]).strip(), p.alias_of, p.module_column)
        for p in steps), text)


def _check_nesting(steps: list[_StepParts], text: str) -> None:
    """Refuse lists nested deeper than `MAX_NESTING`, at the argument that holds them."""
    lines = text.splitlines()
    problems = [
        Diagnostic(arg.line, arg.column, lines[arg.line - 1].strip()[:80],
                   f"the value of {arg.name!r} nests lists more than {MAX_NESTING} deep",
                   "lists hold names, strings and numbers; flatten the nesting")
        for step in steps for arg in step.args if nesting_depth(arg.value) > MAX_NESTING]
    if problems:
        raise ParseError(problems, text)


def _expected_terminals(e: UnexpectedInput) -> set[str]:
    # The parser state's own answer: `e.expected` can come from the contextual lexer, which
    # adds the always-accepted newline even inside a call.
    parser = getattr(e, "interactive_parser", None)
    if parser is not None:
        try:
            return set(parser.accepts())
        except Exception:  # fall back to what the error says
            pass
    return set(getattr(e, "expected", None) or getattr(e, "allowed", None) or ())


def _expected(e: UnexpectedInput) -> list[str]:
    names = _expected_terminals(e) - {"$END"}
    if names & {"RPAR", "RSQB", "COMMA"}:
        names.discard("_NL")  # inside brackets a line break is allowed but never the point
    names = sorted(names)
    return [_TERMINAL_NAMES.get(n, n) for n in names]


def _diagnose(e: UnexpectedInput, text: str) -> Diagnostic:
    """One readable diagnostic, with a hint for the common mistakes."""
    lines = text.splitlines() or [""]
    line = max(1, getattr(e, "line", 0) or len(lines))
    col = max(1, getattr(e, "column", 0) or 1)
    token = getattr(e, "token", None)
    if token is not None and token.type == "$END" and getattr(token, "end_line", None) == line:
        col = token.end_column or col  # just after the last token: where something is missing
    src = lines[line - 1].strip() if line - 1 < len(lines) else ""
    expected = _expected(e)
    exp = f"; expected {', '.join(expected)}" if expected else ""
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        if ch in "\"'":
            return Diagnostic(line, col, src, "unterminated string",
                              f"close the string with {ch} on the same line")
        return Diagnostic(line, col, src, f"unexpected character {ch!r}",
                          _char_hint(ch))
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        hint = "a ')' or ']' is missing" if {"')'", "']'"} & set(expected) else \
            "a step is TARGET=Module(arg=value, ...) or TARGET=VAR" if expected == ["'='"] else \
            "the last step is incomplete"
        return Diagnostic(line, col, src, f"unexpected end of program{exp}", hint)
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    opener = _unclosed_bracket(e)
    starts_line = not lines[line - 1][:col - 1].strip() if line - 1 < len(lines) else False
    if opener is not None and opener.line < line and starts_line:
        # Newlines inside brackets are joined, so an unclosed '(' surfaces as an odd token at
        # the start of a later line: point at the bracket itself.
        closer = ")" if opener.type == "LPAR" else "]"
        return Diagnostic(opener.line, opener.column, lines[opener.line - 1].strip(),
                          f"{str(opener)!r} is never closed (line {line} starts with "
                          f"{str(tok)!r})",
                          f"add {closer!r} at the end of line {opener.line}, or a ',' before "
                          f"line {line} if the call goes on there")
    shown = "a new line" if tok.type == "_NL" else repr(str(tok))
    hint = _token_hint(tok, _expected_terminals(e))
    return Diagnostic(line, col, src, f"unexpected {shown}{exp}", hint)


def _unclosed_bracket(e: UnexpectedInput) -> Token | None:
    """The innermost '(' or '[' still open when the parser stopped: closed ones have been
    reduced away, so any bracket token left on the parser's value stack is unclosed."""
    state = getattr(getattr(e, "interactive_parser", None), "parser_state", None)
    stack = getattr(state, "value_stack", None) or []
    brackets = [v for v in stack if isinstance(v, Token) and v.type in _OPENERS]
    return brackets[-1] if brackets else None


def _char_hint(ch: str) -> str:
    if ch in "{}":
        return "braces belong inside an Eval expression string: Eval(expr='{X} > 0')"
    if ch in "+-*/<>!.":
        return "operators are only allowed inside Eval(expr='...')"
    return "steps look like TARGET=Module(arg=value, ...)"


def _token_hint(tok: Token, expected: set[str]) -> str:
    # A newline may stand almost anywhere inside brackets, so it says little there: decide
    # on the other terminals, and on the newline only where it would end a step.
    inner = expected - {"_NL"}
    step_may_end = "_NL" in expected and not inner - {"$END", "NAME"}
    if tok.type == "LPAR":
        return "a step assigns its result: TARGET=Module(...)"
    if tok.type == "EQUAL":
        return "one '=' per step: TARGET=Module(...) or TARGET=VAR"
    if tok.type == "RPAR" and "RSQB" in inner:
        return "a ']' is missing"
    if tok.type in _CLOSERS and step_may_end:
        return f"there is one {str(tok)!r} too many"
    if tok.type == "SIGNED_NUMBER" and str(tok)[0] in "+-" and "COMMA" in inner:
        return "operators are only allowed inside Eval(expr='...')"
    if "SIGNED_NUMBER" in inner and tok.type in ("RPAR", "COMMA", "RSQB", "_NL"):
        return "a value is missing after '='"
    if tok.type == "COMMA" and "NAME" in inner:
        return "an argument is missing: remove the extra ','"
    if inner == {"NAME", "RPAR"}:
        return "arguments are written name=value"
    if tok.type == "_NL" and "EQUAL" in inner:
        return "a step is TARGET=Module(arg=value, ...) or TARGET=VAR"
    if tok.type == "_NL":
        return "the step ends too early: is a ')' or a value missing?"
    if inner == {"EQUAL"} or ("EQUAL" in inner and tok.type in ("RPAR", "COMMA")):
        return "arguments are written name=value"
    if "COMMA" in inner and "RPAR" in inner:
        return "separate arguments with ',' and close the call with ')'"
    if step_may_end and "NAME" in inner:  # at the start of a step
        return "a step starts with the name it assigns: TARGET=Module(arg=value, ...)"
    if step_may_end:
        return "put each step on its own line"
    return "steps look like TARGET=Module(arg=value, ...)"
