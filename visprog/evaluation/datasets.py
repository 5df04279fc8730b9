"""Evaluation data sets: GQA, NLVR2 and a generic JSONL, read into one `EvalItem` form.

- GQA: the official questions JSON, a dict of question id -> {"imageId", "question",
  "answer", "types": {"structural", "semantic", "detailed"}, ...}, and a folder of
  `<imageId>.jpg` images.
- NLVR2: the official JSON-lines files, one statement per line with "identifier" (e.g.
  "dev-850-0-0"), "sentence" and "label" ("True"/"False"). The left and right images are
  `<identifier without its last part>-img0.png` and `-img1.png` (in the "directory"
  sub-folder for the train split). Explicit "left"/"right" fields, or an "images" list of
  two, take precedence.
- Generic JSONL: {"image", "question", "answer"} per line, with optional "id", "program",
  "left"/"right" (pairs), "type" (a question type for the report) and "task".

Any item may carry a ready "program": it is evaluated without an LLM. A programs file
(JSONL of {"id", "program"}) can add programs to items of any format.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from visprog.errors import DatasetError, VisProgWarning
from visprog.values.text import plural
from visprog.values.textfiles import read_text

FORMATS = ("gqa", "nlvr2", "jsonl")


@dataclass
class EvalItem:
    """One question of a data set.

    Attributes:
        id: unique within the data set (a string).
        question: the question or statement.
        answer: the reference answer.
        task: "gqa" (one image, a word answer) or "nlvr" (two images, True/False).
        image, left, right: image paths (`image` for gqa, `left`/`right` for nlvr).
        program: a ready program, or None to plan one with the LLM.
        types: question types for the per-type report, e.g. {"structural": "verify"}.
    """

    id: str
    question: str
    answer: str
    task: str = "gqa"
    image: str | None = None
    left: str | None = None
    right: str | None = None
    program: str | None = None
    types: dict[str, str] = field(default_factory=dict)


def detect_format(path: str | os.PathLike) -> str:
    """'nlvr2' for JSON lines with an "identifier" and a "sentence"; 'jsonl' for other JSON
    lines (a first line that is a whole object of plain fields); 'gqa' for a file holding one
    object of question id -> question (on many lines, or one)."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(1 << 16).decode("utf-8-sig", errors="replace")
    stripped = head.lstrip()
    first_line = stripped.split("\n", 1)[0]
    try:
        first = json.loads(first_line)
    except json.JSONDecodeError:
        first = None
    if isinstance(first, dict) and "identifier" in first and "sentence" in first:
        return "nlvr2"
    if isinstance(first, dict) and first and all(isinstance(v, dict) for v in first.values()) \
            and "question" not in first:
        return "gqa"  # the whole questions file on one line
    if isinstance(first, dict):
        return "jsonl"  # a line with a field missing is reported by the JSONL reader
    if stripped.startswith("{"):
        return "gqa"
    raise DatasetError(f"{p}: can't tell the data set format; pass --format gqa|nlvr2|jsonl")


def load_dataset(path: str | os.PathLike, fmt: str | None = None, *,
                 images: str | os.PathLike | None = None,
                 programs: str | os.PathLike | None = None) -> list[EvalItem]:
    """Read a data set.

    Args:
        path: the questions file.
        fmt: "gqa", "nlvr2", "jsonl", or None to detect it.
        images: the images folder; default: the folder of `path` (for GQA: its `images`
            sub-folder when there is one).
        programs: optional JSONL of {"id", "program"} to attach ready programs.

    Raises:
        DatasetError: unreadable file, bad JSON, a missing field, repeated ids.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"data set file not found: {p}")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown data set format {fmt!r}; formats: {', '.join(FORMATS)}")
    folder = Path(images) if images else _default_images(p, fmt)
    reader = {"gqa": _read_gqa, "nlvr2": _read_nlvr2, "jsonl": _read_jsonl}[fmt]
    items = list(reader(p, folder))
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DatasetError(f"{p}: id {item.id!r} appears more than once")
        seen.add(item.id)
    if programs:
        attach_programs(items, programs, dataset=p)
    return items


def attach_programs(items: list[EvalItem], path: str | os.PathLike, *,
                    dataset: Any = "the data set") -> int:
    """Set `program` on the items a programs file names; returns how many it set.

    Raises:
        DatasetError: none of its ids names an item (a programs file of another data set,
            or ids written differently); some that don't are a warning naming them.
    """
    by_id = {item.id: item for item in items}
    n = 0
    unknown: list[str] = []
    for lineno, row in _json_lines(Path(path)):
        pid = str(_field(row, "id", path, lineno))
        if pid in by_id:
            by_id[pid].program = _field(row, "program", path, lineno)
            n += 1
        else:
            unknown.append(pid)
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        example = f" (its ids look like {next(iter(by_id))!r})" if by_id else ""
        what = f"{plural(len(unknown), 'id')} of {path} ({shown}) name no item of {dataset}"
        if not n:
            raise DatasetError(f"none of the programs is used: {what}{example}")
        warnings.warn(f"{what}; those programs are not used", VisProgWarning, stacklevel=2)
    return n


def _default_images(path: Path, fmt: str) -> Path:
    if fmt == "gqa" and (path.parent / "images").is_dir():
        return path.parent / "images"
    return path.parent


def _read_gqa(path: Path, images: Path) -> Iterator[EvalItem]:
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8 (names the line), bad JSON
        raise DatasetError(f"{path}: not a GQA questions file: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a GQA questions file is an object of question id -> question")
    for qid, q in data.items():
        if not isinstance(q, dict):
            raise DatasetError(f"{path}: question {qid!r} is not an object (a GQA questions "
                               "file is one object of question id -> question; for one item "
                               "a line, pass --format jsonl)")
        where = f"question {qid!r}"
        types = q.get("types") or {}
        yield EvalItem(id=str(qid), question=_field(q, "question", path, where),
                       answer=str(_field(q, "answer", path, where)), task="gqa",
                       image=str(images / f"{_field(q, 'imageId', path, where)}.jpg"),
                       program=q.get("program") if isinstance(q.get("program"), str) else None,
                       types={k: str(v) for k, v in types.items() if v is not None})


def _read_nlvr2(path: Path, images: Path) -> Iterator[EvalItem]:
    for lineno, row in _json_lines(path):
        ident = str(_field(row, "identifier", path, lineno))
        left, right = _pair(row, ident, images, path, lineno)
        types = {"split": ident.split("-")[0]} if "-" in ident else {}
        yield EvalItem(id=ident, question=_field(row, "sentence", path, lineno),
                       answer=str(_field(row, "label", path, lineno)), task="nlvr",
                       left=left, right=right, program=row.get("program"), types=types)


def _pair(row: dict, ident: str, images: Path, path: Path, lineno: int) -> tuple[str, str]:
    """The left and right image paths of an NLVR2 line."""
    if row.get("left") and row.get("right"):
        return str(images / row["left"]), str(images / row["right"])
    listed = row.get("images")
    if isinstance(listed, list) and len(listed) == 2:
        return str(images / listed[0]), str(images / listed[1])
    parts = ident.split("-")
    if len(parts) < 2:
        raise DatasetError(f"{path}:{lineno}: identifier {ident!r} does not name the images "
                           "(expected e.g. dev-850-0-0); give left/right fields")
    stem = "-".join(parts[:-1])
    folder = images / str(row["directory"]) if row.get("directory") is not None else images
    return str(folder / f"{stem}-img0.png"), str(folder / f"{stem}-img1.png")


def _read_jsonl(path: Path, images: Path) -> Iterator[EvalItem]:
    for lineno, row in _json_lines(path):
        pair = bool(row.get("left") or row.get("right"))
        task = row.get("task") or ("nlvr" if pair else "gqa")
        item_type = row.get("type")
        yield EvalItem(
            id=str(row.get("id", lineno)), question=_field(row, "question", path, lineno),
            answer=str(_field(row, "answer", path, lineno)), task=task,
            image=None if pair else str(images / _field(row, "image", path, lineno)),
            left=str(images / row["left"]) if pair else None,
            right=str(images / _field(row, "right", path, lineno)) if pair else None,
            program=row.get("program"),
            types={"type": str(item_type)} if item_type is not None else {})


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        text = read_text(path)  # a BOM and CRLF line ends are fine
    except OSError as e:
        raise DatasetError(f"could not read {path}: {e}") from None
    except ValueError as e:  # not UTF-8: the message names the line
        raise DatasetError(str(e)) from None
    # Lines end at "\n" only: JSON strings may hold U+2028, which str.splitlines splits at.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: bad JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{lineno}: each line must be a JSON object")
        yield lineno, row


def _field(row: dict, name: str, path: Any, where: Any) -> Any:
    if row.get(name) is None:
        raise DatasetError(f"{path}:{where}: missing field {name!r}")
    return row[name]
