"""The built-in modules of SPEC section 4, one small file each.

Installed as `visprog.tools`. Every file of this package that exposes `TOOLS` is a module
file, found by itself (no list to edit): `TOOLS` holds plain `Tool`s (made with `@tool`) and
model modules (classes on `visprog.models.ModelTool`, built with their section of the
configuration and a `visprog.models.ToolContext`). A model module's settings, presets and
prompts live in its class, so adding a module is adding one file. A file may give several
model tools that share one section and its model (Ocr and LocText read `[Ocr]`; Depth and
the depth-aware crops read `[Depth]`): the others name it as their `section`. Tool files
import no heavy library at import time (torch, transformers and diffusers load inside the
call), so listing every tool is cheap.

This package only finds its files. `visprog.config` assembles what they declare (presets,
shared sections, the plug-ins of the `visprog.tools` entry-point group, building).
"""
from __future__ import annotations

import pkgutil
import warnings
from functools import cache
from importlib import import_module
from types import ModuleType

from visprog.errors import VisProgWarning
from visprog.models import add_tiny_source


@cache
def tool_files() -> dict[str, ModuleType]:
    """File name -> imported module, for every file of this package that exposes TOOLS."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "TOOLS"):
            found[info.name] = mod
    return found


def _import_model_tools() -> None:
    """Import every tool file, so their tiny checkpoints are registered."""
    try:
        tool_files()
    except ImportError as e:  # a file whose optional dependency is missing
        warnings.warn(f"a tool file could not be imported: {e}", VisProgWarning, stacklevel=2)


add_tiny_source(_import_model_tools)
