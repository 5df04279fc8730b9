"""The base of every model module: a module declares itself and writes its own steps; the
base does the rest and hands the engine a plain `visprog.registry.Tool`.

A model module is one class (in the manner of transformers' pipelines):

    class Vqa(ModelTool):
        name, params, returns, doc = "Vqa", {"image": "Image", "question": "Text"}, "Text", "..."
        presets = {"default": {"checkpoint": "Salesforce/blip-vqa-base"},
                   "tiny": {"checkpoint": "tiny:blip_vqa"}}
        tiny_checkpoints = {"blip_vqa": build_tiny_blip}

        def preprocess(self, call):      # one call's arguments -> an item (checked)
        def forward(self, items):        # the model on a group of items -> one output each
        def postprocess(self, item, out) # -> the plain value the step gives

What the base owns:
- settings: `presets["default"]` holds every setting with its default; another preset
  ("tiny", later "classic") lists only the keys it changes. `visprog.config.load_config`
  reads these declarations, so a module's settings live in its own file and nowhere else.
  `configure` turns the merged settings into the ones that change results (the cache key);
  it returns them and changes nothing. Settings that change how it runs, not what it gives
  (threads, offloading), are read from `all_settings`.
- backends: a module that can do its work several ways (Vqa: a chat VLM, a server, BLIP,
  ViLT) declares `backends`, backend name -> a small `Backend` class; the `backend` setting
  picks one, which takes the module's settings (its own are the cache key) and runs it.
- the tiny checkpoints (`tiny:<name>`), registered when the class is defined.
- lazy loading through the model manager (`self.model(kind, checkpoint, loader)`), device
  and dtype placement of the inputs (`self.model_inputs`), and `torch.inference_mode`.
- batching: every call is preprocessed (so bad input fails before any model runs), items
  with the same `batch_key` go to `forward` together, and the single-call entry point is
  a batch of one. A call that needs no model returns `Done(value)` from `preprocess`.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable, Iterator, Mapping

from visprog.errors import SettingsError, ToolDeclarationError
from visprog.models.checkpoints import register_tiny
from visprog.models.dtypes import check_dtype_setting
from visprog.models.manager import Loader, manager_of, model_dtype, to_model_inputs
from visprog.registry import REQUIRED, Param, Tool, parse_types
from visprog.values.text import plural
from visprog.values.types import describe, fits, type_of


def merge_settings(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` merged into a copy of `base`; nested tables merge key by key."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
    return out


def pick_checkpoint(settings: Mapping[str, Any]) -> str:
    """`checkpoint` when set, else the chosen backend's entry of the `checkpoints` table."""
    return settings.get("checkpoint") or settings["checkpoints"][settings["backend"]]


def hf_loader(model_class: str, processor_class: str = "AutoProcessor") -> Loader:
    """A model-manager loader for a transformers model and its processor, by class name:
    `(path, device, dtype) -> (model, processor)`."""

    def load(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
        import transformers

        processor = getattr(transformers, processor_class).from_pretrained(path)
        model = getattr(transformers, model_class).from_pretrained(path, dtype=dtype)
        return model.to(device), processor

    load.__name__ = f"load_{model_class}"
    return load


def model_inputs(inputs: Any, model: Any) -> dict[str, Any]:
    """A processor's outputs on the model's device, floating tensors in the model's dtype."""
    return to_model_inputs(inputs, model.device, model_dtype(model))


@dataclass
class ToolContext:
    """What model tools share. `models`: the model manager (`ModelManager`); `llm`: the
    planner's LLM client (an object with `chat(messages, **sampling)` returning a reply with
    `.text`), or None when none is configured."""

    models: Any = None
    llm: Any = None


@dataclass(frozen=True)
class Done:
    """What `preprocess` returns for a call whose value is known without the model."""

    value: Any


class SettingsAtFirstUse(Mapping):
    """Settings that are known only once the module is first used: a backend that picks
    what it runs by looking for files (FaceDet's `auto`) looks when a step first needs its
    settings (the step's cache key) or its model, not when the module is built, so building
    every module (`visprog tools`, `check`, `config show`, `VisProg()`) reads no file and
    prints no notice. `decide()` gives the settings; `before` is what is known without it
    (what `config show` prints)."""

    def __init__(self, decide: Callable[[], Mapping[str, Any]], before: Mapping[str, Any]):
        self._decide = decide
        self.before = dict(before)
        self._settings: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def decided(self) -> bool:
        return self._settings is not None

    def _get(self) -> dict[str, Any]:
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = dict(self._decide())
        return self._settings

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._settings) if self.decided else f"<decided at first use: {self.before}>"


def settings_known(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as far as they are known without deciding anything (for showing them)."""
    if isinstance(settings, SettingsAtFirstUse) and not settings.decided:
        return dict(settings.before)
    return dict(settings)


class Backend:
    """One way a model module does its work, picked by name from the module's `backends`.

    Made once per built tool from the module's merged settings: `configure` keeps the ones
    that change this backend's results (they become the tool's settings, its cache key), and
    a subclass's `__init__` may also make what it needs to run (a client). It changes nothing
    outside itself. The module's steps ask it for what differs between its backends; each
    such method gets the tool, for its models and context (`tool.model(...)`, `tool.ctx`).
    A backend that can only decide what it is at first use gives `SettingsAtFirstUse`.
    """

    uses_torch: ClassVar[bool] = True  # run `forward` under torch.inference_mode

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = self.configure(dict(settings))

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        """The settings that change results, checked (a SettingsError when one is wrong)."""
        return s

    def forward(self, tool: "ModelTool", items: list[Any]) -> list[Any]:
        """The model on a group of the tool's items: one raw output per item, in order."""
        raise NotImplementedError(f"{type(self).__name__}: forward is not written")


class ModelTool:
    """The base of a model module; see the module docstring.

    Declaration (class attributes):
        name: the tool's canonical name ("Loc").
        params: argument name -> type string ("Image", "Text|None"), in order.
        defaults: argument name -> default, for optional arguments.
        returns: the output's type string.
        doc: one line for users and for the planner's prompt.
        version: bump when results change; part of the cache key.
        presets: preset name -> settings; "default" holds every setting, other presets
            only what they change.
        backends: backend name -> `Backend` class (or a function of the merged settings that
            returns a Backend: FaceDet's "auto"); `settings["backend"]` picks one, which gives
            the settings (`configure` is not called) and is `self.backend`.
        tiny_checkpoints: `tiny:<name>` -> builder (writes a small random model into a
            folder), or (builder, version).
        draw_on: in a trace, Objects are drawn over this image argument.
        uses_torch: run `forward` under `torch.inference_mode` (False for OpenCV, an LLM).
        hostable: False for a module that uses what lives with the caller (the planner's
            LLM client), so it can't be served elsewhere.
        section: the configuration section of another module of the same file whose
            settings this one shares (LocText reads `[Ocr]`, the depth crops `[Depth]`);
            None: its own `[<name>]`. A tool that shares a section takes that module's
            presets (subclass it); its own section, when a user writes one, overrides keys.
        tasks: the planning tasks whose prompts describe it ("gqa", "knowtag"...); None:
            every task's.
    """

    name: ClassVar[str]
    params: ClassVar[Mapping[str, str]]
    returns: ClassVar[str]
    doc: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    version: ClassVar[str] = "1"
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {"default": {}}
    backends: ClassVar[Mapping[str, Callable[[dict[str, Any]], "Backend"]]] = {}
    tiny_checkpoints: ClassVar[Mapping[str, Any]] = {}
    draw_on: ClassVar[str | None] = "image"
    uses_torch: ClassVar[bool] = True
    hostable: ClassVar[bool] = True
    section: ClassVar[str | None] = None
    tasks: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        where = f"model tool {cls.__module__}.{cls.__qualname__}"
        for attr in ("name", "params", "returns"):
            if not hasattr(cls, attr):
                raise ToolDeclarationError(f"{where}: declare `{attr}`")
        if "default" not in cls.presets:
            raise ToolDeclarationError(f"{where}: presets need a 'default' table")
        backends = cls.backends
        if not isinstance(backends, Mapping) or not all(callable(b) for b in backends.values()):
            raise ToolDeclarationError(f"{where}: `backends` maps each backend's name to its "
                                       f"Backend class")
        unknown = sorted(set(cls.defaults) - set(cls.params))
        if unknown:
            raise ToolDeclarationError(f"{where}: defaults for undeclared arguments {unknown}")
        for tiny, builder in cls.tiny_checkpoints.items():
            builder, version = builder if isinstance(builder, tuple) else (builder, "1")
            register_tiny(tiny, builder, version=version)

    def __init__(self, settings: Mapping[str, Any] | None = None, ctx: Any = None):
        self.ctx = ctx
        s = merge_settings(self.presets["default"], settings or {})
        # every module's `dtype` ("auto", "bf16", "fp16", "fp32"; visprog.models.dtypes):
        # which type its models load in, like the device not part of the cache key
        self.dtype = check_dtype_setting(s.pop("dtype", None), f"{self.name}")
        self.all_settings = copy.deepcopy(s)
        self.backend: Backend | None = None
        if self.backends:
            if s.get("backend") not in self.backends:
                raise SettingsError(f"{self.name}: unknown backend {s.get('backend')!r}; "
                                    f"choose one of {', '.join(self.backends)}")
            self.backend = self.backends[s["backend"]](s)
            self.settings = self.backend.settings
        else:
            self.settings = self.configure(s)
        self._types = {p: _runtime_types(t, self.defaults.get(p, 0) is None)
                       for p, t in self.params.items()}

    @classmethod
    def preset(cls, preset: str) -> dict[str, Any] | None:
        """This module's settings in `preset` (the default's under the preset's own), or
        None when the module declares no such preset."""
        if preset not in cls.presets:
            return None
        return merge_settings(cls.presets["default"], cls.presets[preset])

    @classmethod
    def build(cls, settings: Mapping[str, Any] | None = None, ctx: Any = None) -> Tool:
        """The tool for this section of the configuration; loads nothing."""
        return cls(settings, ctx).as_tool()

    # -- what a module writes -----------------------------------------------------------------

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings that change results (they go into the cache key), checked; it changes
        nothing (a module with backends: its backend's `configure` instead)."""
        return settings

    @classmethod
    def describe_model(cls, settings: Mapping[str, Any]) -> str:
        """What these (configured) settings load, in a few words, for `visprog config
        show`: the checkpoint, or each backend's; a module that loads something else (a
        model file, an LLM) says so in its own class."""
        if settings.get("checkpoint"):
            return str(settings["checkpoint"])
        if settings.get("model") and settings.get("base_url"):  # a server's model answers
            return f"{settings['model']} at {settings['base_url']}"
        if isinstance(settings.get("checkpoints"), Mapping):
            return ", ".join(f"{k}={v}" for k, v in settings["checkpoints"].items())
        return "-"

    def cacheable(self) -> bool:
        """False for a module that samples (its results must not be reused)."""
        return True

    def preprocess(self, call: dict[str, Any]) -> Any:
        """One call's arguments -> what `forward` takes, or `Done(value)`. Raises on bad
        input, before any model runs."""
        return call

    def batch_key(self, item: Any) -> Hashable:
        """Items with equal keys go through `forward` together (e.g. images of one size)."""
        return None

    def forward(self, items: list[Any]) -> list[Any]:
        """The model on a group of items: one raw output per item, in order. A module with
        backends: its backend's `forward`."""
        if self.backend is not None:
            return self.backend.forward(self, items)
        raise NotImplementedError(f"{self.name}: forward is not written")

    def postprocess(self, item: Any, output: Any) -> Any:
        """One raw output -> the plain value the step gives."""
        return output

    # -- what the base gives ------------------------------------------------------------------

    def model(self, kind: str, checkpoint: str, loader: Loader, *, half: bool | None = None
              ) -> Any:
        """The model bundle, loaded on first use by the shared model manager, in the dtype
        this module's `dtype` setting gives on its device."""
        return manager_of(self.ctx).get(kind, checkpoint, loader, half=half, dtype=self.dtype)

    def load_plan(self) -> dict[str, str]:
        """Where and in what this module's models will load: {"device", "dtype"}, the dtype
        one name, or "name=dtype, ..." when its checkpoints differ; "-" for a module that
        loads no torch model. Loads, builds and downloads nothing (`ModelManager.dtype_for`).
        """
        if not self.uses_torch:
            return {"device": "cpu", "dtype": "-"}
        manager = manager_of(self.ctx)
        checkpoints = _checkpoints(self.settings)
        dtypes = {name: manager.dtype_for(ck, self.dtype) for name, ck in checkpoints.items()}
        if not dtypes:  # nothing loaded here (a module whose model is an endpoint)
            return {"device": "-", "dtype": "-"}
        if len(set(dtypes.values())) == 1:
            return {"device": manager.device, "dtype": next(iter(dtypes.values()))}
        return {"device": manager.device,
                "dtype": ", ".join(f"{name}={d}" for name, d in dtypes.items())}

    model_inputs = staticmethod(model_inputs)

    def run_batch(self, calls: list[dict[str, Any]]) -> list[Any]:
        """The batch entry point: one output per call, in order."""
        items = [self.preprocess(self._complete(c)) for c in calls]
        out: list[Any] = [it.value if isinstance(it, Done) else None for it in items]
        groups: dict[Hashable, list[int]] = {}
        for i, it in enumerate(items):
            if not isinstance(it, Done):
                groups.setdefault(self.batch_key(it), []).append(i)
        if groups:
            with self._inference():
                for idx in groups.values():
                    raw = self.forward([items[i] for i in idx])
                    if len(raw) != len(idx):
                        raise RuntimeError(f"{self.name}: forward gave "
                                           f"{plural(len(raw), 'output')} for "
                                           f"{plural(len(idx), 'item')}")
                    for i, r in zip(idx, raw):
                        out[i] = self.postprocess(items[i], r)
        return out

    def run(self, **kwargs: Any) -> Any:
        """The single-call entry point: a batch of one."""
        return self.run_batch([kwargs])[0]

    def as_tool(self) -> Tool:
        params = tuple(Param(p, parse_types(t), self.defaults.get(p, REQUIRED))
                       for p, t in self.params.items())
        return Tool(name=self.name, params=params, returns=parse_types(self.returns),
                    fn=self.run, doc=self.doc, cacheable=self.cacheable(), version=self.version,
                    settings=self.settings, batch_fn=self.run_batch, draw_on=self.draw_on,
                    hostable=self.hostable, tasks=self.tasks)

    def _complete(self, call: Mapping[str, Any]) -> dict[str, Any]:
        extra = sorted(set(call) - set(self.params))
        if extra:
            raise TypeError(f"{self.name}: unexpected arguments {extra}; it takes "
                            f"{', '.join(self.params)}")
        missing = [p for p in self.params if p not in call and p not in self.defaults]
        if missing:
            raise TypeError(f"{self.name}: missing arguments {missing}")
        call = {**self.defaults, **call}
        for p, declared in self._types.items():
            # a value of another declared type is refused here, by name, instead of being
            # turned into text or failing deep in a library; a value outside the vocabulary
            # (an array for an image) is left to the module, except where only text,
            # numbers or truth values are declared
            got = type_of(call[p])
            if got == "Any" and not declared <= _SCALARS:
                continue
            if got == "Any" or not fits({got}, declared):
                raise TypeError(f"{self.name}: {p} must be {describe(declared)}, got "
                                f"{type(call[p]).__name__}")
        return call

    def _inference(self) -> Any:
        if not (self.uses_torch if self.backend is None else self.backend.uses_torch):
            return contextlib.nullcontext()
        import torch

        return torch.inference_mode()


_SCALARS = frozenset({"Text", "Number", "Bool", "TextList", "None"})


def _checkpoints(settings: Mapping[str, Any]) -> dict[str, str]:
    """What a module's (configured) settings load: its `checkpoint`, or each entry of its
    `checkpoints` table."""
    if isinstance(settings.get("checkpoint"), str):
        return {"checkpoint": settings["checkpoint"]}
    table = settings.get("checkpoints")
    if isinstance(table, Mapping):
        return {str(k): v for k, v in table.items() if isinstance(v, str)}
    return {}


def _runtime_types(declared: str, default_none: bool) -> frozenset[str]:
    """What a call may pass for a parameter: its types, None when that is its default, and a
    single text where a list of texts is declared (a one-item list)."""
    types = set(parse_types(declared))
    if default_none:
        types.add("None")
    if "TextList" in types:
        types.add("Text")
    return frozenset(types)


def is_model_tool(obj: Any) -> bool:
    """Whether `obj` is a model module's class (a ModelTool subclass)."""
    return isinstance(obj, type) and issubclass(obj, ModelTool) and obj is not ModelTool

