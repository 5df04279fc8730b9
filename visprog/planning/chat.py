"""What every LLM client is: the `ChatClient` protocol, its reply, its error, and token
counts. The OpenAI-compatible client (llm.py) and the local constrained one (llm_local.py)
both build on this."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

from visprog.errors import LLMError
# The deadline of a plan's LLM requests (the planner sets it, `OpenAIChat` honours it) lives
# with the request policy it bounds, which Vqa's endpoint shares.
from visprog.models.openai_api import deadline, time_left

__all__ = ["LLMError", "LLMReply", "ChatClient", "add_usage", "deadline", "time_left"]


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
