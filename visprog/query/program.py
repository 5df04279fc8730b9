"""The program of a composed query (`query.py`): its graph of nodes, written as text.

A query is a graph: inputs (IMAGE, LEFT, RIGHT, a region), module calls, and expressions
(`query_expr.Op`). `compile_query` writes each distinct node once (cacheable calls and
expressions that compute the same thing are one step; a sampling module's calls stay apart),
arguments before their readers, the query's own value last, names readable and
deterministic; then checks the text as a whole, as `VisProg.execute` will. Errors name the
user's line (`caller`), never a line of this package.
"""
from __future__ import annotations

import inspect
import keyword
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from visprog.language.checker import DEFAULT_INPUTS, check
from visprog.errors import NoSuchMethod, QueryError  # noqa: F401 - raised by the query layer
from visprog.language.parser import parse
from visprog.language.program import RESERVED_NAMES
from visprog.query.expr import Const, Op, render_expr

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# --------------------------------------------------------------------------- errors

def caller() -> tuple[str, int, int, str]:
    """(file, line, column, source line) of the innermost frame outside the visprog package:
    the user's line that made a query, which is where an error belongs."""
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
            _PACKAGE_DIR):
        frame = frame.f_back
    info = inspect.getframeinfo(frame, context=1)
    column = (getattr(info, "positions", None) and info.positions.col_offset) or 0
    text = info.code_context[0].strip() if info.code_context else ""
    return info.filename, info.lineno, column + 1, text


def fail(message: str, hint: str = "") -> QueryError:
    return QueryError([(message, hint)], caller())


# --------------------------------------------------------------------------- the graph

@dataclass(frozen=True, eq=False)
class Input:
    """A bound input (IMAGE, LEFT, RIGHT, a region). Inputs with equal `key`s (hashable:
    names and ids) are one; `keep` holds the objects whose ids the key has."""

    name: str
    value: Any
    types: frozenset[str]
    key: Any
    keep: Any = None


@dataclass(frozen=True, eq=False)
class Call:
    """A module call; `args` are (declared name, literal or node) in declared order."""

    tool: str
    args: tuple[tuple[str, Any], ...]
    types: frozenset[str]
    cacheable: bool
    name: str | None = None
    token: object = field(default_factory=object)  # identity of a non-cacheable call


NODES = (Input, Call, Op)  # the nodes of a query graph; Const is a literal inside an Op


def snake_case(name: str) -> str:
    """CropLeftOf -> crop_left_of, BgBlur -> bg_blur, OCRText -> ocr_text."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    s = re.sub(r"_+", "_", s).strip("_").lower() or name.lower()
    return s + "_" if keyword.iskeyword(s) else s


# --------------------------------------------------------------------------- programs

@dataclass
class Compiled:
    text: str
    inputs: dict[str, Any]


def base_name(node: Any) -> str:
    """A node's readable name before collisions: its own name, else for a detection (or a
    Track) the text it looks for (PERSON, RED_CAR), else the module in upper snake case
    (COUNT)."""
    if isinstance(node, Input):
        return node.name
    if node.name:
        return node.name
    if isinstance(node, Op):
        return "EVAL"
    if node.types in (frozenset({"Objects"}), frozenset({"Tracks"})):
        text = next((v for _, v in node.args if isinstance(v, str) and v.strip()), None)
        if text is not None:
            name = re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")[:24].rstrip("_")
            if name:
                return name if not name[0].isdigit() else "OBJ_" + name
    return snake_case(node.tool).rstrip("_").upper()


def signature(node: Any, memo: dict[int, Any]) -> Any:
    """A key equal for nodes that compute the same thing (so they become one step):
    cacheable calls and expressions by content, others by identity."""
    got = memo.get(id(node))
    if got is not None:
        return got[1]

    def of(v: Any) -> Any:
        if isinstance(v, tuple):
            return ("list",) + tuple(of(x) for x in v)
        if isinstance(v, NODES):
            return signature(v, memo)
        if isinstance(v, Const):
            return ("const", type(v.value).__name__, v.value)
        return (type(v).__name__, v)

    if isinstance(node, Input):
        key: Any = ("input", node.name, node.key)
    elif isinstance(node, Call):
        key = ("call", node.tool, tuple((k, of(v)) for k, v in node.args),
               None if node.cacheable else node.token)
    else:
        key = ("op", node.op, tuple(of(v) for v in node.operands))
    memo[id(node)] = (node, key)
    return key


def compile_query(vp: Any, root: Any) -> Compiled:
    """The program of a query: each distinct node once, arguments before their readers,
    the root last; then checked as a whole, exactly as its text would be."""
    memo: dict[int, Any] = {}
    canon: dict[Any, Any] = {}  # signature -> the node that stands for all equal ones
    stack, met = [root], set()
    while stack:  # every node once; a named one stands for its unnamed equals
        node = stack.pop()
        if id(node) in met:
            continue
        met.add(id(node))
        key = signature(node, memo)
        if key not in canon or (node.name and not canon[key].name):
            canon[key] = node
        if isinstance(node, Call):
            stack.extend(n for _, v in node.args for n in _nodes_in(v))
        elif isinstance(node, Op):
            stack.extend(v for v in node.operands if not isinstance(v, Const))
    order: list[Any] = []      # steps in program order (Call, or Op that is a step)
    inputs: list[Input] = []
    seen: set[int] = set()

    def same(node: Any) -> Any:
        return canon[signature(node, memo)]

    step_ops: set[int] = set()  # expressions that are steps of their own

    def visit(node: Any, as_step: bool) -> None:
        node = same(node)
        if isinstance(node, Op) and (as_step or node.name or node.needs_step):
            step_ops.add(id(node))
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, Input):
            inputs.append(node)
            return
        if isinstance(node, Call):
            for _, v in node.args:
                for n in _nodes_in(v):
                    visit(n, True)
        else:
            for v in node.operands:
                if not isinstance(v, Const):
                    visit(v, node.op in ("str", "ref"))
        order.append(node)

    visit(root, True)
    names: dict[int, str] = {}
    taken: set[str] = set()

    def claim(node: Any, base: str, exact: bool) -> None:
        name, n = base, 2
        while name.upper() in taken:
            if exact:
                raise fail(f"two different steps are named {base!r}",
                           "give each named() value its own name")
            name, n = f"{base}_{n}", n + 1
        taken.add(name.upper())
        names[id(node)] = name

    for node in inputs:
        claim(node, node.name, False)
    # a step may not assign to an input or a literal (named() refuses them): derived names
    # step around the default inputs too, so the text checks as a .vp file whatever is bound
    taken |= {n.upper() for n in (*DEFAULT_INPUTS, *RESERVED_NAMES)}
    steps = [n for n in order if not isinstance(n, Op) or id(n) in step_ops]
    for node in steps:  # user names first, so derived names step around them
        if node.name:
            claim(node, node.name, True)
    for node in steps:
        if not node.name:
            claim(node, base_name(node), False)

    def ref(node: Any) -> str:
        return names[id(same(node))]

    lines = []
    for node in steps:
        if isinstance(node, Op):
            expr = render_expr(node, lambda n: names.get(id(same(n))))
            lines.append(f"{names[id(node)]}=Eval(expr={program_literal(expr, ref)})")
        else:
            args = ", ".join(f"{k}={program_literal(v, ref)}" for k, v in node.args)
            lines.append(f"{names[id(node)]}={node.tool}({args})")
    text = "".join(line + "\n" for line in lines)
    bound = {names[id(n)]: n.value for n in inputs}
    problems = check(parse(text), vp.registry,
                     {k: n.types for k, n in zip(bound, inputs)})
    if problems:
        raise QueryError([(f"line {d.line} of the program: {d.message}", d.hint)
                          for d in problems], caller())
    return Compiled(text, bound)


def _nodes_in(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [n for v in value for n in _nodes_in(v)]
    return [value] if isinstance(value, NODES) else []


def program_literal(value: Any, ref: Any) -> str:
    """A value as the program grammar writes it."""
    if isinstance(value, NODES):
        return ref(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(program_literal(v, ref) for v in value) + "]"
    if isinstance(value, str):
        return quote(value)
    return repr(value)  # bool, int, float (finite), None


def quote(text: str) -> str:
    """A program string literal: single quotes unless the text has one and no double quote;
    backslash escapes for the quote, backslashes and control characters."""
    q = '"' if "'" in text and '"' not in text else "'"
    out = []
    for ch in text:
        if ch in (q, "\\"):
            out.append("\\" + ch)
        elif ch in "\n\t\r\0":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return q + "".join(out) + q
