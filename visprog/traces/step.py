"""One step of a run, as recorded (SPEC 5)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepRecord:
    """One step of a run.

    Attributes:
        index: position in the program (0-based).
        line: source line number (1-based).
        source: the line as written.
        target: the variable it wrote.
        module: canonical module name; None for an alias step.
        args: resolved argument values, by declared name.
        arg_vars: for arguments that were variables, which variable (name -> VAR).
        output: the value written (None when it failed).
        duration: seconds spent (a cache hit is near zero).
        cached: whether the output came from the cache.
        error: the failure message, when the step failed.
        draw_on: the argument whose image Objects are drawn over in renderings.
    """

    index: int
    line: int
    source: str
    target: str
    module: str | None
    args: dict[str, Any] = field(default_factory=dict)
    arg_vars: dict[str, str] = field(default_factory=dict)
    output: Any = None
    duration: float = 0.0
    cached: bool = False
    error: str | None = None
    draw_on: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def inputs(self) -> dict[str, Any]:
        return self.args
