"""Runs many programs together so that model modules see batches (`BatchRunner`).

A thin schedule over the one execution core (`visprog.engine.core`): programs advance in
rounds and the ready calls of one module across programs go to it together
(`visprog.engine.schedule` decides which, and how many at a time). Programs still run step by
step in their own order, so each item's trace is the one a lone run would give.

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

"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

from visprog.engine.core import BatchStats, Engine, ItemResult, Job
from visprog.engine.schedule import AUTO, AutoBatchSize, FixedBatchSize, make_batch_size
from visprog.errors import VisProgError
from visprog.language.checker import check_or_raise
from visprog.language.program import Program
from visprog.registry import Registry
from visprog.traces.records import Trace
from visprog.values.types import type_of

__all__ = ["AUTO", "AutoBatchSize", "FixedBatchSize", "make_batch_size", "BatchItem",
           "BatchRunner", "BatchStats", "ItemResult"]


@dataclass
class BatchItem:
    """One program and its inputs. The program is text or a parsed `Program` (None: the
    planner writes one for the `question`); images are paths, bytes, PIL images or arrays,
    a `video` (VIDEO) a file's path, a folder of frames, a list of images or a `Video`
    (`VisProg.run_batch` reads them). An item with a `question` (and its `task`) can be
    checked and repaired after it runs (`visprog.planning.loop`); `events` start its trace
    (`visprog.traces.events` records, e.g. the planner's attempts)."""

    program: Any = None
    image: Any = None
    left: Any = None
    right: Any = None
    inputs: Mapping[str, Any] | None = None
    id: Any = None
    question: str | None = None
    task: str | None = None  # None: "video" for an item with a video, else "gqa"
    events: Sequence[Any] = ()
    video: Any = None

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = "video" if self.video is not None else "gqa"

    @classmethod
    def make(cls, raw: Any, index: int = 0) -> BatchItem:
        """A `run_batch` item as a `BatchItem`: one already, a mapping of its fields, or a
        program (text or parsed) with no inputs.

        Raises:
            TypeError: anything else, or a mapping with a key a `BatchItem` does not have.
        """
        if isinstance(raw, BatchItem):
            return raw
        if isinstance(raw, (str, Program)):
            return cls(program=raw)
        if isinstance(raw, Mapping):
            known = [f.name for f in fields(cls)]
            unknown = [k for k in raw if k not in known]
            if unknown:
                raise TypeError(f"run_batch item {index}: unknown "
                                f"key{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown))}; an item's keys are "
                                f"{', '.join(known)}")
            return cls(**raw)
        raise TypeError(f"run_batch item {index}: expected a mapping (program, image...), a "
                        f"BatchItem, a query value or program text, got {type(raw).__name__}")

    @property
    def meta(self) -> dict[str, Any]:
        """What its trace's meta says of it: the task and question, when it has one."""
        return {"task": self.task, "question": self.question} if self.question else {}


class BatchRunner:
    """Runs lists of (program, bound inputs) with one registry and one cache.

    Args:
        registry: the tools.
        cache: a `visprog.engine.cache.StepCache`, or None.
        batch_size: int, "auto" or a sizer object (`AutoBatchSize`); kept across runs so
            "auto" measures once.
        device: the models' device, for "auto".
        engine: run on this `Engine` (sharing its digests and model events) instead of a new one.
    """

    def __init__(self, registry: Registry, cache: Any = None, *,
                 batch_size: int | str | Any = AUTO, device: str = "cpu",
                 engine: Engine | None = None):
        self.engine = engine or Engine(registry, cache)
        self.sizer = make_batch_size(batch_size, device)

    @property
    def stats(self) -> BatchStats:
        return self.engine.stats

    @property
    def last_stats(self) -> BatchStats:
        return self.engine.last_stats

    def run(self, items: Sequence[tuple[Program, Mapping[str, Any]]], *, ids: Sequence[Any] = (),
            use_cache: bool = True, no_cache: Iterable[str] = (), check: bool = True,
            on_item: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
        """Run every (program, inputs) pair; results in the same order.

        Args:
            ids: an id per item, copied into its result.
            use_cache, no_cache: as in `Engine.run`.
            check: check each program against its inputs first; one that fails the check gets
                a `CheckError` result and the others run.
            on_item: called with each item's result as soon as it is finished.
        """
        ids = list(ids) or list(range(len(items)))
        results: list[ItemResult | None] = [None] * len(items)
        jobs, where = [], []
        for pos, (program, inputs) in enumerate(items):
            if check:
                try:
                    check_or_raise(program, self.engine.registry,
                                   {k: type_of(v) for k, v in inputs.items()})
                except VisProgError as e:
                    trace = Trace(program=program.source, inputs=dict(inputs), error=str(e))
                    results[pos] = ItemResult(ids[pos], None, program, trace, e)
                    if on_item is not None:
                        on_item(results[pos])
                    continue
            jobs.append(Job(program, inputs, ids[pos]))
            where.append(pos)
        ran = self.engine.run(jobs, sizer=self.sizer, use_cache=use_cache, no_cache=no_cache,
                              on_item=on_item, record_batches=True)
        for pos, res in zip(where, ran):
            results[pos] = res
        return results  # type: ignore[return-value]
