"""The built-in modules of SPEC section 4, one small file each.

Installed as `visprog.tools`. Every file of this package that exposes `TOOLS` is a module
file, found by itself (no list to edit): `TOOLS` holds plain `Tool`s (made with `@tool`) and
model modules (classes on `visprog.models.ModelTool`, built with their section of the
configuration and a `ToolContext`). A model module's settings and presets live in its class,
so adding a module is adding one file. A file may give several model tools that share one
section and its model (Ocr and LocText read `[Ocr]`; Depth and the depth-aware crops read
`[Depth]`): the others name it as their `section` (see `with_shared_sections`). Tool files
import no heavy library at import time (torch, transformers and diffusers load inside the
call), so listing every tool is cheap.

Packages add modules the same way through the `visprog.tools` entry-point group; a model
module named there (a ModelTool class) gets its presets into `load_config` too.
"""
from __future__ import annotations

import pkgutil
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Mapping

from visprog.errors import ConfigError, VisProgWarning
from visprog.models import ModelTool, add_tiny_source, is_model_tool, merge_settings
from visprog.registry import ENTRY_POINT_GROUP, Tool


@dataclass
class ToolContext:
    """What model tools share. `models`: the model manager (visprog.models.ModelManager);
    `llm`: the planner's LLM client (an object with `chat(messages, **sampling)` returning a
    reply with `.text`), or None when none is configured."""

    models: Any = None
    llm: Any = None


@cache
def _tool_files() -> dict[str, ModuleType]:
    """File name -> imported module, for every file of this package that exposes TOOLS."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "TOOLS"):
            found[info.name] = mod
    return found


def _entries() -> list[tuple[str, Any]]:
    """(file, TOOLS entry) for every built-in, in file order."""
    return [(name, t) for name, mod in _tool_files().items() for t in mod.TOOLS]


def model_modules(plugins: bool = False) -> dict[str, type[ModelTool]]:
    """Tool name -> class of every built-in model module (and, with `plugins`, those that
    installed packages advertise as ModelTool classes)."""
    found = {t.name: t for _, t in _entries() if is_model_tool(t)}
    if plugins:
        for t in plugin_model_modules():
            found.setdefault(t.name, t)
    return found


def model_module_names(plugins: bool = False) -> list[str]:
    """The names of the model modules (those built from configuration, hostable)."""
    return list(model_modules(plugins))


def plain_tools() -> list[Tool]:
    """The built-in plain tools (no configuration, no model)."""
    return [t for _, t in _entries() if isinstance(t, Tool)]


def build_module(name: str, config: Mapping[str, Any] | None = None,
                 ctx: ToolContext | None = None) -> Tool:
    """One model module built with its section of `config` (a hosting replica does this).

    Raises:
        ConfigError: no model module of that name.
    """
    modules = model_modules(plugins=True)
    config = with_shared_sections(config or {})
    cls = modules.get(name) or next((c for n, c in modules.items() if n.lower() == name.lower()),
                                    None)
    if cls is None:
        raise ConfigError(f"no model module named {name!r}; model modules are "
                          f"{', '.join(sorted(modules))}")
    return cls.build(dict(config.get(cls.name, {})), ctx or ToolContext())


def builtin_tools(config: Mapping[str, Mapping[str, Any]] | None = None,
                  ctx: ToolContext | None = None) -> list[Tool]:
    """Every built-in tool, the model ones built with their section of `config`."""
    config = with_shared_sections(config or {})
    ctx = ctx or ToolContext()
    return [t.build(dict(config.get(t.name, {})), ctx) if is_model_tool(t) else t
            for _, t in _entries()]


def plugin_model_modules() -> list[type[ModelTool]]:
    """ModelTool classes that installed packages advertise under the entry-point group
    (a broken plugin is skipped here; the registry warns about it when loading tools)."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception:  # reported by Registry.load_entry_points
            continue
        for t in obj if isinstance(obj, (list, tuple)) else [obj]:
            if is_model_tool(t):
                found.append(t)
    return found


def preset_settings(preset: str) -> dict[str, dict[str, Any]]:
    """Module name -> its settings in `preset`, from each model module's declaration
    (built-ins and plugins); modules that don't declare the preset give their defaults.
    A tool that shares another's section has none of its own here (`with_shared_sections`)."""
    out: dict[str, dict[str, Any]] = {}
    shared = shared_sections()
    for name, cls in model_modules(plugins=True).items():
        if name not in shared:
            out[name] = cls.preset(preset) or cls.preset("default")
    return out


def shared_sections() -> dict[str, str]:
    """Tool name -> the section it shares, for the model tools that read another module's
    section (`ModelTool.section`): {"LocText": "Ocr", "CropBehind": "Depth", ...}."""
    return {name: cls.section for name, cls in model_modules(plugins=True).items()
            if cls.section not in (None, name)}


def with_shared_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` where each tool that shares a section gets that section, with the keys of
    its own section (when the config has one) over it. So `[Depth] checkpoint = ...` sets
    the depth crops' model too, `[CropBehind] margin = 0.1` only CropBehind's, and hosting
    keys in `[Depth]` host each of its tools. Applying it twice changes nothing."""
    out = dict(config)
    for name, owner in shared_sections().items():
        if isinstance(out.get(owner), Mapping):
            own = out.get(name)
            out[name] = merge_settings(out[owner], own if isinstance(own, Mapping) else {})
    return out


def preset_names() -> set[str]:
    """Every preset some model module declares."""
    return {p for cls in model_modules(plugins=True).values() for p in cls.presets}


def _import_model_tools() -> None:
    """Import every tool file, so their tiny checkpoints are registered."""
    try:
        _tool_files()
    except ImportError as e:  # a file whose optional dependency is missing
        warnings.warn(f"a tool file could not be imported: {e}", VisProgWarning, stacklevel=2)


add_tiny_source(_import_model_tools)


def __getattr__(name: str) -> Any:
    # The file lists of the 0.1 layout, kept for one release: model tool name -> file, and
    # plain files.
    if name == "MODEL_MODULES":
        return {t.name: f for f, t in _entries() if is_model_tool(t)}
    if name == "PLAIN_MODULES":
        return [f for f, mod in _tool_files().items()
                if not any(is_model_tool(t) for t in mod.TOOLS)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
