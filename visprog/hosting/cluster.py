"""Evaluation on a Ray cluster: chunks of data-set items planned and run as Ray tasks, with
the same result lines and summary as on one machine (`visprog eval DATASET --ray ADDRESS`)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from visprog.errors import first_line
from visprog.hosting.client import HostError, connect_ray

FORWARDED_ENV = ("VISPROG_", "OPENAI_", "HF_", "TRANSFORMERS_")

_ENGINES: dict[str, Any] = {}  # per worker process: token -> VisProg (models load once)


def ray_executor(address: str, make_engine: Callable[[], Any], *, num_cpus: float = 1.0,
                 num_gpus: float = 0.0) -> Any:
    """An `executor` for `visprog.evaluation.harness.evaluate` that spreads chunks of items
    over a Ray cluster: each chunk is one Ray task that plans and runs its items with the
    engine `make_engine` assembles (the client's own: its recipe holds the resolved config,
    device, cache and image limits, so the same models, settings and hosting), and returns
    its result lines. The caller writes the lines as chunks finish, so resume and the
    summary work as on one machine.

    Image paths must be readable on the workers (a shared file system), as on one machine.

    Args:
        address: the Ray cluster ("auto", "HOST:6379", "ray://HOST:10001").
        make_engine: builds the engine a worker runs its chunks on (picklable:
            `functools.partial(VisProg.from_recipe, vp.assembly.recipe)`, which assembles
            it with `visprog.config`); built once per worker and evaluation.
        num_cpus, num_gpus: resources of each task (a task holds its models while it runs).
    """
    import os
    import uuid

    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}

    def run(chunks: Sequence[Sequence[Any]], *, batch_size: Any, use_cache: bool,
            mode: str | None = None, agent: Any = None, repair: Any = None) -> Any:
        import ray

        connect_ray(address)
        task = ray.remote(_eval_chunk).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2,
            runtime_env={"env_vars": env} if env else None)
        pending = [task.remote(token, make_engine, list(chunk), batch_size, use_cache,
                               mode, agent, repair)
                   for chunk in chunks if chunk]
        failures: list[BaseException] = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                lines = ray.get(done[0])
            except Exception as e:  # a chunk whose task failed after Ray's retries
                failures.append(e)
                continue
            yield from lines
        if failures:
            raise HostError(
                f"evaluation on the Ray cluster at {address}: {len(failures)} chunk(s) failed "
                f"after retries ({type(failures[0]).__name__}: {first_line(failures[0])}); "
                "their items are not in the results file, so a rerun resumes with them",
                module="eval", address=address)

    return run


def _eval_chunk(token: str, make_engine: Callable[[], Any], items: list[Any], batch_size: Any,
                use_cache: bool, mode: str | None = None, agent: Any = None,
                repair: Any = None) -> list[dict[str, Any]]:
    """One chunk of evaluation items, in a Ray worker: their result lines (planned in `mode`
    with `agent`'s budgets, repaired as `repair` says; None: the engine's config's)."""
    from visprog.evaluation.harness import _run_chunk

    vp = _ENGINES.get(token)
    if vp is None:
        _ENGINES.clear()  # an earlier evaluation's engine: free its models
        vp = _ENGINES[token] = make_engine()
    lines: list[dict[str, Any]] = []
    _run_chunk(vp, items, lines.append, batch_size, use_cache, repair=repair, mode=mode,
               agent=agent)
    return lines
