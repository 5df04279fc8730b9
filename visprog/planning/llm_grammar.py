"""Grammars for constrained program generation, derived from the registry.

The language's own grammar (`grammars/visprog.lark`) accepts any module and argument name;
these grammars accept a canonical subset of it in which module and argument names are the
registry's, so a constrained sampler can only write calls that exist:

- `program_grammar(registry)`: a whole program, in plain Lark. Sent to servers that accept
  a grammar (vLLM's `guided_grammar`).
- `step_grammar(registry, env, ...)`: ONE step, for the local constrained sampler, which
  writes a program a line at a time. It also knows which variables exist and their types
  (`env`), so a step can only read defined variables whose type fits, and an `expr`-like
  argument (a param with `refs`, Eval's) is a small expression over defined variables, typed
  by Eval's operator table so that no part of it fails whenever it runs. A program written
  this way parses *and* checks. It uses llguidance's Lark dialect (bounded
  repetition `x{m,n}`), and every repetition and string is bounded so a line is finite.

Both are generated, so a newly registered module is part of them without editing anything.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from visprog.language.expr import NUMBERS, TEXT, reads, result_kinds
from visprog.values.types import fits

# Types a value literal can have; everything else only comes from a variable.
_LITERAL_TYPES = {"Text", "Number", "Bool", "None", "TextList"}


def _lit(s: str) -> str:
    """A Lark string literal (JSON quoting is valid Lark quoting for these texts)."""
    return json.dumps(s)


def _alts(items: Iterable[str]) -> str:
    return " | ".join(items)


# --------------------------------------------------------------------------- whole program


def program_grammar(registry: Any) -> str:
    """A plain-Lark grammar of programs whose modules and argument names are the registry's.

    Values are generic (variables, strings, numbers, True/False/None, lists): a server-side
    grammar can't know types, so the planner still checks what comes back.
    """
    tools = sorted(registry, key=lambda t: t.name)
    lines = [
        "// visprog programs restricted to the registered modules (generated).",
        "start: (step _NL)* step _NL?",
        "step: TARGET \"=\" call",
        "call: " + _alts(f"m_{i}" for i in range(len(tools))),
    ]
    for i, t in enumerate(tools):
        args = [(f"{_lit(p.name + '=')} value", p.required) for p in t.params]
        lines.append(f"m_{i}: {_lit(t.name + '(')} {join_args(args, '_SEP')} \")\"")
    lines += [
        "?value: TARGET | STRING | NUMBER | \"True\" | \"False\" | \"None\" | list",
        "list: \"[\" [value (_SEP value)*] \"]\"",
        "_SEP: /, ?/",
        "TARGET: /[A-Za-z_][A-Za-z0-9_]*/",
        "STRING: /'[^'\\\\\\n]*'/ | /\"[^\"\\\\\\n]*\"/",
        "NUMBER: /-?[0-9]+(\\.[0-9]+)?/",
        "_NL: /\\n/",
    ]
    return "\n".join(lines) + "\n"


def join_args(args: list[tuple[str, bool]], sep: str) -> str:
    """Arguments in declared order, optional ones may be left out, separators kept right.

    Args:
        args: (rule text of `name=value`, required?) per argument.
        sep: the separator's rule or terminal name.
    """
    first_required = next((k for k, (_, req) in enumerate(args) if req), None)
    out: list[str] = []
    for k, (a, req) in enumerate(args):
        if first_required is None or k < first_required:
            # Before the first required argument (or none is): each optional one brings its
            # own separator after it (a trailing comma is valid in the language).
            out.append(f"({a} {sep})?")
        elif k == first_required:
            out.append(a)
        else:
            out.append(f"{sep} {a}" if req else f"({sep} {a})?")
    return " ".join(out)


# --------------------------------------------------------------------------- one step


class StepGrammar:
    """Builds the llguidance grammar of the next step, given the variables defined so far.

    Args:
        registry: the tools a step may call.
        max_string: longest string literal (characters).
        max_list: most items in a list literal.
        max_name: longest target name.
    """

    def __init__(self, registry: Any, *, max_string: int = 60, max_list: int = 6,
                 max_name: int = 12):
        self.tools = sorted(registry, key=lambda t: t.name)
        self.max_string = max_string
        self.max_list = max_list
        self.max_name = max_name

    def text(self, env: Mapping[str, frozenset[str]], *, final: bool = False,
             ends: Iterable[str] = ()) -> str:
        """The grammar of one line `TARGET=Module(arg=value, ...)\\n`.

        Args:
            env: defined variable -> its possible types.
            final: only a `Result` step (or a module of `ends`) is allowed (the program or
                round must end now); when no registered tool is one, any step is.
            ends: modules a round may end with (agent mode: Look).
        """
        rules: list[str] = []
        calls: list[str] = []
        names = sorted(env)
        tools = self.tools
        if final:
            ends = set(ends)
            only = [t for t in tools if t.result or t.name in ends]
            tools = only or tools
        for i, t in enumerate(tools):
            parts: list[tuple[str, bool]] = []
            own: list[str] = []  # this call's value rules, kept only if it can be called
            possible = True
            for j, p in enumerate(t.params):
                value = self._value_rule(f"v_{i}_{j}", p, env, names, own,
                                         variables_only=final and bool(names))
                if value is None:
                    if p.required:
                        possible = False
                        break
                    continue
                parts.append((f"{_lit(p.name + '=')} {value}", p.required))
            if possible:
                rules += own
                rules.append(f"c_{i}: {_lit(t.name + '(')} {join_args(parts, 'SEP')} \")\"")
                calls.append(f"c_{i}")
        if not calls:  # nothing can be called with what is defined: e.g. no inputs at all
            raise ValueError("no registered module can be called with the defined variables "
                             f"{names}; bind an input (e.g. IMAGE) first")
        s = self.max_string
        head = [
            "start: TARGET \"=\" call \"\\n\"",
            "call: " + _alts(calls),
            f"TARGET: /[A-Z][A-Z0-9_]{{0,{self.max_name - 1}}}/",
            # No backslashes (no escapes to get wrong) and no control characters.
            f"STR: /'[^'\\\\\\x00-\\x1f]{{0,{s}}}'/",
            "NUM: /-?[0-9]{1,5}(\\.[0-9]{1,3})?/",
            "SEP: \",\" \" \"?",
        ]
        return "\n".join(head + rules) + "\n"

    def _value_rule(self, rule: str, p: Any, env: Mapping[str, frozenset[str]],
                    names: list[str], rules: list[str], *, variables_only: bool = False,
                    ) -> str | None:
        """Adds the rule for one argument's values; None when no value can fit."""
        types = frozenset(p.types)
        alts = [_lit(n) for n in names if fits(env[n], types)]
        if variables_only and alts:
            pass  # the final Result reads a variable: short, and what a program means
        elif p.refs is not None:
            alts.append(self._expr_rule(rule, env, names, rules))
        else:
            any_type = "Any" in types
            if any_type or "Text" in types:
                alts.append("STR")
            if any_type or "Number" in types:
                alts.append("NUM")
            if any_type or "Bool" in types:
                alts += ['"True"', '"False"']
            if "None" in types:
                alts.append('"None"')
            if any_type or "TextList" in types:
                alts.append(f"\"[\" (STR (SEP STR){{0,{self.max_list - 1}}})? \"]\"")
            if any_type:  # e.g. Region's box=[x0, y0, x1, y1]
                alts.append(f"\"[\" NUM (SEP NUM){{0,{max(3, self.max_list - 1)}}} \"]\"")
        if not alts:
            return None
        rules.append(f"{rule}: {_alts(alts)}")
        return rule

    def _expr_rule(self, rule: str, env: Mapping[str, frozenset[str]], names: list[str],
                   rules: list[str]) -> str:
        """A small, bounded expression of the Eval language over the defined variables Eval
        can read: comparisons of sums joined by and/or, optionally `x if c else y`. Each sum
        and comparison is over operands of one kind, numbers or texts, with the operators
        Eval's table (`language.expr.OPERATORS`) takes for two of that kind, so every part may
        work and the expression checks. Written in double quotes, with single-quoted strings
        inside."""
        literals = {"n": ["/[0-9]{1,4}/", '"True"', '"False"'],
                    "t": [f"/'[^'\"\\\\\\x00-\\x1f{{}}]{{0,{min(self.max_string, 16)}}}'/"]}
        compared = []
        for key, kind in (("n", NUMBERS), ("t", TEXT)):
            atoms = [f"\"{{{n}}}\"" for n in names if reads(env[n]) & kind] + literals[key]
            joins = [_lit(f" {op} ") for op in ("+", "-", "*")
                     if result_kinds(op, [kind, kind]) & kind]
            tests = [_lit(f" {op} ") for op in ("==", "!=", ">", "<", ">=", "<=")
                     if result_kinds(op, [kind, kind])]
            rules += [f"{rule}_{key}a: {_alts(atoms)}",
                      f"{rule}_{key}s: {rule}_{key}a (({_alts(joins)}) {rule}_{key}a)?"]
            compared.append(f"{rule}_{key}s (({_alts(tests)}) {rule}_{key}s)?")
        rules += [
            f"{rule}_c: {_alts(compared)}",
            f"{rule}_b: {rule}_c ((\" and \" | \" or \") {rule}_c)?",
            f"{rule}_e: {rule}_b (\" if \" {rule}_b \" else \" {rule}_b)?",
        ]
        return f"\"\\\"\" {rule}_e \"\\\"\""
