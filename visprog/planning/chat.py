"""What every LLM client is: the `ChatClient` protocol, its reply, its error, and token
counts. The OpenAI-compatible client (llm.py) and the local constrained one (llm_local.py)
both build on this.

A message's `content` is a string, or a list of parts: `{"type": "text", "text": str}` and
`{"type": "image", "image": PIL.Image.Image}`. A client whose `takes_images` is true (False
when it has no such attribute) is sent the image parts; any other gets the text alone
(`text_only`).

`chat_many` sends several chats at once (agent mode sends every item's next round together):
through the client's `chat_batch` when it has one, in parallel threads up to the client's
`concurrency` (an OpenAI-compatible server), else one after the other.
"""
from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from visprog.errors import LLMError
# The deadline of a plan's LLM requests (the planner sets it, `OpenAIChat` honours it) lives
# with the request policy it bounds, which Vqa's endpoint shares.
from visprog.models.openai_api import deadline, time_left

__all__ = ["LLMError", "LLMReply", "ChatClient", "ChatCall", "add_usage", "chat_many", "chat_one",
           "deadline", "message_text", "takes_images", "text_only", "time_left"]


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


# --------------------------------------------------------------------------- images and text


def takes_images(client: Any) -> bool:
    """Whether `client` is sent image parts (its `takes_images`, False when absent)."""
    return bool(getattr(client, "takes_images", False))


def message_text(content: Any) -> str:
    """A message's content as text: a string as it is, a list of parts as its text parts,
    one per line (image parts left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "\n".join(str(p.get("text", "")) for p in content
                         if isinstance(p, Mapping) and p.get("type") == "text")
    return "" if content is None else str(content)


def text_only(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The chat with every content as plain text (for a client that takes no images)."""
    return [{**m, "content": message_text(m.get("content"))} for m in messages]


# --------------------------------------------------------------------------- several chats


@dataclass
class ChatCall:
    """One chat of `chat_many`: the client, its messages, and the seconds it may take
    (None: no deadline of its own). `reply` or `error` is filled in, and `seconds`."""

    client: Any
    messages: list[dict[str, Any]]
    deadline_s: float | None = None
    reply: LLMReply | None = None
    error: BaseException | None = None
    seconds: float = 0.0


def chat_one(call: ChatCall, sampling: Mapping[str, Any]) -> None:
    """Send one call's chat (text only for a client that takes no images) within its
    deadline; its reply, or its error, and its seconds go into the call."""
    started = time.perf_counter()
    try:
        messages = call.messages if takes_images(call.client) else text_only(call.messages)
        with deadline(call.deadline_s):
            call.reply = call.client.chat(messages, **sampling)
    except Exception as e:  # one chat's failure is its own: the others go on
        call.error = e
    call.seconds = time.perf_counter() - started


def chat_many(calls: Sequence[ChatCall], **sampling: Any) -> Sequence[ChatCall]:
    """Send every call's chat (the same sampling for all) and fill in its reply or error.

    Calls whose clients share a `chat_batch` (a local model) go as one batch through it;
    the others in parallel up to the first client's `concurrency` (default 1: one after the
    other), each in a copy of this context, so the enclosing deadline holds in every thread.
    """
    calls = list(calls)
    if not calls:
        return calls
    batch = getattr(calls[0].client, "chat_batch", None)
    if batch is not None and len(calls) > 1:
        batch(calls, **sampling)
        return calls
    workers = min(len(calls), max(1, int(getattr(calls[0].client, "concurrency", 1) or 1)))
    if workers == 1:
        for call in calls:
            chat_one(call, sampling)
        return calls
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(contextvars.copy_context().run, chat_one, call, sampling)
                   for call in calls]
        for f in futures:
            f.result()
    return calls
