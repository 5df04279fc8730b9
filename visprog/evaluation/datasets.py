"""Evaluation data sets: GQA, NLVR2, V*Bench, HR-Bench, NExT-QA, EgoSchema and a generic
JSONL, read into one `EvalItem` form.

- GQA: the official questions JSON, a dict of question id -> {"imageId", "question",
  "answer", "types": {"structural", "semantic", "detailed"}, ...}, and a folder of
  `<imageId>.jpg` images.
- NLVR2: the official JSON-lines files, one statement per line with "identifier" (e.g.
  "dev-850-0-0"), "sentence" and "label" ("True"/"False"). The left and right images are
  `<identifier without its last part>-img0.png` and `-img1.png` (in the "directory"
  sub-folder for the train split). Explicit "left"/"right" fields, or an "images" list of
  two, take precedence.
- Generic JSONL: {"image", "question", "answer"} per line, with optional "id", "program",
  "left"/"right" (pairs), "type" (a question type for the report) and "task"; or
  {"video", "question", "answer"} for a question about a video (task "video"). Either may
  have "options" (a list, lettered A, B..., or letter -> text): then it is multiple choice
  and "answer" is the right letter, index or option text.

- V*Bench (Wu & Xie 2023, `craigwu/vstar_bench`), multiple choice, in either published form:
  its `test_questions.jsonl`, one question per line with "image" (e.g.
  "direct_attributes/sa_4690.jpg", beside the file), "text" (the question, then one option
  per line as "(A) ...", then an instruction line), "label" (the right letter), "category"
  and "question_id"; or the benchmark folder the official script reads, whose
  `direct_attributes/` and `relative_position/` folders hold each image beside a JSON of
  {"question", "options", ...} whose first option is the right one (the options are then
  shown in an order shuffled by the image's name, so the right one is not always (A)).
- HR-Bench (Wang et al. 2025, `DreamMr/HR-Bench`: `hr_bench_4k.tsv`, `hr_bench_8k.tsv`),
  multiple choice: a tab-separated file in VLMEvalKit's form with the columns "index",
  "question", "answer" (the right letter), "A".."D", "category", "cycle_category" and
  "image" (the image as base64, or the index of an earlier row with the same image) or
  "image_path". The images are written once into a folder (`--images`, default
  `<file>_images/` beside it) as `<index>.<jpg|png|...>`.

- NExT-QA (Xiao et al. 2021, `doc-doc/NExT-QA`), multiple choice over videos: its
  `val.csv`/`test.csv` with the columns "video" (a video id), "question", "answer" (the
  right option's index, 0-4), "qid", "type" (CW, CH: causal; TN, TC, TP: temporal; DL, DC,
  DO: descriptive) and "a0".."a4". An item's id is "<video>_<qid>", as the official
  script's. The videos are `<folder>/<path>.mp4`, the path from `map_vid_vidorID.json`
  (video id -> "0000/2440175990", looked for beside the CSV, then in the videos folder),
  or `<folder>/<video>.mp4` without one; the folder is `--images` (or `--videos`), default
  `NExTVideo/` beside the CSV when there is one. Types are reported as the official script
  does: by type, with TP counted as TN, and by group (causal, temporal, descriptive).
- EgoSchema (Mangalam et al. 2023, `egoschema/EgoSchema`), multiple choice over three-minute
  videos: its `questions.json` (a list of {"q_uid", "question", "option 0".."option 4"}, or
  the folder holding it) and `subset_answers.json` beside it (q_uid -> the right option's
  index), for the 500 questions whose answers are published (the full set is scored on
  EgoSchema's own server: its questions without an answer are left out, with a warning).
  The videos are `<q_uid>.mp4` in the folder given, default `videos/` beside the file.

A multiple-choice item's question is its question followed by the options, one per line as
"(A) text", and its answer is the right letter (NExT-QA's and EgoSchema's index 0 is A); it is scored by the option the prediction
chooses (a letter, or an option's text: `visprog.evaluation.answers.choose_option`), as the
benchmarks' own scripts score the option a model chose.

Any item may carry a ready "program": it is evaluated without an LLM. A programs file
(JSONL of {"id", "program"}) can add programs to items of any format.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import random
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from visprog.errors import DatasetError, VisProgWarning
from visprog.values.text import OPTION_LINE, plural
from visprog.values.textfiles import read_text

FORMATS = ("gqa", "nlvr2", "jsonl", "vstar", "hrbench", "nextqa", "egoschema")
VIDEO_FOLDERS = {"nextqa": "NExTVideo", "egoschema": "videos"}  # the default videos folders
EGOSCHEMA_QUESTIONS, EGOSCHEMA_ANSWERS = "questions.json", "subset_answers.json"
NEXTQA_MAP = "map_vid_vidorID.json"  # video id -> its path under the videos folder
VSTAR_CATEGORIES = ("direct_attributes", "relative_position")  # the official folder's parts
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class EvalItem:
    """One question of a data set.

    Attributes:
        id: unique within the data set (a string).
        question: the question or statement.
        answer: the reference answer.
        task: "gqa" (one image, a word answer), "nlvr" (two images, True/False) or
            "video" (a video, a word answer).
        image, left, right: image paths (`image` for gqa, `left`/`right` for nlvr).
        video: a video file's path (the VIDEO input) for a video question.
        program: a ready program, or None to plan one with the LLM.
        types: question types for the per-type report, e.g. {"structural": "verify"}.
        options: a multiple-choice item's options, letter -> text ({"A": "red", ...}); its
            `answer` is then the right letter. Empty for other items.
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
    options: dict[str, str] = field(default_factory=dict)
    video: str | None = None

    def files(self) -> list[str]:
        """The input files it reads (images and video)."""
        return [p for p in (self.image, self.left, self.right, self.video)
                if isinstance(p, str)]


def detect_format(path: str | os.PathLike) -> str:
    """'vstar' for V*Bench's folder or JSON lines with "image", "text" and "label";
    'hrbench' for a .tsv; 'nextqa' for a .csv; 'egoschema' for a JSON list of questions
    with a "q_uid" (or a folder holding EgoSchema's questions.json); 'nlvr2' for JSON lines
    with an "identifier" and a "sentence"; 'jsonl' for other JSON lines (a first line that
    is a whole object of plain fields); 'gqa' for a file holding one object of question id
    -> question (on many lines, or one)."""
    p = Path(path)
    if p.is_dir():
        if any((p / c).is_dir() for c in VSTAR_CATEGORIES):
            return "vstar"
        if (p / EGOSCHEMA_QUESTIONS).is_file():
            return "egoschema"
        raise DatasetError(f"{p}: a folder is a data set only as V*Bench's (with "
                           f"{' or '.join(VSTAR_CATEGORIES)} inside) or EgoSchema's (with "
                           f"{EGOSCHEMA_QUESTIONS} inside)")
    if p.suffix.lower() == ".tsv":
        return "hrbench"
    if p.suffix.lower() == ".csv":
        return "nextqa"
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
    if isinstance(first, dict) and "text" in first and "label" in first and "image" in first:
        return "vstar"
    if isinstance(first, dict) and first and all(isinstance(v, dict) for v in first.values()) \
            and "question" not in first:
        return "gqa"  # the whole questions file on one line
    if isinstance(first, list) or (first is None and stripped.startswith("[")):
        if '"q_uid"' in head:
            return "egoschema"
        raise DatasetError(f"{p}: a JSON list is a data set only as EgoSchema's questions "
                           f"(objects with a \"q_uid\"); pass --format {'|'.join(FORMATS)}")
    if isinstance(first, dict):
        return "jsonl"  # a line with a field missing is reported by the JSONL reader
    if stripped.startswith("{"):
        return "gqa"
    raise DatasetError(f"{p}: can't tell the data set format; pass --format "
                       f"{'|'.join(FORMATS)}")


def load_dataset(path: str | os.PathLike, fmt: str | None = None, *,
                 images: str | os.PathLike | None = None,
                 programs: str | os.PathLike | None = None) -> list[EvalItem]:
    """Read a data set.

    Args:
        path: the questions file (V*Bench: its test_questions.jsonl or its folder;
            EgoSchema: its questions.json or its folder).
        fmt: one of `FORMATS`, or None to detect it.
        images: the images (or videos) folder; default: the folder of `path` (for GQA: its
            `images` sub-folder when there is one; for HR-Bench, where the images are
            written: `<file>_images/` beside it; NExT-QA: `NExTVideo/` beside it, EgoSchema:
            `videos/` beside it, when there is one).
        programs: optional JSONL of {"id", "program"} to attach ready programs.

    Raises:
        DatasetError: unreadable file, bad JSON, a missing field, repeated ids.
    """
    p = Path(path)
    if not p.is_file() and not (p.is_dir() and fmt in (None, "vstar", "egoschema")):
        raise DatasetError(f"data set file not found: {p}")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown data set format {fmt!r}; formats: {', '.join(FORMATS)}")
    folder = Path(images) if images else _default_images(p, fmt)
    reader = {"gqa": _read_gqa, "nlvr2": _read_nlvr2, "jsonl": _read_jsonl,
              "vstar": _read_vstar, "hrbench": _read_hrbench, "nextqa": _read_nextqa,
              "egoschema": _read_egoschema}[fmt]
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
    if fmt == "vstar" and path.is_dir():
        return path
    if fmt == "hrbench":
        return path.parent / f"{path.stem}_images"
    if fmt in VIDEO_FOLDERS:
        base = path if path.is_dir() else path.parent
        return base / VIDEO_FOLDERS[fmt] if (base / VIDEO_FOLDERS[fmt]).is_dir() else base
    return path.parent


def _json_file(path: Path, what: str, kind: type, shape: str) -> Any:
    """A data set's JSON file, which must be a `kind` (a dict or a list): `what` it is and
    its `shape` name it in the errors."""
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8 (names the line), bad JSON
        raise DatasetError(f"{path}: not {what}: {e}") from None
    if not isinstance(data, kind):
        raise DatasetError(f"{path}: {shape}")
    return data


def _read_gqa(path: Path, images: Path) -> Iterator[EvalItem]:
    data = _json_file(path, "a GQA questions file", dict,
                      "a GQA questions file is an object of question id -> question")
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
        video = row.get("video")
        if video is not None and (pair or row.get("image")):
            raise DatasetError(f"{path}:{lineno}: an item reads a video or images, not both")
        task = row.get("task") or ("nlvr" if pair else "video" if video is not None else "gqa")
        item_type = row.get("type")
        question = str(_field(row, "question", path, lineno))
        answer = _field(row, "answer", path, lineno)
        options: dict[str, str] = {}
        if row.get("options") is not None:
            options = _options(row["options"], f"{path}:{lineno}")
            answer = _answer_letter(answer, options, f"{path}:{lineno}")
            question = choice_question(question, options)
        yield EvalItem(
            id=str(row.get("id", lineno)), question=question, answer=str(answer), task=task,
            image=None if pair or video is not None else
            str(images / _field(row, "image", path, lineno)),
            left=str(images / row["left"]) if pair else None,
            right=str(images / _field(row, "right", path, lineno)) if pair else None,
            video=str(images / str(video)) if video is not None else None,
            program=row.get("program"), options=options,
            types={"type": str(item_type)} if item_type is not None else {})


def _options(raw: Any, where: str) -> dict[str, str]:
    """A JSONL item's options: a list (lettered A, B, ...) or letter -> text."""
    if isinstance(raw, list):
        raw = {chr(ord("A") + i): v for i, v in enumerate(raw)}
    if not isinstance(raw, dict) or not 2 <= len(raw) <= 26 or not all(
            isinstance(v, (str, int, float)) and str(v).strip() for v in raw.values()):
        raise DatasetError(f"{where}: 'options' must be a list of two or more texts, or "
                           f"letter -> text")
    options = {str(k).strip().upper(): str(v).strip() for k, v in raw.items()}
    if any(len(k) != 1 or not k.isalpha() for k in options):
        raise DatasetError(f"{where}: options are lettered A, B, C...; got "
                           f"{', '.join(options)}")
    return options


def _answer_letter(answer: Any, options: dict[str, str], where: str) -> str:
    """The right option's letter from a letter, an index (0 is A) or the option's text."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        letters = list(options)
        if not 0 <= answer < len(letters):
            raise DatasetError(f"{where}: the answer {answer} is not the index of an option "
                               f"(0 to {len(letters) - 1})")
        return letters[answer]
    text = str(answer).strip()
    same = [k for k, v in options.items() if v == text]
    if len(same) == 1 and text.strip("()").upper() not in options:
        return same[0]
    return _letter(text, options, where)


# -- multiple choice ---------------------------------------------------------------------------



def choice_question(question: str, options: dict[str, str]) -> str:
    """The question as an item carries it: the question, then "(A) text" per option."""
    return "\n".join([question.strip()] + [f"({k}) {v}" for k, v in options.items()])


def _letter(answer: Any, options: dict[str, str], where: str) -> str:
    letter = str(answer).strip().strip("()").upper()
    if letter not in options:
        raise DatasetError(f"{where}: the answer {answer!r} is not one of the options "
                           f"{', '.join(options)}")
    return letter


def _read_vstar(path: Path, images: Path) -> Iterator[EvalItem]:
    if path.is_dir():
        yield from _read_vstar_folder(path, images)
        return
    for lineno, row in _json_lines(path):
        text = str(_field(row, "text", path, lineno))
        stem, options = [], {}
        for line in text.split("\n"):
            m = OPTION_LINE.match(line.strip())
            if m and m.group(1) not in options:
                options[m.group(1)] = m.group(2)
            elif not options:
                stem.append(line)
            # lines after the options: the instruction ("Answer with the option's letter
            # from the given choices directly."), which visprog's prompt replaces
        if len(options) < 2 or not "\n".join(stem).strip():
            raise DatasetError(f"{path}:{lineno}: the text has no question with options "
                               f"'(A) ...' on lines of their own")
        category = row.get("category")
        yield EvalItem(id=str(row.get("question_id", lineno)),
                       question=choice_question("\n".join(stem), options),
                       answer=_letter(_field(row, "label", path, lineno), options,
                                      f"{path}:{lineno}"),
                       task="gqa", image=str(images / _field(row, "image", path, lineno)),
                       program=row.get("program"), options=options,
                       types={"category": str(category)} if category is not None else {})


def _read_vstar_folder(folder: Path, images: Path) -> Iterator[EvalItem]:
    """The official benchmark folder: per category, each image beside its annotation JSON,
    whose first option is the right one."""
    found = False
    for category in VSTAR_CATEGORIES:
        sub = folder / category
        if not sub.is_dir():
            continue
        for ann in sorted(sub.glob("*.json")):
            found = True
            data = _json_file(ann, "a V*Bench annotation", dict,
                              "a V*Bench annotation is a JSON object")
            raw = _field(data, "options", ann, "options")
            if not isinstance(raw, list) or len(raw) < 2 or not all(
                    isinstance(o, str) and o.strip() for o in raw):
                raise DatasetError(f"{ann}: 'options' must be a list of two or more texts")
            image = next((p for p in (ann.with_suffix(s) for s in IMAGE_SUFFIXES)
                          if p.is_file()), None)
            if image is None:
                raise DatasetError(f"{ann}: no image beside it ({ann.stem} with one of "
                                   f"{', '.join(IMAGE_SUFFIXES)})")
            item_id = f"{category}/{ann.stem}"
            order = list(range(len(raw)))
            random.Random(f"vstar:{item_id}").shuffle(order)  # the same order every run
            letters = [chr(ord("A") + i) for i in range(len(raw))]
            options = {letters[i]: raw[j].strip() for i, j in enumerate(order)}
            yield EvalItem(id=item_id,
                           question=choice_question(str(_field(data, "question", ann,
                                                               "question")), options),
                           answer=letters[order.index(0)], task="gqa",
                           image=str(images / image.relative_to(folder)), options=options,
                           types={"category": category})
    if not found:
        raise DatasetError(f"{folder}: no V*Bench annotations (*.json) in "
                           f"{' or '.join(VSTAR_CATEGORIES)}")


# -- video multiple choice -----------------------------------------------------------------

NEXTQA_COLUMNS = ("video", "question", "answer", "qid", "type", "a0", "a1")
NEXTQA_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}
INDEX_LETTERS = "ABCDEFGHIJ"  # option i (0-based) of NExT-QA and EgoSchema is letter i


def _indexed_options(texts: list[Any], where: str) -> dict[str, str]:
    options = {}
    for i, text in enumerate(texts):
        if text is None or not str(text).strip():
            raise DatasetError(f"{where}: option {i} is empty")
        options[INDEX_LETTERS[i]] = str(text).strip()
    return options


def _index_answer(value: Any, options: dict[str, str], where: str) -> str:
    """The letter of an answer given as an option's index (an int, or its digits)."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) >= len(options):
        raise DatasetError(f"{where}: the answer {value!r} is not the index of an option "
                           f"(0 to {len(options) - 1})")
    return INDEX_LETTERS[int(text)]


def _read_nextqa(path: Path, videos: Path) -> Iterator[EvalItem]:
    """NExT-QA's multiple-choice CSV; the videos by `map_vid_vidorID.json` when found."""
    mapping: dict[str, str] = {}
    for where in (path.parent / NEXTQA_MAP, videos / NEXTQA_MAP):
        if where.is_file():
            data = _json_file(where, "NExT-QA's video map", dict,
                              "NExT-QA's video map is an object of video id -> path")
            mapping = {str(k): str(v) for k, v in data.items()}
            break
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DatasetError(f"could not read {path}: {e}") from None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in NEXTQA_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{path}: not a NExT-QA CSV: it needs the columns "
                               f"{', '.join(NEXTQA_COLUMNS)}...; missing {', '.join(missing)}")
        try:
            for lineno, row in enumerate(reader, 2):
                where = f"{path}:{lineno}"
                video = str(_field(row, "video", path, lineno)).strip()
                qid = str(_field(row, "qid", path, lineno)).strip()
                options = _indexed_options(
                    [row.get(f"a{i}") for i in range(10) if f"a{i}" in header], where)
                qtype = str(row.get("type") or "").strip().upper()
                qtype = "TN" if qtype == "TP" else qtype  # as the official script counts it
                types = {"type": qtype} if qtype else {}
                if qtype[:1] in NEXTQA_GROUPS:
                    types["group"] = NEXTQA_GROUPS[qtype[0]]
                if not video or not qid:
                    raise DatasetError(f"{where}: missing video or qid")
                relative = mapping.get(video, video) if mapping else video
                yield EvalItem(id=f"{video}_{qid}", question=choice_question(
                                   str(_field(row, "question", path, lineno)), options),
                               answer=_index_answer(row["answer"], options, where),
                               task="video", video=str(videos / f"{relative}.mp4"),
                               options=options, types=types)
        except csv.Error as e:
            raise DatasetError(f"{path}: bad CSV: {e}") from None


def _read_egoschema(path: Path, videos: Path) -> Iterator[EvalItem]:
    """EgoSchema's questions with the answers of `subset_answers.json` beside them (or an
    "answer" of their own); those with none are left out, with a warning."""
    if path.is_dir():
        path = path / EGOSCHEMA_QUESTIONS
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not EgoSchema's questions: {e}") from None
    if not isinstance(data, list) or not all(isinstance(q, dict) for q in data):
        raise DatasetError(f"{path}: EgoSchema's questions are a JSON list of objects")
    answers: dict[str, Any] = {}
    answers_file = path.parent / EGOSCHEMA_ANSWERS
    if answers_file.is_file():
        answers = _json_file(answers_file, "EgoSchema's answers", dict,
                             "EgoSchema's answers are an object of q_uid -> the right "
                             "option's index")
    items, unanswered = [], 0
    for n, q in enumerate(data):
        where = f"{path}: question {n}"
        uid = str(_field(q, "q_uid", path, f"question {n}")).strip()
        answer = answers.get(uid, q.get("answer"))
        if answer is None:
            unanswered += 1
            continue
        options = _indexed_options([q.get(f"option {i}") for i in range(10)
                                    if f"option {i}" in q], f"{where} ({uid})")
        if len(options) < 2:
            raise DatasetError(f"{where} ({uid}): needs 'option 0', 'option 1'...")
        items.append(EvalItem(
            id=uid, question=choice_question(str(_field(q, "question", path, f"question {n}")),
                                             options),
            answer=_index_answer(answer, options, f"{answers_file} ({uid})"), task="video",
            video=str(videos / f"{uid}.mp4"), options=options))
    if not items:
        raise DatasetError(f"{path}: no question has an answer: EgoSchema's published answers "
                           f"are {EGOSCHEMA_ANSWERS} beside the questions (the full set is "
                           f"scored on EgoSchema's server)")
    if unanswered:
        warnings.warn(f"{path}: {plural(unanswered, 'question')} with no answer in "
                      f"{EGOSCHEMA_ANSWERS} left out (EgoSchema scores the full set on its "
                      f"server)", VisProgWarning, stacklevel=3)
    return iter(items)


HRBENCH_COLUMNS = ("index", "question", "answer", "A", "B")


def _read_hrbench(path: Path, images: Path) -> Iterator[EvalItem]:
    """VLMEvalKit's TSV. To save space a row's image may be the index of another row that
    holds the same image (a field of 64 characters or fewer, as VLMEvalKit reads it);
    images go to `images` once, named by the index of the row that holds them."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))  # an 8K image in base64 is one field
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DatasetError(f"could not read {path}: {e}") from None
    items: list[EvalItem] = []
    pending: list[tuple[EvalItem, str, str]] = []  # (item, index it refers to, where)
    written: dict[str, str] = {}  # index -> the image file its row held
    with f:
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in HRBENCH_COLUMNS if c not in header]
        if missing or not ({"image", "image_path"} & set(header)):
            raise DatasetError(f"{path}: not an HR-Bench TSV: it needs the columns "
                               f"{', '.join(HRBENCH_COLUMNS)} and image or image_path; "
                               f"missing {', '.join(missing) or 'image'}")
        try:
            for lineno, row in enumerate(reader, 2):
                where = f"{path}:{lineno}"
                index = str(row.get("index") or "").strip()
                if not index:
                    raise DatasetError(f"{where}: missing index")
                options = {k: row[k].strip() for k in "ABCDEFGH"
                           if k in row and row[k] is not None and row[k].strip()
                           and row[k].strip().lower() != "nan"}
                types = {k: str(row[c]).strip() for k, c in (("category", "category"),
                                                             ("cycle", "cycle_category"))
                         if row.get(c) not in (None, "")}
                item = EvalItem(id=index, question=choice_question(
                                    str(_field(row, "question", path, lineno)), options),
                                answer=_letter(_field(row, "answer", path, lineno), options,
                                               where),
                                task="gqa", options=options, types=types)
                data = (row.get("image") or "").strip()
                if row.get("image_path") and not data:
                    item.image = str(images / row["image_path"].strip())
                elif not data:
                    raise DatasetError(f"{where}: the row has no image")
                elif len(data) <= 64:  # the index of the row that holds the image
                    pending.append((item, data, where))
                else:
                    item.image = written[index] = _write_image(data, index, images, where)
                items.append(item)
        except csv.Error as e:
            raise DatasetError(f"{path}: bad TSV: {e}") from None
    for item, ref, where in pending:
        if ref not in written:
            raise DatasetError(f"{where}: the image refers to row index {ref!r}, which holds "
                               f"no image")
        item.image = written[ref]
    return iter(items)


def _write_image(data: str, index: str, images: Path, where: str) -> str:
    """A base64 image written to `images/<index>.<its type>` (unless it is there already);
    its path."""
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise DatasetError(f"{where}: the image is neither base64 nor a row index") from None
    suffix = _image_suffix(raw)
    if suffix is None:
        raise DatasetError(f"{where}: the image's bytes are not a JPEG, PNG, WebP or BMP")
    target = images / f"{_safe_name(index)}{suffix}"
    if not (target.is_file() and target.stat().st_size == len(raw)):
        try:
            images.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".{os.getpid()}.part")
            tmp.write_bytes(raw)
            os.replace(tmp, target)  # a reader never sees half an image
        except OSError as e:
            raise DatasetError(f"{where}: could not write the image to {target}: {e}") from None
    return str(target)


def _image_suffix(raw: bytes) -> str | None:
    if raw.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return ".webp"
    if raw.startswith(b"BM"):
        return ".bmp"
    return None


def _safe_name(index: str) -> str:
    """An index as a file name: letters, digits, '-', '_' and '.' only (never a path); an
    index that had other characters gets a digest of itself, so two never share a name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", index).lstrip(".")
    if name != index:
        name = f"{name or '_'}-{hashlib.sha256(index.encode('utf-8')).hexdigest()[:10]}"
    return name


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
