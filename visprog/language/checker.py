"""Static checks of a parsed program, all at once, before anything runs.

Unknown modules and arguments (with the nearest name as a hint, never substituted), missing
arguments, variables read before any step defines them, type mismatches between a variable's
producer and its consumer, using the tools' declared signatures, and the parts of an
expression argument (Eval's) that can never run, typed by the argument's own declaration. The
types, their names and the rule of what fits are `values/types.py`'s.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping

from visprog.errors import CheckError, Diagnostic, ToolDeclarationError, VisProgError
from visprog.language.program import RESERVED_NAMES, Arg, Program, Step, Var, var_refs
from visprog.registry import Param, Registry, Tool
from visprog.values.text import a
from visprog.values.types import (ANY, NOT_TEXT_LIST, Types, describe, fits, list_types,
                                  parse_types, type_of)

# What `visprog check FILE` assumes when the caller declares no inputs (SPEC 1).
DEFAULT_INPUTS: Mapping[str, str] = {"IMAGE": "Image", "LEFT": "Image", "RIGHT": "Image",
                                     "VIDEO": "Video"}
# How a caller passes each of them (a program that reads one it was not given says so).
PASS_INPUT = {"IMAGE": ("image=...", "--image PATH"), "LEFT": ("left=...", "--left PATH"),
              "RIGHT": ("right=...", "--right PATH"), "VIDEO": ("video=...", "--video PATH")}


def literal_types(value: Any, env: Mapping[str, Types]) -> Types:
    """The possible types of an argument value as written."""
    if isinstance(value, Var):
        return env.get(value.name, ANY)
    if isinstance(value, tuple):
        return list_types(literal_types(v, env) for v in value)
    return frozenset({type_of(value)})


def input_types(inputs: Mapping[str, str | Iterable[str]]) -> dict[str, Types]:
    """Declared inputs as type sets: a type string ('Image', 'Text|None') or the set itself
    (a query's values pass theirs; the empty set is a list that is not all text).

    Raises:
        ToolDeclarationError: an input declared with a type that is not one of the types.
    """
    out = {}
    for name, spec in inputs.items():
        try:
            out[name] = parse_types(spec) if isinstance(spec, str) or spec else NOT_TEXT_LIST
        except ToolDeclarationError as e:
            raise ToolDeclarationError(f"input {name!r}: {e}") from None
    return out


def check(program: Program, registry: Registry,
          inputs: Mapping[str, str | Iterable[str]] | None = None) -> list[Diagnostic]:
    """Every problem of `program`, in line order; an empty list means it may run.

    Args:
        program: the parsed program.
        registry: the tools it may call.
        inputs: pre-bound variables and their types ('Text|None' or a set of type names);
            defaults to IMAGE, LEFT and RIGHT images.
    """
    env = input_types(DEFAULT_INPUTS if inputs is None else inputs)
    if not program.steps:
        first = next((line.strip() for line in program.source.splitlines() if line.strip()), "")
        return [Diagnostic(1, 1, first[:40], "the program has no steps",
                           "write at least one NAME=Module(...) step")]
    return _walk(program, registry, env)


def defined_types(program: Program, registry: Registry,
                  inputs: Mapping[str, str | Iterable[str]] | None = None) -> dict[str, Types]:
    """The variables a (checked) program defines, inputs included, and their possible types
    after its last step: what a program that goes on from it may read (agent mode's rounds,
    the constrained decoder's variables)."""
    env = input_types(DEFAULT_INPUTS if inputs is None else inputs)
    _walk(program, registry, env)
    return env


def _walk(program: Program, registry: Registry, env: dict[str, Types]) -> list[Diagnostic]:
    """Check each step in order, adding what it defines to `env` (in place)."""
    bound = frozenset(env)
    out: list[Diagnostic] = []
    for step in program:
        out.extend(_check_target(step, bound))
        if step.module is None:
            out.extend(_check_alias(step, env, bound))
            env[step.target] = env.get(step.alias_of or "", ANY)
            continue
        tool = registry.find(step.module)
        if tool is None:
            suggestion = registry.suggest(step.module)
            out.append(Diagnostic(step.line, step.module_column, step.source,
                                  f"unknown module {step.module!r}",
                                  f"did you mean {suggestion!r}?" if suggestion else
                                  f"known modules: {', '.join(sorted(registry.names()))}"))
            for arg in step.args:  # still report undefined variables it reads
                out.extend(_undefined(arg, env, bound))
            env[step.target] = ANY
            continue
        out.extend(_check_call(step, tool, env, bound))
        env[step.target] = _output_types(step, tool, env)
    return out


def check_or_raise(program: Program, registry: Registry,
                   inputs: Mapping[str, str | Iterable[str]] | None = None) -> None:
    problems = check(program, registry, inputs)
    if problems:
        raise CheckError(problems, program.source)


def _check_target(step: Step, inputs: frozenset[str]) -> list[Diagnostic]:
    """A step may not assign to a literal's name or to an input the caller bound."""
    if step.target in RESERVED_NAMES:
        why = f"{step.target!r} is a reserved word (a literal value)"
    elif step.target in inputs:
        why = f"{step.target!r} is an input of the program"
    else:
        return []
    return [Diagnostic(step.line, step.column, step.source, f"can't assign to {step.target}: "
                       f"{why}", "give the step's result a name of its own")]


def _output_types(step: Step, tool: Tool, env: Mapping[str, Types]) -> Types:
    # A pass-through tool declared as Any -> Any (Result) carries its argument's type on.
    if tool.returns == ANY and len(tool.params) == 1 and step.args:
        return literal_types(step.args[0].value, env)
    return tool.returns


def _check_alias(step: Step, env: Mapping[str, Types],
                 inputs: frozenset[str]) -> list[Diagnostic]:
    name = step.alias_of or ""
    if name in env:
        return []
    message, hint = _undefined_message(name, env, inputs)
    return [Diagnostic(step.line, step.module_column, step.source, message, hint)]


def _undefined_message(name: str, env: Mapping[str, Types],
                       inputs: frozenset[str]) -> tuple[str, str]:
    """(message, hint) for a variable read before anything defines it. One of the usual
    inputs (IMAGE, LEFT, RIGHT) was not given: say so and how to pass it, rather than
    suggest quotes."""
    if name in PASS_INPUT:
        python, cli = PASS_INPUT[name]
        how = f"pass it: {python} in Python (vp.execute, vp.run), {cli} on the command line"
        if inputs:
            how = (f"this run's inputs are {', '.join(sorted(inputs))}: read one of them, or "
                   + how)
        return f"undefined variable {name!r}: the input {name} was not given", how
    close = difflib.get_close_matches(name, list(env), n=1, cutoff=0.6)
    if close:
        return f"undefined variable {name!r}", f"did you mean {close[0]!r}?"
    return (f"undefined variable {name!r}",
            "no earlier step or input defines it; strings need quotes")


def _undefined(arg: Arg, env: Mapping[str, Types],
               inputs: frozenset[str]) -> list[Diagnostic]:
    return [Diagnostic(arg.line, arg.column, arg.name, *_undefined_message(v.name, env, inputs))
            for v in var_refs(arg.value) if v.name not in env]


def _check_call(step: Step, tool: Tool, env: Mapping[str, Types],
                inputs: frozenset[str] = frozenset()) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    seen: set[str] = set()
    for arg in step.args:
        param = tool.param(arg.name)
        if param is None:
            names = [p.name for p in tool.params]
            close = difflib.get_close_matches(arg.name.lower(), names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"{tool.name} takes {', '.join(names) or 'no arguments'}"
            out.append(Diagnostic(arg.line, arg.column, arg.name,
                                  f"{tool.name} has no argument {arg.name!r}", hint))
            out.extend(_undefined(arg, env, inputs))
            continue
        if param.name in seen:
            out.append(Diagnostic(arg.line, arg.column, arg.name,
                                  f"argument {param.name!r} given twice", "keep one of them"))
            continue
        seen.add(param.name)
        undefined = _undefined(arg, env, inputs)
        if undefined:
            out.extend(undefined)
            continue
        given = literal_types(arg.value, env)
        accepted = param.types | ({"None"} if param.default is None else set())
        if not fits(given, accepted):
            source = f"{arg.value.name} is {describe(given)}" if isinstance(arg.value, Var) \
                else f"got {describe(given)}"
            out.append(Diagnostic(
                arg.line, arg.column, arg.name,
                f"{tool.name}'s {param.name!r} takes {describe(param.types)}; {source}",
                _type_hint(given, param.types)))
            continue
        if param.refs is not None and isinstance(arg.value, str):
            found = _check_refs(arg, param.refs, env, inputs)
            out.extend(found)
            if found:
                continue
        if param.expr_types is not None and isinstance(arg.value, str):
            out.extend(_check_expr_types(arg, param, env))
    for param in tool.params:
        if param.required and param.name not in seen:
            out.append(Diagnostic(step.line, step.module_column, step.source,
                                  f"{tool.name} needs argument {param.name!r}",
                                  f"add {param.name}=<{param.type_str}>"))
    return out


def _type_hint(given: Types, wanted: Types) -> str:
    if "TextList" in wanted and not given:
        return "a TextList holds texts only: put every item in quotes"
    if "Text" in wanted and given & {"Number", "Bool"}:
        return "put the value in quotes to pass it as text"
    if "Objects" in wanted and "Image" in given:
        return "pass the result of Loc, Seg, Select, FaceDet or Classify"
    if "Image" in wanted and "Objects" in given:
        return "pass the image itself (e.g. IMAGE), and the objects as box=/object="
    if "Image" in wanted and "Video" in given:
        return "take a frame of the video first: FrameAt(video=VIDEO, time=...)"
    if "Video" in wanted and "Image" in given:
        return "pass the video itself (e.g. VIDEO), or a Clip or Frames of it"
    if "Objects" in wanted and "Tracks" in given:
        return "Track follows objects through a video; for one frame's objects, Loc a FrameAt"
    return f"pass {' or '.join(a(t) for t in sorted(wanted))}"


def _check_refs(arg: Arg, refs: Any, env: Mapping[str, Types],
                inputs: frozenset[str]) -> list[Diagnostic]:
    try:
        names = refs(arg.value)
    except VisProgError as e:
        return [Diagnostic(arg.line, arg.column, arg.value, f"bad expression: {e}",
                           "see the Eval section of the language")]
    out = []
    for n in names:
        if n not in env:
            message, hint = _undefined_message(n, env, inputs)
            out.append(Diagnostic(arg.line, arg.column, arg.value,
                                  f"expression reads {message}", hint))
    return out


def _check_expr_types(arg: Arg, param: Param, env: Mapping[str, Types]) -> list[Diagnostic]:
    """The parts of an expression argument that can never run (Eval's `{N} > 'a'`)."""
    try:
        typed = param.expr_types(arg.value, env)
    except VisProgError as e:  # a parse error is reported by _check_refs already
        return [Diagnostic(arg.line, arg.column, arg.value, f"bad expression: {e}",
                           "see the Eval section of the language")]
    return [Diagnostic(arg.line, arg.column, arg.value, f"{arg.name}: {message}", hint)
            for message, hint in typed.problems]
