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
  llama.cpp server...) through the official `openai` client, with bounded retries.
- `LocalConstrained` (`visprog.llm_local`): a local Hugging Face causal LM whose sampling is
  constrained by a grammar derived from the registry, so every program it writes parses and
  checks.

`make_llm(config)` picks one from a config mapping or the environment.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Any, Mapping

from visprog.errors import api_message, first_line, retry_after_seconds
from visprog.planning.chat import (ChatClient, LLMError, LLMReply, add_usage, deadline,
                                   deadline_error, time_left)

__all__ = ["ChatClient", "LLMError", "LLMReply", "add_usage", "deadline", "time_left",
           "OpenAIChat", "make_llm"]

ENV_API_KEY = "OPENAI_API_KEY"
ENV_BASE_URL = "OPENAI_BASE_URL"
ENV_MODEL = "VISPROG_LLM_MODEL"
ENV_BACKEND = "VISPROG_LLM_BACKEND"
ENV_LOCAL_MODEL = "VISPROG_LLM_PATH"

# Extra request fields that carry a grammar, by server family (off unless asked for).
GRAMMAR_FIELDS = {
    "vllm": "guided_grammar",  # vLLM's OpenAI server, Lark/EBNF text
}


class _NotACompletion(ValueError):
    """An HTTP 200 whose body is not a chat completion (a proxy's error page, say)."""


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

    Raises:
        LLMError: no model or key is configured, or `openai` is not installed.
    """

    def __init__(self, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0, max_retries: int = 3,
                 *, backoff: float = 0.5, max_backoff: float = 8.0, grammar: str | None = None,
                 extra_body: Mapping[str, Any] | None = None):
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
        try:
            import openai
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise LLMError("the 'openai' package is needed: pip install 'visprog[llm]'") from e
        self._openai = openai
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.grammar = grammar
        self.grammar_text: str | None = None
        self.extra_body = dict(extra_body or {})
        # The client's own retries are off: ours below are bounded and report what happened.
        self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout,
                                     max_retries=0)

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model,
                "base_url": self.base_url or "https://api.openai.com/v1",
                "grammar": self.grammar}

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

    def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.0,
             max_tokens: int = 512, n: int = 1, seed: int | None = None,
             stop: list[str] | None = None) -> LLMReply:
        """One completion request (or a few, when the server returns fewer than `n` choices).

        Raises:
            LLMError: unreachable server, refused request, or retries used up.
        """
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

    def _create(self, messages: list[dict[str, str]], **sampling: Any) -> LLMReply:
        openai = self._openai
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
        where = self.describe()["base_url"]
        last = ""
        for attempt in range(self.max_retries + 1):
            left = time_left()
            if left is not None and left <= 0:
                raise deadline_error(where, attempt, last)
            timeout = self.timeout if left is None else min(self.timeout, left)
            retry_after = None
            try:
                resp = self._client.chat.completions.create(**args, timeout=timeout)
                return _reply_from(resp, self.model)
            except openai.APITimeoutError:
                last = f"no reply within {timeout:g} s (timeout)"
            except openai.APIConnectionError as e:
                last = (f"cannot connect ({e.__cause__ or e}); is the server running? "
                        f"set {ENV_BASE_URL} to its address")
            except openai.RateLimitError as e:
                last = f"HTTP 429 rate limited: {api_message(e)}"
                retry_after = retry_after_seconds(e)
            except openai.APIStatusError as e:
                if e.status_code < 500:
                    raise LLMError(_status_message(e, where, self.model)) from e
                last = f"HTTP {e.status_code} server error: {api_message(e)}"
                retry_after = retry_after_seconds(e)
            except (openai.APIResponseValidationError, ValueError) as e:  # JSONDecodeError too
                why = first_line(e, 200) or type(e).__name__
                last = f"HTTP 200 with a body that is not a chat completion ({why})"
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt)
                if retry_after is not None and 0 <= retry_after <= self.max_backoff:
                    delay = retry_after
                left = time_left()
                if left is not None and delay >= left:
                    raise deadline_error(where, attempt + 1, last)
                time.sleep(delay)
        tries = self.max_retries + 1
        raise LLMError(f"LLM request to {where} (model {self.model!r}) failed after {tries} "
                       f"attempt{'s' if tries != 1 else ''} (max_retries={self.max_retries}): "
                       f"{last}")


def _reply_from(resp: Any, model: str) -> LLMReply:
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list):  # the client hands back a non-JSON body as a str
        raise _NotACompletion(f"got {str(resp)[:80]!r}" if isinstance(resp, str)
                              else f"no 'choices' in {type(resp).__name__}")
    texts = [(c.message.content or "") if getattr(c, "message", None) is not None else ""
             for c in choices]
    usage: dict[str, int] = {}
    if resp.usage is not None:
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            v = getattr(resp.usage, k, None)
            if isinstance(v, int):
                usage[k] = v
    return LLMReply(text=texts[0] if texts else "", texts=texts, usage=usage,
                    model=getattr(resp, "model", "") or model)


def _status_message(e: Any, where: str, model: str) -> str:
    code = e.status_code
    hint = {401: f"check {ENV_API_KEY}", 403: f"check {ENV_API_KEY} and its permissions",
            404: f"check the model name ({ENV_MODEL}={model!r}) and {ENV_BASE_URL}={where!r}"}
    extra = f"; {hint[code]}" if code in hint else ""
    return f"LLM request to {where} was refused: HTTP {code}: {api_message(e)}{extra}"


def make_llm(config: Mapping[str, Any] | None = None, *, models: Any = None
             ) -> ChatClient | None:
    """A client from a config mapping, else from the environment; None when none is set up.

    Keys (all optional): `backend` ("openai" | "local" | None), `model`, `base_url`,
    `api_key`, `timeout`, `max_retries`, `grammar` (openai) and `model_path`, `device`,
    `max_steps` (local). `models`: the model manager a local model is loaded through (so a
    checkpoint Vqa uses too is one copy). Without a `backend`, `$VISPROG_LLM_BACKEND` decides; without
    that, "openai" when `$VISPROG_LLM_MODEL` is set and "local" when `$VISPROG_LLM_PATH` is.

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
                 "max_backoff", "grammar", "extra_body"}
        return OpenAIChat(**{k: v for k, v in cfg.items() if k in known})
    if backend == "local":
        from visprog.planning.llm_local import LocalConstrained
        path = cfg.pop("model_path", None) or os.environ.get(ENV_LOCAL_MODEL)
        if not path:
            raise LLMError(f"the local LLM backend needs a model: set {ENV_LOCAL_MODEL} to a "
                           f"Hugging Face model directory or id (or model_path= in the config)")
        known = {"device", "max_steps", "max_string", "dtype"}
        return LocalConstrained(path, models=models,
                                **{k: v for k, v in cfg.items() if k in known})
    raise LLMError(f"unknown LLM backend {backend!r}; use 'openai', 'local' or none")
