"""Traces as JSON, and back (SPEC 5).

Layout of a saved trace `run.json`::

    {"format": "visprog-trace", "version": 1, "program": "...", "inputs": {...},
     "result": <value>, "error": null, "events": [...], "meta": {...},
     "steps": [{"index": 0, "line": 1, "source": "...", "target": "OBJ0", "module": "Loc",
                "args": {"image": <value>, ...}, "arg_vars": {...}, "output": <value>,
                "duration": 0.12, "cached": false, "error": null, "draw_on": "image"}, ...]}

Each event is its record's `to_dict()` (`visprog.traces.events`: a "kind" and its fields),
encoded like any value, and read back into the typed record (`event_from_dict`; an unknown
kind stays an `Event` with its data).

A <value> is a node of the one value codec (`visprog.values.tree`): plain JSON for None,
bools, numbers, strings and lists/dicts of them, and dicts tagged with "$type" for images,
Objects, tuples, non-finite floats, other dicts, small arrays and (``repr``) anything else,
loaded back as a `ReprValue`. Images and masks are PNGs (masks 1-bit): files in
``<stem>_files/`` beside the JSON (``{"$type": "image", ..., "file": "run_files/img_0.png"}``,
relative to the JSON's folder) or, when inline, named entries of the top-level ``"blobs"``
table of base64 PNGs (``"blob": "img_0"``). Modes 1, L, LA, P, RGB and RGBA round-trip
exactly; others are saved as RGB(A). Traces saved before the codec was one (no "mode" and
"size" in image nodes) load as they did.

Identical images are written once. Loading errors (missing or malformed JSON, JSON or values
nested deeper than `MAX_NESTING`, a missing or unreadable image file, an unknown format
version) raise `TraceLoadError`, which is both a
`VisProgError` and a `ValueError`, with a message naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visprog.errors import TraceLoadError, VisProgError
from visprog.traces.events import event_from_dict
from visprog.traces.step import StepRecord
from visprog.values.codec import CodecError, Decoder, DocumentBlobs, Encoder, ReprValue
from visprog.values.types import MAX_NESTING

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ReprValue", "TraceLoadError", "load_trace",
           "save_trace"]

FORMAT_NAME = "visprog-trace"
# Still 1: image nodes gained "mode" and "size", which readers of version 1 ignore.
FORMAT_VERSION = 1


# -- saving -----------------------------------------------------------------------------

def save_trace(trace: Trace, path: str | Path, *, inline: bool = False) -> Path:
    """Write `trace` as JSON at `path`.

    Args:
        trace: the trace.
        path: where the JSON goes. Images and masks go to `<stem>_files/` beside it, unless
            `inline`.
        inline: embed images and masks as base64 PNG in the JSON instead (one file).

    Returns:
        The JSON file's path.
    """
    path = Path(path)
    base = path.parent
    store = DocumentBlobs(base, folder=None if inline else base / f"{path.stem}_files")
    writer = Encoder(store, exact=False)  # a record: keeps what it can of any value
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "program": trace.program,
        "inputs": writer.encode(dict(trace.inputs)),
        "result": writer.encode(trace.result),
        "error": trace.error,
        "events": [writer.encode(e.to_dict()) for e in trace.events],
        "meta": writer.encode(dict(trace.meta)),
        "steps": [_step_doc(s, writer) for s in trace.steps],
    }
    if inline:
        doc["blobs"] = store.table
    text = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False)
    try:
        data = (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a model's broken text): \u-escape it
        data = (json.dumps(doc, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _step_doc(s: StepRecord, writer: Encoder) -> dict[str, Any]:
    return {
        "index": s.index, "line": s.line, "source": s.source, "target": s.target,
        "module": s.module, "args": writer.encode(dict(s.args)), "arg_vars": dict(s.arg_vars),
        "output": writer.encode(s.output), "duration": float(s.duration),
        "cached": bool(s.cached), "error": s.error, "draw_on": s.draw_on,
    }


# -- loading ----------------------------------------------------------------------------

class _Reader:
    """Decodes a document's values; a codec error becomes a `TraceLoadError` naming the file."""

    def __init__(self, json_path: Path, blobs: Any = None, missing: list[str] | None = None):
        self.json_path = json_path
        self.decoder = Decoder(DocumentBlobs(json_path.parent, table=blobs), missing=missing)

    def fail(self, message: str) -> TraceLoadError:
        return TraceLoadError(f"{self.json_path}: {message}")

    def decode(self, value: Any) -> Any:
        try:
            return self.decoder.decode(value)
        except CodecError as e:
            raise self.fail(str(e)) from e


def load_trace(path: str | Path, trace_class: Any, *, missing: list[str] | None = None) -> Any:
    """Read a trace written by `save_trace`.

    Args:
        missing: None: an image file that is not there is an error. A list: the trace loads
            without it (such an image reads as `image WxH (file missing)`, such a mask is left
            out), and the missing files' paths are appended to the list; what `visprog trace
            show` does, as it prints only text.

    Raises:
        TraceLoadError: the file is missing, not JSON, not a visprog trace, of a newer format
            version, malformed, or refers to an image file that is missing or unreadable.
    """
    path = Path(path)
    reader = _Reader(path)  # for error messages until the document is parsed
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise TraceLoadError(f"trace file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise TraceLoadError(f"could not read trace file {path}: {e}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise reader.fail(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except RecursionError as e:  # the JSON parser recurses once per level
        raise reader.fail(f"JSON nested too deeply to read (values may nest {MAX_NESTING} "
                          "deep)") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise reader.fail(f"not a visprog trace (expected \"format\": \"{FORMAT_NAME}\")")
    version = doc.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise reader.fail(f"trace format version {version!r} is not supported "
                          f"(this visprog reads up to {FORMAT_VERSION})")
    reader = _Reader(path, doc.get("blobs"), missing)
    try:
        steps = [_step_from(s, reader) for s in doc.get("steps", [])]
        return trace_class(
            program=str(doc["program"]),
            steps=steps,
            inputs=reader.decode(doc.get("inputs", {})),
            result=reader.decode(doc.get("result")),
            error=doc.get("error"),
            events=[event_from_dict(reader.decode(e)) for e in doc.get("events", [])],
            meta=reader.decode(doc.get("meta", {})),
        )
    except TraceLoadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise reader.fail(f"malformed trace: {type(e).__name__}: {e}") from e


def _step_from(d: dict[str, Any], reader: _Reader) -> StepRecord:
    return StepRecord(
        index=int(d["index"]), line=int(d["line"]), source=str(d["source"]),
        target=str(d["target"]), module=d.get("module"),
        args=reader.decode(d.get("args", {})), arg_vars=dict(d.get("arg_vars", {})),
        output=reader.decode(d.get("output")), duration=float(d.get("duration", 0.0)),
        cached=bool(d.get("cached", False)), error=d.get("error"), draw_on=d.get("draw_on"),
    )
