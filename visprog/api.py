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

from visprog.engine.core import Engine, ItemResult, Job, StepCallback
from visprog.engine.schedule import AUTO, make_batch_size
from visprog.errors import ConfigError, Diagnostic, VisProgError
from visprog.language.checker import check as check_program
from visprog.language.checker import check_or_raise
from visprog.language.parser import parse
from visprog.language.program import Program
from visprog.registry import Tool
from visprog.traces.events import as_event
from visprog.traces.records import Trace
from visprog.values.text import plural
from visprog.values import (DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, Video,
                            VideoSettings, type_of)
from visprog.values.inputs import InputReader
from visprog.values.text import show

ImageLike = Any  # a path, bytes, PIL image or numpy array
VideoLike = Any  # a video file's path or bytes, a folder of frames, a list of images, a Video


@dataclass(repr=False)
class RunResult:
    """What a run gives back: the program's value, the program, and its trace. `print`s as
    its trace does; a notebook shows the trace page."""

    value: Any
    program: Program
    trace: Trace

    def __str__(self) -> str:
        return str(self.trace)

    def __repr__(self) -> str:
        steps = len(self.trace.steps)
        return (f"<RunResult: {show(self.value, limit=60)} ({steps} "
                f"step{'s' if steps != 1 else ''})>")

    def _repr_html_(self) -> str:
        return self.trace._repr_html_()

    def save_html(self, path: str | Path) -> Path:
        return self.trace.save_html(path)

    def save_json(self, path: str | Path, *, inline: bool = False) -> Path:
        return self.trace.save_json(path, inline=inline)


class VisProg:
    """Runs visprog programs (and, with an LLM, questions) on images.

    Built by `visprog.config.assemble` from its arguments (`vp.assembly`: the resolved
    config, model manager, LLM, registry, cache, image limits, and how to build it again).

    Args:
        preset: "default" (real checkpoints, downloaded on first use) or "tiny" (small random
            models built offline: every code path runs, answers are meaningless).
        config: a TOML file path, or a mapping of overrides (`{"Loc": {"box_threshold": .3}}`),
            merged over the preset key by key. Its `[video]` table says how input videos
            are sampled and what they may be (`visprog.values.VideoSettings`).
        cache: True for the in-memory and on-disk step cache, False for none, or a
            `visprog.engine.cache.StepCache`.
        cache_dir: where the on-disk cache lives (default: the user cache dir, or
            VISPROG_CACHE_DIR).
        llm: the planner's LLM client (see `visprog.planning.llm`), also used by the List
            module; None: from the config's [llm] table or the environment.
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
        from visprog.config import assemble

        self._adopt(assemble(preset, config, device=device, llm=llm, cache=cache,
                             cache_dir=cache_dir, plugins=plugins,
                             image_limits={"max_pixels": max_pixels, "min_side": min_side,
                                           "max_aspect": max_aspect}))

    @classmethod
    def from_recipe(cls, recipe: Any) -> VisProg:
        """The engine a `visprog.config.Recipe` describes (`vp.assembly.recipe`): a Ray
        worker of a distributed evaluation builds the client's engine this way."""
        vp = cls.__new__(cls)  # the arguments are in the recipe, not repeated here
        vp._adopt(recipe.assemble())
        return vp

    def _adopt(self, assembly: Any) -> None:
        # Everything comes from the one assembly (visprog.config.assemble); the engine runs it.
        self.assembly = assembly
        self.preset = assembly.preset
        self.config = assembly.config
        self.models = assembly.models
        self.llm = assembly.llm
        self._llm_error = assembly.llm_error  # said when planning
        self.registry = assembly.registry
        self.cache = assembly.cache
        # images and videos are read under the one set of limits and [video] settings
        self.inputs = InputReader(assembly.image_limits, assembly.video_settings)
        # One engine for every way of running: lone runs, batches, planned runs.
        self.engine = Engine(self.registry, self.cache, models=self.models)
        self._sizers: dict[Any, Any] = {}  # batch size -> sizer, so "auto" keeps what it measured

    @property
    def image_limits(self) -> dict[str, Any]:
        return self.inputs.image_limits

    @property
    def video_settings(self) -> VideoSettings:
        return self.inputs.video_settings

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
             video: VideoLike = None, inputs: Mapping[str, Any] | None = None,
             read: dict[str, Any] | None = None) -> dict[str, Any]:
        """The input variables of a run, read under this engine's image limits and `[video]`
        settings (`visprog.values.inputs.InputReader.bind`; `read`: paths already read).

        Raises:
            ImageError: an image or video can't be read or is outside the limits.
            ValueError: a value nests lists deeper than `values.MAX_NESTING`.
        """
        return self.inputs.bind(image, left=left, right=right, video=video, inputs=inputs,
                                read=read)

    def load_video(self, source: VideoLike, **sampling: Any) -> Video:
        """A video read as `video=` would read it, with sampling settings of its own over the
        config's (`fps=8`, `frames=16`, `max_side=512`, or a limit), to bind as `video=`.

        Raises:
            VideoError: it can't be read, is outside the limits, or a setting is wrong.
        """
        return self.inputs.load_video(source, **sampling)

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
        return Job(prog, bound, id, [as_event(e) for e in events],
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
                left: ImageLike = None, right: ImageLike = None, video: VideoLike = None,
                inputs: Mapping[str, Any] | None = None, use_cache: bool = True,
                no_cache: Iterable[str] = (), on_step: StepCallback | None = None) -> RunResult:
        """Parse, check and run a program.

        Raises:
            ParseError, CheckError: the program can't run (nothing ran).
            ImageError: an input image (or the video: VideoError) can't be read.
            StepError: a step failed; `.trace` holds the steps up to it.
        """
        job = self.job(program, self.bind(image, left=left, right=right, video=video,
                                          inputs=inputs))
        res = self.run_jobs([job], use_cache=use_cache, no_cache=no_cache, on_step=on_step)[0]
        if res.error is not None:
            raise res.error
        return RunResult(res.value, job.program, res.trace)

    def run_batch(self, items: Iterable[Any], *, batch_size: int | str = "auto",
                  use_cache: bool = True, no_cache: Iterable[str] = (),
                  on_item: Any = None, repair: Any = None, mode: str | None = None,
                  agent: Any = None) -> list[Any]:
        """Run many programs together, batching model calls across them (`visprog.batch`).

        Args:
            items: `visprog.batch.BatchItem`s, mappings with keys program, image, left,
                right, video, inputs, id (and question, task, events), query values
                (`vp.image(...)...`; also as a mapping's program), or program texts (a
                program with no inputs bound). An item with a question and no program gets
                one from the planner.
            batch_size: calls per batched module call, or "auto" (by device, measured).
            on_item: called with each `ItemResult` as soon as its program ends (items with
                a question: once the planning loop is done with them).
            repair: for items with a question: check each run against it and have the
                planner correct the ones that raise or look wrong (`vp.run`'s `repair`;
                default the config's), through the planning loop
                (`visprog.planning.loop`). Only those items run again, together.
            mode, agent: "agent" writes the programs of the items with a question and no
                program in rounds (`vp.run`'s); all items advance round by round, each
                round's LLM requests sent together, and an item that is done drops out.

        Returns:
            one `ItemResult` (id, value, program, trace, error) per item, in order; an
            item's failure is in its result and does not stop the others.
        """
        from visprog.engine.batch import BatchItem
        from visprog.query import as_batch_item

        items = [BatchItem.make(as_batch_item(raw), i)  # query values become program text
                 for i, raw in enumerate(items)]
        settings = self.repair_settings(repair, mode=mode, agent=agent)
        read: dict[str, Any] = {}  # path -> image: shared images are read (and hashed) once
        planners: dict[str, Any] = {}  # task -> its planner, or why there is none
        results: list[ItemResult | None] = []
        todo: list[tuple[Any, Any, Any, Job | None]] = []  # (id, item, bound, job); no job: planned
        for i, item in enumerate(items):
            item_id = i if item.id is None else item.id
            program, bound = None, None
            try:
                if item.program is not None:
                    program = self.parse(item.program)
                elif not item.question:
                    raise VisProgError("a batch item needs a program, or a question to plan one")
                bound = self.bind(item.image, left=item.left, right=item.right,
                                  video=item.video, inputs=item.inputs, read=read)
                if program is None:
                    job = None
                    self._batch_planner(item.task, planners, raises=True)
                else:
                    job = self.job(program, bound, id=item_id, events=item.events,
                                   meta=item.meta)
                todo.append((item_id, item, bound, job))
            except VisProgError as e:
                trace = None
                if bound is not None:  # it bound, but does not check (or can't be planned)
                    trace = Trace(program=program.source if program is not None else "",
                                  inputs=dict(bound), error=str(e),
                                  events=[as_event(x) for x in item.events],
                                  meta={"preset": self.preset, **item.meta})
                results.append(ItemResult(item_id, None, program, trace, e))
                if on_item is not None:
                    on_item(results[-1])
                continue
            results.append(None)
        if any(item.question and (settings.enabled or job is None) for _, item, _, job in todo):
            from visprog.planning.loop import LoopItem

            loop_items = []
            for item_id, item, bound, job in todo:
                planner = self._batch_planner(item.task, planners) if item.question else None
                loop_items.append(LoopItem(
                    item.question or "", item.task, {k: type_of(v) for k, v in bound.items()},
                    planner, None if job is None else job.program,
                    [] if job is None else job.events, id=item_id,
                    payload=(bound, item.meta)))
            ran = iter(self._answer(loop_items, settings, batch_size=batch_size,
                                    use_cache=use_cache, no_cache=no_cache, on_item=on_item))
        else:
            ran = iter(self.run_jobs([job for _, _, _, job in todo], batch_size=batch_size,
                                     use_cache=use_cache, no_cache=no_cache, on_item=on_item))
        return [r if r is not None else next(ran) for r in results]

    def _batch_planner(self, task: str, planners: dict[str, Any], *, raises: bool = False) -> Any:
        """The planner of a task for batch items, made once per task: None (or, with
        `raises`, the error) when there is none (no LLM, a task the planner does not know)."""
        if task not in planners:
            try:
                planners[task] = self.planner(task)
            except (VisProgError, ValueError) as e:
                planners[task] = e
        found = planners[task]
        if isinstance(found, BaseException):
            if raises:
                raise found if isinstance(found, VisProgError) else VisProgError(str(found))
            return None
        return found

    def _answer(self, items: list[Any], settings: Any, *, batch_size: Any, use_cache: bool,
                no_cache: Iterable[str] = (), on_item: Any = None) -> list[ItemResult]:
        """Items (`visprog.planning.loop.LoopItem`, payload: bound inputs and meta) through
        the planning loop; each program it runs is a job of this engine (`job`, `run_jobs`)."""
        from functools import partial

        from visprog.planning.loop import PlanningLoop, engine_runner

        runner = engine_runner(self.job, partial(self.run_jobs, batch_size=batch_size,
                                                 use_cache=use_cache, no_cache=no_cache))
        loop = PlanningLoop(settings, self._critic(settings))
        return loop.answer(items, runner, on_item=on_item)

    def repair_settings(self, repair: Any = None, *, mode: str | None = None,
                        agent: Any = None) -> Any:
        """The planning loop's settings (`visprog.planning.loop.RepairSettings`): the
        config's [planner] keys (repair, repair_attempts, checks, critic, select, mode and
        agent mode's budgets), then `repair` (True, False, a number of corrections, a
        mapping), `mode` ("oneshot" or "agent") and `agent` (a mapping of rounds, steps,
        images, look_max_pixels, look_min_pixels, look_frames) over them.

        Raises:
            ConfigError: a bad setting (an unknown check or mode, a negative count...).
        """
        from visprog.planning.loop import RepairSettings

        try:
            return RepairSettings.make(repair, self.config.get("planner"), mode=mode,
                                       agent=agent)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"repair settings: {e}") from e

    def _critic(self, settings: Any) -> Any:
        if not settings.critic or self.llm is None:
            return None
        from visprog.planning.critic import Critic
        return Critic(self.llm)

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

    def video(self, video: VideoLike, **sampling: Any) -> Any:
        """A query value bound to VIDEO (read as `video=` reads it; `fps=`, `frames=`...
        sample it as `load_video` does): its methods are the modules that take a Video
        (`vp.video("clip.mp4").track("car").count()`); nothing runs until `.value`."""
        from visprog.query import video as video_query
        return video_query(self, video, **sampling)

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
        from visprog.planning.planner import Planner
        from visprog.planning.loop import SETTING_KEYS

        if self.llm is None and self._llm_error is not None:
            raise self._llm_error  # what was wrong with the configured LLM

        settings = {**dict(self.config.get("planner", {})), **options}
        for key in SETTING_KEYS:  # the repair loop's, not the planner's
            settings.pop(key, None)
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

    def run(self, image: ImageLike, question: str, task: str | None = None, *,
            right: ImageLike = None, video: VideoLike = None, vote: int = 1,
            use_cache: bool = True, repair: Any = None, mode: str | None = None,
            agent: Any = None, **options: Any) -> RunResult:
        """Plan a program for `question`, run it, and repair it when the run goes wrong.

        For `task="nlvr"` pass the pair: `run((left, right), statement, task="nlvr")` or
        `run(left, statement, task="nlvr", right=right)`. A question about a video binds
        VIDEO: `run(None, question, video="clip.mp4")` (task "video" unless `task` says
        otherwise), or pass a `Video` (`vp.load_video(...)`) as `image`. Without a video
        the task is "gqa" unless given. The planner's attempts (errors and token usage) go
        into `trace.events`.

        Plan, run, look back and select go through the planning loop
        (`visprog.planning.loop`): a step that raised, or a result the checks
        flag (an answer of the wrong kind, an empty find the question presumes, a crop of
        the whole image...), or a "no" of the critic when it is on, goes back to the planner
        with the error or findings and a summary of the trace, for a corrected program
        (a bounded number of times); the trace's `Repair` event lists every attempt.

        With `vote=k`, k programs are sampled and run; the runs that pass the checks are
        preferred and the majority answer among them wins (every run is listed in the
        trace's `Vote` event); only when none passes is the best one repaired.

        With `mode="agent"` the planner writes the program in rounds: each round's steps
        run at once (earlier steps are not run again), and the planner is told what they
        gave, seeing what its `Look` steps show (images too, when its LLM takes them),
        until it writes `Result` or a budget ends the run (then the answer is the last value
        the program computed; the trace's `AgentRun` event says so). The trace has a
        `Round` event per round; the finished program runs again without any LLM.

        Args:
            repair: True/False, the number of corrections allowed (0: check, don't
                repair), a mapping (attempts, checks, critic, select) or `RepairSettings`;
                default the config's [planner] settings (on, 2 corrections, every check).
            mode: "oneshot" or "agent" (default the config's [planner] mode, "oneshot").
            agent: agent mode's budgets, a mapping of rounds, steps, images (and
                look_max_pixels, look_min_pixels, look_frames: the frames a Look at a
                video shows, each counted as an image); default the config's [planner]
                agent_rounds, agent_steps, agent_images (6, 40, 8).

        Raises:
            PlanningError, LLMError: no program.
            ImageError: an input image can't be read (checked before the LLM is asked).
            StepError: a step failed (a `RepairError` when every attempt failed; with
                vote > 1: every run failed).
            AgentError: agent mode stopped before any step ran.
        """
        from visprog.planning.loop import LoopItem

        settings = self.repair_settings(repair, mode=mode, agent=agent)
        if settings.mode == "agent" and vote > 1:
            raise ValueError("vote=k samples whole programs: it is for one-shot mode, not "
                             "agent mode")
        left = None
        if isinstance(image, Video):
            if video is not None:
                raise ValueError("give the video once: as image or as video=, not both")
            image, video = None, image
        if task is None:
            task = "video" if video is not None else "gqa"
        if isinstance(image, (tuple, list)):
            if len(image) != 2:
                raise ValueError(f"a pair of images is (left, right); got "
                                 f"{plural(len(image), 'item')}")
            image, right = image
        if task == "nlvr" or right is not None:
            left, image = image, None
        # bad inputs fail here, before the LLM is asked
        bound = self.bind(image, left=left, right=right, video=video)
        item = LoopItem(question, task, {name: type_of(v) for name, v in bound.items()},
                        self.planner(task, **options), vote=vote, remember=vote <= 1,
                        payload=(bound, {"task": task, "question": question}))
        [res] = self._answer([item], settings, batch_size=AUTO if vote > 1 else 1,
                             use_cache=use_cache)
        if res.error is not None:
            raise res.error
        return RunResult(res.value, res.program, res.trace)


def describe_config(preset: str = "default", config: str | os.PathLike | Mapping | None = None,
                    *, device: str | None = None) -> dict[str, Any]:
    """The resolved configuration, as `visprog config show` prints it: what a `VisProg` of
    these arguments runs (`visprog.config.Assembly.describe`). Loads no model.

    Raises:
        ConfigError: an unknown preset, a bad file or a bad setting.
    """
    from visprog.config import assemble

    return assemble(preset, config, device=device, cache=False).describe()
