"""One root error and every kind under it: each error class of visprog lives here.

Program errors are data: each `Diagnostic` carries the line, column, offending text and a
one-line hint, so callers (CLI, demo, planner repair loop) can show or feed them back.

Every class is here (the modules that raise them import them from here), so an error raised
in a Ray replica is rebuilt as the same class on the client (`rebuild_error`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class VisProgError(Exception):
    """Root of every error this package raises on purpose."""


def first_line(error: BaseException | None, limit: int = 300) -> str:
    """The first line of an error's message, cut to `limit` characters ("" for none)."""
    text = str(error).strip().splitlines() if error is not None else []
    return text[0][:limit] if text else ""


def api_message(e: Exception) -> str:
    """The message of an HTTP API error (the OpenAI client's errors carry the server's own in
    `body`), for the LLM and the vision-endpoint clients."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(getattr(e, "message", "") or e)


def retry_after_seconds(e: Any) -> float | None:
    """The seconds an HTTP error's Retry-After header asks to wait, or None."""
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class VisProgWarning(UserWarning):
    """Root of the warnings this package gives: something went wrong and the run goes on
    (the command line prints each as one line: `visprog: warning: ...`)."""


class CacheWarning(VisProgWarning):
    """Something went wrong with a cache folder; the run goes on without it where needed."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a program, before anything runs."""

    line: int
    column: int
    text: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}, col {self.column}"
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}: {self.message}{hint}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "text": self.text,
                "message": self.message, "hint": self.hint}


class ProgramError(VisProgError):
    """A program that can't run: it does not parse or does not check."""

    def __init__(self, diagnostics: list[Diagnostic], source: str = ""):
        self.diagnostics = list(diagnostics)
        self.source = source
        n = len(self.diagnostics)
        head = f"{n} error{'s' if n != 1 else ''} in program"
        super().__init__(head + ":\n" + "\n".join(f"  {d}" for d in self.diagnostics))


class ParseError(ProgramError):
    """The text is not a program of the grammar."""


class CheckError(ProgramError):
    """The program parses but names unknown things or its types don't fit."""


class StepError(VisProgError):
    """A step failed while running. The trace up to it is kept on `.trace`."""

    def __init__(self, message: str, *, index: int, line: int, target: str,
                 module: str | None, cause: BaseException | None = None, trace: Any = None):
        self.index = index
        self.line = line
        self.target = target
        self.module = module
        self.cause = cause
        self.trace = trace
        what = f"{target}={module}(...)" if module else target
        super().__init__(f"step {index + 1} (line {line}, {what}) failed: {message}")


class EvalError(VisProgError):
    """An Eval expression that can't be parsed or evaluated."""

    def __init__(self, message: str, expr: str = ""):
        self.expr = expr
        super().__init__(message)


class ImageError(VisProgError):
    """An input that can't be read as an image, or is over the pixel limit."""


class VideoError(ImageError):
    """An input that can't be read as a video (not a video, damaged, no frames), or is over
    a limit (frames, duration, pixels per frame). An ImageError, so whatever refuses a bad
    input image refuses a bad video the same way."""


class ToolDeclarationError(VisProgError):
    """A tool whose declaration is inconsistent (found at registration, not at run time)."""


class UnknownToolError(VisProgError, KeyError):
    """No tool of that name is registered."""

    def __init__(self, name: str, suggestion: str | None = None):
        self.name = name
        self.suggestion = suggestion
        msg = f"unknown module {name!r}"
        if suggestion:
            msg += f"; did you mean {suggestion!r}?"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ConfigError(VisProgError):
    """A configuration or preset that can't be used."""


class DtypeError(ConfigError, ValueError):
    """A model module's `dtype` setting that is not auto, bf16, fp16 or fp32, or that the
    device can't run (`visprog.models.dtypes`)."""


class SettingsError(ConfigError, ValueError):
    """A model module's settings are wrong (an unknown backend, a bad value)."""


# -- values, traces, data sets ------------------------------------------------------------------

class BlobError(ValueError):
    """A reference that can't be read: the message says which blob and why (the codec turns
    it into its own `CodecError`)."""


class MissingBlob(BlobError):
    """A blob file that is not there (a saved trace moved without its `_files` folder);
    `path` is where it was looked for."""

    def __init__(self, message: str, path: str):
        self.path = path
        super().__init__(message)


class CodecError(VisProgError, ValueError):
    """Input that is not a well-formed encoding of a value; the message says what is wrong."""


class TraceLoadError(VisProgError, ValueError):
    """A saved trace that can't be read back; the message names the file."""


class DatasetError(VisProgError):
    """A data set file that can't be read or lacks what an item needs."""


# -- models and hosts -----------------------------------------------------------------------

class ModelLoadError(VisProgError):
    """A model checkpoint that could not be loaded; the message says which and how to get it."""

    def __init__(self, message: str, checkpoint: str):
        self.checkpoint = checkpoint
        super().__init__(message)


class RemoteModelError(VisProgError):
    """The endpoint could not be reached, refused, or timed out (after the allowed retries)."""


class HostError(VisProgError):
    """A hosted module could not be reached, or its host failed, after the retries."""

    def __init__(self, message: str, *, module: str, address: str):
        self.module = module
        self.address = address
        super().__init__(message)


class RemoteToolError(VisProgError):
    """A hosted tool raised an error that has no local class of the same name."""


# -- planning -----------------------------------------------------------------------------------

# What to set when planning (or List) finds no LLM: said in one place.
NO_LLM = ("set VISPROG_LLM_MODEL and OPENAI_API_KEY (plus OPENAI_BASE_URL for a local server "
          "such as vLLM or Ollama), or VISPROG_LLM_PATH for a local model, or an [llm] table "
          "in the config file, or pass VisProg(llm=...)")


def no_llm_message(who: str = "planning") -> str:
    """'<who> needs an LLM, and none is configured: set ...' (the one wording)."""
    return f"{who} needs an LLM, and none is configured: {NO_LLM}"


class LLMError(VisProgError):
    """The LLM could not be reached, refused, or timed out (after the allowed retries)."""


class PlanningError(VisProgError):
    """The LLM never wrote a valid program. `.attempts` holds every try and its errors
    (`visprog.planning.planner.Attempt`)."""

    def __init__(self, question: str, attempts: list[Any]):
        self.question = question
        self.attempts = list(attempts)
        lines = [f"no valid program for {question!r} after {len(attempts)} "
                 f"attempt{'s' if len(attempts) != 1 else ''}:"]
        for i, a in enumerate(attempts, 1):
            lines.append(f"attempt {i}:")
            lines.extend(f"  {d}" for d in a.diagnostics)
        super().__init__("\n".join(lines))


class AgentError(VisProgError):
    """Agent mode stopped before any step ran (no round could be written or run). `.trace`
    holds the rounds, `.cause` what stopped it (`visprog.planning.agent`)."""

    def __init__(self, message: str, trace: Any = None, cause: BaseException | None = None):
        super().__init__(message)
        self.trace = trace
        self.cause = cause


class RepairError(StepError):
    """Every program of an item raised, repairs included. `.attempts` holds every
    `RunAttempt` (`visprog.planning.loop`); `.trace` the last run's trace, whose `Repair`
    event lists them all."""

    def __init__(self, question: str, attempts: list[Any], trace: Any):
        last = next(a.error for a in reversed(attempts) if a.error is not None)
        self.index = getattr(last, "index", -1)
        self.line = getattr(last, "line", 0)
        self.target = getattr(last, "target", "")
        self.module = getattr(last, "module", None)
        self.cause = getattr(last, "cause", last)
        self.trace = trace
        self.question = question
        self.attempts = list(attempts)
        n = len(attempts)
        lines = [f"no program for {question!r} ran to the end in {n} attempt"
                 f"{'s' if n != 1 else ''}:"]
        for i, a in enumerate(attempts, 1):
            lines.append(f"attempt {i} ({a.reason}): {a.error}")
            if a.note:
                lines.append(f"  {a.note}")
        VisProgError.__init__(self, "\n".join(lines))


# -- composed queries ---------------------------------------------------------------------------

class QueryError(CheckError):
    """A query that can't be written: a wrong type, argument or operator. Raised by the call
    that made it, before anything runs; `filename` and `lineno` are the caller's."""

    def __init__(self, problems: list[tuple[str, str]], where: tuple[str, int, int, str]):
        self.filename, self.lineno, column, text = where
        self.diagnostics = [Diagnostic(self.lineno, column, text, m, h) for m, h in problems]
        self.source = text
        lines = [f"{m} (hint: {h})" if h else m for m, h in problems]
        Exception.__init__(self, f"{self.filename}:{self.lineno}: " + "\n  ".join(lines))


class NoSuchMethod(QueryError, AttributeError):
    """A module asked of a value of the wrong type (also an AttributeError, so `hasattr`
    and `getattr(q, name, default)` keep working)."""


# -- errors across a process boundary ----------------------------------------------------------

# Python's own errors a tool may raise on purpose (a bad argument), rebuilt by name too.
_BUILTIN_ERRORS = {cls.__name__: cls for cls in (
    ValueError, TypeError, KeyError, IndexError, RuntimeError, ZeroDivisionError,
    NotImplementedError)}
_PLAIN = (str, int, float, bool, type(None))


def error_fields(error: BaseException) -> dict[str, Any]:
    """The attributes of an error that travel with it (plain values only: a checkpoint, a
    module name, a line number), for `rebuild_error` on the other side."""
    return {k: v for k, v in vars(error).items()
            if not k.startswith("_") and isinstance(v, _PLAIN)}


def rebuild_error(kind: str, message: str, fields: dict[str, Any] | None = None
                  ) -> BaseException | None:
    """An error of class `kind` (one of this module's, or a plain Python error such as
    ValueError) with `message` and the plain `fields` it was sent with, or None when no
    such class exists here. The class's own constructor is not called: it may take more
    than a message (`ModelLoadError(message, checkpoint)`), and the message is already
    the one it made."""
    cls = _BUILTIN_ERRORS.get(kind)
    if cls is None:
        found = globals().get(kind)
        if isinstance(found, type) and issubclass(found, Exception) \
                and found.__module__ == __name__:
            cls = found
    if cls is None:
        return None
    error = cls.__new__(cls, message)
    error.args = (message,)
    for key, value in (fields or {}).items():
        # instance data only: never a name the class itself has (a method, `args`)
        if isinstance(key, str) and not key.startswith("_") and isinstance(value, _PLAIN) \
                and not hasattr(cls, key):
            setattr(error, key, value)
    return error
