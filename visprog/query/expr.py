"""Eval expressions of composed queries (`query.py`): built from Python operators, typed by
Eval's own operator table (`language.expr.OPERATORS`, the one the checker uses), written as
its text with the grammar's precedence, never evaluated by Python.

An expression is a small tree of `Op`s over literals (`Const`) and the nodes of a query
(steps and inputs), which it reads as `{NAME}`. A sub-expression whose value is only Number
or Bool is written inline, `'yes' if {N} > 0 else 'no'`; one that may be Text becomes an Eval
step of its own, because Eval reads a variable's text as a number or yes/no and a value
written inline would not be read that way: so a query means the same wherever its parts end
up. This module knows nothing of query values; `query.py` turns its `ExprProblem`s into
errors at the user's line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from visprog.errors import EvalError
from visprog.language.expr import (MAX_DEPTH, NUMBERS, OPERATORS, Binary, Compare,
                                   Conditional, Logic, Not, Unary, Var, literal_kind, parse_expr,
                                   result_kinds, syntax, write_op)
from visprog.language.expr import Const as ExprConst
from visprog.language.expr import reads as eval_reads
from visprog.values.text import a

SCALARS = frozenset({"Number", "Bool", "Text"})
# The logic operators and `if` are methods of query values: errors name the method.
METHOD = {"if": "then()", "and": "and_()", "or": "or_()", "xor": "xor()", "not": "not_()"}
_REF_TEXT = re.compile(r"\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}")  # what Eval reads as '{NAME}'


class ExprProblem(Exception):
    """An expression that can't be written; `hint` says what to do instead."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Const:
    """A literal: text, a number or a bool."""

    value: bool | int | float | str


@dataclass(frozen=True, eq=False)
class Op:
    """An operator over operands (Const, Op, or a query's step or input node).

    `op` is an operator of Eval (`language.expr.OPERATORS`), or "lit" (one literal), "ref"
    (`{NAME}`) or "str" (`'{NAME}'`: the value as text). `types` are the value's possible
    types."""

    op: str
    operands: tuple[Any, ...]
    types: frozenset[str]
    depth: int = 1
    name: str | None = None

    @property
    def needs_step(self) -> bool:
        """Written as an Eval step of its own (see the module docstring)."""
        if self.op == "str":  # '{NAME}' is written inline: as a step it would be read again
            return False
        return bool(self.types - NUMBERS) or self.op in ("lit", "ref")


def const(value: Any) -> Const:
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return Const(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExprProblem(f"{value} is not a number an expression can write")
        return Const(value)
    raise ExprProblem(f"{a(type(value).__name__)} can't be part of an expression",
                      "expressions take Text, Number and Bool values (Objects: .count())")


def reads(x: Any) -> frozenset[str]:
    """The kinds an operand may be when Eval reads it (`language.expr.reads`): a literal is
    itself; a step or an input is read as a variable (its Text may read as a Number or a
    Bool: `'2'`, `'yes'`); so is an expression that may be Text, which is a step of its own."""
    if isinstance(x, Const):
        return frozenset({literal_kind(x.value)})
    if isinstance(x, Op) and x.op == "str":
        return frozenset({"Text"})
    if isinstance(x, Op) and not x.needs_step:
        return x.types  # Number/Bool, written inline
    return eval_reads(x.types)


def _symbol(op: str) -> str:
    return METHOD.get(op) or repr(OPERATORS[op].symbol)


def make_op(op: str, operands: tuple[Any, ...]) -> Op:
    """An operator over converted operands, typed; raises ExprProblem when no types fit."""
    for x in operands:
        # Eval reads Objects as their count, but a query says so: .count()
        if not isinstance(x, Const) and not (x.types & SCALARS or "Any" in x.types):
            what = a('/'.join(sorted(x.types)), "value") if x.types else \
                "a list that is not all text"
            raise ExprProblem(f"{_symbol(op)} can't use {what}",
                              "count Objects with .count()" if "Objects" in x.types else
                              "expressions take Text, Number and Bool values")
    kinds = [reads(x) for x in operands]
    if op in ("lit", "ref", "str"):
        types = frozenset({"Text"}) if op == "str" else kinds[0]
    else:
        types = result_kinds(op, kinds)
    if not types:
        what = " and ".join("/".join(sorted(k)) for k in kinds)
        raise ExprProblem(f"{_symbol(op)} can't combine {what}", OPERATORS[op].takes)
    depth = 1 + max((x.depth for x in operands  # a step is read as {NAME}: depth 1
                     if isinstance(x, Op) and not (x.needs_step or x.name)), default=0)
    if depth > MAX_DEPTH:
        raise ExprProblem(f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                          "name a part with .named() to make it a step of its own")
    return Op(op, tuple(operands), types, depth)


# --------------------------------------------------------------------------- text

def quote(text: str) -> str:
    """An Eval text literal. A text that Eval would read as a reference (`'{N}'`) is
    written as two joined literals."""
    if _REF_TEXT.fullmatch(text):
        return f"{quote(text[:1])} + {quote(text[1:])}"
    body = (text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
            .replace("\t", "\\t").replace("\r", "\\r").replace("\0", "\\0"))
    return f"'{body}'"


def _literal(value: Any) -> tuple[str, int]:
    """A literal's text and level: a negative number is a unary minus, a text that Eval
    would read as a reference is two texts joined (see `quote`)."""
    if isinstance(value, str):
        return quote(value), syntax()["+" if _REF_TEXT.fullmatch(value) else "atom"].level
    if isinstance(value, bool):
        return repr(value), syntax()["atom"].level
    negative = value < 0 or repr(value).startswith("-")
    return repr(value), syntax()["neg" if negative else "atom"].level


def render_expr(root: Op, name_of: Callable[[Any], str | None]) -> str:
    """The Eval text of an expression step. `name_of(node)` is the variable of a node
    that is a step or an input, None for an expression written inline. Parentheses follow
    the grammar's precedence (`language.expr.write_op`)."""
    atom = syntax()["atom"].level

    def text(x: Any, top: bool = False) -> tuple[str, int]:
        if isinstance(x, Const):
            return _literal(x.value)
        name = None if top else name_of(x)
        if name is not None:
            return "{" + name + "}", atom
        if x.op == "lit":
            return text(x.operands[0])
        if x.op in ("ref", "str"):
            inner = "{" + str(name_of(x.operands[0])) + "}"
            return (inner if x.op == "ref" else f"'{inner}'"), atom
        return write_op(x.op, [text(a) for a in x.operands])

    return text(root, top=True)[0]


def expr_from_text(text: str, bound: Mapping[str, Any]) -> Op:
    """An Eval text (parsed by Eval's grammar) as the expression the operators would build;
    `bound` maps each {NAME} it reads to a node or a Const."""
    try:
        tree = parse_expr(text)
    except EvalError as e:
        raise ExprProblem(f"bad expression: {e}", "see the Eval section of the language") \
            from None
    used: set[str] = set()

    def var(node: Var) -> Any:
        if node.name not in bound:
            raise ExprProblem(f"the expression reads {{{node.name}}}, which is not given",
                              f"pass {node.name}=<a query value or a literal>")
        used.add(node.name)
        value = bound[node.name]
        if isinstance(value, Const):
            return Const(str(value.value)) if node.as_text else value
        return make_op("str", (value,)) if node.as_text else value

    def conv(node: Any) -> Any:
        if isinstance(node, ExprConst):
            if node.value is None:
                raise ExprProblem("None is not a value of composed expressions",
                                  "compare with a text, a number or a bool")
            return Const(node.value)
        if isinstance(node, Var):
            return var(node)
        if isinstance(node, Unary):
            return make_op("neg" if node.op == "-" else "pos", (conv(node.operand),))
        if isinstance(node, Binary):
            return make_op(node.op, (conv(node.left), conv(node.right)))
        if isinstance(node, Compare):  # a chain a < b < c is (a < b) and (b < c)
            items = [conv(node.first)] + [conv(n) for _, n in node.rest]
            out = None
            for i, (op, _) in enumerate(node.rest):
                pair = make_op(op, (items[i], items[i + 1]))
                out = pair if out is None else make_op("and", (out, pair))
            return out
        if isinstance(node, Logic):
            return make_op(node.op, (conv(node.left), conv(node.right)))
        if isinstance(node, Not):
            return make_op("not", (conv(node.operand),))
        if isinstance(node, Conditional):
            return make_op("if", (conv(node.if_true), conv(node.condition),
                                  conv(node.if_false)))
        raise ExprProblem(f"unsupported expression node {type(node).__name__}")

    out = conv(tree)
    unused = sorted(set(bound) - used)
    if unused:
        raise ExprProblem(f"{', '.join(unused)} given but not read by the expression",
                          "refer to a value as {NAME}")
    if isinstance(out, Const):
        return make_op("lit", (out,))
    return out if isinstance(out, Op) else make_op("ref", (out,))
