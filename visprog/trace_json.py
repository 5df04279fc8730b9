"""Traces as JSON, and back (SPEC 5).

Layout of a saved trace `run.json`::

    {"format": "visprog-trace", "version": 1, "program": "...", "inputs": {...},
     "result": <value>, "error": null, "events": [...], "meta": {...},
     "steps": [{"index": 0, "line": 1, "source": "...", "target": "OBJ0", "module": "Loc",
                "args": {"image": <value>, ...}, "arg_vars": {...}, "output": <value>,
                "duration": 0.12, "cached": false, "error": null, "draw_on": "image"}, ...]}

A <value> is plain JSON for None, bools, numbers, strings and lists/dicts of them. Everything
else is a dict tagged with "$type":

- ``image``: ``{"$type": "image", "file": "run_files/img_0.png"}`` (a PNG beside the JSON, path
  relative to the JSON's folder) or, when inline, ``{"$type": "image", "blob": "img_0"}`` naming
  an entry of the top-level ``"blobs"`` table of base64 PNGs (so an image used by many steps
  is stored once). Modes 1, L, LA, P, RGB and RGBA round-trip exactly; others are saved as
  RGB(A).
- ``objects``: ``{"$type": "objects", "image_size": [W, H], "regions": [{"box": [...],
  "label": ..., "score": ..., "extra": {...}, "mask": <image ref or null>}]}``; masks are
  1-bit PNGs.
- ``tuple``, ``float`` (non-finite), ``ndarray`` (small numeric arrays), ``dict`` (a dict
  whose keys are not all strings, or that has a "$type" key), and ``repr`` for anything else:
  its type name and repr, loaded back as a `ReprValue`.

Identical images are written once. Loading errors (missing or malformed JSON, a missing or
unreadable image file, an unknown format version) raise `TraceLoadError`, which is both a
`VisProgError` and a `ValueError`, with a message naming the file.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import VisProgError
from .trace import StepRecord, Trace
from .values import MAX_NESTING, Objects, Region

FORMAT_NAME = "visprog-trace"
FORMAT_VERSION = 1
_TAG = "$type"
# Arrays larger than this are kept as a repr: a trace is a record, not a data store.
_MAX_ARRAY_ITEMS = 4096
_MAX_REPR_CHARS = 2000


class TraceLoadError(VisProgError, ValueError):
    """A saved trace that can't be read back; the message names the file."""


@dataclass(frozen=True)
class ReprValue:
    """A value the JSON form could only keep as text: its type name and repr."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


# -- saving -----------------------------------------------------------------------------

class _Writer:
    """Encodes values, writing each distinct image once (as a file or base64)."""

    def __init__(self, files_dir: Path | None, base_dir: Path):
        self.files_dir = files_dir
        self.base_dir = base_dir
        self.written: dict[str, dict[str, Any]] = {}  # content hash -> image reference
        self.blobs: dict[str, str] = {}  # inline mode: name -> base64 PNG

    def image_ref(self, im: Image.Image, prefix: str = "img") -> dict[str, Any]:
        if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        key = hashlib.sha1(f"{im.mode}{im.size}".encode() + im.tobytes()).hexdigest()
        if key in self.written:
            return dict(self.written[key])
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=False)
        data = buf.getvalue()
        name = f"{prefix}_{len(self.written)}"
        if self.files_dir is None:
            self.blobs[name] = base64.b64encode(data).decode("ascii")
            ref = {"blob": name}
        else:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            path = self.files_dir / f"{name}.png"
            path.write_bytes(data)
            ref = {"file": path.relative_to(self.base_dir).as_posix()}
        self.written[key] = ref
        return dict(ref)

    def encode(self, value: Any, depth: int = 0) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if depth > MAX_NESTING:  # values are checked where they come in: this is a backstop
            return {_TAG: "repr", "type": type(value).__name__,
                    "repr": f"<nested more than {MAX_NESTING} deep>"}
        if isinstance(value, float):
            return value if math.isfinite(value) else {_TAG: "float", "value": repr(value)}
        if isinstance(value, np.generic):
            return self.encode(value.item(), depth)
        if isinstance(value, Image.Image):
            return {_TAG: "image", **self.image_ref(value)}
        if isinstance(value, Objects):
            return {_TAG: "objects", "image_size": list(value.image_size),
                    "regions": [self._region(r) for r in value]}
        if isinstance(value, list):
            return [self.encode(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return {_TAG: "tuple", "items": [self.encode(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and _TAG not in value:
                return {k: self.encode(v, depth + 1) for k, v in value.items()}
            return {_TAG: "dict", "items": [[self.encode(k, depth + 1), self.encode(v, depth + 1)]
                                            for k, v in value.items()]}
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size <= _MAX_ARRAY_ITEMS:
            return {_TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                    "data": [self.encode(v) for v in value.ravel().tolist()]}
        cls = type(value)
        return {_TAG: "repr", "type": f"{cls.__module__}.{cls.__qualname__}",
                "repr": _safe_repr(value)}

    def _region(self, r: Region) -> dict[str, Any]:
        d: dict[str, Any] = {"box": [float(v) for v in r.box], "label": r.label,
                             "score": None if r.score is None else float(r.score)}
        if r.extra:
            d["extra"] = self.encode(dict(r.extra))
        if r.mask is not None:
            d["mask"] = self.image_ref(Image.fromarray(np.asarray(r.mask, dtype=bool)), "mask")
        return d


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as e:  # a broken __repr__ must not stop the trace from saving
        text = f"<{type(value).__name__} (repr failed: {e})>"
    return text if len(text) <= _MAX_REPR_CHARS else text[:_MAX_REPR_CHARS] + "..."


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
    writer = _Writer(None if inline else base / f"{path.stem}_files", base)
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "program": trace.program,
        "inputs": writer.encode(dict(trace.inputs)),
        "result": writer.encode(trace.result),
        "error": trace.error,
        "events": [writer.encode(e) for e in trace.events],
        "meta": writer.encode(dict(trace.meta)),
        "steps": [_step_doc(s, writer) for s in trace.steps],
    }
    if inline:
        doc["blobs"] = writer.blobs
    text = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _step_doc(s: StepRecord, writer: _Writer) -> dict[str, Any]:
    return {
        "index": s.index, "line": s.line, "source": s.source, "target": s.target,
        "module": s.module, "args": writer.encode(dict(s.args)), "arg_vars": dict(s.arg_vars),
        "output": writer.encode(s.output), "duration": float(s.duration),
        "cached": bool(s.cached), "error": s.error, "draw_on": s.draw_on,
    }


# -- loading ----------------------------------------------------------------------------

class _Reader:
    def __init__(self, json_path: Path, blobs: Any = None):
        self.json_path = json_path
        self.blobs = blobs if isinstance(blobs, dict) else {}
        self.base_dir = json_path.parent.resolve()
        self.cache: dict[str, Image.Image] = {}  # one image object per file, like when saved

    def fail(self, message: str) -> TraceLoadError:
        return TraceLoadError(f"{self.json_path}: {message}")

    def image(self, ref: Any, what: str = "image") -> Image.Image:
        if not isinstance(ref, dict):
            raise self.fail(f"bad {what} reference: {ref!r:.80}")
        if "blob" in ref:
            key = f"blob:{ref['blob']}"
            if key not in self.cache:
                if ref["blob"] not in self.blobs:
                    raise self.fail(f"inline {what} {ref['blob']!r} is missing from \"blobs\"")
                try:
                    data = base64.b64decode(self.blobs[ref["blob"]], validate=True)
                except (ValueError, TypeError) as e:
                    raise self.fail(f"inline {what} is not valid base64: {e}") from e
                self.cache[key] = self._open(io.BytesIO(data), f"inline {what}")
            return self.cache[key]
        if "file" in ref:
            rel = ref["file"]
            if not isinstance(rel, str):
                raise self.fail(f"bad {what} file name: {rel!r:.80}")
            file = (self.base_dir / rel).resolve()
            # Only files under the trace's folder: a trace should not point anywhere else.
            if not file.is_relative_to(self.base_dir):
                raise self.fail(f"{what} file {rel!r} is outside the trace's folder")
            if str(file) not in self.cache:
                if not file.is_file():
                    raise self.fail(f"{what} file not found: {file}")
                self.cache[str(file)] = self._open(file, f"{what} file {file}")
            return self.cache[str(file)]
        raise self.fail(f"{what} reference has neither 'file' nor 'blob': {sorted(ref)}")

    def _open(self, fp: Any, what: str) -> Image.Image:
        try:
            with Image.open(fp) as im:
                im.load()
                return im.copy()
        except (OSError, SyntaxError, ValueError) as e:
            raise self.fail(f"could not read {what}: {e}") from e

    def decode(self, value: Any, depth: int = 0) -> Any:
        if not isinstance(value, (list, dict)):
            return value
        if depth > MAX_NESTING:
            raise self.fail(f"a value nests lists or dicts more than {MAX_NESTING} deep")
        if isinstance(value, list):
            return [self.decode(v, depth + 1) for v in value]
        tag = value.get(_TAG)
        if tag is None:
            return {k: self.decode(v, depth + 1) for k, v in value.items()}
        try:
            if tag == "image":
                return self.image(value)
            if tag == "objects":
                return self._objects(value, depth)
            if tag == "tuple":
                return tuple(self.decode(v, depth + 1) for v in value["items"])
            if tag == "float":
                return float(value["value"])
            if tag == "dict":
                return {_hashable(self.decode(k, depth + 1)): self.decode(v, depth + 1)
                        for k, v in value["items"]}
            if tag == "ndarray":
                return np.array(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
            if tag == "repr":
                return ReprValue(str(value.get("type", "?")), str(value.get("repr", "")))
        except TraceLoadError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise self.fail(f"malformed {tag!r} value: {type(e).__name__}: {e}") from e
        raise self.fail(f"unknown value type {tag!r}")

    def _objects(self, value: dict[str, Any], depth: int) -> Objects:
        w, h = value["image_size"]
        regions = []
        for r in value["regions"]:
            mask = None
            if r.get("mask") is not None:
                mask = np.asarray(self.image(r["mask"], "mask").convert("L")) > 0
                if mask.shape != (h, w):
                    raise self.fail(f"mask shape {mask.shape} does not fit image size {(w, h)}")
            regions.append(Region(box=tuple(float(v) for v in r["box"]), mask=mask,
                                  label=r.get("label"), score=r.get("score"),
                                  extra=self.decode(r.get("extra", {}), depth + 1)))
        return Objects(tuple(regions), (w, h))


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by `save_trace`.

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
    reader = _Reader(path, doc.get("blobs"))
    try:
        steps = [_step_from(s, reader) for s in doc.get("steps", [])]
        return Trace(
            program=str(doc["program"]),
            steps=steps,
            inputs=reader.decode(doc.get("inputs", {})),
            result=reader.decode(doc.get("result")),
            error=doc.get("error"),
            events=[reader.decode(e) for e in doc.get("events", [])],
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
