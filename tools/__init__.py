"""The built-in modules of SPEC section 4, one small file each.

Installed as `visprog.tools`. Tool files import no heavy library at import time (torch,
transformers and diffusers load inside the call), so listing every tool's signature is cheap.

- Plain modules expose `TOOLS`, a list of `Tool`s.
- Model modules expose `build(settings, ctx) -> Tool`: `settings` is that module's section
  of the configuration (backend, checkpoint, thresholds), `ctx` a `ToolContext` with what tools
  share (the model manager, the planner's LLM client). A `build` may return a list of tools
  that share the section and its model (Ocr and LocText; Depth and the depth-aware crops);
  the first is the one named in MODEL_MODULES.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Mapping

from visprog.registry import Tool

PLAIN_MODULES = ["result", "eval_expr", "count", "crop", "colorpop", "bgblur", "emoji", "tag"]
MODEL_MODULES: dict[str, str] = {  # canonical tool name -> module file (filled by the model tools)
    "Loc": "loc", "Select": "select_objects", "Classify": "classify", "Vqa": "vqa",
    "FaceDet": "facedet", "Seg": "seg", "Replace": "replace", "List": "list_items",
    "Ocr": "ocr", "Depth": "depth",
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
        built = import_module(f"{__name__}.{mod}").build(dict(config.get(name, {})), ctx)
        tools.extend(built if isinstance(built, list) else [built])
    return tools


def named_tool(built: Tool | list[Tool], name: str) -> Tool:
    """The tool called `name` among what a model module's `build` returned."""
    for t in built if isinstance(built, list) else [built]:
        if t.name == name:
            return t
    raise KeyError(f"the module built no tool named {name!r}")
