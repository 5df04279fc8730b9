"""What every LLM client is: the `ChatClient` protocol, its reply, its error, and token
counts. The OpenAI-compatible client (llm.py) and the local constrained one (llm_local.py)
both build on this."""
from __future__ import annotations

import contextlib
import contextvars
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

from visprog.errors import LLMError


# The total time that the LLM requests made inside `deadline(...)` may take together:
# (monotonic time it ends, its length in seconds, the setting's name for messages). A
# client honours it through `time_left` (the planner sets it; see `OpenAIChat`).
_DEADLINE: contextvars.ContextVar[tuple[float, float, str] | None] = contextvars.ContextVar(
    "visprog_llm_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float | None, name: str = "deadline_s") -> Iterator[None]:
    """Within this block, LLM requests (retries and their waits included) end by `seconds`
    from now: a request's timeout is cut to the time left, and none starts after it. An
    enclosing deadline that ends sooner still holds. None: no deadline."""
    outer = _DEADLINE.get()
    if seconds is None or (outer is not None and outer[0] <= time.monotonic() + seconds):
        yield
        return
    token = _DEADLINE.set((time.monotonic() + float(seconds), float(seconds), name))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds left until the current `deadline`, or None outside one."""
    d = _DEADLINE.get()
    return None if d is None else d[0] - time.monotonic()


def deadline_error(where: str, attempts: int, last: str) -> LLMError:
    """The error for requests stopped by the current `deadline`."""
    _, seconds, name = _DEADLINE.get() or (0.0, 0.0, "deadline_s")
    tried = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    detail = f"; the last one: {last}" if last else ""
    return LLMError(f"LLM request to {where} stopped: the deadline of {seconds:g} s for "
                    f"planning ({name}) was reached{tried}{detail}")


@dataclass
class LLMReply:
    """What a chat call returned.

    Attributes:
        text: the first completion.
        texts: all completions (`n` of them when the backend honours `n`).
        usage: token counts, e.g. {"prompt_tokens": 120, "completion_tokens": 30,
            "total_tokens": 150}; empty when the server reports none.
        model: the model that answered, as the backend names it.
    """

    text: str
    texts: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    model: str = ""


@runtime_checkable
class ChatClient(Protocol):
    """What the planner needs from an LLM."""

    def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0,
             max_tokens: int = 512, n: int = 1, seed: int | None = None,
             stop: list[str] | None = None) -> LLMReply: ...

    def describe(self) -> dict[str, Any]: ...


def add_usage(total: dict[str, int], more: Mapping[str, Any] | None) -> dict[str, int]:
    """Sum token counts key by key (in place; returns `total`)."""
    for k, v in (more or {}).items():
        if isinstance(v, int):
            total[k] = total.get(k, 0) + v
    return total
