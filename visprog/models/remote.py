"""A vision model behind an OpenAI-compatible chat-completions endpoint (vLLM or Ollama
serving a VLM, or a hosted model): a question and its images go as one chat message with
image content (Vqa: one image; VideoQa: frames, each after its time), and the reply's text
is the answer.

The request policy is the planner's client's, one loop for both (`ChatServer` in
visprog/models/openai_api.py): bounded retries after a timeout, a connection error, HTTP 429
or 5xx, or a reply that is not a chat completion (a proxy's HTML page), with doubling backoff
capped at `max_backoff` and a server's Retry-After honoured within the cap; any other refusal
fails at once with a message that says what to check; an enclosing `deadline(...)` bounds the
requests and their waits. `ask_many` sends requests in parallel, at most `concurrency` at a
time, in place of batching.
"""
from __future__ import annotations

import base64
import contextvars
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from PIL import Image

from visprog.errors import RemoteModelError
from visprog.models.openai_api import OPENAI_URL, ChatServer

ENV_API_KEY = "OPENAI_API_KEY"  # shared with the planner's client unless VISPROG_VQA_API_KEY
ENV_VQA_API_KEY = "VISPROG_VQA_API_KEY"
ENV_VQA_BASE_URL = "VISPROG_VQA_BASE_URL"
ENV_VQA_MODEL = "VISPROG_VQA_MODEL"


def image_data_url(image: Image.Image, fmt: str = "png") -> str:
    """The image as a data URL (PNG: lossless, so the server sees our pixels)."""
    buf = io.BytesIO()
    fmt = fmt.lower()
    image.convert("RGB").save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else "PNG",
                              **({"quality": 95} if fmt in ("jpg", "jpeg") else {}))
    mime = "jpeg" if fmt in ("jpg", "jpeg") else "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_url_part(image: Image.Image, fmt: str = "png") -> dict[str, Any]:
    """An image as a content part of an OpenAI chat message (its data URL)."""
    return {"type": "image_url", "image_url": {"url": image_data_url(image, fmt)}}


class VisionEndpoint:
    """A chat-completions endpoint that takes images.

    Args:
        model: the served model's name (else `$VISPROG_VQA_MODEL`).
        base_url: e.g. "http://localhost:8000/v1" (else `$VISPROG_VQA_BASE_URL`, else
            OpenAI's own endpoint).
        api_key: else `$VISPROG_VQA_API_KEY`, else `$OPENAI_API_KEY`; a local server without
            auth accepts any non-empty value.
        timeout: seconds per request; max_retries, backoff, max_backoff: as the planner's.
        concurrency: most requests in flight at once.
        image_format: "png" (default) or "jpeg".
        section: the config table its settings come from, named in errors ("Vqa.endpoint").

    Raises:
        RemoteModelError: no model or key, or the `openai` package is missing.
    """

    def __init__(self, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, *, timeout: float = 60.0, max_retries: int = 3,
                 backoff: float = 0.5, max_backoff: float = 8.0, concurrency: int = 8,
                 image_format: str = "png", section: str = "Vqa.endpoint"):
        self.model = model or os.environ.get(ENV_VQA_MODEL, "")
        owner = section.split(".")[0]
        if not self.model:
            raise RemoteModelError(f"{owner}'s endpoint backend needs a model: set [{section}] "
                                   f"model = \"...\" or {ENV_VQA_MODEL}")
        self.base_url = base_url or os.environ.get(ENV_VQA_BASE_URL) or None
        key = api_key or os.environ.get(ENV_VQA_API_KEY) or os.environ.get(ENV_API_KEY)
        if not key:
            raise RemoteModelError(
                f"no API key for {owner}'s endpoint: set {ENV_VQA_API_KEY} or {ENV_API_KEY}; a local "
                f"server without auth accepts any value, e.g. {ENV_VQA_API_KEY}=none")
        self.concurrency = max(1, int(concurrency))
        self.image_format = image_format
        where = self.base_url or OPENAI_URL
        self.server = ChatServer(
            model=self.model, base_url=self.base_url, api_key=key, timeout=timeout,
            max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
            error=RemoteModelError, what="vision request",
            connect_hint=f"set [{section}] base_url or {ENV_VQA_BASE_URL} to its address",
            refusal_hints={401: f"check {ENV_VQA_API_KEY} / {ENV_API_KEY}",
                           403: f"check {ENV_VQA_API_KEY} / {ENV_API_KEY} and its permissions",
                           404: f"check the model name ({self.model!r}) and the base_url "
                                f"({where!r})",
                           400: "does the served model take images?"})

    @property
    def where(self) -> str:
        return self.server.where

    def messages(self, *parts: Image.Image | str) -> list[dict[str, Any]]:
        """One user turn of `parts` in their order: images as data URLs, the rest as text."""
        return [{"role": "user", "content": [
            image_url_part(p, self.image_format) if isinstance(p, Image.Image)
            else {"type": "text", "text": str(p)} for p in parts]}]

    def ask(self, *parts: Image.Image | str, max_tokens: int = 16) -> str:
        """One answer to a turn of images and texts (`ask(image, question)`), greedy
        (temperature 0).

        Raises:
            RemoteModelError: unreachable server, refused request, retries used up, or an
                enclosing `deadline` reached.
        """
        args = {"model": self.model, "messages": self.messages(*parts),
                "temperature": 0.0, "max_tokens": int(max_tokens)}
        _, choices = self.server.create(**args)
        if not choices or getattr(choices[0], "message", None) is None:
            raise RemoteModelError(f"the vision endpoint at {self.where} returned no choices")
        return choices[0].message.content or ""

    def ask_many(self, turns: Sequence[Sequence[Image.Image | str]], *, max_tokens: int = 16
                 ) -> list[str]:
        """One answer per turn (its parts as `ask` takes them: (image, text)...), in order;
        at most `concurrency` requests at once.
        The first failure is raised once every request has ended. Each request runs in a
        copy of the caller's context, so an enclosing `deadline` holds in the threads too."""
        if len(turns) <= 1 or self.concurrency == 1:
            return [self.ask(*parts, max_tokens=max_tokens) for parts in turns]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(turns))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, self.ask, *parts,
                                   max_tokens=max_tokens) for parts in turns]
            return [f.result() for f in futures]
