"""One root error and the few kinds under it.

Program errors are data: each `Diagnostic` carries the line, column, offending text and a
one-line hint, so callers (CLI, demo, planner repair loop) can show or feed them back.
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
