"""Eval: a small safe expression over earlier results (SPEC section 3).

The language and its limits live in `visprog.language.expr`; this file only declares the tool.
The checker types `expr` from its variables' types (`expr_types`), the engine checks the
`{VAR}` names of `expr` exist before the run (via `refs`) and passes their values as
`variables=`.
"""
from __future__ import annotations

from typing import Any, Mapping

from visprog.language.expr import evaluate, expr_types, referenced_names
from visprog.registry import tool


@tool("Eval", params={"expr": "Text"}, returns="Bool|Number|Text",
      refs={"expr": referenced_names}, expr_types={"expr": expr_types}, draw_on=None,
      tasks=("gqa", "nlvr", "video"))
def eval_tool(expr: str, variables: Mapping[str, Any] | None = None):
    """Evaluates an expression over variables, e.g. "'yes' if {N} > 0 else 'no'"."""
    return evaluate(expr, variables or {})


TOOLS = [eval_tool]
