"""LLM clients for the planner: one small protocol, two backends.

Every client has

    chat(messages, *, temperature=0.0, max_tokens=512, n=1, seed=None, stop=None) -> LLMReply
    describe() -> {"backend": ..., "model": ..., "base_url": ...}   # part of cache keys

and, optionally, `constrain_to(registry, inputs) -> client`: the planner plans with the
client it returns, so a backend that can constrain its output (a local model, or a server
that accepts a grammar) knows which modules, arguments and input variables exist, while
other users of the client (the List module) still get free text; and, optionally,
`constrain_grammar(grammar) -> client`: replies held to a small Lark grammar (the critic's
verdict), for backends that can constrain their output.

- `OpenAIChat`: any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama,
  llama.cpp server...) through the official `openai` client, with the request policy of
  `visprog.models.openai_api` (bounded retries, the planning deadline), which Vqa's endpoint
  backend shares.
  With images on (`images=True`, `[llm] images = true` or `VISPROG_LLM_IMAGES=1`), a
  message's image parts go to the server as `image_url` parts (`message_to_openai`); off
  (the default), the server gets each message's text only.
- `LocalConstrained` (`visprog.llm_local`): a local Hugging Face causal LM whose sampling is
  constrained by a grammar derived from the registry, so every program it writes parses and
  checks.

`make_llm(config)` picks one from a config mapping or the environment.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping

from visprog.models.images import bound_pixels
from visprog.models.openai_api import OPENAI_URL, ChatServer
from visprog.models.remote import image_url_part
from visprog.planning.chat import (IMAGE_MAX_PIXELS, ChatClient, LLMError, LLMReply, add_usage,
                                   check_messages, content_text, deadline, image_pixels,
                                   images_flag, time_left)

__all__ = ["ChatClient", "LLMError", "LLMReply", "add_usage", "deadline", "time_left",
           "OpenAIChat", "make_llm", "message_to_openai", "IMAGE_MAX_PIXELS", "images_flag"]

ENV_API_KEY = "OPENAI_API_KEY"
ENV_BASE_URL = "OPENAI_BASE_URL"
ENV_MODEL = "VISPROG_LLM_MODEL"
ENV_BACKEND = "VISPROG_LLM_BACKEND"
ENV_LOCAL_MODEL = "VISPROG_LLM_PATH"
ENV_IMAGES = "VISPROG_LLM_IMAGES"

IMAGE_FORMATS = ("jpeg", "png")


def message_to_openai(message: dict[str, Any], images: bool, *,
                      max_pixels: int = IMAGE_MAX_PIXELS, image_format: str = "jpeg"
                      ) -> dict[str, Any]:
    """A chat message (`visprog.planning.chat`: content a string or a list of text and image
    parts) as the OpenAI chat-completions API takes it. With `images`, each image part becomes
    one `image_url` part whose URL is a base64 data URL of the image scaled down to at most
    `max_pixels` pixels, as JPEG (quality 95) or PNG; without, the content is the text parts
    joined by a newline. A string content passes as it is either way."""
    content = message.get("content")
    if isinstance(content, str):
        return dict(message)
    if not images:
        return {**message, "content": content_text(content)}
    parts: list[dict[str, Any]] = []
    for part in content or ():
        if part.get("type") == "image":
            parts.append(image_url_part(bound_pixels(part["image"], max_pixels), image_format))
        else:
            parts.append({"type": "text", "text": part["text"]})
    return {**message, "content": parts}

# Extra request fields that carry a grammar, by server family (off unless asked for).
GRAMMAR_FIELDS = {
    "vllm": "guided_grammar",  # vLLM's OpenAI server, Lark/EBNF text
}


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint.

    Args:
        model: model name; else `$VISPROG_LLM_MODEL`.
        base_url: e.g. "http://localhost:8000/v1" for vLLM; else `$OPENAI_BASE_URL`, else
            OpenAI's own endpoint.
        api_key: else `$OPENAI_API_KEY`. Local servers without auth still need a non-empty
            value (any string).
        timeout: seconds per request.
        max_retries: retries after a timeout, a connection error, HTTP 429 or 5xx, or a
            reply that is not a chat completion. A call takes at most about
            `(max_retries + 1) * timeout` plus the backoff sleeps, and never past an
            enclosing `deadline` (the planner's `deadline_s`).
        backoff: first sleep between retries, doubled each time, capped at `max_backoff`.
            A server's `Retry-After` is honoured when it is within the cap.
        grammar: None (default), or a server family from `GRAMMAR_FIELDS` ("vllm"): then
            each request carries the program grammar (set by `constrain_to`) in that
            family's extra field, so the server only samples programs of the language.
        extra_body: extra request fields passed as is.
        images: whether the served model takes images (`takes_images`): then image parts go
            as `image_url` data URLs, else each message as its text. None: `$VISPROG_LLM_IMAGES`
            (1/true/yes/on), else False.
        image_format: "jpeg" (default, quality 95) or "png" (lossless, larger).
        image_max_pixels: each image is scaled down to at most this many pixels first
            (default `IMAGE_MAX_PIXELS`, 1024x1024).

    Attributes:
        takes_images: from `images`: image parts are sent (`message_to_openai`).
        concurrency: requests `visprog.planning.chat.chat_many` sends at once.

    Raises:
        LLMError: no model or key is configured, `openai` is not installed, or an image
            setting is not valid.
    """

    concurrency = 8

    def __init__(self, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0, max_retries: int = 3,
                 *, backoff: float = 0.5, max_backoff: float = 8.0, grammar: str | None = None,
                 extra_body: Mapping[str, Any] | None = None, images: bool | None = None,
                 image_format: str = "jpeg", image_max_pixels: int = IMAGE_MAX_PIXELS):
        self.takes_images = images_flag(os.environ.get(ENV_IMAGES, "") if images is None
                                        else images,
                                        ENV_IMAGES if images is None else "images")
        self.image_format = str(image_format).lower().replace("jpg", "jpeg")
        if self.image_format not in IMAGE_FORMATS:
            raise LLMError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, "
                           f"got {image_format!r}")
        self.image_max_pixels = image_pixels(image_max_pixels)
        self.model = model or os.environ.get(ENV_MODEL, "")
        if not self.model:
            raise LLMError(f"no LLM model configured: pass model=... or set {ENV_MODEL} "
                           f"(e.g. {ENV_MODEL}=gpt-4o-mini)")
        self.base_url = base_url or os.environ.get(ENV_BASE_URL) or None
        key = api_key or os.environ.get(ENV_API_KEY)
        if not key:
            raise LLMError(f"no API key for the LLM: set {ENV_API_KEY} (or pass api_key=...); "
                           f"a local server without auth accepts any value, e.g. "
                           f"{ENV_API_KEY}=none with {ENV_BASE_URL}=http://localhost:8000/v1")
        if grammar is not None and grammar not in GRAMMAR_FIELDS:
            raise LLMError(f"unknown grammar mode {grammar!r}; use one of {sorted(GRAMMAR_FIELDS)}")
        where = self.base_url or OPENAI_URL
        self.server = ChatServer(
            model=self.model, base_url=self.base_url, api_key=key, timeout=timeout,
            max_retries=max_retries, backoff=backoff, max_backoff=max_backoff, error=LLMError,
            what="LLM request", connect_hint=f"set {ENV_BASE_URL} to its address",
            refusal_hints={401: f"check {ENV_API_KEY}",
                           403: f"check {ENV_API_KEY} and its permissions",
                           404: f"check the model name ({ENV_MODEL}={self.model!r}) and "
                                f"{ENV_BASE_URL}={where!r}"})
        self.timeout, self.max_retries = self.server.timeout, self.server.max_retries
        self.grammar = grammar
        self.grammar_text: str | None = None
        self.extra_body = dict(extra_body or {})

    def describe(self) -> dict[str, Any]:
        out = {"backend": "openai", "model": self.model, "base_url": self.server.where,
               "grammar": self.grammar}
        if self.takes_images:  # what the model is shown changes its programs (a cache key)
            out.update(images=True, image_format=self.image_format,
                       image_max_pixels=self.image_max_pixels)
        return out

    def constrain_to(self, registry: Any, inputs: Mapping[str, str]) -> "OpenAIChat":
        """The client for planning: when `grammar` is set, a copy (same connection) whose
        requests carry the program grammar of `registry`; else this client."""
        if not self.grammar:
            return self
        from visprog.planning.llm_grammar import program_grammar
        view = copy.copy(self)
        view.grammar_text = program_grammar(registry)
        return view

    def constrain_grammar(self, grammar: str) -> "OpenAIChat":
        """The client for a reply of a given grammar (e.g. the critic's verdict): when
        `grammar` mode is set, a copy whose requests carry it; else this client."""
        if not self.grammar:
            return self
        view = copy.copy(self)
        view.grammar_text = grammar
        return view

    def chat(self, messages: list[dict[str, Any]], *, temperature: float = 0.0,
             max_tokens: int = 512, n: int = 1, seed: int | None = None,
             stop: list[str] | None = None) -> LLMReply:
        """One completion request (or a few, when the server returns fewer than `n` choices).
        Image parts go as `image_url` parts when the model takes images, else are dropped.

        Raises:
            LLMError: malformed messages, unreachable server, refused request, or retries
                used up.
        """
        check_messages(messages)
        messages = [message_to_openai(m, self.takes_images, max_pixels=self.image_max_pixels,
                                      image_format=self.image_format) for m in messages]
        texts: list[str] = []
        usage: dict[str, int] = {}
        model = self.model
        # Some servers ignore `n`; ask again (at most n times) until there are n texts.
        for call in range(max(1, n)):
            want = n - len(texts)
            reply = self._create(messages, temperature=temperature, max_tokens=max_tokens,
                                 n=want, seed=None if seed is None else seed + call, stop=stop)
            texts.extend(reply.texts[:want])
            add_usage(usage, reply.usage)
            model = reply.model or model
            if len(texts) >= n:
                break
        if not texts:
            raise LLMError(f"the LLM server at {self.describe()['base_url']} returned no choices")
        return LLMReply(text=texts[0], texts=texts, usage=usage, model=model)

    def _create(self, messages: list[dict[str, Any]], **sampling: Any) -> LLMReply:
        args: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": sampling["temperature"],
                                "max_tokens": sampling["max_tokens"]}
        if sampling["n"] != 1:
            args["n"] = sampling["n"]
        if sampling["seed"] is not None:
            args["seed"] = sampling["seed"]
        if sampling["stop"]:
            args["stop"] = list(sampling["stop"])
        body = dict(self.extra_body)
        if self.grammar and self.grammar_text:
            body[GRAMMAR_FIELDS[self.grammar]] = self.grammar_text
        if body:
            args["extra_body"] = body
        resp, choices = self.server.create(**args)
        texts = [(c.message.content or "") if getattr(c, "message", None) is not None else ""
                 for c in choices]
        usage: dict[str, int] = {}
        if getattr(resp, "usage", None) is not None:
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                v = getattr(resp.usage, k, None)
                if isinstance(v, int):
                    usage[k] = v
        return LLMReply(text=texts[0] if texts else "", texts=texts, usage=usage,
                        model=getattr(resp, "model", "") or self.model)


def make_llm(config: Mapping[str, Any] | None = None, *, models: Any = None
             ) -> ChatClient | None:
    """A client from a config mapping, else from the environment; None when none is set up.

    Keys (all optional): `backend` ("openai" | "local" | None), `model`, `base_url`,
    `api_key`, `timeout`, `max_retries`, `grammar`, `image_format` (openai), `images`,
    `image_max_pixels` (both) and `model_path`, `device`, `max_steps` (local). `models`: the
    model manager a local model is loaded through (so a checkpoint Vqa uses too is one
    copy). Without a `backend`, `$VISPROG_LLM_BACKEND` decides; without that, "openai" when
    `$VISPROG_LLM_MODEL` is set and "local" when `$VISPROG_LLM_PATH` is.

    Raises:
        LLMError: an unknown backend, or one that is asked for but not configured.
    """
    cfg = dict(config or {})
    backend = cfg.pop("backend", None) or os.environ.get(ENV_BACKEND) or None
    if backend is None:
        if cfg.get("model_path") or os.environ.get(ENV_LOCAL_MODEL):
            backend = "local"
        elif cfg.get("model") or os.environ.get(ENV_MODEL):
            backend = "openai"
        else:
            return None
    backend = str(backend).lower()
    if backend in ("none", "off"):
        return None
    if backend == "openai":
        known = {"model", "base_url", "api_key", "timeout", "max_retries", "backoff",
                 "max_backoff", "grammar", "extra_body", "images", "image_format",
                 "image_max_pixels"}
        return OpenAIChat(**{k: v for k, v in cfg.items() if k in known})
    if backend == "local":
        from visprog.planning.llm_local import LocalConstrained
        path = cfg.pop("model_path", None) or os.environ.get(ENV_LOCAL_MODEL)
        if not path:
            raise LLMError(f"the local LLM backend needs a model: set {ENV_LOCAL_MODEL} to a "
                           f"Hugging Face model directory or id (or model_path= in the config)")
        known = {"device", "max_steps", "max_string", "dtype", "images", "image_max_pixels"}
        return LocalConstrained(path, models=models,
                                **{k: v for k, v in cfg.items() if k in known})
    raise LLMError(f"unknown LLM backend {backend!r}; use 'openai', 'local' or none")
