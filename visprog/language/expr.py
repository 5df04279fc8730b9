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
- Objects read as their count, so `{OBJ} > 0` works without a Count step.
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
    if len(text) > MAX_EXPR_LENGTH:
        raise EvalError(f"expression is too long ({len(text)} characters; the limit is "
                        f"{MAX_EXPR_LENGTH})", text[:80])
    if not text.strip():
        raise EvalError("expression is empty", text)
    if _paren_depth(text) > MAX_DEPTH:
        raise EvalError(f"expression is nested too deeply (more than {MAX_DEPTH} levels of "
                        "parentheses)", text[:80])
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
    from visprog.values import Objects  # local: values imports numpy/PIL, keep this module light
    if isinstance(value, Objects):
        return len(value) if not as_text else str(len(value))
    raise EvalError(f"variable {{{name}}} is {_kind(value)}; Eval reads Text, Number, Bool "
                    "or Objects (as their count)")


def _kind(value: Any) -> str:
    from visprog.values import type_of
    kind = type_of(value)
    kind = type(value).__name__ if kind == "Any" else kind
    return ("an " if kind[:1].lower() in "aeiou" else "a ") + kind


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
