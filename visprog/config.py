"""Configuration, and the one assembly of an engine from it.

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

`assemble` turns a preset and a configuration into everything a run needs (`Assembly`: the
resolved configuration, the model manager, the planner's LLM, the registry with hosted
modules swapped for their remote twins, the step cache) and can describe itself (`visprog
config show`). `VisProg`, `visprog config show`, a Ray Serve replica and a Ray worker of a
distributed evaluation all build through it. This is the one file of visprog/ that imports
tools/: `find_modules` reads its files, and the plug-ins (entry points), once per assembly.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Collection, Mapping

from visprog.errors import ConfigError
from visprog.models.model_tool import ModelTool, ToolContext, is_model_tool, settings_known
from visprog.models.model_tool import merge_settings as merge
from visprog.registry import Plugin, Registry, Tool, normalize_name, read_plugins
from visprog.values import (DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE,
                            VideoSettings)
from visprog.values.textfiles import read_text

PRESETS_FILE = "presets.toml"


def _read_presets() -> dict[str, Any]:
    try:
        text = resources.files(__package__).joinpath(PRESETS_FILE).read_text(encoding="utf-8")
    except (NotADirectoryError, TypeError):  # namespace package in an editable install
        text = Path(__file__).with_name(PRESETS_FILE).read_text(encoding="utf-8")
    return tomllib.loads(text)


def preset_names(modules: Modules | None = None) -> list[str]:
    """The presets: those of presets.toml and those the model modules declare (`modules`:
    the ones found already; default: tools/ and the plug-ins)."""
    modules = modules if modules is not None else find_modules()
    return sorted(set(_read_presets()) | modules.preset_names())


def _preset(preset: str, modules: Modules) -> dict[str, Any]:
    """The preset's tables: each model module's declared settings, then presets.toml's
    (a preset presets.toml lacks takes its `default` tables)."""
    tables = _read_presets()
    return merge(modules.preset_settings(preset), tables.get(preset, tables.get("default", {})))


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


def load_config(preset: str = "default", path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None, *,
                modules: Modules | None = None) -> dict[str, dict[str, Any]]:
    """The settings of every module: the preset, then the user file, then the overrides.

    Args:
        preset: a preset name ("default", "tiny"; see `preset_names`).
        path: a TOML file with `[Module]` tables that override the preset's keys.
        overrides: `{"Loc": {"box_threshold": 0.3}}` or `{"Loc.box_threshold": 0.3}`.
        modules: the modules whose presets count (`find_modules`; default: tools/ and the
            plug-ins).

    Returns:
        module name -> settings dict (plus "models" for the model manager).

    Raises:
        ConfigError: an unknown preset, an unreadable or malformed file, a bad override.
    """
    modules = modules if modules is not None else find_modules()
    presets = preset_names(modules)
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; presets are: {', '.join(presets)}")
    cfg = _preset(preset, modules)
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
    # last, so a user's [Depth] reaches the depth crops (and a replica sees what clients see)
    return modules.with_shared_sections(cfg)



# -- the modules: tools/'s files and the plug-ins ------------------------------------------

@dataclass(frozen=True, eq=False)
class Modules:
    """Every module an engine can have: the `TOOLS` entries of tools/'s files (file order)
    and the plug-ins of the `visprog.tools` entry-point group, read once (`find_modules`).

    Attributes:
        builtin: the built-in entries: plain `Tool`s and model module classes.
        plugins: the entry points, loaded (`visprog.registry.Plugin`).
    """

    builtin: tuple[Any, ...]
    plugins: tuple[Plugin, ...] = ()

    @cached_property
    def classes(self) -> dict[str, type[ModelTool]]:
        """Model module name -> class: the built-ins, then the plug-ins' (a plug-in does not
        take a built-in's name here; in the registry it replaces the built-in's tool)."""
        found = {t.name: t for t in self.builtin if is_model_tool(t)}
        for plugin in self.plugins:
            if plugin.error is None:
                objs = plugin.obj if isinstance(plugin.obj, (list, tuple)) else [plugin.obj]
                for t in objs:
                    if is_model_tool(t):
                        found.setdefault(t.name, t)
        return found

    @cached_property
    def plain(self) -> list[Tool]:
        """The built-in plain tools (no configuration, no model)."""
        return [t for t in self.builtin if isinstance(t, Tool)]

    def shared_sections(self) -> dict[str, str]:
        """Tool name -> the section it shares, for the model tools that read another
        module's section (`ModelTool.section`): {"LocText": "Ocr", "CropBehind": "Depth"...}."""
        return {name: cls.section for name, cls in self.classes.items()
                if cls.section not in (None, name)}

    def preset_names(self) -> set[str]:
        """Every preset some model module declares."""
        return {p for cls in self.classes.values() for p in cls.presets}

    def preset_settings(self, preset: str) -> dict[str, dict[str, Any]]:
        """Module name -> its settings in `preset`, from each model module's declaration;
        modules that don't declare the preset give their defaults. A tool that shares
        another's section has none of its own here (`with_shared_sections`)."""
        shared = self.shared_sections()
        return {name: cls.preset(preset) or cls.preset("default")
                for name, cls in self.classes.items() if name not in shared}

    def with_shared_sections(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """`config` where each tool that shares a section gets that section, with the keys of
        its own section (when the config has one) over it. So `[Depth] checkpoint = ...`
        sets the depth crops' model too, `[CropBehind] margin = 0.1` only CropBehind's, and
        hosting keys in `[Depth]` host each of its tools. Applying it twice changes nothing."""
        out = dict(config)
        for name, owner in self.shared_sections().items():
            if isinstance(out.get(owner), Mapping):
                own = out.get(name)
                out[name] = merge(out[owner], own if isinstance(own, Mapping) else {})
        return out

    def model_class(self, name: str) -> type[ModelTool]:
        """The model module of that name (matched leniently).

        Raises:
            ConfigError: no model module of that name.
        """
        cls = self.classes.get(name) or next(
            (c for n, c in self.classes.items() if normalize_name(n) == normalize_name(name)),
            None)
        if cls is None:
            raise ConfigError(f"no model module named {name!r}; model modules are "
                              f"{', '.join(sorted(self.classes))}")
        return cls

    def build(self, name: str, config: Mapping[str, Any] | None = None,
              ctx: ToolContext | None = None) -> Tool:
        """One model module built with its section of `config`; loads nothing.

        Raises:
            ConfigError: no model module of that name.
        """
        cls = self.model_class(name)
        config = self.with_shared_sections(config or {})
        return cls.build(dict(config.get(cls.name, {})), ctx or ToolContext())

    def tools(self, config: Mapping[str, Any] | None = None,
              ctx: ToolContext | None = None) -> list[Tool]:
        """The built-in tools (file order), the model ones built with their section of
        `config`."""
        config = self.with_shared_sections(config or {})
        ctx = ctx or ToolContext()
        return [t.build(dict(config.get(t.name, {})), ctx) if is_model_tool(t) else t
                for t in self.builtin]

    def catalog(self) -> Any:
        """The modules as hosting sees them (`visprog.hosting.client.ModuleCatalog`), so no
        layer below this one imports tools/."""
        from visprog.hosting.client import ModuleCatalog

        return ModuleCatalog(frozenset(self.classes), frozenset(t.name for t in self.plain),
                             assemble_replica)


def find_modules(plugins: bool = True) -> Modules:
    """The files of tools/ (imported once per process) and, with `plugins`, the installed
    packages' plug-ins (read now: once per assembly)."""
    from visprog.tools import tool_files

    builtin = tuple(t for mod in tool_files().values() for t in mod.TOOLS)
    return Modules(builtin, tuple(read_plugins()) if plugins else ())


def module_catalog() -> Any:
    """The built-in modules and the plug-ins as hosting sees them (see `Modules.catalog`)."""
    return find_modules().catalog()


# -- the assembly ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """How an assembly was made, in plain values: a Ray worker of a distributed evaluation
    assembles the same engine from it (`Recipe.assemble`). An LLM client passed in by hand
    does not travel: the worker makes its own from the configuration and the environment."""

    preset: str | None
    config: Mapping[str, Any]  # resolved: the preset, the user's file, the overrides
    device: str | None = None
    cache: bool = True
    cache_dir: str | None = None
    plugins: bool = True
    image_limits: Mapping[str, Any] = field(default_factory=dict)

    def assemble(self) -> Assembly:
        return _assemble(self, find_modules(self.plugins))


@dataclass
class Assembly:
    """Everything a run needs, built from a preset and a configuration (`assemble`).

    Attributes:
        preset: the preset name (None for a replica's, whose configuration came resolved).
        config: the resolved configuration (module name -> settings, and [models], [llm],
            [planner]...).
        models: the model manager (device, dtype, memory budget).
        llm: the planner's LLM client, or None; `llm_error` says why not, when one is
            configured but can't be made.
        registry: the tools; hosted modules are their remote twins.
        hosts: module name -> its `HostSpec`, for the hosted ones.
        cache: the step cache, or None.
        modules: the modules found (`Modules`).
        image_limits: `load_image`'s limits for input images (max_pixels, min_side,
            max_aspect).
        recipe: how to make it again elsewhere (`Recipe`).
        video_settings: how input videos are sampled and what they may be (the config's
            [video] table, `visprog.values.VideoSettings`).
    """

    preset: str | None
    config: dict[str, Any]
    models: Any
    llm: Any
    llm_error: Exception | None
    registry: Registry
    hosts: dict[str, Any]
    cache: Any
    modules: Modules
    image_limits: dict[str, Any]
    recipe: Recipe
    video_settings: Any = None

    def describe(self) -> dict[str, Any]:
        """What runs, as `visprog config show` prints it: every model module's backend,
        what it loads (`ModelTool.describe_model`), device, dtype and host, and its full
        settings as built (List's LLM included); the model manager's settings; the
        planner's LLM. Loads no model."""
        device = self.models.device
        rows = []
        for name, cls in sorted(self.modules.classes.items()):
            tool = self.registry.find(name)
            if tool is None:  # a replica's assembly builds only the module it serves
                continue
            s = settings_known(tool.settings)  # a backend decided at first use stays undecided
            # where and in what its models will load (a hosted twin: in its replica, which
            # `visprog config show` on the serving side describes)
            plan_of = getattr(getattr(tool.fn, "__self__", None), "load_plan", None)
            plan = plan_of() if callable(plan_of) else {"device": "-", "dtype": "-"}
            rows.append({"module": name, "backend": str(s.get("backend") or "-"),
                         "checkpoint": cls.describe_model(s),
                         "device": plan["device"], "dtype": plan["dtype"],
                         "host": self.hosts[name].host if name in self.hosts else "local",
                         "settings": s})
        describe_llm = getattr(self.llm, "describe", None)
        llm = describe_llm() if callable(describe_llm) else None
        return {"preset": self.preset, "models": {**dict(self.config.get("models", {})),
                                                  "device": device},
                "modules": rows, "llm": llm,
                "llm_error": str(self.llm_error) if self.llm_error is not None else None}


def assemble(preset: str = "default", config: str | os.PathLike | Mapping | None = None, *,
             device: str | None = None, llm: Any = None, cache: Any = True,
             cache_dir: str | os.PathLike | None = None, plugins: bool = True,
             image_limits: Mapping[str, Any] | None = None) -> Assembly:
    """Everything a run needs, from a preset and a configuration.

    Args:
        preset: "default", "tiny"... (see `preset_names`).
        config: a TOML file path, or a mapping of overrides, merged over the preset.
        device: "cpu", "cuda", "mps"... over the config's `[models] device`.
        llm: the planner's LLM client (also List's); None: from the config's `[llm]` table or
            the environment (a misconfiguration is kept in `llm_error`, said when planning).
        cache: True for the in-memory and on-disk step cache, False for none, or a cache.
        cache_dir: the on-disk cache's folder (default: the user cache dir).
        plugins: also the tools installed packages advertise (entry points).
        image_limits: `load_image`'s limits for input images (default: the library's).

    Raises:
        ConfigError: an unknown preset, a bad file, a bad setting or hosting key.
    """
    modules = find_modules(plugins)
    if isinstance(config, Mapping):
        resolved = load_config(preset, overrides=config, modules=modules)
    else:
        resolved = load_config(preset, config, modules=modules)
    limits = {"max_pixels": DEFAULT_MAX_PIXELS, "min_side": DEFAULT_MIN_SIDE,
              "max_aspect": DEFAULT_MAX_ASPECT, **dict(image_limits or {})}
    recipe = Recipe(preset, resolved, device, cache is not False and cache is not None,
                    os.fspath(cache_dir) if cache_dir else None, plugins, limits)
    return _assemble(recipe, modules, llm=llm, cache=cache)


def assemble_replica(config: Mapping[str, Any], module: str) -> Assembly:
    """A Ray Serve replica's assembly: `module` built from the resolved `config` as a
    client builds it, in this process (the hosting keys are for the clients), with the
    replica's own model manager; no LLM, no step cache."""
    recipe = Recipe(None, dict(config), cache=False)
    modules = find_modules()
    return _assemble(recipe, modules, llm=False, cache=False, hosted=False, only=(module,))


def _assemble(recipe: Recipe, modules: Modules, *, llm: Any = None, cache: Any = None,
              hosted: bool = True, only: Collection[str] | None = None) -> Assembly:
    """The assembly of a resolved configuration (`recipe.config`). `llm=False`: none;
    `hosted=False`: every module in this process; `only`: just these model modules."""
    from visprog.hosting.client import host_tools, split_config
    from visprog.models.memory import make_manager

    config = dict(recipe.config)
    models = make_manager(config.get("models", {}), device=recipe.device)
    llm_error = None
    if llm is None:
        llm, llm_error = llm_from_config(config, models)
    elif llm is False:
        llm = None
    # Hosting keys (host = "ray", ...) leave the module sections before the tools are
    # built, so cache keys don't depend on where a module runs; hosted tools call out.
    catalog = modules.catalog()
    tools_config, hosts = split_config(config, catalog.model_modules, catalog.plain_modules)
    ctx = ToolContext(models, llm)
    if only is not None:
        registry = Registry(modules.build(name, tools_config, ctx) for name in only)
    else:
        registry = Registry(modules.tools(tools_config, ctx))
        if recipe.plugins:
            registry.add_plugins(modules.plugins, config=tools_config, ctx=ctx)
    if hosted:
        for t in host_tools([t for t in registry if t.name in hosts], hosts):
            registry.register(t, replace=True)
    else:
        hosts = {}
    if cache is None:
        cache = recipe.cache
    try:
        video = VideoSettings.make(config.get("video"))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return Assembly(recipe.preset, config, models, llm, llm_error, registry, hosts,
                    make_cache(cache, recipe.cache_dir), modules, dict(recipe.image_limits),
                    recipe, video)


def make_cache(cache: Any, cache_dir: str | os.PathLike | None = None) -> Any:
    """The step cache: True for memory and disk (`cache_dir`, else the user cache dir),
    False or None for none, or the cache given."""
    from visprog.engine.cache import StepCache, default_cache_dir

    if cache is True:
        return StepCache(memory=True, disk_dir=Path(cache_dir) if cache_dir else default_cache_dir())
    if cache is False or cache is None:
        return None
    return cache


# -- the planner's LLM ----------------------------------------------------------------------

def vqa_vlm_checkpoint(config: Mapping[str, Any]) -> str | None:
    """The checkpoint of Vqa's local chat VLM, when its backend is one ("vlm"), else None."""
    from visprog.models import pick_checkpoint

    vqa = config.get("Vqa")
    if not isinstance(vqa, Mapping) or vqa.get("backend") != "vlm":
        return None
    try:
        return pick_checkpoint(vqa) or None
    except (KeyError, TypeError):
        return None


def llm_from_config(config: Mapping[str, Any], models: Any = None
                    ) -> tuple[Any, Exception | None]:
    """(the planner's client or None, the error that kept it from being made). From the
    config's `[llm]` table, else the environment. Vqa's local VLM plans too (one copy in the
    model manager for both roles) where `[llm] backend = "local"` names no model, and where
    no LLM is configured at all (no [llm] backend or model, none in the environment): that
    makes `visprog run` work with no configuration. `[llm] backend = "none"` turns planning
    off."""
    from visprog.errors import LLMError
    from visprog.planning.llm import (ENV_API_KEY, ENV_BACKEND, ENV_BASE_URL, ENV_LOCAL_MODEL,
                                      ENV_MODEL, make_llm)

    section = config.get("llm")
    cfg = dict(section) if isinstance(section, Mapping) else {}
    vlm = vqa_vlm_checkpoint(config)
    if vlm is not None and not os.environ.get(ENV_LOCAL_MODEL):
        backend = str(cfg.get("backend") or os.environ.get(ENV_BACKEND) or "").lower()
        configured = any(cfg.get(k) for k in ("backend", "model", "model_path", "base_url",
                                               "api_key")) or any(
            os.environ.get(k) for k in (ENV_BACKEND, ENV_MODEL, ENV_LOCAL_MODEL, ENV_API_KEY,
                                        ENV_BASE_URL))
        if (backend == "local" and not cfg.get("model_path")) or not configured:
            cfg = {**cfg, "backend": "local", "model_path": vlm}
    try:
        return make_llm(cfg or None, models=models), None
    except LLMError as e:
        return None, e
