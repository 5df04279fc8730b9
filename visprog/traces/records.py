"""What a run did, step by step (SPEC 5).

`Trace` is plain data: the program, each step's resolved arguments, output, duration, cache
hit and error, plus typed events (`events.py`: planner attempts, model loads, the planning
loop's repairs and votes). JSON and HTML forms live in `json_io.py` and `html.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from visprog.traces.step import StepRecord

__all__ = ["StepRecord", "Trace"]


@dataclass
class Trace:
    """The record of one run. `trace[i]` is the i-th step; `trace["OBJ1"]` is the (last)
    step that wrote OBJ1."""

    program: str
    steps: list[StepRecord] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    events: list[Any] = field(default_factory=list)  # `visprog.traces.events` records
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self.steps)

    def __getitem__(self, key: int | str) -> StepRecord:
        if isinstance(key, str):
            for rec in reversed(self.steps):
                if rec.target == key:
                    return rec
            raise KeyError(f"no step wrote {key!r}; targets: {[s.target for s in self.steps]}")
        return self.steps[key]

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.steps)

    def add_event(self, event: Any) -> None:
        """Append an event (a `visprog.traces.events` record)."""
        self.events.append(event)

    def find(self, event_type: type) -> list[Any]:
        """The events of one type (`trace.find(Repair)`), in order."""
        return [e for e in self.events if isinstance(e, event_type)]

    # Serialisation is delegated so this module stays plain data.
    def save_json(self, path: str | Path, *, inline: bool = False) -> Path:
        from visprog.traces.json_io import save_trace
        return save_trace(self, path, inline=inline)

    @classmethod
    def load_json(cls, path: str | Path, *, missing: list[str] | None = None) -> "Trace":
        """A saved trace. With a list as `missing`, image files that are not there (the
        `_files` folder did not move with the JSON) are listed in it instead of raising."""
        from visprog.traces.json_io import load_trace
        return load_trace(path, trace_class=cls, missing=missing)

    def to_html(self) -> str:
        from visprog.traces.html import render_html
        return render_html(self)

    def save_html(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.to_html(), encoding="utf-8")
        return p
