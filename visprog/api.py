"""The Python facade: `VisProg` ties configuration, tools, cache and interpreter together.

    >>> vp = VisProg(preset="tiny")                                   # doctest: +SKIP
    >>> out = vp.execute("N=Count(box=Loc(...))", image="street.jpg") # doctest: +SKIP
    >>> out.value, out.trace["N"].output                              # doctest: +SKIP
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from PIL import Image

from visprog.engine.core import Engine, ItemResult, Job, StepCallback
from visprog.engine.schedule import AUTO, make_batch_size
from visprog.errors import Diagnostic, StepError, VisProgError
from visprog.language.checker import check as check_program
from visprog.language.checker import check_or_raise
from visprog.language.parser import parse
from visprog.language.program import Program
from visprog.registry import Registry, Tool
from visprog.traces.records import Trace
from visprog.values import DEFAULT_MAX_PIXELS, load_image, type_of

ImageLike = Any  # a path, bytes, PIL image or numpy array


@dataclass
class RunResult:
    """What a run gives back: the program's value, the program, and its trace."""

    value: Any
    program: Program
    trace: Trace

    def save_html(self, path: str | Path) -> Path:
        return self.trace.save_html(path)

    def save_json(self, path: str | Path, *, inline: bool = False) -> Path:
        return self.trace.save_json(path, inline=inline)


class VisProg:
    """Runs visprog programs (and, with an LLM, questions) on images.

    Args:
        preset: "default" (real checkpoints, downloaded on first use) or "tiny" (small random
            models built offline: every code path runs, answers are meaningless).
        config: a TOML file path, or a mapping of overrides (`{"Loc": {"box_threshold": .3}}`),
            merged over the preset key by key.
        cache: True for the in-memory and on-disk step cache, False for none, or a
            `visprog.cache.StepCache`.
        cache_dir: where the on-disk cache lives (default: the user cache dir, or
            VISPROG_CACHE_DIR).
        llm: the planner's LLM client (see `visprog.llm`), also used by the List module.
        device: "cpu", "cuda", "mps"... overrides the config's device.
        max_pixels: input images over this many pixels are refused.
        plugins: also register tools that installed packages advertise (entry points).
    """

    def __init__(self, preset: str = "default", config: str | os.PathLike | Mapping | None = None,
                 *, cache: Any = True, cache_dir: str | os.PathLike | None = None,
                 llm: Any = None, device: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, plugins: bool = True):
        from visprog.config import load_config
        from visprog.hosting.client import host_tools, split_config
        from visprog.models.memory import make_manager
        from visprog.tools import ToolContext, builtin_tools

        if isinstance(config, Mapping):
            self.config = load_config(preset, overrides=config)
        else:
            self.config = load_config(preset, config)
        self.preset = preset
        manager_cfg = self.config.get("models", {})
        self.models = make_manager(manager_cfg, device=device)  # with its memory budget, if any
        # The planner's LLM: given, else from the config's [llm] table or the environment
        # (visprog.llm.make_llm); a misconfiguration is reported when planning.
        self._llm_error: Exception | None = None
        if llm is None:
            llm, self._llm_error = _llm_from_config(self.config.get("llm"))
        self.llm = llm
        self.max_pixels = max_pixels
        # Hosting keys (host = "ray", ...) leave the module sections before the tools are
        # built, so cache keys don't depend on where a module runs; hosted tools call out.
        catalog = module_catalog()
        tools_config, hosts = split_config(self.config, catalog.model_modules,
                                           catalog.plain_modules)
        ctx = ToolContext(self.models, llm)
        self.registry = Registry(host_tools(builtin_tools(tools_config, ctx), hosts))
        if plugins:
            self.registry.load_entry_points(config=self.config, ctx=ctx)
        self.cache = _make_cache(cache, cache_dir)
        # One engine for every way of running: lone runs, batches, planned runs.
        self.engine = Engine(self.registry, self.cache, models=self.models)
        self._sizers: dict[Any, Any] = {}  # batch size -> sizer, so "auto" keeps what it measured

    # -- tools ------------------------------------------------------------------------------
    def register(self, tool: Tool, *, replace: bool = False) -> Tool:
        """Add a module (see `visprog.registry.tool`)."""
        return self.registry.register(tool, replace=replace)

    @property
    def tools(self) -> list[Tool]:
        return list(self.registry)

    # -- programs ---------------------------------------------------------------------------
    def parse(self, program: str | Program) -> Program:
        return program if isinstance(program, Program) else parse(program)

    def check(self, program: str | Program,
              inputs: Mapping[str, str] | None = None) -> list[Diagnostic]:
        """Every problem of the program (empty when it may run). `inputs` maps input names
        to types; by default IMAGE, LEFT and RIGHT are images."""
        return check_program(self.parse(program), self.registry, inputs)

    def bind(self, image: ImageLike = None, *, left: ImageLike = None, right: ImageLike = None,
             inputs: Mapping[str, Any] | None = None,
             read: dict[str, Any] | None = None) -> dict[str, Any]:
        """The input variables of a run: images are read (paths, arrays, PIL) and converted to
        RGB; other values are bound as given. `read` maps paths already read to their image,
        so an image shared by many items is read (and hashed) once."""
        bound: dict[str, Any] = {}
        for name, value in (("IMAGE", image), ("LEFT", left), ("RIGHT", right)):
            if value is not None:
                bound[name] = self._read(value, read)
        for name, value in (inputs or {}).items():
            if isinstance(value, Image.Image) or type(value).__module__ == "numpy":
                value = self._read(value, read)
            bound[name] = value
        return bound

    def _read(self, value: ImageLike, read: dict[str, Any] | None) -> Any:
        if read is None or not isinstance(value, (str, os.PathLike)):
            return load_image(value, max_pixels=self.max_pixels)
        key = os.fspath(value)
        if key not in read:
            read[key] = load_image(value, max_pixels=self.max_pixels)
        return read[key]

    def job(self, program: str | Program, bound: Mapping[str, Any], *, id: Any = None,
            events: Any = (), meta: Mapping[str, Any] | None = None,
            checked: bool = False) -> Job:
        """The one preparation step of every run: parse, check once against the bound inputs'
        types (`checked=True`: the caller just did, e.g. the planner), and the events and meta
        the trace starts with.

        Raises:
            ParseError, CheckError: the program can't run.
        """
        prog = self.parse(program)
        if not checked:
            check_or_raise(prog, self.registry, {k: type_of(v) for k, v in bound.items()})
        return Job(prog, bound, id, [dict(e) for e in events],
                   {"preset": self.preset, **(meta or {})})

    def run_jobs(self, jobs: list[Job], *, batch_size: Any = 1, use_cache: bool = True,
                 no_cache: Iterable[str] = (), on_step: StepCallback | None = None,
                 on_item: Any = None) -> list[ItemResult]:
        """Run prepared jobs on this engine, model calls batched up to `batch_size`."""
        return self.engine.run(jobs, sizer=self._sizer(batch_size), use_cache=use_cache,
                               no_cache=no_cache, on_step=on_step, on_item=on_item,
                               record_batches=len(jobs) > 1 or batch_size != 1)

    def _sizer(self, batch_size: Any) -> Any:
        key = batch_size if isinstance(batch_size, (int, str)) else id(batch_size)
        if key not in self._sizers:
            device = self.models.device if batch_size == AUTO else "cpu"
            self._sizers[key] = make_batch_size(batch_size, device)
        return self._sizers[key]

    def execute(self, program: str | Program, image: ImageLike = None, *,
                left: ImageLike = None, right: ImageLike = None,
                inputs: Mapping[str, Any] | None = None, use_cache: bool = True,
                no_cache: Iterable[str] = (), on_step: StepCallback | None = None) -> RunResult:
        """Parse, check and run a program.

        Raises:
            ParseError, CheckError: the program can't run (nothing ran).
            ImageError: an input image can't be read.
            StepError: a step failed; `.trace` holds the steps up to it.
        """
        job = self.job(program, self.bind(image, left=left, right=right, inputs=inputs))
        res = self.run_jobs([job], use_cache=use_cache, no_cache=no_cache, on_step=on_step)[0]
        if res.error is not None:
            raise res.error
        return RunResult(res.value, job.program, res.trace)

    def run_batch(self, items: Iterable[Any], *, batch_size: int | str = "auto",
                  use_cache: bool = True, no_cache: Iterable[str] = (),
                  on_item: Any = None) -> list[Any]:
        """Run many programs together, batching model calls across them (`visprog.batch`).

        Args:
            items: `visprog.batch.BatchItem`s, mappings with keys program, image, left,
                right, inputs, id, or query values (`vp.image(...)...`; also as a
                mapping's program).
            batch_size: calls per batched module call, or "auto" (by device, measured).
            on_item: called with each `ItemResult` as soon as its program ends.

        Returns:
            one `ItemResult` (id, value, program, trace, error) per item, in order; an
            item's failure is in its result and does not stop the others.
        """
        from visprog.engine.batch import BatchItem
        from visprog.query import as_batch_item

        items = [as_batch_item(i) for i in items]  # query values become program text
        read: dict[str, Any] = {}  # path -> image: shared images are read (and hashed) once
        results: list[ItemResult | None] = []
        jobs: list[Job] = []
        for i, raw in enumerate(items):
            item = raw if isinstance(raw, BatchItem) else BatchItem(**dict(raw))
            item_id = i if item.id is None else item.id
            program, bound = None, None
            try:
                program = self.parse(item.program)
                bound = self.bind(item.image, left=item.left, right=item.right,
                                  inputs=item.inputs, read=read)
                jobs.append(self.job(program, bound, id=item_id))
            except VisProgError as e:
                trace = None
                if bound is not None:  # it parsed and bound, but does not check
                    trace = Trace(program=program.source, inputs=dict(bound), error=str(e),
                                  meta={"preset": self.preset})
                results.append(ItemResult(item_id, None, program, trace, e))
                if on_item is not None:
                    on_item(results[-1])
                continue
            results.append(None)
        ran = iter(self.run_jobs(jobs, batch_size=batch_size, use_cache=use_cache,
                                 no_cache=no_cache, on_item=on_item))
        return [r if r is not None else next(ran) for r in results]


    # -- composed queries: Python calls that write programs (visprog.query) ----------------
    def image(self, image: ImageLike) -> Any:
        """A query value bound to IMAGE: its methods are the modules that take an Image
        (`vp.image("a.jpg").loc("cup").count()`); nothing runs until `.value`."""
        from visprog.query import image as image_query
        return image_query(self, image)

    def pair(self, left: ImageLike, right: ImageLike) -> tuple[Any, Any]:
        """Query values bound to LEFT and RIGHT (NLVR)."""
        from visprog.query import pair
        return pair(self, left, right)

    @property
    def fn(self) -> Any:
        """Every module as a function of query values (`vp.fn.eval("{N} > 0", N=n)`,
        `vp.fn.list("dog breeds", max=5)`, `vp.fn.count(objs)`)."""
        from visprog.query import functions
        return functions(self)

    # -- planning: an LLM writes the program (visprog.planner) -----------------------------
    def planner(self, task: str = "gqa", **options: Any) -> Any:
        """A `visprog.planner.Planner` for one task, with this engine's tools and LLM.

        Options (attempts, examples, select, seed, temperature, max_tokens, cache) override
        the config's `[planner]` table.

        Raises:
            LLMError: no LLM is configured (the message says what to set).
        """
        from visprog.planning.llm import LLMError
        from visprog.planning.planner import Planner

        if self.llm is None:
            if self._llm_error is not None:
                raise self._llm_error
            raise LLMError("no LLM configured for planning: set VISPROG_LLM_MODEL and "
                           "OPENAI_API_KEY (plus OPENAI_BASE_URL for a local server such as "
                           "vLLM or Ollama), or VISPROG_LLM_PATH for a local model, or pass "
                           "VisProg(llm=...)")
        settings = {**dict(self.config.get("planner", {})), **options}
        if self.cache is None:
            settings.setdefault("cache", False)
        return Planner(self.llm, self.registry, task=task, **settings)

    def plan(self, question: str, task: str = "gqa", **options: Any) -> Any:
        """Ask the LLM for a valid program (`visprog.planner.Plan`: program, text, attempts).

        Raises:
            PlanningError: no valid program within the allowed attempts.
            LLMError: no LLM configured, or it could not be reached.
        """
        return self.planner(task, **options).plan(question)

    def run(self, image: ImageLike, question: str, task: str = "gqa", *,
            right: ImageLike = None, vote: int = 1, use_cache: bool = True,
            **options: Any) -> RunResult:
        """Plan a program for `question`, then run it.

        For `task="nlvr"` pass the pair: `run((left, right), statement, task="nlvr")` or
        `run(left, statement, task="nlvr", right=right)`. The planner's attempts (errors and
        token usage) go into `trace.events`. With `vote=k`, k programs are sampled and run
        and the majority answer wins (every run is listed in the trace's "vote" event).

        Raises:
            PlanningError, LLMError: no program.
            ImageError: an input image can't be read (checked before the LLM is asked).
            StepError: a step failed (with vote > 1: every run failed).
        """
        from visprog.planning.planner import vote as majority_vote

        left = None
        if isinstance(image, (tuple, list)):
            if len(image) != 2:
                raise ValueError(f"a pair of images is (left, right); got {len(image)} items")
            image, right = image
        if task == "nlvr" or right is not None:
            left, image = image, None
        bound = self.bind(image, left=left, right=right)  # bad images fail before planning
        inputs = {name: type_of(v) for name, v in bound.items()}
        planner = self.planner(task, **options)
        plans = ([planner.plan(question, inputs)] if vote <= 1
                 else planner.plan_k(question, vote, inputs=inputs))
        # The planner checked each program against these inputs: the jobs skip the check.
        jobs = [self.job(plan.program, bound, events=_plan_events(plan), checked=True,
                         meta={"task": task, "question": question}) for plan in plans]
        ran = self.run_jobs(jobs, batch_size=AUTO if vote > 1 else 1, use_cache=use_cache)
        results: list[Any] = [RunResult(r.value, r.program, r.trace) if r.ok else r.error
                              for r in ran]
        if vote <= 1:
            if isinstance(results[0], BaseException):
                raise results[0]
            return results[0]
        if not any(isinstance(r, RunResult) for r in results):
            raise next(r for r in results if isinstance(r, BaseException))
        return majority_vote(results)


def module_catalog() -> Any:
    """The built-in modules as hosting sees them (`visprog.hosting.client.ModuleCatalog`):
    with `config.py` (presets), the only place in visprog/ that imports tools/."""
    from visprog.hosting.client import ModuleCatalog
    from visprog.tools import model_module_names, plain_tools

    return ModuleCatalog(frozenset(model_module_names()),
                         frozenset(t.name for t in plain_tools()), build_module)


def build_module(name: str, settings: Mapping[str, Any], models: Any) -> Tool:
    """One model module built with its settings and a model manager (a Ray replica's)."""
    from visprog.tools import ToolContext
    from visprog.tools import build_module as build

    return build(name, {name: dict(settings)}, ToolContext(models, None))


def _make_cache(cache: Any, cache_dir: str | os.PathLike | None) -> Any:
    from visprog.engine.cache import StepCache, default_cache_dir

    if cache is True:
        return StepCache(memory=True, disk_dir=Path(cache_dir) if cache_dir else default_cache_dir())
    if cache is False or cache is None:
        return None
    return cache


def _llm_from_config(section: Any) -> tuple[Any, Exception | None]:
    from visprog.planning.llm import LLMError, make_llm

    try:
        return make_llm(section if isinstance(section, Mapping) else None), None
    except LLMError as e:
        return None, e


def _plan_events(plan: Any) -> list[dict[str, Any]]:
    """How the program was obtained: each planner attempt (or the cache hit) as an event."""
    return [{"kind": e["kind"], **{k: v for k, v in e.items() if k != "kind"}}
            for e in plan.events()]


def describe_config(preset: str = "default", config: str | os.PathLike | Mapping | None = None,
                    *, device: str | None = None) -> dict[str, Any]:
    """The resolved configuration, as `visprog config show` prints it: every model module's
    backend, checkpoint(s), device and dtype, and its full settings. Builds each module (as
    VisProg would) but loads no model.

    Raises:
        ConfigError: an unknown preset, a bad file or a bad setting.
    """
    from visprog.config import load_config
    from visprog.hosting.client import split_config
    from visprog.models.memory import make_manager
    from visprog.tools import ToolContext, model_modules

    if isinstance(config, Mapping):
        cfg = load_config(preset, overrides=config)
    else:
        cfg = load_config(preset, config)
    catalog = module_catalog()
    tools_config, hosts = split_config(cfg, catalog.model_modules, catalog.plain_modules)
    models_cfg = dict(cfg.get("models", {}))
    manager = make_manager(models_cfg, device=device)
    torch_device = manager.device
    torch_dtype = str(manager.dtype() or "float32").replace("torch.", "")
    rows = []
    for name, cls in sorted(model_modules(plugins=True).items()):
        module = cls(dict(tools_config.get(name, {})), ToolContext(manager, None))
        s = dict(module.settings)
        rows.append({"module": name, "backend": str(s.get("backend") or "-"),
                     "checkpoint": _checkpoint_of(s),
                     "device": torch_device if cls.uses_torch else "cpu",
                     "dtype": torch_dtype if cls.uses_torch else "-",
                     "host": hosts[name].host if name in hosts else "local",
                     "settings": s})
    return {"preset": preset, "models": {**models_cfg, "device": torch_device},
            "modules": rows}


def _checkpoint_of(settings: Mapping[str, Any]) -> str:
    """What a module's settings load: its checkpoint, its checkpoints, or a model file."""
    if settings.get("checkpoint"):
        return str(settings["checkpoint"])
    if isinstance(settings.get("checkpoints"), Mapping):
        return ", ".join(f"{k}={v}" for k, v in settings["checkpoints"].items())
    if settings.get("backend") == "yunet":
        return settings.get("model") or f"{settings.get('hub_repo')}/{settings.get('hub_file')}"
    if settings.get("backend") == "cascade":
        return settings.get("cascade") or "scikit-image LBP frontal-face cascade"
    if isinstance(settings.get("llm"), Mapping):
        return str(settings["llm"].get("model") or "-")
    return "-"
