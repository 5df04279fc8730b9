"""Runs a checked program over bound inputs, one step at a time, recording a trace.

Each step's arguments are resolved (variables to values, declared defaults filled in), a
content key is made from the tool's declaration and those values, and the cache is asked
before the tool is called. A tool that raises ends the run with a `StepError` naming the step;
the trace up to it is kept on the error.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from . import codec
from .cache import MISS, step_key
from .checker import check_or_raise
from .errors import CacheWarning, StepError
from .program import Program, Step, Var
from .registry import Registry, Tool
from .trace import StepRecord, Trace
from .values import MAX_NESTING, nesting_depth, type_of

StepCallback = Callable[[StepRecord], None]


@dataclass
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
        # step key -> digest of that step's output, kept by the interpreter across runs
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
    refs = [p for p in tool.params if p.refs is not None]
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


def check_output(tool: Tool, value: Any) -> None:
    """A tool must return what it declared; a third-party tool that doesn't fails here,
    at its own step, instead of confusing a later one."""
    if nesting_depth(value) > MAX_NESTING:
        raise TypeError(f"{tool.name} returned lists nested more than {MAX_NESTING} deep")
    if "Any" in tool.returns:
        return
    got = type_of(value)
    if got not in tool.returns and not (got == "TextList" and "TextList" in tool.returns):
        raise TypeError(f"{tool.name} returned {got} ({type(value).__name__}), "
                        f"declared {'|'.join(sorted(tool.returns))}")


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


def cache_put(cache: Any, key: str, tool: Tool, value: Any) -> None:
    """Store a step result; a cache that fails must not fail the run."""
    try:
        cache.put(key, value)
    except Exception as e:
        warnings.warn(f"could not cache {tool.name}: {e}", CacheWarning, stacklevel=3)


class Interpreter:
    """Runs programs with one registry and one cache.

    Args:
        registry: the tools.
        cache: a `visprog.cache.StepCache`, or None for no caching.
    """

    def __init__(self, registry: Registry, cache: Any = None):
        self.registry = registry
        self.cache = cache
        self._output_digests: dict[str, str] = {}  # see DigestMemo.output

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
        skip = {self.registry.find(n).name for n in no_cache if self.registry.find(n)}
        env: dict[str, Any] = dict(inputs)
        trace = Trace(program=program.source, inputs=dict(inputs))
        if len(self._output_digests) > 100_000:  # a bound, not an LRU: cheap to rebuild
            self._output_digests.clear()
        memo = DigestMemo(self._output_digests)
        result: Any = None
        have_result = False
        for index, step in enumerate(program):
            record = self._run_step(index, step, env, use_cache, skip, trace, memo)
            if on_step is not None:
                on_step(record)
            env[step.target] = record.output
            if record.module == "Result":
                result, have_result = record.output, True
        if not have_result and program.steps:
            result = env[program.steps[-1].target]
        trace.result = result
        return result, trace

    def _run_step(self, index: int, step: Step, env: dict[str, Any], use_cache: bool,
                  skip: set[str], trace: Trace, memo: DigestMemo) -> StepRecord:
        started = time.perf_counter()
        if step.module is None:  # alias: a new name for a value, nothing to run
            record = alias_record(index, step, env)
            trace.steps.append(record)
            return record
        tool = self.registry.get(step.module)
        caching = use_cache and self.cache is not None and tool.cacheable and tool.name not in skip
        call = prepare(step, tool, env, cache_key=caching, memo=memo)
        record = call_record(index, call)
        trace.steps.append(record)
        try:
            record.output, record.cached = self._call(call)
            if call.key is not None:
                memo.output(record.output, call.key, cached=record.cached)
        except Exception as e:
            record.duration = time.perf_counter() - started
            record.error = f"{type(e).__name__}: {e}"
            trace.error = record.error
            raise StepError(str(e) or type(e).__name__, index=index, line=step.line,
                            target=step.target, module=tool.name, cause=e, trace=trace) from e
        record.duration = time.perf_counter() - started
        return record

    def _call(self, call: Call) -> tuple[Any, bool]:
        cache = self.cache
        if call.key is not None:
            hit = cache.get(call.key)
            if hit is not MISS:
                return hit, True
        value = call.tool(**call.kwargs)
        check_output(call.tool, value)
        if call.key is not None:
            cache_put(cache, call.key, call.tool, value)
        return value, False
