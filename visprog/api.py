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

from .checker import check as check_program
from .checker import check_or_raise
from .errors import Diagnostic, StepError
from .interpreter import Interpreter, StepCallback
from .parser import parse
from .program import Program
from .registry import Registry, Tool
from .trace import Trace
from .values import (DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, MAX_NESTING,
                     load_image, nesting_depth, type_of)

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
        max_pixels: input images over this many pixels are refused (None: no limit).
        min_side: input images with a side under this many pixels are refused.
        max_aspect: input images whose long side is over this many times the short one are
            refused.
        plugins: also register tools that installed packages advertise (entry points).
    """

    def __init__(self, preset: str = "default", config: str | os.PathLike | Mapping | None = None,
                 *, cache: Any = True, cache_dir: str | os.PathLike | None = None,
                 llm: Any = None, device: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 min_side: int | None = DEFAULT_MIN_SIDE,
                 max_aspect: float | None = DEFAULT_MAX_ASPECT, plugins: bool = True):
        from .config import load_config
        from .hosting import host_tools, split_config
        from .memory import make_manager
        from .tools import ToolContext, builtin_tools

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
        self.image_limits = {"max_pixels": max_pixels, "min_side": min_side,
                             "max_aspect": max_aspect}
        # Hosting keys (host = "ray", ...) leave the module sections before the tools are
        # built, so cache keys don't depend on where a module runs; hosted tools call out.
        tools_config, hosts = split_config(self.config)
        self.registry = Registry(host_tools(
            builtin_tools(tools_config, ToolContext(self.models, llm)), hosts))
        if plugins:
            self.registry.load_entry_points(config=self.config)
        self.cache = _make_cache(cache, cache_dir)
        self.interpreter = Interpreter(self.registry, self.cache)

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
             inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The input variables of a run: images are read (paths, arrays, PIL), checked
        against the image limits and converted to RGB; other values are bound as given.

        Raises:
            ImageError: an image can't be read or is outside the limits.
            ValueError: a value nests lists deeper than `values.MAX_NESTING`.
        """
        bound: dict[str, Any] = {}
        for name, value in (("IMAGE", image), ("LEFT", left), ("RIGHT", right)):
            if value is not None:
                bound[name] = load_image(value, **self.image_limits)
        for name, value in (inputs or {}).items():
            if isinstance(value, Image.Image) or type(value).__module__ == "numpy":
                value = load_image(value, **self.image_limits)
            elif nesting_depth(value) > MAX_NESTING:
                raise ValueError(f"input {name!r} nests lists more than {MAX_NESTING} deep")
            bound[name] = value
        return bound

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
        prog = self.parse(program)
        bound = self.bind(image, left=left, right=right, inputs=inputs)
        check_or_raise(prog, self.registry, {k: type_of(v) for k, v in bound.items()})
        seen = len(self.models.events)
        try:
            value, trace = self.interpreter.run(prog, bound, use_cache=use_cache,
                                                no_cache=no_cache, on_step=on_step, check=False)
        except StepError as e:
            if e.trace is not None:
                self._record_model_events(e.trace, seen)
            raise
        self._record_model_events(trace, seen)
        return RunResult(value, prog, trace)

    def _record_model_events(self, trace: Trace, seen: int) -> None:
        """Copy the model loads and unloads that happened during a run into its trace."""
        trace.meta.update({"preset": self.preset})
        for event in self.models.events[seen:]:
            # the manager's "kind" is the model's kind; the trace's is the event's
            data = {("model" if k == "kind" else k): v for k, v in event.items() if k != "event"}
            trace.add_event(f"model_{event.get('event', 'event')}", **data)

    def run_batch(self, items: Iterable[Any], *, batch_size: int | str = "auto",
                  use_cache: bool = True, no_cache: Iterable[str] = (),
                  on_item: Any = None) -> list[Any]:
        """Run many programs together, batching model calls across them (`visprog.batch`).

        Args:
            items: `visprog.batch.BatchItem`s, or mappings with keys program, image, left,
                right, inputs, id.
            batch_size: calls per batched module call, or "auto" (by device, measured).
            on_item: called with each `ItemResult` as soon as its program ends.

        Returns:
            one `ItemResult` (id, value, program, trace, error) per item, in order; an
            item's failure is in its result and does not stop the others.
        """
        from .batch import run_batch
        return run_batch(self, items, batch_size=batch_size, use_cache=use_cache,
                         no_cache=no_cache, on_item=on_item)


    # -- planning: an LLM writes the program (visprog.planner) -----------------------------
    def planner(self, task: str = "gqa", **options: Any) -> Any:
        """A `visprog.planner.Planner` for one task, with this engine's tools and LLM.

        Options (attempts, examples, select, seed, temperature, max_tokens, cache) override
        the config's `[planner]` table.

        Raises:
            LLMError: no LLM is configured (the message says what to set).
        """
        from .llm import LLMError
        from .planner import Planner

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
        from .planner import vote as majority_vote

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
        results: list[Any] = []
        for plan in plans:
            try:
                out = self.execute(plan.program, bound.get("IMAGE"), left=bound.get("LEFT"),
                                   right=bound.get("RIGHT"), use_cache=use_cache)
                _add_plan_events(out.trace, plan, task, question)
                results.append(out)
            except StepError as e:
                if e.trace is not None:
                    _add_plan_events(e.trace, plan, task, question)
                if vote <= 1:
                    raise
                results.append(e)
        if vote <= 1:
            return results[0]
        if not any(isinstance(r, RunResult) for r in results):
            raise next(r for r in results if isinstance(r, StepError))
        return majority_vote(results)


def _make_cache(cache: Any, cache_dir: str | os.PathLike | None) -> Any:
    from .cache import StepCache, default_cache_dir

    if cache is True:
        return StepCache(memory=True, disk_dir=Path(cache_dir) if cache_dir else default_cache_dir())
    if cache is False or cache is None:
        return None
    return cache


def _llm_from_config(section: Any) -> tuple[Any, Exception | None]:
    from .llm import LLMError, make_llm

    try:
        return make_llm(section if isinstance(section, Mapping) else None), None
    except LLMError as e:
        return None, e


def _add_plan_events(trace: Trace, plan: Any, task: str, question: str) -> None:
    """How the program was obtained: each planner attempt (or the cache hit) as an event."""
    for event in plan.events():
        event = dict(event)
        trace.add_event(event.pop("kind"), **event)
    trace.meta.update({"task": task, "question": question})
