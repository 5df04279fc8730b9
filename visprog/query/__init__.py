"""Composed queries: Python calls that write a visprog program, checked as they are written.

    >>> vp = VisProg(preset="tiny")                                   # doctest: +SKIP
    >>> img = vp.image("street.jpg")                                  # doctest: +SKIP
    >>> answer = (img.loc("car").count() > 0).then("yes", "no")       # doctest: +SKIP
    >>> print(answer.program)                                         # doctest: +SKIP
    CAR=Loc(image=IMAGE, object='car')
    COUNT=Count(box=CAR)
    EVAL=Eval(expr="'yes' if {COUNT} > 0 else 'no'")
    >>> answer.value                                                  # doctest: +SKIP

A query value stands for a step not yet run. Its methods come from the registry's declarations:
a module is a method of the values its first parameter takes (Image, Objects, Number, Bool,
TextList, Video, Tracks), in snake case; every module is also a function of `vp.fn`, which is the only home
of those whose first parameter is written text or anything (Eval, List, Result). Each call is
checked by the project's checker at once, and a mistake raises `QueryError` (a `CheckError`)
naming the caller's file and line. Python operators on Number/Bool/Text values build Eval
expressions (`query/expr.py`); nothing is ever evaluated by Python. The program text is
written by `query/program.py`. Nothing runs until
`.value`, `.run()` or `vp.run_batch([...])`, which run the program text (`.program`) through
`VisProg.execute`/`run_batch`, so a query runs exactly as that text would.
"""
from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import replace
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image

from visprog.language.checker import DEFAULT_INPUTS, check
from visprog.language.checker import literal_types as checker_literal_types
from visprog.language.program import RESERVED_NAMES, Arg, Program, Step, Var
from visprog.query.expr import SCALARS, ExprProblem, const, expr_from_text, make_op
from visprog.query.program import (Call, Compiled, Input, NoSuchMethod, QueryError, base_name,
                            caller, compile_query, fail, snake_case)
from visprog.registry import closest_name
from visprog.values import MAX_NESTING, Objects, Tracks, Video, nesting_depth
from visprog.values.text import a, plural, show

# Types whose values get a module as a method. A first parameter of Text is text the program
# writes (an expression, a question for the LLM), so those modules are `vp.fn` functions.
METHOD_TYPES = frozenset({"Image", "Objects", "Number", "Bool", "TextList", "Video", "Tracks"})
# Attributes of query values that a module's method may not shadow (it stays on `vp.fn`).
RESERVED = frozenset({"value", "run", "program", "inputs", "trace", "named", "types", "then",
                      "and_", "or_", "xor", "not_", "batch_item"})
# Names no step may take (the checker refuses assigning to an input or a literal), compared
# case-insensitively as the query's own names are.
UNNAMEABLE = frozenset(n.upper() for n in (*DEFAULT_INPUTS, *RESERVED_NAMES))

__all__ = ["Query", "ImageQuery", "ObjectsQuery", "ValueQuery", "TextListQuery", "AnyQuery",
           "VideoQuery", "TracksQuery", "QueryError", "NoSuchMethod", "Functions", "image",
           "pair", "video", "functions", "as_batch_item", "snake_case"]


# --------------------------------------------------------------------------- values

class Query:
    """A value of a query not yet run. Made by `vp.image()`, `vp.pair()`, module methods,
    `vp.fn` functions and operators; read with `.value`, `.trace`, `.run()`."""

    def __init__(self, vp: Any, node: Any):
        self._vp = vp
        self._node = node
        self._result: Any = None
        self._program: Compiled | None = None

    @property
    def types(self) -> frozenset[str]:
        """The types the value may have (SPEC 2)."""
        return self._node.types

    @property
    def _compiled(self) -> Compiled:
        # cached by hand: a functools.cached_property frame would pass for the caller's
        if self._program is None:
            self._program = compile_query(self._vp, self._node)
        return self._program

    @property
    def program(self) -> str:
        """The program text: steps named after what they find or the module, shared
        sub-queries once, the query's own value last."""
        return self._compiled.text

    @property
    def inputs(self) -> dict[str, Any]:
        """The values the program's free variables are bound to (IMAGE, LEFT, RIGHT, ...)."""
        return dict(self._compiled.inputs)

    def run(self, *, use_cache: bool = True, no_cache: Any = (), on_step: Any = None) -> Any:
        """Run the program with its inputs (`VisProg.execute`) and return the `RunResult`."""
        self._result = self._vp.execute(self.program, **run_arguments(self._compiled.inputs),
                                        use_cache=use_cache, no_cache=no_cache,
                                        on_step=on_step)
        return self._result

    @property
    def value(self) -> Any:
        """The Python value (runs the query once): int, float, str, bool, a PIL image,
        Objects, a list of str."""
        if isinstance(self._node, Input):  # an input (an image, a region) is its own value
            return self._node.value
        return (self._result if self._result is not None else self.run()).value

    @property
    def trace(self) -> Any:
        """The trace of the run (runs the query once)."""
        return (self._result if self._result is not None else self.run()).trace

    def named(self, name: str) -> "Query":
        """The same value, its step named `name` in the program."""
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)):
            raise fail(f"named(): {name!r} is not a variable name",
                       "letters, digits and underscores, not starting with a digit")
        if isinstance(self._node, Input):
            raise fail("named(): an input keeps its name", f"it is {self._node.name}")
        if name.upper() in UNNAMEABLE:
            raise fail(f"named(): {name!r} is the name of an input or a literal; a step can't "
                       "assign to it", "give the value a name of its own")
        return wrap(self._vp, replace(self._node, name=name))

    def batch_item(self) -> dict[str, Any]:
        """The item `VisProg.run_batch` runs for this query."""
        args = run_arguments(self._compiled.inputs)
        return {"program": self.program, **args}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        t = tool_for_method(self._vp, name)
        kind = "/".join(sorted(self.types))
        if t is not None:
            first = t.params[0]
            kinds = "/".join(sorted(method_types(t)))
            where = f"call it on {a(kinds, 'value')}" if kinds else f"call vp.fn.{name}(...)"
            raise NoSuchMethod([(f"{name}() is not a method of {kind} values: "
                                 f"{t.signature()} takes {first.name} as {first.type_str}",
                                 where)], caller())
        near = closest_name(name, [n for n in dir(self) if not n.startswith("_")])
        hint = f"; did you mean {near!r}?" if near else ""
        raise AttributeError(f"{type(self).__name__} ({kind}) has no attribute {name!r}{hint}")

    def _known(self) -> tuple[bool, Any]:
        """(True, the value) for an input (its own value) or a query that has run; else
        (False, None): nothing runs here."""
        if isinstance(self._node, Input):
            return True, self._node.value
        if self._result is not None:
            return True, self._result.value
        return False, None

    def __repr__(self) -> str:
        kind = "/".join(sorted(self.types))
        known, value = self._known()
        if isinstance(self._node, Input):
            return f"<{kind} input {self._node.name}: {show(value, limit=60)}>"
        try:
            last = self.program.rstrip("\n").rsplit("\n", 1)[-1]
            steps = self.program.count("\n")
        except Exception:  # a repr must not raise
            last, steps = "?", 0
        state = f"ran): {show(value, limit=60)}" if known else "not run)"
        return f"<{kind} query {last} ({plural(steps, 'step')}, {state}>"

    def _repr_html_(self) -> str:
        """What a notebook shows: once the query ran, its value (Objects drawn over the image
        they were found in, Tracks over their video); before, the program it would run (a
        repr runs nothing)."""
        from html import escape

        if self._result is not None:
            from visprog.traces.html import render_value_html
            return render_value_html(self._result.trace)
        return f"<pre>{escape(repr(self))}</pre>"

    def __str__(self) -> str:
        """The value as text once it is known (an input, a query that ran); before, Python
        can't format it (it would need the run)."""
        known, value = self._known()
        if not known:
            return self._not_python()
        return str(value) if isinstance(value, Objects) else show(value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    # -- what would need Python to evaluate the value: refused --------------------------
    def __bool__(self) -> bool:
        raise fail("a query value has no truth value before it runs (if, while, and, or, "
                   "not, chained comparisons a < b < c need Python to evaluate it)",
                   "use .then(a, b), .and_(), .or_(), .not_(), or .value to run it first")

    def _not_python(self, *_: Any) -> Any:
        raise fail(f"{a('/'.join(sorted(self.types)), 'query value')} can't be converted or "
                   "formatted by Python before it runs",
                   "use .value for the result, .program for the program, or + between "
                   "Text values to build text in the program")

    __int__ = __float__ = __index__ = __complex__ = _not_python
    __round__ = __trunc__ = __floor__ = __ceil__ = __abs__ = __bytes__ = _not_python

    def _no_operator(self, *_: Any) -> Any:
        raise fail("this operator is not part of the language (bitwise operators, @, 'in')",
                   "use .and_(), .or_(), .xor(), .not_() for logic; == to compare")

    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __invert__ = _no_operator
    __lshift__ = __rlshift__ = __rshift__ = __rrshift__ = _no_operator
    __matmul__ = __rmatmul__ = __contains__ = _no_operator

    def _not_a_scalar(self, *_: Any) -> Any:
        raise fail(f"operators work on Number, Bool and Text values, not "
                   f"{'/'.join(sorted(self.types))}",
                   "count Objects with .count()" if "Objects" in self.types else
                   "use a module method, e.g. .vqa(question) for an answer about an Image")

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = __neg__ = __pos__ = _not_a_scalar
    __hash__ = object.__hash__  # identity, as == is refused or builds an expression

    def _not_sequence(self, *_: Any) -> Any:
        raise fail(f"{a('/'.join(sorted(self.types)), 'query value')} is not a sequence",
                   "only Objects values have len(), iteration and indexing")

    __len__ = __iter__ = __getitem__ = _not_sequence


ARITHMETIC = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow")
for _name in ARITHMETIC:
    setattr(Query, f"__{_name}__", Query._not_a_scalar)
    setattr(Query, f"__r{_name}__", Query._not_a_scalar)


class ImageQuery(Query):
    """An Image value."""


class TextListQuery(Query):
    """A TextList value."""


class VideoQuery(Query):
    """A Video value (`vp.video(...)`, Frames, Clip): its methods are the modules that take
    a video (`track`, `frame_at`, `frames`, `clip`, `video_qa`)."""


class TracksQuery(Query):
    """A Tracks value (what Track gives): `count`, `first_seen`, `last_seen`, `seen_for`,
    `objects_at`."""


class ObjectsQuery(Query):
    """An Objects value. `len()`, iteration and indexing run the query, then give single
    regions as values of their own (bound inputs of the programs that use them)."""

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self) -> Iterator["ObjectsQuery"]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: Any) -> "ObjectsQuery":
        objects = self.value
        if isinstance(index, slice):
            part, label = objects[index], "PART"
        elif isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -len(objects) <= index < len(objects):
                n = len(objects)
                raise fail(f"index {index} is out of range: there "
                           f"{'is' if n == 1 else 'are'} {plural(n, 'object')}")
            i = int(index) % len(objects)
            part, label = objects[i:i + 1], str(i)
        else:
            raise fail(f"Objects are indexed by an int or a slice, not {type(index).__name__}")
        base = base_name(self._node)
        return wrap(self._vp, Input(f"{base}_{label}", part, frozenset({"Objects"}),
                                    ("item", id(self._node), repr(index)), self._node))


def operand(q: Query, value: Any) -> Any:
    if isinstance(value, Query):
        return to_node(q._vp, value, "an expression")
    if isinstance(value, np.generic):
        value = value.item()
    return const(value)


def expression(q: Query, op: str, *values: Any) -> Query:
    """`q op other` (or a named logic method) as an expression value."""
    try:
        return wrap(q._vp, make_op(op, tuple(operand(q, v) for v in values)))
    except ExprProblem as e:
        raise fail(e.message, e.hint) from None


class ValueQuery(Query):
    """A Number, Bool or Text value. Operators build Eval expressions: `+ - * / // % **`,
    unary `-`/`+`, `== != < <= > >=`; `and`, `or`, `not` and `if` can't be overloaded in
    Python, so they are `.and_()`, `.or_()`, `.xor()`, `.not_()` and `.then(a, b)`."""

    __hash__ = Query.__hash__

    def then(self, if_true: Any, if_false: Any) -> "ValueQuery":
        """`if_true if self else if_false`, an Eval conditional."""
        return expression(self, "if", if_true, self, if_false)  # type: ignore[return-value]

    def and_(self, other: Any) -> "ValueQuery":
        """`self and other` (a Bool)."""
        return expression(self, "and", self, other)  # type: ignore[return-value]

    def or_(self, other: Any) -> "ValueQuery":
        """`self or other` (a Bool)."""
        return expression(self, "or", self, other)  # type: ignore[return-value]

    def xor(self, other: Any) -> "ValueQuery":
        """`self xor other` (a Bool)."""
        return expression(self, "xor", self, other)  # type: ignore[return-value]

    def not_(self) -> "ValueQuery":
        """`not self` (a Bool)."""
        return expression(self, "not", self)  # type: ignore[return-value]

    def __neg__(self) -> "ValueQuery":
        return expression(self, "neg", self)  # type: ignore[return-value]

    def __pos__(self) -> "ValueQuery":
        return expression(self, "pos", self)  # type: ignore[return-value]


def _operator(op: str, reflected: bool = False) -> Any:
    def method(self: Query, other: Any) -> Query:
        return expression(self, op, other, self) if reflected else expression(self, op, self, other)
    method.__name__ = f"__{'r' if reflected else ''}{op}__"
    return method


for _name, _op in zip(ARITHMETIC, ("+", "-", "*", "/", "//", "%", "**")):
    setattr(ValueQuery, f"__{_name}__", _operator(_op))
    setattr(ValueQuery, f"__r{_name}__", _operator(_op, reflected=True))
for _name, _op in (("eq", "=="), ("ne", "!="), ("lt", "<"), ("le", "<="), ("gt", ">"),
                   ("ge", ">=")):
    setattr(ValueQuery, f"__{_name}__", _operator(_op))


class AnyQuery(ValueQuery):
    """A value of several or any types: every module method and every operator."""


BASES: dict[str, type] = {"Image": ImageQuery, "Objects": ObjectsQuery,
                          "TextList": TextListQuery, "Video": VideoQuery,
                          "Tracks": TracksQuery, "Value": ValueQuery, "Any": AnyQuery}
KIND_TYPES = {"Image": {"Image"}, "Objects": {"Objects"}, "TextList": {"TextList"},
              "Video": {"Video"}, "Tracks": {"Tracks"}, "Value": {"Number", "Bool"},
              "Any": set(METHOD_TYPES)}
SINGLE_KINDS = ("Image", "Objects", "TextList", "Video", "Tracks")


def kind_of(types: frozenset[str]) -> str:
    t = set(types) - {"None"}
    for kind in SINGLE_KINDS:
        if t == {kind}:
            return kind
    return "Value" if t and t <= SCALARS else "Any"


def wrap(vp: Any, node: Any) -> Query:
    return classes(vp)[kind_of(node.types)](vp, node)


# --------------------------------------------------------------------------- methods


def method_types(t: Any) -> frozenset[str]:
    """The value types that get `t` as a method (none: a `vp.fn` function only)."""
    if not t.params or snake_case(t.name) in RESERVED:
        return frozenset()
    return t.params[0].types & METHOD_TYPES


def tool_for_method(vp: Any, name: str) -> Any:
    return next((t for t in vp.registry if snake_case(t.name) == name), None)


def _doc(t: Any, method: bool) -> str:
    first = t.params[0].name if t.params else ""
    how = (f"A method of {'/'.join(sorted(method_types(t)))} values (the value is its "
           f"{first!r}); also vp.fn.{snake_case(t.name)}." if method else
           f"Writes a {t.name} step; also a method where its first argument is a value.")
    if t.name == "Eval":
        how = ("vp.fn.eval(\"{N} > 0\", N=count) builds the expression from the text; "
               "other keyword arguments bind the {NAMES} it reads.")
    params = "\n".join(f"    {p.name}: {p.type_str}" + ("" if p.required else
                                                          f" (default {p.default!r})")
                       for p in t.params)
    return (f"{t.signature()}\n\n{t.doc}\n\n{how}\n\nArgs:\n{params}\n\nReturns a query "
            f"value ({'|'.join(sorted(t.returns))}); nothing runs until .value or .run().")


def _signature(t: Any, method: bool) -> inspect.Signature:
    first = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    ps = list(first)
    try:
        for p in (t.params[1:] if method else t.params):
            if p.required and ps[-1].default is not inspect.Parameter.empty:
                kind = inspect.Parameter.KEYWORD_ONLY  # Python's order: required first
            ps.append(inspect.Parameter(p.name, kind, default=p.default, annotation=p.type_str))
        if t.name == "Eval":
            ps.append(inspect.Parameter("values", inspect.Parameter.VAR_KEYWORD))
        return inspect.Signature(ps, return_annotation="|".join(sorted(t.returns)))
    except ValueError:  # a declared name Python can't take as a parameter (e.g. a keyword)
        return inspect.Signature(first + [
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def _make(t: Any, method: bool) -> Any:
    name, tool_name = snake_case(t.name), t.name
    if method:
        def fn(self: Query, *args: Any, **kwargs: Any) -> Query:
            return call(self._vp, tool_name, f"{name}()", (self, *args), kwargs, method=True)
    else:
        def fn(self: Functions, *args: Any, **kwargs: Any) -> Query:
            return call(self._vp, tool_name, f"vp.fn.{name}()", args, kwargs)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = _doc(t, method)
    fn.__signature__ = _signature(t, method)  # type: ignore[attr-defined]
    return fn


class Functions:
    """Every module as a function (`vp.fn.loc(img, "cup")`, `vp.fn.eval(...)`,
    `vp.fn.list(...)`, `vp.fn.result(x)`)."""

    def __init__(self, vp: Any):
        self._vp = vp

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        near = closest_name(name, [n for n in dir(self) if not n.startswith("_")])
        raise AttributeError(f"no module {name!r} in vp.fn" +
                             (f"; did you mean {near!r}?" if near else ""))


def classes(vp: Any) -> dict[str, type]:
    """The value classes of `vp`'s registry, with a method per module; made again when the
    registry changes (a tool registered later shows up on new values)."""
    key = tuple((t.name, id(t)) for t in vp.registry)
    made = vp.__dict__.get("_query_classes")
    if made is not None and made[0] == key:
        return made[1]
    out: dict[str, type] = {}
    for kind, base in BASES.items():
        attrs = {snake_case(t.name): _make(t, True) for t in vp.registry
                 if method_types(t) & KIND_TYPES[kind]}
        out[kind] = type(base.__name__, (base,), {"__module__": __name__,
                                                  "__doc__": base.__doc__, **attrs})
    out["fn"] = type("Functions", (Functions,), {
        "__module__": __name__, "__doc__": Functions.__doc__,
        **{snake_case(t.name): _make(t, False) for t in vp.registry}})
    vp.__dict__["_query_classes"] = (key, out)
    return out


# --------------------------------------------------------------------------- calls

def to_node(vp: Any, value: Any, what: str) -> Any:
    """An argument -> a node or a literal (str, number, bool, None, tuple); a concrete image
    or Objects becomes a bound input."""
    if isinstance(value, Query):
        if value._vp is not vp:
            raise fail(f"{what}: the value belongs to another VisProg",
                       "build a query from one VisProg's values")
        return value._node
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(f"{what}: {value} is not a number the language can write")
        return value
    if isinstance(value, (list, tuple)):
        if nesting_depth(value) > MAX_NESTING:  # the parser would refuse the program's text
            raise fail(f"{what}: the list nests lists more than {MAX_NESTING} deep",
                       "lists hold names, strings and numbers; flatten the nesting")
        return tuple(to_node(vp, v, what) for v in value)
    if isinstance(value, (Image.Image, np.ndarray)):
        loaded = vp.inputs.image(value)  # under the limits every input is read with
        return Input("IMAGE", loaded, frozenset({"Image"}), ("image", id(value)), value)
    if isinstance(value, Objects):
        return Input("OBJECTS", value, frozenset({"Objects"}), ("objects", id(value)), value)
    if isinstance(value, Video):
        vp.inputs.video(value)  # a Video keeps to the limits, as a bound one does
        return Input("VIDEO", value, frozenset({"Video"}), ("video", id(value)), value)
    if isinstance(value, Tracks):
        return Input("TRACKS", value, frozenset({"Tracks"}), ("tracks", id(value)), value)
    raise fail(f"{what}: can't pass {a(type(value).__name__)} into a program",
               "pass a query value, an image, Objects, a Video, Tracks, text, a number, a "
               "bool, None or a list of those")


def call(vp: Any, tool_name: str, label: str, args: tuple, kwargs: Mapping[str, Any], *,
         method: bool = False) -> Query:
    """A module call as a new value, checked by the checker now."""
    t = vp.registry.get(tool_name)
    if t.name == "Eval":
        return eval_call(vp, label, args, kwargs)
    if len(args) > len(t.params):
        rest = t.params[1:] if method else t.params
        raise fail(f"{label} takes at most {len(rest)} positional arguments "
                   f"({', '.join(p.name for p in rest)}), got {len(args) - method}",
                   f"{t.signature()}")
    given: list[tuple[str, Any]] = [(p.name, a) for p, a in zip(t.params, args)]
    for k, v in kwargs.items():
        p = t.param(k)
        given.append((p.name if p else k, v))
    values = [(k, to_node(vp, v, f"{label}'s {k!r}")) for k, v in given]
    problems = check_call(vp, t, values)
    if problems:
        raise QueryError([(f"{label}: {m}", h) for m, h in problems], caller())
    order = {p.name: i for i, p in enumerate(t.params)}
    values.sort(key=lambda kv: order[kv[0]])
    types = t.returns
    if t.returns == frozenset({"Any"}) and len(t.params) == 1 and values:
        types = literal_types(values[0][1])  # a pass-through (Result) keeps its arg's type
    return wrap(vp, Call(t.name, tuple(values), types, t.cacheable))


def literal_types(value: Any) -> frozenset[str]:
    return value.types if hasattr(value, "types") else checker_literal_types(value, {})


def check_call(vp: Any, t: Any, values: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """The checker's verdict on one call: nodes become variables of their types."""
    env: dict[str, frozenset[str]] = {}

    def as_arg(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(as_arg(x) for x in v)
        if not hasattr(v, "types"):
            return v
        label = describe(v)
        n = 2
        while label in env and env[label] != v.types:
            label, n = f"{describe(v)} #{n}", n + 1
        env[label] = v.types
        return Var(label)

    args = tuple(Arg(k, as_arg(v), 1, i + 1) for i, (k, v) in enumerate(values))
    step = Step("_", t.name, args, 1, 1, t.name)
    return [(d.message, d.hint) for d in check(Program((step,), ""), vp.registry, env)]


def describe(node: Any) -> str:
    if isinstance(node, Input):
        return node.name
    if isinstance(node, Call):
        return f"the {node.tool} result"
    return "the expression"


def eval_call(vp: Any, label: str, args: tuple, kwargs: Mapping[str, Any]) -> Query:
    """`vp.fn.eval("{N} > 0", N=count)`: the text parsed by Eval's grammar, its {NAMES}
    bound to the keyword arguments, as the expression the operators would build."""
    kwargs = dict(kwargs)
    if "expr" in kwargs:
        args = (kwargs.pop("expr"), *args)
    if len(args) != 1 or not isinstance(args[0], str):
        raise fail(f"{label} takes one expression text, then NAME=value for its {{NAMES}}",
                   "e.g. vp.fn.eval(\"'yes' if {N} > 0 else 'no'\", N=count)")
    try:
        bound = {k: (to_node(vp, v, f"{label}'s {k}") if isinstance(v, Query) else
                     const(v.item() if isinstance(v, np.generic) else v))
                 for k, v in kwargs.items()}
        return wrap(vp, expr_from_text(args[0], bound))
    except ExprProblem as e:
        raise fail(f"{label}: {e.message}", e.hint) from None


# --------------------------------------------------------------------------- entry points

def run_arguments(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Bound inputs as `VisProg.execute`'s keyword arguments."""
    out: dict[str, Any] = {}
    rest = {}
    for name, value in inputs.items():
        if name in ("IMAGE", "LEFT", "RIGHT", "VIDEO"):
            out[name.lower()] = value
        else:
            rest[name] = value
    if rest:
        out["inputs"] = rest
    return out


def image(vp: Any, source: Any) -> ImageQuery:
    """`vp.image(img)`: a path, bytes, PIL image or array, as the program's IMAGE."""
    if isinstance(source, ImageQuery):
        return source
    loaded = vp.bind(source)["IMAGE"]
    key = os.fspath(source) if isinstance(source, (str, os.PathLike)) else id(source)
    return wrap(vp, Input("IMAGE", loaded, frozenset({"Image"}), ("image", key), source))


def pair(vp: Any, left: Any, right: Any) -> tuple[ImageQuery, ImageQuery]:
    """`vp.pair(left, right)`: two images as the program's LEFT and RIGHT."""
    bound = vp.bind(left=left, right=right)
    return tuple(wrap(vp, Input(name, bound[name], frozenset({"Image"}),  # type: ignore
                                ("image", name, id(src)), src))
                 for name, src in (("LEFT", left), ("RIGHT", right)))


def video(vp: Any, source: Any, **sampling: Any) -> VideoQuery:
    """`vp.video(clip)`: a video file, a folder of frames, a list of images or a `Video`,
    as the program's VIDEO, read (and sampled: `fps=`, `frames=`...) as `vp.load_video`
    reads it."""
    if isinstance(source, VideoQuery):
        return source
    if source is None:
        raise fail("vp.video(): give a video file's path, a folder of frames, a list of "
                   "images or a Video", "e.g. vp.video('clip.mp4')")
    loaded = vp.load_video(source, **sampling) if sampling else vp.bind(video=source)["VIDEO"]
    key = (os.fspath(source) if isinstance(source, (str, os.PathLike)) else id(source),
           tuple(sorted(sampling.items())))
    return wrap(vp, Input("VIDEO", loaded, frozenset({"Video"}), ("video", key), source))


def functions(vp: Any) -> Functions:
    """`vp.fn`: every module as a function."""
    return classes(vp)["fn"](vp)


def as_batch_item(item: Any) -> Any:
    """A `run_batch` item: a query (or a mapping or `BatchItem` whose program is one, keeping
    its id) as program text and bound inputs; anything else unchanged."""
    if isinstance(item, Query):
        return item.batch_item()
    program = item.get("program") if isinstance(item, Mapping) else getattr(item, "program",
                                                                             None)
    if isinstance(program, Query):
        item_id = item.get("id") if isinstance(item, Mapping) else getattr(item, "id", None)
        return {**program.batch_item(), "id": item_id}
    return item
