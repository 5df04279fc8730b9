"""Runs many programs together so that model modules see batches.

Every program advances in rounds. In a round, each program stops at its next call step; the
waiting steps are grouped by module. Plain modules (no `batch_fn`) run first, one call at a
time, so that programs that are behind catch up; when every waiting step is a batched module,
the largest group runs as one `batch_fn` call per chunk of `batch_size`. Programs are still
run step by step in their own order, so each item's trace is the one a lone run would give.

Semantics, chosen so that a batched run and a lone run can be compared step by step:

- Values: identical to a lone run. Identical calls across programs (same cache key: same
  tool, version, settings and argument contents) run once and every program gets the same
  output object (values are never mutated by steps, so sharing is safe; copy before you edit a
  result in place). Modules declared `cacheable=False` (sampling) are never shared.
- `StepRecord.cached`: True only when the value came from the step cache, exactly as in
  `Interpreter.run`. A program that got its value from another program's identical call in the
  same round has `cached=False` (alone, it would have computed it).
- `StepRecord.duration`: the program's share of the wall time of the call that served it: a
  chunk's time divided by the number of steps it served, so durations summed over all items
  add up to the batch's wall time.
- `trace.meta["batch"]`: for each model step, `{"step": index, "chunk": calls the chunk sent
  to the module, "shared": programs served by this step's call}`.
- A step that fails ends only its program (a `StepError` in its result); when a whole
  `batch_fn` chunk raises, its calls are retried one by one so the failure lands on the
  program that caused it.

Batch size: an int, or "auto" (`AutoBatchSize`): it starts at 1 on a CPU (a full-size model is
compute-bound there: batching saves nothing and a big batch can be slower) and at 8 on CUDA,
and doubles per module while the measured time per call improves by at least 15%, up to 64;
the first chunk at each size is not measured (it pays for loading the model, and on a GPU for
the allocator and kernel choice of a new shape). The sizes are kept across runs.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from visprog.language.checker import check_or_raise
from visprog.errors import StepError, VisProgError
from visprog.engine.interpreter import (Call, DigestMemo, alias_record, cache_put, call_record,
                          check_output, prepare)
from visprog.language.program import Program, Step
from visprog.registry import Registry, Tool
from visprog.traces.records import StepRecord, Trace
from visprog.values import type_of

AUTO = "auto"
AUTO_START = {"cpu": 1, "mps": 4, "cuda": 8}
AUTO_MAX = 64
AUTO_GAIN = 0.85  # a bigger batch is kept when its time per call is at most 85% of the best


@dataclass
class BatchItem:
    """One program and its inputs. The program is text or a parsed `Program`; images are
    paths, bytes, PIL images or arrays (`VisProg.run_batch` reads them)."""

    program: Any
    image: Any = None
    left: Any = None
    right: Any = None
    inputs: Mapping[str, Any] | None = None
    id: Any = None


@dataclass
class ItemResult:
    """What one item of a batch gave: its value and trace, or the error that stopped it
    (`ParseError`/`CheckError`: nothing ran; `ImageError`; `StepError`: `trace` holds the
    steps up to the failed one)."""

    id: Any
    value: Any
    program: Program | None
    trace: Trace | None
    error: VisProgError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchStats:
    """Counters of one batched run (or summed over several)."""

    rounds: int = 0
    steps: int = 0            # call steps run, over all programs
    module_calls: int = 0     # distinct calls made to modules (after sharing and cache hits)
    batch_calls: int = 0      # batch_fn invocations
    shared: int = 0           # steps served by another program's identical call
    cache_hits: int = 0
    by_module: dict[str, int] = field(default_factory=dict)  # module -> distinct calls

    def add(self, other: "BatchStats") -> None:
        for name in ("rounds", "steps", "module_calls", "batch_calls", "shared", "cache_hits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.by_module.items():
            self.by_module[k] = self.by_module.get(k, 0) + v


class AutoBatchSize:
    """Chooses each module's batch size by measuring (see the module docstring).

    Args:
        device: where the models run ("cpu", "cuda", "cuda:1", "mps").
    """

    def __init__(self, device: str = "cpu"):
        kind = device.split(":")[0]
        self.start = AUTO_START.get(kind, 1)
        self._state: dict[str, dict[str, Any]] = {}

    def _get(self, module: str) -> dict[str, Any]:
        return self._state.setdefault(module, {"size": self.start, "best": None,
                                               "warm": 0, "settled": False})

    def size(self, module: str) -> int:
        return self._get(module)["size"]

    def observe(self, module: str, calls: int, seconds: float) -> None:
        """Record that a chunk of `calls` calls took `seconds`."""
        s = self._get(module)
        if s["settled"] or calls != s["size"]:
            return  # only full chunks at the size being tried say anything about it
        if s["warm"] != calls:
            # the first chunk at each size pays for one-off work (loading the model, the
            # GPU allocator and kernel choice for a new shape): not measured
            s["warm"] = calls
            return
        per_call = seconds / calls
        best = s["best"]
        if best is None or per_call <= best[1] * AUTO_GAIN:
            s["best"] = (calls, per_call)
            if calls * 2 <= AUTO_MAX:
                s["size"] = calls * 2
            else:
                s["settled"] = True
        else:
            s["size"] = best[0]
            s["settled"] = True

    def sizes(self) -> dict[str, int]:
        """The current size per module (for reports)."""
        return {m: s["size"] for m, s in self._state.items()}


class FixedBatchSize:
    """The same batch size for every module."""

    def __init__(self, size: int):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size must be a positive int or 'auto', got {size!r}")
        self._size = size

    def size(self, module: str) -> int:
        return self._size

    def observe(self, module: str, calls: int, seconds: float) -> None:
        pass

    def sizes(self) -> dict[str, int]:
        return {}


def make_batch_size(batch_size: int | str | Any, device: str = "cpu") -> Any:
    """An int, "auto", or an object with `size(module)` and `observe(...)` -> that object."""
    if batch_size == AUTO:
        return AutoBatchSize(device)
    if hasattr(batch_size, "size") and hasattr(batch_size, "observe"):
        return batch_size
    if isinstance(batch_size, str) and batch_size.isdigit():
        batch_size = int(batch_size)
    return FixedBatchSize(batch_size)


@dataclass
class _Run:
    """The state of one program in a batch."""

    pos: int
    id: Any
    program: Program
    env: dict[str, Any]
    trace: Trace
    pc: int = 0
    result: Any = None
    have_result: bool = False
    error: StepError | None = None

    @property
    def active(self) -> bool:
        return self.error is None and self.pc < len(self.program.steps)


@dataclass
class _Pending:
    """A waiting call step of one program."""

    run: _Run
    call: Call
    record: StepRecord
    started: float


class BatchRunner:
    """Runs lists of (program, bound inputs) with one registry and one cache.

    Args:
        registry: the tools.
        cache: a `visprog.cache.StepCache`, or None.
        batch_size: int, "auto" or a sizer object (`AutoBatchSize`); kept across runs so
            "auto" measures once.
        device: the models' device, for "auto".
    """

    def __init__(self, registry: Registry, cache: Any = None, *,
                 batch_size: int | str | Any = AUTO, device: str = "cpu"):
        self.registry = registry
        self.cache = cache
        self.sizer = make_batch_size(batch_size, device)
        self.stats = BatchStats()

    def run(self, items: Sequence[tuple[Program, Mapping[str, Any]]], *, ids: Sequence[Any] = (),
            use_cache: bool = True, no_cache: Iterable[str] = (), check: bool = True,
            on_item: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
        """Run every (program, inputs) pair; results in the same order.

        Args:
            ids: an id per item, copied into its result.
            use_cache, no_cache: as in `Interpreter.run`.
            check: check each program against its inputs first; one that fails the check gets
                a `CheckError` result and the others run.
            on_item: called with each item's result as soon as it is finished.
        """
        ids = list(ids) or list(range(len(items)))
        skip = {self.registry.find(n).name for n in no_cache if self.registry.find(n)}
        memo = DigestMemo()  # shared: an image read by many programs is hashed once
        runs: list[_Run] = []
        results: list[ItemResult | None] = [None] * len(items)
        stats = BatchStats()

        def finish(run: _Run) -> None:
            if run.error is None:
                if not run.have_result and run.program.steps:
                    run.result = run.env[run.program.steps[-1].target]
                run.trace.result = run.result
            res = ItemResult(run.id, run.result if run.error is None else None, run.program,
                             run.trace, run.error)
            results[run.pos] = res
            if on_item is not None:
                on_item(res)

        for pos, (program, inputs) in enumerate(items):
            run = _Run(pos, ids[pos], program, dict(inputs),
                       Trace(program=program.source, inputs=dict(inputs)))
            if check:
                try:
                    check_or_raise(program, self.registry,
                                   {k: type_of(v) for k, v in inputs.items()})
                except VisProgError as e:
                    run.trace.error = str(e)
                    results[pos] = ItemResult(run.id, None, program, run.trace, e)
                    if on_item is not None:
                        on_item(results[pos])
                    continue
            runs.append(run)

        active = runs
        for run in active:
            self._skip_aliases(run)
            if not run.active:
                finish(run)
        active = [r for r in active if r.active]
        while active:
            stats.rounds += 1
            groups: dict[str, list[_Run]] = defaultdict(list)
            for run in active:
                groups[self.registry.get(run.program.steps[run.pc].module or "").name].append(run)
            plain = [name for name in groups if self.registry.get(name).batch_fn is None]
            if plain:  # cheap steps first, so that programs catch up at the model steps
                chosen = plain
            else:
                chosen = [max(groups, key=lambda n: (len(groups[n]),
                                                     -min(r.pc for r in groups[n])))]
            for name in chosen:
                self._run_group(self.registry.get(name), groups[name], use_cache, skip,
                                memo, stats)
            for run in active:
                self._skip_aliases(run)
                if not run.active:
                    finish(run)
            active = [r for r in active if r.active]
        self.stats.add(stats)
        self.last_stats = stats
        return [r for r in results if r is not None]

    # -- steps ------------------------------------------------------------------------------
    def _skip_aliases(self, run: _Run) -> None:
        """Alias steps run at once: they call nothing."""
        while run.active and run.program.steps[run.pc].module is None:
            step = run.program.steps[run.pc]
            record = alias_record(run.pc, step, run.env)
            run.trace.steps.append(record)
            self._store(run, step, record.output, None)

    def _store(self, run: _Run, step: Step, value: Any, module: str | None) -> None:
        run.env[step.target] = value
        if module == "Result":
            run.result, run.have_result = value, True
        run.pc += 1

    def _run_group(self, tool: Tool, runs: list[_Run], use_cache: bool, skip: set[str],
                   memo: DigestMemo, stats: BatchStats) -> None:
        """Run the waiting step of each of `runs` (all calls of `tool`)."""
        caching = use_cache and self.cache is not None and tool.cacheable and tool.name not in skip
        shared_by_key: dict[str, list[_Pending]] = {}
        distinct: list[list[_Pending]] = []  # each entry: the pendings served by one call
        for run in runs:
            step = run.program.steps[run.pc]
            started = time.perf_counter()
            # the key is made even without a cache: it is how identical calls are found
            call = prepare(step, tool, run.env, cache_key=tool.cacheable, memo=memo)
            record = call_record(run.pc, call)
            run.trace.steps.append(record)
            pending = _Pending(run, call, record, started)
            stats.steps += 1
            if caching and call.key is not None:
                from visprog.engine.cache import MISS
                hit = self.cache.get(call.key)
                if hit is not MISS:
                    stats.cache_hits += 1
                    record.cached = True
                    self._done(pending, hit, time.perf_counter() - started)
                    continue
            if call.key is not None and call.key in shared_by_key:
                shared_by_key[call.key].append(pending)
                stats.shared += 1
                continue
            group = [pending]
            distinct.append(group)
            if call.key is not None:
                shared_by_key[call.key] = group
        if not distinct:
            return
        stats.module_calls += len(distinct)
        stats.by_module[tool.name] = stats.by_module.get(tool.name, 0) + len(distinct)
        size = self.sizer.size(tool.name) if tool.batch_fn is not None else 1
        for start in range(0, len(distinct), size):
            chunk = distinct[start:start + size]
            t0 = time.perf_counter()
            outcomes = self._call_chunk(tool, [g[0].call for g in chunk], stats)
            seconds = time.perf_counter() - t0
            if tool.batch_fn is not None:
                self.sizer.observe(tool.name, len(chunk), seconds)
            served = sum(len(g) for g in chunk)
            for group, (ok, value) in zip(chunk, outcomes):
                if ok and caching and group[0].call.key is not None:
                    cache_put(self.cache, group[0].call.key, tool, value)
                for pending in group:
                    pending.run.trace.meta.setdefault("batch", []).append(
                        {"step": pending.record.index, "chunk": len(chunk),
                         "shared": len(group)})
                    if ok:
                        self._done(pending, value, seconds / served)
                    else:
                        self._fail(pending, value, seconds / served)

    def _call_chunk(self, tool: Tool, calls: list[Call],
                    stats: BatchStats) -> list[tuple[bool, Any]]:
        """(ok, output or exception) per call. A chunk whose batch call raises, or returns
        the wrong number of outputs, is retried call by call to isolate the failure."""
        if tool.batch_fn is None:
            return [self._call_one(tool, c) for c in calls]
        stats.batch_calls += 1
        try:
            outputs = list(tool.batch_fn([c.kwargs for c in calls]))
            if len(outputs) != len(calls):
                raise ValueError(f"{tool.name} batch returned {len(outputs)} outputs "
                                 f"for {len(calls)} calls")
        except Exception as e:
            if len(calls) == 1:
                return [(False, e)]
            return [self._call_one(tool, c) for c in calls]
        return [self._checked(tool, v) for v in outputs]

    def _call_one(self, tool: Tool, call: Call) -> tuple[bool, Any]:
        try:
            return self._checked(tool, tool(**call.kwargs))
        except Exception as e:
            return False, e

    @staticmethod
    def _checked(tool: Tool, value: Any) -> tuple[bool, Any]:
        try:
            check_output(tool, value)
        except TypeError as e:
            return False, e
        return True, value

    def _done(self, pending: _Pending, value: Any, seconds: float) -> None:
        pending.record.output = value
        pending.record.duration = seconds
        self._store(pending.run, pending.call.step, value, pending.call.tool.name)

    def _fail(self, pending: _Pending, error: BaseException, seconds: float) -> None:
        run, record, step = pending.run, pending.record, pending.call.step
        record.duration = seconds
        record.error = f"{type(error).__name__}: {error}"
        run.trace.error = record.error
        run.error = StepError(str(error) or type(error).__name__, index=record.index,
                              line=step.line, target=step.target, module=record.module,
                              cause=error, trace=run.trace)


def run_batch(vp: Any, items: Iterable[BatchItem | Mapping[str, Any]], *,
              batch_size: int | str | Any = AUTO, use_cache: bool = True,
              no_cache: Iterable[str] = (),
              on_item: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
    """`VisProg.run_batch`: parse, bind and run many items with `vp`'s tools and cache.

    Items are `BatchItem`s or mappings with the same keys. An item whose program can't be
    parsed or whose image can't be read gets that error in its result; the others run. An
    image path used by several items is read once. With `batch_size="auto"` the measured
    sizes are kept on `vp`, so later batches start from them.
    """
    from visprog.language.parser import parse

    runner = _runner_for(vp, batch_size)
    images: dict[str, Any] = {}  # path -> image, so shared images are read (and hashed) once

    def load(value: Any) -> Any:
        if isinstance(value, str):
            if value not in images:
                images[value] = vp.bind(value)["IMAGE"]
            return images[value]
        return value

    ready: list[tuple[Program, dict[str, Any]]] = []
    ready_ids: list[Any] = []
    results: list[ItemResult | None] = []
    for i, raw in enumerate(items):
        item = raw if isinstance(raw, BatchItem) else BatchItem(**dict(raw))
        item_id = i if item.id is None else item.id
        program = None
        try:
            program = item.program if isinstance(item.program, Program) else parse(item.program)
            bound = vp.bind(load(item.image), left=load(item.left), right=load(item.right),
                            inputs=item.inputs)
        except VisProgError as e:
            results.append(ItemResult(item_id, None, program, None, e))
            if on_item is not None:
                on_item(results[-1])
            continue
        results.append(None)
        ready.append((program, bound))
        ready_ids.append(item_id)
    ran = iter(runner.run(ready, ids=ready_ids, use_cache=use_cache, no_cache=no_cache,
                          on_item=on_item))
    out = [r if r is not None else next(ran) for r in results]
    for r in out:
        if r.trace is not None:
            r.trace.meta.setdefault("preset", getattr(vp, "preset", None))
    return out


def _runner_for(vp: Any, batch_size: Any) -> BatchRunner:
    """One runner per (vp, batch size), so "auto" keeps what it measured."""
    runners = vp.__dict__.setdefault("_batch_runners", {})
    key = batch_size if isinstance(batch_size, (int, str)) else id(batch_size)
    if key not in runners:
        device = "cpu"
        models = getattr(vp, "models", None)
        if batch_size == AUTO and models is not None:
            device = models.device
        runners[key] = BatchRunner(vp.registry, vp.cache, batch_size=batch_size, device=device)
    runner = runners[key]
    runner.registry, runner.cache = vp.registry, vp.cache  # follow a vp that swapped them
    return runner


# -- command line ---------------------------------------------------------------------------

def batch_size_arg(text: str) -> int | str:
    """argparse type of --batch-size: "auto" or a positive int."""
    import argparse

    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return value


def add_batch_arguments(p: Any) -> None:
    """The flags of `visprog batch` (the engine flags are added by the CLI)."""
    p.add_argument("items", help="JSONL, one item a line: {id, program or program_file, "
                                 "image | left and right, inputs}")
    p.add_argument("--out", help="results JSONL (default: standard output)")
    p.add_argument("--traces", help="folder to save each item's trace as <id>.json")
    p.add_argument("--batch-size", type=batch_size_arg, default=AUTO,
                   help="calls per batched module call, or auto (default: by device)")


def cmd_batch(args: Any, vp: Any) -> int:
    """`visprog batch`: run every item of a JSONL file; one result line per item. Returns
    the number of items that failed."""
    import json
    import sys
    from pathlib import Path

    from visprog.evaluation.answers import show
    from visprog.evaluation.datasets import DatasetError, _json_lines

    base = Path(args.items).parent
    items = []
    for lineno, row in _json_lines(Path(args.items)):
        row = dict(row)
        if "program_file" in row:
            row["program"] = (base / row.pop("program_file")).read_text(encoding="utf-8")
        if "program" not in row:
            raise DatasetError(f"{args.items}:{lineno}: missing field 'program'")
        for key in ("image", "left", "right"):
            if isinstance(row.get(key), str):
                row[key] = str(base / row[key])
        row.setdefault("id", lineno)
        items.append(BatchItem(**{k: row.get(k) for k in
                                  ("program", "image", "left", "right", "inputs", "id")}))
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    failed = 0
    try:
        for res in vp.run_batch(items, batch_size=args.batch_size, use_cache=not args.no_cache):
            failed += not res.ok
            if args.traces and res.trace is not None:
                Path(args.traces).mkdir(parents=True, exist_ok=True)
                res.trace.save_json(Path(args.traces) / f"{res.id}.json")
            value = res.value
            if hasattr(value, "to_list"):
                value = value.to_list()
            elif not isinstance(value, (str, int, float, bool, list, type(None))):
                value = show(value)
            out.write(json.dumps({"id": res.id, "ok": res.ok, "value": value,
                                  "error": None if res.ok else str(res.error)},
                                 ensure_ascii=False, default=str) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return failed
