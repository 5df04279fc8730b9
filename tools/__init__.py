"""The built-in modules of SPEC section 4, one small file each.

Installed as `visprog.tools`. Tool files import no heavy library at import time (torch,
transformers and diffusers load inside the call), so listing every tool's signature is cheap.

- Plain modules expose `TOOLS`, a list of `Tool`s.
- Model modules expose `build(settings, ctx) -> Tool`: `settings` is that module's section
  of the configuration (backend, checkpoint, thresholds), `ctx` a `ToolContext` with what tools
  share (the model manager, the planner's LLM client).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Mapping

from visprog.models import add_tiny_source
from visprog.registry import Tool

PLAIN_MODULES = ["result", "eval_expr", "count", "crop", "colorpop", "bgblur", "emoji", "tag"]
MODEL_MODULES: dict[str, str] = {  # canonical tool name -> module file (filled by the model tools)
    "Loc": "loc", "Select": "select_objects", "Classify": "classify", "Vqa": "vqa",
    "FaceDet": "facedet", "Seg": "seg", "Replace": "replace", "List": "list_items",
}


@dataclass
class ToolContext:
    """What model tools share. `models`: the model manager (tools/models.py); `llm`: the
    planner's LLM client (an object with `chat(messages, **sampling)` returning a reply with
    `.text`), or None when none is configured."""

    models: Any = None
    llm: Any = None


def builtin_tools(config: Mapping[str, Mapping[str, Any]] | None = None,
                  ctx: ToolContext | None = None) -> list[Tool]:
    """Every built-in tool, the model ones built with their section of `config`."""
    tools: list[Tool] = []
    for mod in PLAIN_MODULES:
        tools.extend(import_module(f"{__name__}.{mod}").TOOLS)
    config = config or {}
    ctx = ctx or ToolContext()
    for name, mod in MODEL_MODULES.items():
        tools.append(import_module(f"{__name__}.{mod}").build(dict(config.get(name, {})), ctx))
    return tools


def _import_model_tools() -> None:
    """Import every model tool file, so their tiny builders are registered."""
    for mod in MODEL_MODULES.values():
        try:
            import_module(f"{__name__}.{mod}")
        except ImportError:  # a module whose optional dependency is missing
            continue


add_tiny_source(_import_model_tools)
