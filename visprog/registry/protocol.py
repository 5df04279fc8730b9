"""The tool protocol and the registry.

A tool declares its name, typed arguments, output type, whether it may be cached, the
settings that change its results (part of the cache key) and how it shows in a trace. The
interpreter and checker know tools only through this declaration. Declarations are
validated once, when the `Tool` is made.

Names are found leniently (SPEC 1): case-insensitive, underscores ignored.
"""
from __future__ import annotations

import difflib
import inspect
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Iterator, Mapping

from visprog.errors import ToolDeclarationError, UnknownToolError, VisProgWarning
from visprog.values.types import parse_types, type_str

REQUIRED = inspect.Parameter.empty
ENTRY_POINT_GROUP = "visprog.tools"


def normalize_name(name: str) -> str:
    """The lookup key of SPEC 1: `CROP_RIGHTOF`, `CropRightOf` and `croprightof` are one."""
    return name.replace("_", "").lower()


def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The name in `names` a typo most likely meant, for 'did you mean' hints, or None.
    Names compare as `normalize_name` does. A near-exact match (a letter or two off) wins;
    otherwise, among the close ones, one that is the start of what was typed (or starts with
    it) comes first: `Locate` means `Loc` more likely than `LocText`, though it shares more
    letters with the latter, while `LocTxt` means `LocText`."""
    by_key: dict[str, str] = {}
    for n in names:
        by_key.setdefault(normalize_name(n), n)
    typed = normalize_name(name)
    close = difflib.get_close_matches(typed, list(by_key), n=5, cutoff=0.6)
    if not close:
        return None
    if difflib.SequenceMatcher(None, typed, close[0]).ratio() >= 0.85:
        return by_key[close[0]]
    prefix = [k for k in close if typed.startswith(k) or k.startswith(typed)]
    return by_key[prefix[0] if prefix else close[0]]


@dataclass(frozen=True)
class Param:
    """One declared argument.

    `refs`, when set, is a function that lists the variable names a text argument refers to
    (Eval's `{VAR}`); the engine checks those names exist and passes their values to the
    tool as `variables=`. `expr_types`, when set, types such a text before it runs: given the
    text and its variables' possible types, it returns an object with `.types` (its value's
    possible types) and `.problems` ((message, hint) of each part that can never run), which
    the checker reports at the argument.
    """

    name: str
    types: frozenset[str]
    default: Any = REQUIRED
    doc: str = ""
    refs: Callable[[str], list[str]] | None = None
    expr_types: Callable[[str, Mapping[str, frozenset[str]]], Any] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_str(self) -> str:
        return type_str(self.types)


@dataclass(frozen=True, eq=False)
class Tool:
    """A module the language can call.

    Attributes:
        name: canonical CamelCase name, e.g. "CropRightOf".
        params: declared arguments, in order.
        returns: the output's possible types.
        fn: called with keyword arguments named as `params` (plus `variables=` when a
            param has `refs`).
        doc: one line for users and for the planner's prompt.
        cacheable: False for sampling modules whose results must not be reused.
        version: bump when the implementation's results change; part of the cache key.
        settings: everything else that changes results (checkpoint, thresholds); part of
            the cache key. Must be JSON-serialisable.
        batch_fn: optional list entry point: takes a list of keyword dicts and returns a
            list of outputs in the same order.
        draw_on: in a trace, Objects inputs/outputs are drawn over this image argument.
        result: a step of this tool marks the program's result (Result): the last such
            step's value is the program's value.
        hostable: whether a deployment may serve it elsewhere (False for tools that use
            what lives with the caller, such as the planner's LLM client).
        tasks: the planning tasks ("gqa", "nlvr"...) whose prompts describe it; None (a
            user's tool, or one every program uses such as Result): every task's.
    """

    name: str
    params: tuple[Param, ...]
    returns: frozenset[str]
    fn: Callable[..., Any]
    doc: str = ""
    cacheable: bool = True
    version: str = "1"
    settings: Mapping[str, Any] = field(default_factory=dict)
    batch_fn: Callable[[list[dict[str, Any]]], list[Any]] | None = None
    draw_on: str | None = "image"
    result: bool = False
    hostable: bool = True
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ToolDeclarationError(f"tool name {self.name!r} is not an identifier")
        seen = set()
        for p in self.params:
            key = p.name.lower()
            if not p.name.isidentifier() or key in seen:
                raise ToolDeclarationError(f"tool {self.name}: bad or repeated argument {p.name!r}")
            seen.add(key)
            parse_types(p.types)
        parse_types(self.returns)
        if not callable(self.fn):
            raise ToolDeclarationError(f"tool {self.name}: fn is not callable")
        if self.tasks is not None:
            if isinstance(self.tasks, str) or not all(isinstance(t, str) for t in self.tasks):
                raise ToolDeclarationError(f"tool {self.name}: tasks must be task names, "
                                           f"got {self.tasks!r}")
            object.__setattr__(self, "tasks", tuple(self.tasks))
        self._check_signature()
        # looked up on every step: built once
        object.__setattr__(self, "_by_key", {p.name.lower(): p for p in self.params})
        object.__setattr__(self, "ref_params", tuple(p for p in self.params if p.refs))

    def _check_signature(self) -> None:
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return  # builtins and some callables can't be inspected
        ps = sig.parameters
        if any(p.kind is p.VAR_KEYWORD for p in ps.values()):
            return
        wanted = {p.name for p in self.params}
        if any(p.refs for p in self.params):
            wanted.add("variables")
        missing = sorted(wanted - set(ps))
        if missing:
            raise ToolDeclarationError(
                f"tool {self.name}: declared arguments {missing} are not parameters of "
                f"{getattr(self.fn, '__name__', self.fn)}{sig}")

    def param(self, name: str) -> Param | None:
        """The declared argument of that name, matched case-insensitively."""
        return self._by_key.get(name.lower())

    def __call__(self, **kwargs: Any) -> Any:
        return self.fn(**kwargs)

    def signature(self) -> str:
        """E.g. `Loc(image: Image, object: Text) -> Objects`, for prompts and help."""
        args = ", ".join(f"{p.name}: {p.type_str}" + ("" if p.required else f" = {p.default!r}")
                         for p in self.params)
        return f"{self.name}({args}) -> {'|'.join(sorted(self.returns))}"


def tool(name: str, *, params: Mapping[str, str], returns: str, doc: str | None = None,
         cacheable: bool = True, version: str = "1", settings: Mapping[str, Any] | None = None,
         draw_on: str | None = "image", result: bool = False,
         refs: Mapping[str, Callable[[str], list[str]]] | None = None,
         expr_types: Mapping[str, Callable[..., Any]] | None = None,
         tasks: Iterable[str] | None = None) -> Callable[[Callable[..., Any]], Tool]:
    """Declare a function as a tool. Defaults come from the function's own signature.

    Example:
        >>> @tool("Count", params={"box": "Objects"}, returns="Number")
        ... def count(box):
        ...     return len(box)
    """

    def wrap(fn: Callable[..., Any]) -> Tool:
        sig = inspect.signature(fn)
        ps = []
        for pname, ptype in params.items():
            default = sig.parameters[pname].default if pname in sig.parameters else REQUIRED
            ps.append(Param(pname, parse_types(ptype), default, refs=(refs or {}).get(pname),
                            expr_types=(expr_types or {}).get(pname)))
        text = doc if doc is not None else (inspect.getdoc(fn) or "").split("\n")[0]
        return Tool(name=name, params=tuple(ps), returns=parse_types(returns), fn=fn, doc=text,
                    cacheable=cacheable, version=version, settings=dict(settings or {}),
                    draw_on=draw_on, result=result,
                    tasks=None if tasks is None else tuple(tasks))

    return wrap


class Registry:
    """Tools by lenient name. Later registrations must say `replace=True` to override."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, t: Tool, *, replace: bool = False) -> Tool:
        if not isinstance(t, Tool):
            raise ToolDeclarationError(f"can only register Tool objects, got {type(t).__name__}")
        key = normalize_name(t.name)
        if key in self._tools and not replace:
            raise ToolDeclarationError(
                f"a tool named {self._tools[key].name!r} is already registered; pass replace=True")
        self._tools[key] = t
        return t

    def find(self, name: str) -> Tool | None:
        return self._tools.get(normalize_name(name))

    def get(self, name: str) -> Tool:
        t = self.find(name)
        if t is None:
            raise UnknownToolError(name, self.suggest(name))
        return t

    def suggest(self, name: str) -> str | None:
        """The nearest registered name, for 'did you mean' hints (never substituted)."""
        near = closest_name(name, [t.name for t in self._tools.values()])
        return near

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return [t.name for t in self._tools.values()]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, *,
                          config: Mapping[str, Any] | None = None, ctx: Any = None) -> list[str]:
        """Register tools that installed packages advertise under the entry-point group
        (`read_plugins`, then `add_plugins`)."""
        return self.add_plugins(read_plugins(group), config=config, ctx=ctx)

    def add_plugins(self, plugins: Iterable["Plugin"], *,
                    config: Mapping[str, Any] | None = None, ctx: Any = None) -> list[str]:
        """Register the tools of plug-ins already read (`read_plugins`).

        A plug-in may name a `Tool`, a model module's class (anything with a `name` and
        `build(settings, ctx)`, e.g. a `visprog.models.ModelTool` subclass: built with its
        section of `config` and `ctx`), a list of these, or a function `(config) -> Tool |
        list[Tool]`. A broken plug-in is skipped with a warning, never taking the engine down.
        """
        added = []
        for plugin in plugins:
            try:
                if plugin.error is not None:
                    raise plugin.error
                for t in _plugin_tools(plugin.obj, config or {}, ctx):
                    self.register(t, replace=True)
                    added.append(t.name)
            except Exception as e:  # a plugin must not break the engine
                warnings.warn(f"skipping tool plugin {plugin.name!r} ({plugin.value}): {e}",
                              VisProgWarning, stacklevel=2)
        return added


@dataclass(frozen=True)
class Plugin:
    """One entry point of the `visprog.tools` group, loaded: what it names (`obj`), or the
    error loading it raised."""

    name: str
    value: str
    obj: Any = None
    error: BaseException | None = None


def read_plugins(group: str = ENTRY_POINT_GROUP) -> list[Plugin]:
    """Every entry point of `group`, loaded once (a broken one keeps its error, for the
    warning `Registry.add_plugins` gives)."""
    found = []
    for ep in entry_points(group=group):
        try:
            found.append(Plugin(ep.name, ep.value, ep.load()))
        except Exception as e:  # reported when its tools are registered
            found.append(Plugin(ep.name, ep.value, error=e))
    return found


def _is_builder(obj: Any) -> bool:
    return isinstance(obj, type) and isinstance(getattr(obj, "name", None), str) \
        and callable(getattr(obj, "build", None))


def _plugin_tools(obj: Any, config: Mapping[str, Any], ctx: Any) -> list[Tool]:
    if isinstance(obj, Tool):
        return [obj]
    if _is_builder(obj):
        return [obj.build(dict(config.get(obj.name, {})), ctx)]
    if callable(obj):
        obj = obj(config)
        return [obj] if isinstance(obj, Tool) else list(obj)
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _plugin_tools(item, config, ctx)]
    return [obj]  # register() says what is wrong with it
