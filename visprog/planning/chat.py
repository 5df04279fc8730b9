"""What every LLM client is: the `ChatClient` protocol, its reply, its error, token counts,
and what a chat message may hold. The OpenAI-compatible client (llm.py) and the local
constrained one (llm_local.py) both build on this.

A message is `{"role": ..., "content": ...}`; its content is a string, or a list of parts:
`{"type": "text", "text": str}` and `{"type": "image", "image": PIL.Image.Image}`. A client
whose model takes images has `takes_images = True`; any other client gets the text of each
message only (`text_messages`: its image parts dropped, its texts joined by a newline), so
callers may always send images: `for_client(client, messages)` does that for a client of
someone else's that doesn't say it takes them.

`chat_many` sends several chats at once (agent mode sends every item's next round together):
through the client's `chat_batch` when it has one (the local model: one batched decode), in
parallel threads up to the client's `concurrency` (an OpenAI-compatible server), else one
after the other.
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

__all__ = ["LLMError", "LLMReply", "ChatClient", "ChatCall", "add_usage", "chat_many",
           "chat_one", "deadline", "time_left", "content_text", "text_messages",
           "message_images", "check_messages", "takes_images", "for_client",
           "IMAGE_MAX_PIXELS", "images_flag", "image_pixels"]


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

    def chat(self, messages: list[dict[str, Any]], *, temperature: float = 0.0,
             max_tokens: int = 512, n: int = 1, seed: int | None = None,
             stop: list[str] | None = None) -> LLMReply: ...

    def describe(self) -> dict[str, Any]: ...


def add_usage(total: dict[str, int], more: Mapping[str, Any] | None) -> dict[str, int]:
    """Sum token counts key by key (in place; returns `total`)."""
    for k, v in (more or {}).items():
        if isinstance(v, int):
            total[k] = total.get(k, 0) + v
    return total


# -- messages with images ------------------------------------------------------------------

# The bound on an image sent to a chat model: scaled down (aspect kept) to at most this many
# pixels, about what Qwen-VL models see by default (Vqa's max_pixels too) and under the
# 2048-pixel side that hosted models scale to anyway. At JPEG quality 95 a 1024x1024 photo
# is a few hundred KB, so an agent's conversation that carries several stays small.
IMAGE_MAX_PIXELS = 1024 * 1024
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def images_flag(value: Any, name: str = "images") -> bool:
    """A setting that says whether the model takes images: a bool, or one of 1/0, true/false,
    yes/no, on/off (the environment's spelling).

    Raises:
        LLMError: anything else.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LLMError(f"{name} must be true or false (1/0, yes/no, on/off), got {value!r}")


def image_pixels(value: Any) -> int:
    """An `image_max_pixels` setting, checked: a whole number of pixels, at least 28x28 (a
    Qwen-VL image token's patch).

    Raises:
        LLMError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 28 * 28:
        raise LLMError(f"image_max_pixels must be a whole number of pixels of at least "
                       f"{28 * 28}, got {value!r}")
    return value


def _is_image(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def check_messages(messages: Any) -> None:
    """Refuse what is not a list of chat messages in the form above, naming the message
    and part.

    Raises:
        LLMError: a message without a role or content, a part of an unknown type, an image
            part without a PIL image, a text part without a string.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise LLMError("a chat needs a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise LLMError(f"message {i} is not a {{'role': ..., 'content': ...}} dict")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)):
            raise LLMError(f"message {i}: content must be a string or a list of parts, "
                           f"got {type(content).__name__}")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image" and _is_image(part.get("image")):
                continue
            what = (f"type {kind!r}" if kind not in ("text", "image") else
                    "a text part without a string 'text'" if kind == "text" else
                    "an image part without a PIL image in 'image'")
            raise LLMError(f"message {i}, part {j}: {what}; parts are "
                           f"{{'type': 'text', 'text': str}} or "
                           f"{{'type': 'image', 'image': PIL.Image.Image}}")


def content_text(content: Any) -> str:
    """A message's content as text: a string as it is, a list of parts as its text parts
    joined by a newline (image parts dropped)."""
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content or ()
                     if isinstance(p, dict) and p.get("type") == "text")


def text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as a model without images gets them: each content as `content_text`."""
    return [{**m, "content": content_text(m.get("content"))} for m in messages]


def message_images(messages: list[dict[str, Any]]) -> list[Any]:
    """The images of the messages' image parts, in order."""
    return [p["image"] for m in messages if not isinstance(m.get("content"), str)
            for p in m.get("content") or () if isinstance(p, dict) and p.get("type") == "image"]


def takes_images(client: Any) -> bool:
    """Whether `client`'s model takes image parts (False when it doesn't say)."""
    return bool(getattr(client, "takes_images", False))


def for_client(client: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` as `client` may get them: with their images when it takes them, else as
    text (`text_messages`)."""
    return messages if takes_images(client) else text_messages(messages)


# -- several chats ---------------------------------------------------------------------------


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
    """Send one call's chat (`for_client`: text only for a client that takes no images)
    within its deadline; its reply, or its error, and its seconds go into the call."""
    started = time.perf_counter()
    try:
        with deadline(call.deadline_s):
            call.reply = call.client.chat(for_client(call.client, call.messages), **sampling)
    except Exception as e:  # one chat's failure is its own: the others go on
        call.error = e
    call.seconds = time.perf_counter() - started


def chat_many(calls: Sequence[ChatCall], **sampling: Any) -> Sequence[ChatCall]:
    """Send every call's chat (the same sampling for all) and fill in its reply or error.

    Several calls whose first client has a `chat_batch` (the local model) go as one batch
    through it; the others in parallel up to the first client's `concurrency` (default 1:
    one after the other), each in a copy of this context, so the enclosing deadline holds in
    every thread.
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
