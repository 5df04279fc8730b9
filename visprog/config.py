"""Configuration: which backend, checkpoint and thresholds each model module uses.

The presets live in `visprog/presets.toml` as tables `[<preset>.<Module>]` (`default`: real
checkpoints; `tiny`: small random models built offline). A user's TOML file and explicit
overrides merge over the chosen preset key by key, so one module (or one key of it) can be
changed without rewriting the rest:

    # my.toml
    [Loc]
    backend = "owlv2"
    [Vqa.checkpoints]
    blip = "/models/blip-vqa-base"

`[models]` holds the model manager's settings (device, half, cpu_threads, memory_budget).
"""
from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from visprog.errors import ConfigError

PRESETS_FILE = "presets.toml"


def _read_presets() -> dict[str, Any]:
    try:
        text = resources.files(__package__).joinpath(PRESETS_FILE).read_text(encoding="utf-8")
    except (NotADirectoryError, TypeError):  # namespace package in an editable install
        text = Path(__file__).with_name(PRESETS_FILE).read_text(encoding="utf-8")
    return tomllib.loads(text)


def preset_names() -> list[str]:
    """The presets shipped with the package."""
    return sorted(_read_presets())


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` merged into a copy of `base`; nested tables merge key by key."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
    return out


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
        preset: a preset name from `visprog/presets.toml` ("default", "tiny").
        path: a TOML file with `[Module]` tables that override the preset's keys.
        overrides: `{"Loc": {"box_threshold": 0.3}}` or `{"Loc.box_threshold": 0.3}`.

    Returns:
        module name -> settings dict (plus "models" for the model manager).

    Raises:
        ConfigError: an unknown preset, an unreadable or malformed file, a bad override.
    """
    presets = _read_presets()
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; presets are: {', '.join(sorted(presets))}")
    cfg: dict[str, Any] = copy.deepcopy(presets[preset])
    if path is not None:
        p = Path(path).expanduser()
        try:
            user = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {p}") from e
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"could not read config file {p}: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from e
        _check_sections(user, str(p))
        cfg = merge(cfg, user)
    if overrides:
        nested = _nest_dotted(overrides)
        _check_sections(nested, "overrides")
        cfg = merge(cfg, nested)
    return cfg


def module_settings(module: str, settings: Mapping[str, Any],
                    backends: tuple[str, ...] | None = None, *,
                    pick_checkpoint: bool = True) -> dict[str, Any]:
    """A model module's effective settings: the default preset's section under `settings`.

    With `backends`, the chosen backend is checked, and (with `pick_checkpoint`) `checkpoint`
    defaults to that backend's entry of the `checkpoints` table.

    Raises:
        ConfigError: an unknown backend.
    """
    s = merge(load_config("default")[module], settings)
    if backends is not None:
        if s["backend"] not in backends:
            raise ConfigError(f"{module}: unknown backend {s['backend']!r}; "
                              f"choose one of {', '.join(backends)}")
        if pick_checkpoint:
            s["checkpoint"] = s.get("checkpoint") or s["checkpoints"][s["backend"]]
    return s
