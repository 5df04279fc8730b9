"""Configuration: which backend, checkpoint and thresholds each model module uses.

Each model module declares its presets in its own file (`presets` of its `ModelTool` class:
`default` with real checkpoints, `tiny` with small random models built offline);
`visprog/presets.toml` holds only the other tables (`[<preset>.models]`). A user's TOML file
and explicit overrides merge over the chosen preset key by key, so one module (or one key of
it) can be changed without rewriting the rest:

    # my.toml
    [Loc]
    backend = "owlv2"
    [Vqa.checkpoints]
    blip = "/models/blip-vqa-base"

`[models]` holds the model manager's settings (device, half, cpu_threads, memory_budget).
Tools that share a module's section (LocText reads `[Ocr]`, the depth crops `[Depth]`) get
a copy of it in the result, under their own name, with their own section's keys over it.
This is the layer that reads the tools' declarations (`visprog.tools.preset_settings`), as
the API assembles the registry.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from visprog.errors import ConfigError
from visprog.models.model_tool import merge_settings as merge
from visprog.values.textfiles import read_text

PRESETS_FILE = "presets.toml"


def _read_presets() -> dict[str, Any]:
    try:
        text = resources.files(__package__).joinpath(PRESETS_FILE).read_text(encoding="utf-8")
    except (NotADirectoryError, TypeError):  # namespace package in an editable install
        text = Path(__file__).with_name(PRESETS_FILE).read_text(encoding="utf-8")
    return tomllib.loads(text)


def preset_names() -> list[str]:
    """The presets: those of presets.toml and those the model modules declare."""
    from visprog.tools import preset_names as declared

    return sorted(set(_read_presets()) | declared())


def _preset(preset: str) -> dict[str, Any]:
    """The preset's tables: each model module's declared settings, then presets.toml's
    (a preset presets.toml lacks takes its `default` tables)."""
    from visprog.tools import preset_settings

    tables = _read_presets()
    return merge(preset_settings(preset), tables.get(preset, tables.get("default", {})))


def _check_sections(cfg: Mapping[str, Any], where: str) -> None:
    for name, section in cfg.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: [{name}] must be a table of settings, "
                              f"got {type(section).__name__} {section!r}")


def _nest_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{'Loc.box_threshold': 0.3} -> {'Loc': {'box_threshold': 0.3}}; tables pass through."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) == 1:
            if not isinstance(value, Mapping):
                raise ConfigError(f"override {key!r}: give a table of settings for a module, "
                                  f"or a dotted key like '{key}.checkpoint'")
            nested = merge(nested, {key: value})
            continue
        leaf: Any = value
        for part in reversed(parts[1:]):
            leaf = {part: leaf}
        nested = merge(nested, {parts[0]: leaf})
    return nested


def load_config(preset: str = "default", path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The settings of every module: the preset, then the user file, then the overrides.

    Args:
        preset: a preset name ("default", "tiny"; see `preset_names`).
        path: a TOML file with `[Module]` tables that override the preset's keys.
        overrides: `{"Loc": {"box_threshold": 0.3}}` or `{"Loc.box_threshold": 0.3}`.

    Returns:
        module name -> settings dict (plus "models" for the model manager).

    Raises:
        ConfigError: an unknown preset, an unreadable or malformed file, a bad override.
    """
    presets = preset_names()
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; presets are: {', '.join(presets)}")
    cfg = _preset(preset)
    if path is not None:
        p = Path(path).expanduser()
        try:
            user = tomllib.loads(read_text(p))  # a BOM, CRLF or lone-CR line ends are fine
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {p}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from e
        except ValueError as e:  # not UTF-8: names the line and the byte
            raise ConfigError(str(e)) from e
        except OSError as e:
            raise ConfigError(f"could not read config file {p}: {e}") from e
        _check_sections(user, str(p))
        cfg = merge(cfg, user)
    if overrides:
        nested = _nest_dotted(overrides)
        _check_sections(nested, "overrides")
        cfg = merge(cfg, nested)
    from visprog.tools import with_shared_sections

    # last, so a user's [Depth] reaches the depth crops (and a replica sees what clients see)
    return with_shared_sections(cfg)


# -- the built-in tools: this file is the one place in visprog/ that imports tools/ ----------

def tool_context(models: Any, llm: Any) -> Any:
    """What model tools share: the model manager and the planner's LLM client."""
    from visprog.tools import ToolContext

    return ToolContext(models, llm)


def model_module_classes() -> dict[str, Any]:
    """Every model module's class by name, plug-ins included (for `visprog config show`)."""
    from visprog.tools import model_modules

    return model_modules(plugins=True)


def default_tools(tools_config: Mapping[str, Any], ctx: Any) -> list[Any]:
    """Every built-in tool, the model ones built with their sections of `tools_config`."""
    from visprog.tools import builtin_tools

    return builtin_tools(tools_config, ctx)


def module_catalog() -> Any:
    """The built-in modules as hosting sees them (`visprog.hosting.client.ModuleCatalog`):
    this file is the only place in visprog/ that imports tools/."""
    from visprog.hosting.client import ModuleCatalog
    from visprog.tools import model_module_names, plain_tools

    return ModuleCatalog(frozenset(model_module_names()),
                         frozenset(t.name for t in plain_tools()), build_module)


def build_module(name: str, settings: Mapping[str, Any], models: Any) -> Tool:
    """One model module built with its settings and a model manager (a Ray replica's)."""
    from visprog.tools import ToolContext
    from visprog.tools import build_module as build

    return build(name, {name: dict(settings)}, ToolContext(models, None))
