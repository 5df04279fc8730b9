"""The Eval expression language (SPEC section 3), safe by construction.

An expression is parsed by its own LALR grammar (`grammars/expr.lark`) into a small tree of
frozen dataclasses, then walked by an evaluator that knows only those node types and takes
every operator from a guarded table. Python's `eval` is never involved, and there is no
syntax for attribute access, calls, subscripts, comprehensions or lambdas.

Substitution is by value: `{NAME}` is a node that reads the variable when evaluated, so an
answer containing quotes, braces or code is just a string. How values read:

- Text `yes`/`no` (any case, surrounding spaces ignored) reads as True/False; text that is a
  number (e.g. `"2"`, `" 3.5 "`) reads as that number; other text stays text.
- A variable's text that states a count (`'seven'`, `'Two.'`, `'2 dogs'`, `'about 3'`; see
  `visprog.language.number_words`) stays text, but reads as that count where a number is
  wanted: in a comparison or arithmetic with a number, or with another such text (`{A} + {B}`
  of the answers 'two' and 'one' is 3; `{A} == {B}` of 'two dogs' and 'Two.' is True).
  Literals in the expression are never read this way, and `'{A}'` is always the plain text.
- Objects read as their count, so `{OBJ} > 0` works without a Count step; so do Tracks
  (the number of objects followed through a video).
- Bool, Number and None read as themselves; other types (Image, TextList) are an error.
- A quoted string that is exactly one reference, `'{NAME}'`, is that variable's value as
  text (VisProg-style programs write answers that way); it is never re-parsed.

Semantics follow Python where Python is unsurprising: `and`/`or` short-circuit but always
give a Bool; `xor` is `bool(a) != bool(b)`; comparisons chain (`0 < {N} < 5`). Equality
between a text and a non-text reads the text as a variable would be read, so `{A} == 'yes'`
holds when the answer A is "Yes". String comparison is otherwise exact (case-sensitive).

Every failure is an `EvalError` with a message: syntax errors name the column and what is
not supported, and the limits below keep any input of the allowed length fast and bounded
(no RecursionError, MemoryError or hang).

Before anything runs, `expr_types` types an expression from its variables' types by one
operator table (`OPERATORS`), which the checker, the query builder and the constrained
grammar share; each operator's precedence is read from the grammar (`syntax`).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Mapping

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedEOF, UnexpectedInput, UnexpectedToken

from visprog.errors import EvalError
from visprog.language.number_words import read_count
from visprog.language.strings import unescape as _unescape

# Limits. Each guards a way an expression could be slow, deep or large.
MAX_EXPR_LENGTH = 2000       # characters of expression text
MAX_DEPTH = 100              # nesting of the expression tree (and of parentheses)
MAX_NODES = 500              # nodes in the expression tree
MAX_INT_BITS = 4096          # size of any integer, literal or computed (~1233 digits)
MAX_EXPONENT = 10_000        # |exponent| of `**`
MAX_TEXT_LENGTH = 100_000    # characters of a text made by `+` or `*`
MAX_NUMBER_TEXT = 100        # a longer text is never read as a number

Value = bool | int | float | str | None


# --------------------------------------------------------------------------- the tree

@dataclass(frozen=True)
class Node:
    """Base of the expression tree. `depth` and `size` are filled in while parsing."""

    depth: int = field(default=1, kw_only=True, compare=False, repr=False)
    size: int = field(default=1, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True)
class Const(Node):
    """A literal: number, quoted text, True, False or None."""

    value: Value


@dataclass(frozen=True)
class Var(Node):
    """`{NAME}`. `as_text` is set for the quoted form `'{NAME}'`: the value is taken as text."""

    name: str
    as_text: bool = False


@dataclass(frozen=True)
class Unary(Node):
    """`-x`, `+x`."""

    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    """Arithmetic: `+ - * / // % **`."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Compare(Node):
    """A comparison chain: `first op1 x1 op2 x2 ...` means `first op1 x1 and x1 op2 x2 ...`."""

    first: Node
    rest: tuple[tuple[str, Node], ...]


@dataclass(frozen=True)
class Logic(Node):
    """`and`, `or`, `xor`; always gives a Bool."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Not(Node):
    operand: Node


@dataclass(frozen=True)
class Conditional(Node):
    """`if_true if condition else if_false` (fields in source order)."""

    if_true: Node
    condition: Node
    if_false: Node


# --------------------------------------------------------------------------- parsing

_REF_IN_QUOTES = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
def _made(cls: type[Node], *children: Node, **fields: Any) -> Node:
    """Build a node with its depth and size, refusing trees over the limits early."""
    depth = 1 + max((c.depth for c in children), default=0)
    size = 1 + sum(c.size for c in children)
    if depth > MAX_DEPTH:
        raise EvalError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
    if size > MAX_NODES:
        raise EvalError(f"expression is too large (more than {MAX_NODES} operations and values)")
    return cls(**fields, depth=depth, size=size)


def _check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise EvalError(f"number too large (more than {MAX_INT_BITS} bits)")
    return value


class _TreeBuilder(Transformer):
    """Turns the parse into nodes. Runs inside the LALR parser (no recursion over the tree)."""

    @v_args(inline=True)
    def number(self, tok: Token) -> Node:
        text = str(tok)
        if re.fullmatch(r"\d+", text):
            if len(text) > MAX_INT_BITS // 3:  # each digit is over 3 bits: too big, skip int()
                raise EvalError(f"number too large (more than {MAX_INT_BITS} bits)")
            return _made(Const, value=_check_int(int(text)))
        value = float(text)
        if not math.isfinite(value):
            raise EvalError(f"number {text[:20]!r} is out of range")
        return _made(Const, value=value)

    @v_args(inline=True)
    def string(self, tok: Token) -> Node:
        body = _unescape(str(tok)[1:-1])
        ref = _REF_IN_QUOTES.fullmatch(body)
        if ref:
            return _made(Var, name=ref.group(1), as_text=True)
        return _made(Const, value=body)

    @v_args(inline=True)
    def var(self, tok: Token) -> Node:
        return _made(Var, name=str(tok)[1:-1].strip())

    def true(self, _: list) -> Node:
        return _made(Const, value=True)

    def false(self, _: list) -> Node:
        return _made(Const, value=False)

    def none(self, _: list) -> Node:
        return _made(Const, value=None)

    @v_args(inline=True)
    def unary(self, op: Token, operand: Node) -> Node:
        return _made(Unary, operand, op=str(op), operand=operand)

    @v_args(inline=True)
    def binary(self, left: Node, op: Token, right: Node) -> Node:
        return _made(Binary, left, right, op=str(op), left=left, right=right)

    def compare(self, items: list) -> Node:
        first, rest = items[0], tuple((str(items[i]), items[i + 1])
                                      for i in range(1, len(items), 2))
        return _made(Compare, first, *(n for _, n in rest), first=first, rest=rest)

    @v_args(inline=True)
    def and_(self, left: Node, right: Node) -> Node:
        return _made(Logic, left, right, op="and", left=left, right=right)

    @v_args(inline=True)
    def or_(self, left: Node, right: Node) -> Node:
        return _made(Logic, left, right, op="or", left=left, right=right)

    @v_args(inline=True)
    def xor(self, left: Node, right: Node) -> Node:
        return _made(Logic, left, right, op="xor", left=left, right=right)

    @v_args(inline=True)
    def not_(self, operand: Node) -> Node:
        return _made(Not, operand, operand=operand)

    @v_args(inline=True)
    def conditional(self, if_true: Node, condition: Node, if_false: Node) -> Node:
        return _made(Conditional, if_true, condition, if_false,
                     if_true=if_true, condition=condition, if_false=if_false)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    """The grammar, loaded once per process from the `visprog.grammars` package data."""
    grammar = resources.files("visprog.grammars").joinpath("expr.lark").read_text("utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", transformer=_TreeBuilder(),
                maybe_placeholders=False)


def _paren_depth(text: str) -> int:
    """Deepest parenthesis nesting outside quotes (checked before parsing: parentheses make
    no nodes, so the tree depth alone would not bound them)."""
    depth = deepest = 0
    quote = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
        i += 1
    return deepest


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHY_CHAR = {
    ".": "attribute access is not part of Eval expressions",
    "[": "lists, subscripts and comprehensions are not part of Eval expressions",
    "]": "lists, subscripts and comprehensions are not part of Eval expressions",
    "=": "use == to compare; assignment is not part of Eval expressions",
    "&": "use 'and'", "|": "use 'or'", "^": "use 'xor'", "~": "use 'not'",
    "{": "a variable is written {NAME}, a name of letters, digits and underscores",
    "}": "a variable is written {NAME}",
    ":": "lambdas, slices and dicts are not part of Eval expressions",
    ",": "lists, tuples and calls are not part of Eval expressions",
    ";": "an Eval expression is one expression",
    "@": "decorators and matrix products are not part of Eval expressions",
    "`": "backquotes are not quotes; use ' or \"",
}
_WHY_WORD = {
    "lambda": "lambdas are not part of Eval expressions",
    "for": "comprehensions and loops are not part of Eval expressions",
    "in": "'in' is not an operator of Eval expressions; compare with ==",
    "is": "'is' is not an operator of Eval expressions; use == or !=",
    "import": "imports are not part of Eval expressions",
    "yield": "generators are not part of Eval expressions",
    "await": "'await' is not part of Eval expressions",
}


def _explain(text: str, pos: int) -> str:
    """Why the text at `pos` is not an Eval expression, in a few words."""
    rest = text[pos:]
    word = _WORD.match(rest)
    if word:
        name = word.group(0)
        after = rest[len(name):].lstrip()
        if name.lower() in _WHY_WORD:
            return _WHY_WORD[name.lower()]
        if after.startswith("("):
            return f"calls (like {name}(...)) are not part of Eval expressions"
        if name.startswith("__"):
            return f"bare (dunder) name {name!r}: Eval has no names, only {{VARIABLES}}"
        return f"bare name {name!r}: write a variable as {{{name}}} and text in quotes"
    if rest[:1] == "(":
        # `(` right after a value: `{F}(1)`; otherwise a parenthesis in the wrong place.
        before = text[:pos].rstrip()
        if before and (before[-1] in ")}'\"" or before[-1].isalnum()):
            return "calls are not part of Eval expressions"
    if rest[:1] in ("'", '"'):
        return "unterminated quoted text"
    return _WHY_CHAR.get(rest[:1], "not an Eval expression here")


def _syntax_error(text: str, err: UnexpectedInput) -> EvalError:
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken)
                                          and err.token.type == "$END"):
        return EvalError("expression ends too early; something is missing at the end", text)
    pos = err.pos_in_stream if err.pos_in_stream is not None else 0
    column = getattr(err, "column", pos + 1)
    shown = text[pos:pos + 12]
    if isinstance(err, UnexpectedToken):
        shown = str(err.token)[:20]
        why = _explain(text, pos)
        if why == "not an Eval expression here":
            why = "a value or an operator is missing or misplaced"
    else:
        word = _WORD.match(text, pos)
        shown = word.group(0)[:20] if word else text[pos]
        why = _explain(text, pos)
    return EvalError(f"unexpected {shown!r} at column {column}: {why}", text)


@lru_cache(maxsize=512)
def _parse_cached(text: str) -> Node:
    """The checks and the parse of a text; a text seen before costs a dict look-up (a text
    that fails is not remembered)."""
    if len(text) > MAX_EXPR_LENGTH:
        raise EvalError(f"expression is too long ({len(text)} characters; the limit is "
                        f"{MAX_EXPR_LENGTH})", text[:80])
    if not text.strip():
        raise EvalError("expression is empty", text)
    if _paren_depth(text) > MAX_DEPTH:
        raise EvalError(f"expression is nested too deeply (more than {MAX_DEPTH} levels of "
                        "parentheses)", text[:80])
    try:
        return _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(text, e) from None
    except EvalError as e:
        raise EvalError(str(e), text) from None


def parse_expr(text: str) -> Node:
    """Parse an Eval expression.

    Args:
        text: the expression, e.g. `"'yes' if {N} > 0 else 'no'"`.

    Returns:
        The root `Node` (frozen dataclasses; results are cached, the tree is immutable).

    Raises:
        EvalError: not text, empty, too long, too deeply nested, or not of the grammar
            (the message names the column and what is not supported).
    """
    if not isinstance(text, str):
        raise EvalError(f"an Eval expression is text, got {type(text).__name__}")
    return _parse_cached(text)


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary | Not):
        return (node.operand,)
    if isinstance(node, Binary | Logic):
        return (node.left, node.right)
    if isinstance(node, Compare):
        return (node.first, *(n for _, n in node.rest))
    if isinstance(node, Conditional):
        return (node.if_true, node.condition, node.if_false)
    return ()


def referenced_names(text: str) -> list[str]:
    """The variable names an expression refers to, in source order, each once.

    Raises:
        EvalError: the expression does not parse.
    """
    names: dict[str, None] = {}
    stack = [parse_expr(text)]
    while stack:  # depth-first, left to right
        node = stack.pop()
        if isinstance(node, Var):
            names.setdefault(node.name)
        stack.extend(reversed(_children(node)))
    return list(names)


# --------------------------------------------------------------------------- values

_NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def read_text(text: str) -> Value:
    """How a text reads in an expression: yes/no -> Bool, a number -> Number, else itself."""
    s = text.strip()
    low = s.lower()
    if low == "yes":
        return True
    if low == "no":
        return False
    if len(s) <= MAX_NUMBER_TEXT and _NUMBER_TEXT.fullmatch(s):
        if re.fullmatch(r"[+-]?\d+", s):
            return int(s)
        number = float(s)
        if math.isfinite(number):
            return number
    return text


class CountText(str):
    """A variable's text that states a count ('seven', '2 dogs'): text everywhere, except
    where a number is wanted (see the module docstring)."""

    count: int | float

    def __new__(cls, text: str, count: int | float) -> "CountText":
        self = super().__new__(cls, text)
        self.count = count
        return self


def _counted(text: str) -> Value:
    """`read_text`, then a `CountText` for a text that states a count."""
    value = read_text(text)
    if isinstance(value, str):
        count = read_count(value)
        if count is not None:
            return CountText(value, count)
    return value


def _real(v: Value) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_numbers(a: Value, b: Value) -> tuple[Value, Value]:
    """Both operands, each `CountText` read as its count when the other side is a number
    or a count too."""
    if isinstance(a, CountText) and (_real(b) or isinstance(b, CountText)):
        a = a.count
    if isinstance(b, CountText) and (_real(a) or isinstance(a, CountText)):
        b = b.count
    return a, b


def read_value(name: str, value: Any, *, as_text: bool = False) -> Value:
    """A variable's value as the expression sees it (see the module docstring)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)) \
            and getattr(value, "shape", None) == ():
        value = value.item()  # numpy scalars
    if as_text:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)) or value is None:
            return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return _check_int(value)
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        return _counted(value)
    from visprog.values import Objects, Tracks  # local: values imports numpy/PIL
    if isinstance(value, (Objects, Tracks)):
        return len(value) if not as_text else str(len(value))
    raise EvalError(f"variable {{{name}}} is {_kind(value)}; Eval reads Text, Number, Bool "
                    "or Objects (as their count)")


def _kind(value: Any) -> str:
    from visprog.values import type_of
    from visprog.values.text import a
    kind = type_of(value)
    kind = type(value).__name__ if kind == "Any" else kind
    return a(kind, "value") if kind == "Objects" else a(kind)


def _describe(value: Value) -> str:
    if isinstance(value, bool):
        return f"Bool {value}"
    if isinstance(value, int):
        return "Number " + (str(value) if value.bit_length() < 64 else "(a large integer)")
    if isinstance(value, float):
        return f"Number {value!r}"
    if isinstance(value, str):
        return f"Text {value[:30]!r}" + ("..." if len(value) > 30 else "")
    return "None"


# --------------------------------------------------------------------------- operators

def _is_number(v: Value) -> bool:
    return isinstance(v, (int, float))  # bool counts, as in Python (True + True == 2)


def _mismatch(op: str, a: Value, b: Value | None = None, *, unary: bool = False) -> EvalError:
    what = _describe(a) if unary else f"{_describe(a)} and {_describe(b)}"
    return EvalError(f"type mismatch: can't apply {op!r} to {what}")


def _number_result(value: int | float) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return _check_int(value)
    if isinstance(value, complex) or not math.isfinite(value):
        raise EvalError("number out of range (the result is not a finite real number)")
    return value


def _text_result(length: int) -> None:
    if length > MAX_TEXT_LENGTH:
        raise EvalError(f"text too long (the result would have {length} characters; "
                        f"the limit is {MAX_TEXT_LENGTH})")


def _add(a: Value, b: Value) -> Value:
    a, b = _as_numbers(a, b)
    if isinstance(a, str) and isinstance(b, str):
        _text_result(len(a) + len(b))
        return a + b
    if _is_number(a) and _is_number(b):
        return _number_result(a + b)
    raise _mismatch("+", a, b)


def _mul(a: Value, b: Value) -> Value:
    a, b = _as_numbers(a, b)
    if _is_number(a) and _is_number(b):
        return _number_result(a * b)
    if isinstance(a, int) and isinstance(b, str):
        a, b = b, a
    if isinstance(a, str) and isinstance(b, int):
        _text_result(len(a) * max(int(b), 0))
        return a * b
    raise _mismatch("*", a, b)


def _numeric(op: str, fn: Callable[[Any, Any], Any]) -> Callable[[Value, Value], Value]:
    """An operator on numbers only, with division by zero and overflow as EvalError."""

    def apply(a: Value, b: Value) -> Value:
        a, b = _as_numbers(a, b)
        if not (_is_number(a) and _is_number(b)):
            raise _mismatch(op, a, b)  # never str % x: no string formatting
        try:
            return _number_result(fn(a, b))
        except ZeroDivisionError:
            raise EvalError(f"division by zero in {op!r}") from None
        except OverflowError:
            raise EvalError(f"number out of range in {op!r}") from None

    return apply


def _power(a: int | float, b: int | float) -> int | float:
    if abs(b) > MAX_EXPONENT:
        raise EvalError(f"exponent too large (|exponent| over {MAX_EXPONENT})")
    if a == 0 and b < 0:
        raise ZeroDivisionError
    if isinstance(a, int) and isinstance(b, int) and b >= 0:
        # Estimate the size first: 10 ** 10 ** 4 must fail without being computed.
        if abs(a) > 1 and (abs(a).bit_length() - 1) * b > MAX_INT_BITS:
            raise EvalError(f"number too large (more than {MAX_INT_BITS} bits)")
        return int(a) ** int(b)
    try:
        return math.pow(a, b)  # real only: a negative base with a fraction is ValueError
    except ValueError:
        raise EvalError("number out of range: a negative number to a fractional power "
                        "is not a real number") from None


BINARY_OPS: dict[str, Callable[[Value, Value], Value]] = {
    "+": _add,
    "-": _numeric("-", lambda a, b: a - b),
    "*": _mul,
    "/": _numeric("/", lambda a, b: a / b),
    "//": _numeric("//", lambda a, b: a // b),
    "%": _numeric("%", lambda a, b: a % b),
    "**": _numeric("**", _power),
}


def _equal(a: Value, b: Value) -> bool:
    a, b = _as_numbers(a, b)  # 'seven' == 7, 'two dogs' == 'Two.'; other texts stay texts
    # A text against a non-text reads as a variable would: 'yes' == True, '2' == 2.
    if isinstance(a, str) != isinstance(b, str) and a is not None and b is not None:
        a, b = (read_text(a) if isinstance(a, str) else a), (read_text(b) if isinstance(b, str) else b)
        if isinstance(a, str) or isinstance(b, str):
            return False
    return a == b


def _ordered(op: str, fn: Callable[[Any, Any], bool]) -> Callable[[Value, Value], bool]:
    def apply(a: Value, b: Value) -> bool:
        a, b = _as_numbers(a, b)
        if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return fn(a, b)
        raise _mismatch(op, a, b)

    return apply


COMPARE_OPS: dict[str, Callable[[Value, Value], bool]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": _ordered("<", lambda a, b: a < b),
    "<=": _ordered("<=", lambda a, b: a <= b),
    ">": _ordered(">", lambda a, b: a > b),
    ">=": _ordered(">=", lambda a, b: a >= b),
}


def _unary(op: str, v: Value) -> Value:
    v = v.count if isinstance(v, CountText) else v
    if not _is_number(v):
        raise _mismatch(op, v, unary=True)
    return _number_result(-v if op == "-" else +v)


# --------------------------------------------------------------------------- evaluation

class _Evaluator:
    """Walks a tree of known node types. Recursion is bounded by MAX_DEPTH."""

    def __init__(self, variables: Mapping[str, Any]):
        self.variables = variables

    def eval(self, node: Node) -> Value:
        if isinstance(node, Const):
            return node.value
        if isinstance(node, Var):
            return self.var(node)
        if isinstance(node, Unary):
            return _unary(node.op, self.eval(node.operand))
        if isinstance(node, Binary):
            return BINARY_OPS[node.op](self.eval(node.left), self.eval(node.right))
        if isinstance(node, Compare):
            left = self.eval(node.first)
            for op, right_node in node.rest:
                right = self.eval(right_node)
                if not COMPARE_OPS[op](left, right):
                    return False
                left = right
            return True
        if isinstance(node, Logic):
            left = bool(self.eval(node.left))
            if node.op == "and":
                return left and bool(self.eval(node.right))
            if node.op == "or":
                return left or bool(self.eval(node.right))
            return left != bool(self.eval(node.right))
        if isinstance(node, Not):
            return not bool(self.eval(node.operand))
        if isinstance(node, Conditional):
            chosen = node.if_true if bool(self.eval(node.condition)) else node.if_false
            return self.eval(chosen)
        raise EvalError(f"unknown expression node {type(node).__name__}")

    def var(self, node: Var) -> Value:
        if node.name not in self.variables:
            near = difflib.get_close_matches(node.name, [str(k) for k in self.variables], n=1)
            hint = f"; did you mean {{{near[0]}}}?" if near else ""
            raise EvalError(f"unknown variable {{{node.name}}}{hint}")
        return read_value(node.name, self.variables[node.name], as_text=node.as_text)


def evaluate(text: str, variables: Mapping[str, Any] | None = None) -> bool | int | float | str:
    """Evaluate an Eval expression over variable values.

    Args:
        text: the expression.
        variables: values by name; only the names the expression refers to are read.

    Returns:
        A Bool, Number or Text. A True/False result is returned as is; the caller decides
        how to print it.

    Raises:
        EvalError: syntax error, unknown variable, type mismatch, division by zero, a limit
            exceeded, or a result of None.

    Example:
        >>> evaluate("'yes' if {N} > 0 and {A} else 'no'", {"N": 2, "A": "Yes"})
        'yes'
    """
    node = parse_expr(text)
    try:
        result = _Evaluator(variables or {}).eval(node)
    except EvalError as e:
        raise EvalError(str(e), text) from None
    if result is None:
        raise EvalError("the expression's value is None; Eval gives a Bool, Number or Text", text)
    return str(result) if isinstance(result, CountText) else result


# --------------------------------------------------------------------------- operators, typed

# The static side of the operators above, for the checker (`expr_types`) and the query builder
# (`visprog.query.expr`): one table says what each operator takes and gives, and its place in
# the grammar says how tightly it binds (`syntax`).
#
# A value while an expression runs is one of four kinds: a Number (int or float), a Bool, a
# Text or None. A Bool counts as a number wherever a number is taken (`True + 1 == 2`, as in
# Python). A variable's type (SPEC 2) reads as these kinds (`reads`):
#
#   Number, Bool, None  -> themselves
#   Text                -> Text, Number or Bool: 'yes'/'no' read as Bool, '2' as a Number, and
#                          a count ('seven', '2 dogs') as a Number where a number is wanted. So
#                          a Vqa answer may be compared with a number, added to one, or joined
#                          with text: which one works is known only when it runs.
#   Objects, Tracks     -> Number (their count); as '{NAME}', its text
#   Any                 -> any kind
#   Image, TextList     -> nothing: reading one is an error before anything runs
#
# Literals are exactly what they are written as: `'3'` is Text, never a Number (only `==`
# reads a text against a non-text, and `==` never fails). `'{NAME}'` is the variable as Text.
#
# The rules say which combinations of operand kinds an operator takes and what it gives. The
# checker reports a part of an expression for which no combination of its operands' possible
# kinds is taken by any rule: it fails with a type mismatch every time it runs (even where
# `and`, `or` or `if` may skip it: a part that can't work is a mistake). Anything that may
# work checks ("may fit", as values.types.fits), so is never refused for what a value turns
# out to be: `{N} / 0` and `{A} > 7` of the answer 'red' check and fail when they run. An
# expression whose value can only be None is refused too (Eval gives no None). The table is
# tested against the operators that run (`tests/test_eval_types.py`).

NUMBERS = frozenset({"Number", "Bool"})   # what arithmetic takes
TEXT = frozenset({"Text"})
ANY_KIND = frozenset({"Number", "Bool", "Text", "None"})

_Rules = tuple[tuple[tuple[frozenset[str], ...], str], ...]


@dataclass(frozen=True)
class Operator:
    """One operator: `rules` are (the kinds each operand may be, the kind it gives), where
    "either" means the kinds of the operand it gives (`x if c else y`: x's or y's); `takes`
    says the rules in words (a check error's hint)."""

    name: str      # the key: the symbol, or 'neg'/'pos' for unary - and +
    symbol: str    # as written
    rules: _Rules
    takes: str

    @property
    def arity(self) -> int:
        return len(self.rules[0][0])


def _numeric_op(symbol: str, what: str) -> Operator:
    return Operator(symbol, symbol, (((NUMBERS, NUMBERS), "Number"),),
                    f"'{symbol}' {what} two numbers (a Bool counts as 1 or 0)")


def _order(symbol: str) -> Operator:
    return Operator(symbol, symbol, (((NUMBERS, NUMBERS), "Bool"), ((TEXT, TEXT), "Bool")),
                    f"'{symbol}' compares two numbers or two texts; == compares anything")


def _logic(name: str) -> Operator:
    return Operator(name, name, (((ANY_KIND, ANY_KIND), "Bool"),),
                    f"'{name}' takes any two values, read as true or false")


OPERATORS: dict[str, Operator] = {op.name: op for op in (
    Operator("if", "if", (((ANY_KIND, ANY_KIND, ANY_KIND), "either"),),
             "'x if c else y' gives x or y, whatever they are"),  # operands in source order
    _logic("or"), _logic("xor"), _logic("and"),
    Operator("not", "not", (((ANY_KIND,), "Bool"),), "'not' takes any value"),
    # Equality never fails: a text against a non-text reads the text ('2' == 2, 'Yes' == True,
    # 'seven' == 7 for an answer), and values of other kinds are just unequal.
    Operator("==", "==", (((ANY_KIND, ANY_KIND), "Bool"),), "'==' compares any two values"),
    Operator("!=", "!=", (((ANY_KIND, ANY_KIND), "Bool"),), "'!=' compares any two values"),
    _order("<"), _order("<="), _order(">"), _order(">="),
    Operator("+", "+", (((NUMBERS, NUMBERS), "Number"), ((TEXT, TEXT), "Text")),
             "'+' adds two numbers or joins two texts"),
    _numeric_op("-", "subtracts"),
    # A text times a whole number repeats it (the number must be an int when it runs).
    Operator("*", "*", (((NUMBERS, NUMBERS), "Number"), ((TEXT, NUMBERS), "Text"),
                        ((NUMBERS, TEXT), "Text")),
             "'*' multiplies two numbers, or repeats a text a whole number of times"),
    _numeric_op("/", "divides"), _numeric_op("//", "divides"),
    _numeric_op("%", "takes the remainder of"), _numeric_op("**", "raises"),
    Operator("neg", "-", (((NUMBERS,), "Number"),), "unary '-' takes a number"),
    Operator("pos", "+", (((NUMBERS,), "Number"),), "unary '+' takes a number"),
)}

# A variable's type (SPEC 2) -> the kinds Eval reads it as (see above).
READS: dict[str, frozenset[str]] = {
    "Number": frozenset({"Number"}), "Bool": frozenset({"Bool"}), "None": frozenset({"None"}),
    "Text": frozenset({"Text", "Number", "Bool"}), "Objects": frozenset({"Number"}),
    "Any": ANY_KIND, "Image": frozenset(), "TextList": frozenset(),
    "Tracks": frozenset({"Number"}), "Video": frozenset(),
}


def reads(types: frozenset[str], *, as_text: bool = False) -> frozenset[str]:
    """The kinds a variable of these possible types reads as (`'{NAME}'` when `as_text`);
    empty when none can be read."""
    kinds = frozenset().union(*(READS.get(t, frozenset()) for t in types))
    return TEXT if as_text and kinds else kinds


def literal_kind(value: Value) -> str:
    """The kind of a literal as written: `'3'` is Text."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "Bool"
    return "Text" if isinstance(value, str) else "Number"


def result_kinds(name: str, operands: list[frozenset[str]] | tuple[frozenset[str], ...],
                 ) -> frozenset[str]:
    """The kinds operator `name` may give over operands of these possible kinds; empty when
    no rule takes any combination of them (it fails whenever it runs)."""
    out: set[str] = set()
    for takes, gives in OPERATORS[name].rules:
        if all(kinds & wanted for kinds, wanted in zip(operands, takes)):
            out |= operands[0] | operands[2] if gives == "either" else {gives}
    return frozenset(out)


@dataclass(frozen=True)
class Syntax:
    """How an operator is written: its `level` (higher binds tighter) and, for each operand
    in source order, the least level it may have without parentheses."""

    level: int
    operands: tuple[int, ...]


@lru_cache(maxsize=1)
def syntax() -> dict[str, Syntax]:
    """Each operator's `Syntax`, plus 'atom' (a literal, a variable or parentheses), read
    from the grammar: `expr.lark` lists its rules from the loosest binding to the tightest,
    each in terms of the next, so a rule's place is its level, and an operand may be written
    bare where the grammar names a rule of its level or looser. A chain `x (OP y)+` is a rule
    Lark writes with a helper rule (`__comparison_plus_0`); its operands are the owner's."""
    parser = _parser()
    owner: dict[str, Any] = {}
    for rule in parser.rules:
        for sym in rule.expansion:
            if not sym.is_term and sym.name.startswith("__"):
                owner.setdefault(sym.name, rule)
    levels: dict[str, int] = {}
    for rule in parser.rules:
        if not rule.origin.name.startswith("__"):
            levels.setdefault(rule.origin.name, len(levels))
    lexes = {t.name: re.compile(t.pattern.to_regexp()) for t in parser.terminals}

    def operands(rule: Any) -> list[str]:
        return [s.name for s in rule.expansion if not s.is_term and not s.name.startswith("__")]

    out = {"atom": Syntax(levels["atom"], ())}
    for op in OPERATORS.values():
        for rule in parser.rules:
            at = [i for i, s in enumerate(rule.expansion)
                  if s.is_term and s.name in lexes and lexes[s.name].fullmatch(op.symbol)]
            if not at or (at[0] == 0) != (op.arity == 1):  # prefix for unary, else infix
                continue
            main = owner.get(rule.origin.name)
            names = (operands(main) if main else []) + operands(rule)
            origin = (main or rule).origin.name
            out[op.name] = Syntax(levels[origin], tuple(levels[n] for n in names))
            break
        else:
            raise RuntimeError(f"grammars/expr.lark has no rule for the operator {op.name!r}")
        if len(out[op.name].operands) != op.arity:
            raise RuntimeError(f"grammars/expr.lark: the rule of {op.name!r} has "
                               f"{len(out[op.name].operands)} operands, not {op.arity}")
    return out


def write_op(name: str, operands: list[tuple[str, int]] | tuple[tuple[str, int], ...],
             ) -> tuple[str, int]:
    """The text of operator `name` over its operands' (text, level), in source order; an
    operand that binds more loosely than its place allows is put in parentheses. Returns the
    text and its level."""
    syn, op = syntax()[name], OPERATORS[name]
    parts = [f"({text})" if level < least else text
             for (text, level), least in zip(operands, syn.operands)]
    if name == "if":
        return f"{parts[0]} if {parts[1]} else {parts[2]}", syn.level
    if len(parts) == 1:
        return (f"{op.symbol} {parts[0]}" if op.symbol.isalpha() else op.symbol + parts[0]), \
            syn.level
    return f"{parts[0]} {op.symbol} {parts[1]}", syn.level


def unparse(node: Node) -> str:
    """An expression tree as Eval text (for messages): parentheses only where needed."""
    return _written(node)[0]


def _written(node: Node) -> tuple[str, int]:
    atom = syntax()["atom"].level
    if isinstance(node, Const):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool) \
                and node.value < 0:
            return repr(node.value), syntax()["neg"].level
        return repr(node.value), atom  # repr quotes texts in a way Eval reads back
    if isinstance(node, Var):
        return ("'{" + node.name + "}'" if node.as_text else "{" + node.name + "}"), atom
    if isinstance(node, Unary):
        return write_op("neg" if node.op == "-" else "pos", [_written(node.operand)])
    if isinstance(node, Not):
        return write_op("not", [_written(node.operand)])
    if isinstance(node, Binary | Logic):
        return write_op(node.op, [_written(node.left), _written(node.right)])
    if isinstance(node, Conditional):
        return write_op("if", [_written(node.if_true), _written(node.condition),
                               _written(node.if_false)])
    if isinstance(node, Compare):
        syn = syntax()[node.rest[0][0]]
        parts = [_written(node.first)] + [_written(n) for _, n in node.rest]
        text = " ".join([_paren(parts[0], syn.operands[0])] +
                        [f"{op} {_paren(p, syn.operands[1])}"
                         for (op, _), p in zip(node.rest, parts[1:])])
        return text, syn.level
    raise EvalError(f"unknown expression node {type(node).__name__}")


def _paren(written: tuple[str, int], least: int) -> str:
    return f"({written[0]})" if written[1] < least else written[0]


@dataclass(frozen=True)
class ExprTypes:
    """What is known of an expression before it runs: the kinds its value may be, and each
    part that fails whenever it runs as (message, hint)."""

    types: frozenset[str]
    problems: tuple[tuple[str, str], ...]


_EVAL_READS = "Eval reads Text, Number, Bool and Objects (as their count)"


def expr_types(text: str, variables: Mapping[str, frozenset[str]]) -> ExprTypes:
    """Type an expression from its variables' possible types (SPEC 2 names), by `OPERATORS`.
    A variable not in `variables` may be anything (the checker reports it as undefined).

    Raises:
        EvalError: the expression does not parse.

    Example:
        >>> expr_types("{N} > 'a'", {"N": frozenset({"Number"})}).problems[0][0]
        "can't apply '>' to {N} (Number) and 'a' (Text)"
    """
    return _typed(text, frozenset(variables.items()))


@lru_cache(maxsize=512)
def _typed(text: str, variables_items: frozenset[tuple[str, frozenset[str]]]) -> ExprTypes:
    """`expr_types`, remembered: a program is checked again before each run."""
    variables = dict(variables_items)
    problems: dict[tuple[str, str], None] = {}

    def var(node: Var) -> frozenset[str]:
        types = variables.get(node.name, frozenset({"Any"}))
        kinds = reads(types, as_text=node.as_text)
        if not kinds:
            from visprog.values.text import a  # local: keeps the parser light
            from visprog.values.types import describe
            what = describe(types)
            what = " or ".join(a(t) for t in sorted(types)) if types else what
            hint = ("ask about an image with Vqa, or count what Loc finds ({OBJ} > 0); "
                    if "Image" in types else "") + _EVAL_READS
            problems[(f"Eval can't read {unparse(node)}: it is {what}", hint)] = None
            return ANY_KIND  # reported once: the operators around it are not
        return kinds

    def apply(name: str, nodes: list[Node], shown: Node | None) -> frozenset[str]:
        """`name` over `nodes`; `shown` is the whole chain a failing pair is part of."""
        kinds = [walk(n) for n in nodes]
        out = result_kinds(name, kinds)
        if not out:
            what = " and ".join(f"{_short(unparse(n))} ({_kinds(n, k, variables)})"
                                for n, k in zip(nodes, kinds))
            hint = "; ".join([OPERATORS[name].takes] + [h for n in nodes if (h := _quoted(n))])
            problems[(f"can't apply '{OPERATORS[name].symbol}' to {what}"
                      + ("" if shown is None else f" in {_short(unparse(shown))}"), hint)] = None
            return ANY_KIND  # so the operators around it are not reported too
        return out

    def walk(node: Node) -> frozenset[str]:
        if isinstance(node, Const):
            return frozenset({literal_kind(node.value)})
        if isinstance(node, Var):
            return var(node)
        if isinstance(node, Unary):
            return apply("neg" if node.op == "-" else "pos", [node.operand], None)
        if isinstance(node, Not):
            return apply("not", [node.operand], None)
        if isinstance(node, Binary | Logic):
            return apply(node.op, [node.left, node.right], None)
        if isinstance(node, Conditional):
            return apply("if", [node.if_true, node.condition, node.if_false], None)
        if isinstance(node, Compare):  # each pair of the chain; the chain gives a Bool
            nodes = [node.first] + [n for _, n in node.rest]
            for i, (op, _) in enumerate(node.rest):
                apply(op, nodes[i:i + 2], node if len(nodes) > 2 else None)
            return frozenset({"Bool"})
        raise EvalError(f"unknown expression node {type(node).__name__}")

    tree = parse_expr(text)
    types = walk(tree)
    if types == {"None"}:
        problems[("the expression's value is always None",
                  "Eval gives a Bool, Number or Text")] = None
    return ExprTypes(types, tuple(problems))


def _kinds(node: Node, kinds: frozenset[str], variables: Mapping[str, frozenset[str]]) -> str:
    """What an operand is, in a message: a variable by its declared type."""
    if isinstance(node, Var) and not node.as_text:
        return " or ".join(sorted(variables.get(node.name, frozenset({"Any"}))))
    return " or ".join(sorted(kinds))


def _quoted(node: Node) -> str:
    """A hint for a text literal meant as a number or a truth value."""
    if not (isinstance(node, Const) and isinstance(node.value, str)):
        return ""
    value = read_text(node.value)
    if not isinstance(value, str):
        return f"{node.value!r} in quotes is text: write {value!r} without quotes"
    count = read_count(node.value)
    if count is not None:
        return f"{node.value!r} is text: write the number {count!r} (only answers are read " \
               "as counts)"
    return ""


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
