"""Notes a model module leaves in the trace (a query cut to the model's text length, a
fallback backend): an event `{"event": "note", ...}` on the model manager, which the engine
copies into the trace of the run whose steps were running as a `model_note` event (in a
batched chunk, the chunk's first run). A cached step leaves no new note.

Starts with `_`: not a tool file."""
from __future__ import annotations

from typing import Any

from visprog.models.manager import manager_of


def note(ctx: Any, module: str, message: str, **data: Any) -> None:
    """Record `message` for the trace of the running step(s)."""
    manager_of(ctx).events.append({"event": "note", "module": module, "message": message,
                                   **data})
