"""The execution core: what a step means, and one loop that runs programs.

Every way of running goes through `Engine.run`: a lone run is a schedule of one program, a
batched run advances many programs together, and a Ray replica runs a request's calls with
the same `run_chunk`. A step here:

1. resolves its arguments (variables to values, declared defaults filled in, an Eval-like
   argument's referenced variables passed as `variables=`);
2. gets a content key (tool, version, settings, argument contents) when its result may be
   cached or shared with an identical call of another program;
3. reads the cache (a hit is `cached=True`), else joins the calls that run together;
4. is called through the tool's batch entry point, one call at a time if the batch raises, so
   an error lands on the call that caused it; the output must be of the declared type, and
   regions whose box has no area are dropped from Objects (they mark nothing, whichever
   module made them);
5. is written to the cache (a cache that fails warns and the run goes on) and recorded.

A failed step ends its program with a `StepError` naming the step; the steps before it keep
their records. The program's result is the value of the last step of a tool declared
`result=True` (Result), else of the last step.

Model loads and unloads that happen while a call runs are recorded in the trace of the first
program that call served, so a run's trace lists the models it caused to load.

A run can go on (agent mode: the planner writes a program in rounds): a job with `keep=True`
leaves its `RunState` in its result; a later job whose program starts with the same steps
and that names the state as `resume` runs only the new steps, with the same variables and
the same trace. A state whose last step failed is first rewound to before that step (the
failed record leaves the trace), so the new steps replace it.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from visprog.engine.cache import MISS, step_key
from visprog.engine.schedule import FixedBatchSize, choose_groups
from visprog.errors import CacheWarning, StepError, VisProgError
from visprog.language.program import Program, Step, Var
from visprog.registry import Registry, Tool
from visprog.traces.events import CacheFailure, ModelEvent
from visprog.traces.records import StepRecord, Trace
from visprog.values import Objects, codec
from visprog.values.text import plural
from visprog.values.types import check_output

StepCallback = Callable[[StepRecord], None]
_clock = time.perf_counter
MAX_KNOWN_DIGESTS = 100_000  # a bound, not an LRU: the digest memo is cheap to rebuild


# -- one step --------------------------------------------------------------------------------

@dataclass(slots=True)
class Call:
    """A step ready to run: its tool, its keyword arguments and its cache key."""

    step: Step
    tool: Tool
    kwargs: dict[str, Any]
    arg_vars: dict[str, str] = field(default_factory=dict)
    key: str | None = None


def resolve(value: Any, env: Mapping[str, Any]) -> Any:
    """An argument as written -> its runtime value (lists become Python lists)."""
    if isinstance(value, Var):
        return env[value.name]
    if isinstance(value, tuple):
        return [resolve(v, env) for v in value]
    return value


class DigestMemo:
    """Content digests of a run's values, computed once per value object.

    A big input image read by ten steps is hashed once, not ten times. Keyed by identity,
    which is sound because no step mutates its inputs; the memo holds a reference to each
    value so an id can't be reused while the run lasts."""

    def __init__(self, known: dict[str, str] | None = None) -> None:
        self._seen: dict[int, tuple[Any, str]] = {}
        self._produced: dict[int, tuple[Any, str]] = {}
        # step key -> digest of that step's output, kept by the engine across runs
        self._known = known if known is not None else {}

    def digest(self, value: Any) -> str:
        hit = self._seen.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        d = codec.digest(value)
        self._seen[id(value)] = (value, d)
        made = self._produced.get(id(value))
        if made is not None and made[0] is value:
            self._known[made[1]] = d
        return d

    def output(self, value: Any, key: str, *, cached: bool) -> None:
        """`value` is the output of the step with cache key `key`.

        A value read back from the cache has the content its key stands for, so its digest
        is the one learnt when that content was first hashed: a warm run re-hashes no
        intermediate image (only the inputs). A freshly computed value is hashed when a
        later step first reads it, and that digest is learnt for its key."""
        known = self._known.get(key) if cached else None
        if known is not None:
            self._seen.setdefault(id(value), (value, known))
            return
        if not cached:
            self._known.pop(key, None)
        self._produced[id(value)] = (value, key)


def prepare(step: Step, tool: Tool, env: Mapping[str, Any], *, cache_key: bool,
            memo: DigestMemo | None = None) -> Call:
    """Resolve a call step's arguments by declared name, defaults included (so that
    `Loc(image=X)` and `Loc(image=X, threshold=<default>)` share a cache entry)."""
    kwargs: dict[str, Any] = {}
    arg_vars: dict[str, str] = {}
    for arg in step.args:
        param = tool.param(arg.name)
        assert param is not None, "checked programs only name declared arguments"
        kwargs[param.name] = resolve(arg.value, env)
        if isinstance(arg.value, Var):
            arg_vars[param.name] = arg.value.name
    for param in tool.params:
        if param.name not in kwargs and not param.required:
            kwargs[param.name] = param.default
    refs = tool.ref_params
    if refs:
        names: list[str] = []
        for p in refs:
            if isinstance(kwargs.get(p.name), str):
                names += [n for n in p.refs(kwargs[p.name]) if n not in names]
        kwargs["variables"] = {n: env[n] for n in names}
    key = None
    if cache_key:
        memo = memo or DigestMemo()
        try:
            digests = {name: memo.digest(kwargs[name]) for name in arg_vars}
            key = step_key(tool.name, tool.version, tool.settings, kwargs, digests=digests)
        except TypeError:  # a value the cache can't hash: run uncached
            key = None
    return Call(step, tool, kwargs, arg_vars, key)


def alias_record(index: int, step: Step, env: Mapping[str, Any]) -> StepRecord:
    """The record of an alias step (`A=B`): a new name for a value, nothing runs."""
    value = env[step.alias_of or ""]
    return StepRecord(index, step.line, step.source, step.target, None, args={"var": value},
                      arg_vars={"var": step.alias_of or ""}, output=value, draw_on=None)


def call_record(index: int, call: Call) -> StepRecord:
    """The record of a prepared call before it runs: its arguments as resolved, with the
    variables an Eval-like argument refers to shown beside them."""
    shown = {k: v for k, v in call.kwargs.items() if k != "variables"}
    shown.update(call.kwargs.get("variables", {}))
    step = call.step
    return StepRecord(index, step.line, step.source, step.target, call.tool.name, args=shown,
                      arg_vars=call.arg_vars, draw_on=call.tool.draw_on)


def cache_put(cache: Any, key: str, tool: Tool, value: Any) -> str | None:
    """Store a step result; a cache that fails must not fail the run: it warns, and the
    reason comes back (for the trace), else None."""
    try:
        cache.put(key, value)
    except Exception as e:
        warnings.warn(f"could not cache {tool.name}: {e}", CacheWarning, stacklevel=3)
        return f"{type(e).__name__}: {e}"
    return None


Outcome = tuple[bool, Any]  # (True, output) or (False, the exception)


def _checked(tool: Tool, value: Any) -> Outcome:
    """A tool's output as it leaves the tool: of its declared type, and Objects without
    regions of zero area (a detector's degenerate box marks no pixel; drawn, counted or
    cropped it would only mislead a later step)."""
    try:
        check_output(tool.name, tool.returns, value)
    except TypeError as e:
        return False, e
    return True, _without_empty_regions(value)


def _without_empty_regions(value: Any) -> Any:
    """Objects less their regions of zero area; any other value as it is."""
    if isinstance(value, Objects) and len(value) and _has_empty_region(value.boxes):
        return value[value.areas > 0]
    return value


def _has_empty_region(boxes: Any) -> bool:
    # every step's output passes here: for a few boxes plain Python is ~5x faster than numpy
    if len(boxes) <= 64:
        return any(x2 <= x1 or y2 <= y1 for x1, y1, x2, y2 in boxes.tolist())
    return not bool((boxes[:, 2:] > boxes[:, :2]).all())


def _call_one(tool: Tool, kwargs: Mapping[str, Any]) -> Outcome:
    try:
        return _checked(tool, tool.fn(**kwargs))
    except Exception as e:
        return False, e


def run_chunk(tool: Tool, calls: Sequence[Mapping[str, Any]]) -> list[Outcome]:
    """Run calls of one tool together: an outcome per call, in order.

    The tool's batch entry point takes them all; if it raises, or returns the wrong number of
    outputs, they run one by one so each error reaches only the call that caused it. Every
    output is checked against the declared return type."""
    if tool.batch_fn is None or len(calls) == 0:
        return [_call_one(tool, c) for c in calls]
    try:
        outputs = list(tool.batch_fn([dict(c) for c in calls]))
        if len(outputs) != len(calls):
            raise ValueError(f"{tool.name} batch returned {plural(len(outputs), 'output')} "
                             f"for {plural(len(calls), 'call')}")
    except Exception as e:
        if len(calls) == 1:
            return [(False, e)]
        return [_call_one(tool, c) for c in calls]
    return [_checked(tool, v) for v in outputs]


# -- many programs -----------------------------------------------------------------------------

@dataclass
class ItemResult:
    """What one program of a run gave: its value and trace, or the error that stopped it
    (`ParseError`/`CheckError`: nothing ran; `ImageError`; `StepError`: `trace` holds the
    steps up to the failed one)."""

    id: Any
    value: Any
    program: Program | None
    trace: Trace | None
    error: VisProgError | None = None
    state: "RunState | None" = None  # the job asked to `keep` it: the run may go on


    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchStats:
    """Counters of one run (or summed over several)."""

    rounds: int = 0
    steps: int = 0            # call steps run, over all programs
    module_calls: int = 0     # distinct calls made to modules (after sharing and cache hits)
    batch_calls: int = 0      # batch entry point invocations
    shared: int = 0           # steps served by another program's identical call
    cache_hits: int = 0
    by_module: dict[str, int] = field(default_factory=dict)  # module -> distinct calls

    def add(self, other: "BatchStats") -> None:
        for name in ("rounds", "steps", "module_calls", "batch_calls", "shared", "cache_hits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.by_module.items():
            self.by_module[k] = self.by_module.get(k, 0) + v


@dataclass
class Job:
    """One checked program and its bound inputs, ready to run. `events` are recorded in
    its trace before any step (e.g. the planner's attempts); `meta` goes into trace.meta.
    `resume`: the kept state of an earlier run of this program's first steps (only the
    rest run; `inputs` are the state's); `keep`: leave this run's state in its result."""

    program: Program
    inputs: Mapping[str, Any]
    id: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    resume: "RunState | None" = None
    keep: bool = False


@dataclass(slots=True)
class RunState:
    """The state of one program while it runs (and, kept, between rounds of agent mode):
    its variables, its trace, where it is."""

    pos: int
    job: Job
    env: dict[str, Any]
    trace: Trace
    tools: list[Tool | None]  # each step's tool (None for an alias), looked up once
    steps: list[Step] = field(default_factory=list)
    pc: int = 0
    result: Any = None
    have_result: bool = False
    error: StepError | None = None

    @property
    def active(self) -> bool:
        return self.error is None and self.pc < len(self.steps)

    def rewind(self) -> None:
        """Forget a failed last step: its record leaves the trace and the program ends
        before it, as if it had never been written."""
        if self.error is None:
            return
        self.error = None
        self.trace.error = None
        del self.trace.steps[self.pc:]
        del self.steps[self.pc:]
        del self.tools[self.pc:]

    def value(self) -> tuple[bool, Any]:
        """(True, the program's value so far: its last Result's, else its last step's), or
        (False, None) when no step ran."""
        if self.have_result:
            return True, self.result
        if self.pc == 0:
            return False, None
        return True, self.env[self.steps[self.pc - 1].target]

    def go_on(self, job: Job, pos: int, tools: list[Tool | None]) -> None:
        """Take `job`'s program, which starts with the steps that ran, to run the rest.

        Raises:
            ValueError: the program does not start with the steps that ran.
        """
        self.rewind()
        ran = self.steps[:self.pc]
        if list(job.program.steps[:self.pc]) != ran:
            raise ValueError("a resumed program must start with the steps that already ran")
        self.pos, self.job = pos, job
        self.steps = list(job.program.steps)
        self.tools = self.tools[:self.pc] + tools[self.pc:]
        self.trace.program = job.program.source
        self.trace.result = None
        self.trace.events.extend(job.events)
        self.trace.meta.update(job.meta)


_Run = RunState  # the name the core uses


@dataclass(slots=True)
class _Pending:
    """A waiting call step of one program."""

    run: _Run
    call: Call
    record: StepRecord


class Engine:
    """Runs programs with one registry, one cache and (optionally) one model manager.

    Args:
        registry: the tools.
        cache: a `visprog.engine.cache.StepCache`, or None for no caching.
        models: the model manager whose load/unload events go into traces, or None.
    """

    def __init__(self, registry: Registry, cache: Any = None, *, models: Any = None):
        self.registry = registry
        self.cache = cache
        self.models = models
        self.stats = BatchStats()
        self.last_stats = BatchStats()
        self._output_digests: dict[str, str] = {}  # see DigestMemo.output

    def run(self, jobs: Sequence[Job], *, sizer: Any = None, use_cache: bool = True,
            no_cache: Iterable[str] = (), on_step: StepCallback | None = None,
            on_item: Callable[[ItemResult], None] | None = None,
            record_batches: bool = False) -> list[ItemResult]:
        """Run every job; one `ItemResult` per job, in order. A failed step ends only its
        own program.

        Args:
            sizer: how many calls of a module go together (`visprog.engine.schedule`);
                default one at a time.
            use_cache: False runs every step afresh (and stores nothing).
            no_cache: module names whose results are neither read from nor written to the cache.
            on_step: called with each finished step's record.
            on_item: called with each job's result as soon as it is finished.
            record_batches: note in each trace's meta["batch"] how its model steps were
                grouped (`{"step", "chunk", "shared"}`).
        """
        sizer = sizer or FixedBatchSize(1)
        skip = {t.name for t in map(self.registry.find, no_cache) if t is not None}
        if len(self._output_digests) > MAX_KNOWN_DIGESTS:
            self._output_digests.clear()
        memo = DigestMemo(self._output_digests)  # shared: an image read by many is hashed once
        stats = BatchStats()
        results: list[ItemResult | None] = [None] * len(jobs)
        runs = []
        get = self.registry.get
        for pos, job in enumerate(jobs):
            if job.resume is not None:
                state = job.resume
                tools = [None if s.module is None else get(s.module)
                         for s in job.program.steps[state.pc:]]
                state.go_on(job, pos, [None] * state.pc + tools)
                runs.append(state)
                continue
            trace = Trace(program=job.program.source, inputs=dict(job.inputs),
                          events=list(job.events), meta=dict(job.meta))
            tools = [None if s.module is None else get(s.module) for s in job.program.steps]
            runs.append(_Run(pos, job, dict(job.inputs), trace, tools, list(job.program.steps)))
        ctx = _RunContext(self, sizer, use_cache, skip, memo, stats, on_step, record_batches)

        def settle(active: list[_Run]) -> list[_Run]:
            still = []
            for run in active:
                ctx.run_aliases(run)
                if run.active:
                    still.append(run)
                    continue
                res = _finish(run)
                results[run.pos] = res
                if on_item is not None:
                    on_item(res)
            return still

        active = settle(runs)
        while active:
            stats.rounds += 1
            if len(active) == 1:  # a lone run: its next step is the only group
                ctx.run_group(active[0].tools[active[0].pc], active)  # type: ignore[arg-type]
            else:
                groups: dict[str, list[_Run]] = defaultdict(list)
                by_name: dict[str, Tool] = {}
                for run in active:
                    tool = run.tools[run.pc]
                    by_name[tool.name] = tool  # type: ignore[union-attr]
                    groups[tool.name].append(run)  # type: ignore[union-attr]
                for name in choose_groups(groups, by_name):
                    ctx.run_group(by_name[name], groups[name])
            active = settle(active)
        self.stats.add(stats)
        self.last_stats = stats
        return results  # type: ignore[return-value]

    def run_one(self, program: Program, inputs: Mapping[str, Any], **options: Any) -> tuple[Any, Trace]:
        """A schedule of one program: (result, trace), raising its `StepError`."""
        res = self.run([Job(program, inputs)], **options)[0]
        if res.error is not None:
            raise res.error
        return res.value, res.trace  # type: ignore[return-value]


def _finish(run: _Run) -> ItemResult:
    if run.error is None:
        if not run.have_result and run.steps:
            run.result = run.env[run.steps[-1].target]
        run.trace.result = run.result
    return ItemResult(run.job.id, run.result if run.error is None else None, run.job.program,
                      run.trace, run.error, run if run.job.keep else None)


@dataclass
class _RunContext:
    """What the steps of one `Engine.run` share."""

    engine: Engine
    sizer: Any
    use_cache: bool
    skip: set[str]
    memo: DigestMemo
    stats: BatchStats
    on_step: StepCallback | None
    record_batches: bool

    def store(self, run: _Run, record: StepRecord, value: Any, tool: Tool | None) -> None:
        step = run.steps[run.pc]
        run.env[step.target] = value
        if tool is not None and tool.result:
            run.result, run.have_result = value, True
        run.pc += 1
        if self.on_step is not None:
            self.on_step(record)

    def run_aliases(self, run: _Run) -> None:
        """Alias steps run at once: they call nothing."""
        while run.active and run.steps[run.pc].module is None:
            record = alias_record(run.pc, run.steps[run.pc], run.env)
            run.trace.steps.append(record)
            self.store(run, record, record.output, None)

    def run_group(self, tool: Tool, runs: list[_Run]) -> None:
        """Run the waiting step of each of `runs` (all calls of `tool`): cache hits first,
        identical calls once, the rest in chunks of the sizer's size."""
        stats, memo = self.stats, self.memo
        cache = self.engine.cache
        caching = (self.use_cache and cache is not None and tool.cacheable
                   and tool.name not in self.skip)
        # a key is also how identical calls of different programs are found
        keyed = tool.cacheable and (caching or len(runs) > 1)
        shared_by_key: dict[str, list[_Pending]] = {}
        distinct: list[list[_Pending]] = []  # each entry: the pendings served by one call
        stats.steps += len(runs)
        for run in runs:
            started = _clock()
            call = prepare(run.steps[run.pc], tool, run.env, cache_key=keyed, memo=memo)
            record = call_record(run.pc, call)
            run.trace.steps.append(record)
            pending = _Pending(run, call, record)
            key = call.key
            if key is None:
                distinct.append([pending])
                continue
            if caching:
                hit = cache.get(key)
                if hit is not MISS:
                    # an entry written before tools' outputs were cleaned leaves as they do now
                    hit = _without_empty_regions(hit)
                    stats.cache_hits += 1
                    record.cached = True
                    memo.output(hit, key, cached=True)
                    self.done(pending, hit, _clock() - started)
                    continue
            group = shared_by_key.get(key)
            if group is not None:
                group.append(pending)
                stats.shared += 1
                continue
            shared_by_key[key] = group = [pending]
            distinct.append(group)
        if not distinct:
            return
        stats.module_calls += len(distinct)
        stats.by_module[tool.name] = stats.by_module.get(tool.name, 0) + len(distinct)
        batched = tool.batch_fn is not None
        size = self.sizer.size(tool.name) if batched else len(distinct)
        models = self.engine.models
        for start in range(0, len(distinct), size):
            chunk = distinct[start:start + size] if size < len(distinct) else distinct
            seen = len(models.events) if models is not None else 0
            t0 = _clock()
            outcomes = run_chunk(tool, [g[0].call.kwargs for g in chunk])
            seconds = _clock() - t0
            if models is not None and len(models.events) > seen:
                _record_model_events(chunk[0][0].run.trace, models.events[seen:])
            if batched:
                stats.batch_calls += 1
                self.sizer.observe(tool.name, len(chunk), seconds)
            share = seconds / sum(map(len, chunk))
            for group, (ok, value) in zip(chunk, outcomes):
                key = group[0].call.key
                not_cached = None
                if ok and key is not None:
                    if caching:
                        not_cached = cache_put(cache, key, tool, value)
                    memo.output(value, key, cached=False)
                for pending in group:
                    if not_cached is not None:
                        pending.run.trace.events.append(
                            CacheFailure(pending.record.index, tool.name, not_cached))
                    if batched and self.record_batches:
                        pending.run.trace.meta.setdefault("batch", []).append(
                            {"step": pending.record.index, "chunk": len(chunk),
                             "shared": len(group)})
                    if ok:
                        self.done(pending, value, share)
                    else:
                        self.fail(pending, value, share)

    def done(self, pending: _Pending, value: Any, seconds: float) -> None:
        pending.record.output = value
        pending.record.duration = seconds
        self.store(pending.run, pending.record, value, pending.call.tool)

    def fail(self, pending: _Pending, error: BaseException, seconds: float) -> None:
        run, record, step = pending.run, pending.record, pending.call.step
        record.duration = seconds
        record.error = f"{type(error).__name__}: {error}"
        run.trace.error = record.error
        run.error = StepError(str(error) or type(error).__name__, index=record.index,
                              line=step.line, target=step.target, module=record.module,
                              cause=error, trace=run.trace)
        run.error.__cause__ = error
        if self.on_step is not None:
            self.on_step(record)


def _record_model_events(trace: Trace, events: Sequence[Mapping[str, Any]]) -> None:
    """A model manager's events (load, unload, over_budget, note) as typed trace events."""
    for event in events:
        trace.events.append(ModelEvent.from_manager(event))
