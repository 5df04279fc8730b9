"""Runs one checked program over bound inputs, step by step, recording a trace (`Interpreter`).

A lone run is the one execution core (`visprog.engine.core`) with a schedule of one program
that raises on error: each step's arguments are resolved, a content key is made, the cache is
asked before the tool is called, and a tool that raises ends the run with a `StepError`
naming the step; the trace up to it is kept on the error.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from visprog.engine.core import Call, DigestMemo, Engine, StepCallback, prepare
from visprog.language.checker import check_or_raise
from visprog.language.program import Program
from visprog.registry import Registry
from visprog.traces.records import Trace
from visprog.values.types import type_of

__all__ = ["Interpreter", "StepCallback", "Call", "DigestMemo", "prepare"]


class Interpreter:
    """Runs programs with one registry and one cache.

    Args:
        registry: the tools.
        cache: a `visprog.engine.cache.StepCache`, or None for no caching.
        engine: run on this `Engine` instead of a new one.
    """

    def __init__(self, registry: Registry, cache: Any = None, *, engine: Engine | None = None):
        self.engine = engine or Engine(registry, cache)

    @property
    def registry(self) -> Registry:
        return self.engine.registry

    @property
    def cache(self) -> Any:
        return self.engine.cache

    def run(self, program: Program, inputs: Mapping[str, Any], *, use_cache: bool = True,
            no_cache: Iterable[str] = (), on_step: StepCallback | None = None,
            check: bool = True) -> tuple[Any, Trace]:
        """Run `program` with `inputs` bound; return (result, trace).

        Args:
            use_cache: False runs every step afresh (and stores nothing).
            no_cache: module names whose results are neither read from nor written to the cache.
            on_step: called with each finished step's record (progress display).
            check: check the program first (against the inputs' actual types).

        Raises:
            CheckError: the program does not fit the registry or the inputs.
            StepError: a step failed; `.trace` holds the steps up to and including it.
        """
        if check:
            check_or_raise(program, self.registry, {k: type_of(v) for k, v in inputs.items()})
        return self.engine.run_one(program, inputs, use_cache=use_cache, no_cache=no_cache,
                                   on_step=on_step)
