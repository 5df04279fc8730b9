"""Requests to an OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, the
llama.cpp server...): the one request policy of the planner's LLM client
(visprog/planning/llm.py) and Vqa's endpoint backend (visprog/models/remote.py), and the
deadline that bounds a group of requests.

The policy, in `ChatServer.create`:
- the official `openai` client sends each request, its own retries off (ours are bounded and
  say what happened);
- a timeout, a connection error, HTTP 429 or 5xx, or an HTTP 200 whose body is not a chat
  completion (a proxy's HTML page, JSON without `choices`) is retried, at most `max_retries`
  times, after a doubling backoff capped at `max_backoff`; a server's Retry-After is
  honoured when it is within the cap;
- any other refusal (400, 401, 404...) fails at once, with what to check;
- inside a `deadline(...)` block no request starts after the deadline, a request's timeout is
  cut to the time left, and no backoff sleeps past it.
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Iterator, Mapping

from visprog.errors import VisProgError, api_message, first_line, retry_after_seconds
from visprog.values.text import plural

# The total time the requests made inside `deadline(...)` may take together: (monotonic time
# it ends, its length in seconds, the setting's name, what it bounds), for messages.
_DEADLINE: contextvars.ContextVar[tuple[float, float, str, str] | None] = contextvars.ContextVar(
    "visprog_request_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float | None, name: str = "deadline_s",
             purpose: str = "planning") -> Iterator[None]:
    """Within this block, chat requests (retries and their waits included) end by `seconds`
    from now: a request's timeout is cut to the time left, and none starts after it. An
    enclosing deadline that ends sooner still holds. None: no deadline. `name` (the setting)
    and `purpose` only word the error. Threads started inside see it only when they run in a
    copy of this context (`contextvars.copy_context()`)."""
    outer = _DEADLINE.get()
    if seconds is None or (outer is not None and outer[0] <= time.monotonic() + seconds):
        yield
        return
    token = _DEADLINE.set((time.monotonic() + float(seconds), float(seconds), name, purpose))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds left until the current `deadline`, or None outside one."""
    d = _DEADLINE.get()
    return None if d is None else d[0] - time.monotonic()


OPENAI_URL = "https://api.openai.com/v1"  # where the `openai` client goes without a base_url


class NotACompletion(ValueError):
    """An HTTP 200 whose body is not a chat completion (a proxy's error page, say)."""


def completion_choices(resp: Any) -> list[Any]:
    """The `choices` of a chat-completion response.

    Raises:
        NotACompletion: the body was no chat completion (the `openai` client hands a body it
            could not read as JSON back as a str).
    """
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list):
        raise NotACompletion(f"got {str(resp)[:80]!r}" if isinstance(resp, str)
                             else f"no 'choices' in {type(resp).__name__}")
    return choices




class ChatServer:
    """An OpenAI-compatible chat-completions server asked with the one request policy (see
    the module docstring).

    Args:
        model: the served model's name (for messages; the request names it).
        base_url: the server's address; None: OpenAI's own.
        api_key: the key sent (a local server without auth accepts any value).
        timeout: seconds per request.
        max_retries: retries after a timeout, a connection error, HTTP 429 or 5xx, or a reply
            that is not a chat completion.
        backoff: the first sleep between retries, doubled each time, capped at `max_backoff`.
        error: the error class raised (the caller's: `LLMError`, `RemoteModelError`).
        what: what a request is called in messages ("LLM request").
        connect_hint: what to do when nothing answers ("set OPENAI_BASE_URL to its address").
        refusal_hints: HTTP status -> what to check, added to a refusal's message.

    Raises:
        error: the `openai` package is not installed.
    """

    def __init__(self, *, model: str, base_url: str | None, api_key: str, timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 error: type[VisProgError] = VisProgError, what: str = "request",
                 connect_hint: str = "", refusal_hints: Mapping[int, str] | None = None):
        try:
            import openai
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise error("the 'openai' package is needed: pip install 'visprog[llm]'") from e
        self._openai = openai
        self.model, self.base_url = model, base_url
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.error, self.what = error, what
        self.connect_hint = connect_hint
        self.refusal_hints = dict(refusal_hints or {})
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=self.timeout,
                                     max_retries=0)

    @property
    def where(self) -> str:
        return self.base_url or OPENAI_URL

    def create(self, **args: Any) -> tuple[Any, list[Any]]:
        """One chat completion: `chat.completions.create(**args)` under the policy, and the
        response's choices (a list, maybe empty).

        Raises:
            error: a refusal, the retries used up, or the deadline reached; the message says
                what happened last.
        """
        openai = self._openai
        last = ""
        for attempt in range(self.max_retries + 1):
            left = time_left()
            if left is not None and left <= 0:
                raise self._deadline_error(attempt, last)
            timeout = self.timeout if left is None else min(self.timeout, left)
            retry_after = None
            try:
                resp = self._client.chat.completions.create(**args, timeout=timeout)
                return resp, completion_choices(resp)
            except openai.APITimeoutError:
                last = f"no reply within {timeout:g} s (timeout)"
            except openai.APIConnectionError as e:
                last = f"cannot connect ({e.__cause__ or e}); is the server running?"
                last += f" {self.connect_hint}" if self.connect_hint else ""
            except openai.RateLimitError as e:
                last = f"HTTP 429 rate limited: {api_message(e)}"
                retry_after = retry_after_seconds(e)
            except openai.APIStatusError as e:
                if e.status_code < 500:
                    raise self.error(self._refused(e)) from e
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
                    raise self._deadline_error(attempt + 1, last)
                time.sleep(delay)
        raise self.error(f"{self.what} to {self.where} (model {self.model!r}) failed after "
                         f"{plural(self.max_retries + 1, 'attempt')} "
                         f"(max_retries={self.max_retries}): {last}")

    def _refused(self, e: Any) -> str:
        hint = self.refusal_hints.get(e.status_code)
        return (f"{self.what} to {self.where} was refused: HTTP {e.status_code}: "
                f"{api_message(e)}{f'; {hint}' if hint else ''}")

    def _deadline_error(self, attempts: int, last: str) -> VisProgError:
        _, seconds, name, purpose = _DEADLINE.get() or (0.0, 0.0, "deadline_s", "planning")
        tried = f" after {plural(attempts, 'attempt')}" if attempts else ""
        detail = f"; the last one: {last}" if last else ""
        return self.error(f"{self.what} to {self.where} stopped: the deadline of {seconds:g} s "
                          f"for {purpose} ({name}) was reached{tried}{detail}")
