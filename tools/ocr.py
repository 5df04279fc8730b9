"""Ocr(image) -> Text and LocText(image, text) -> Objects: reading the text in an image.

Both run PP-OCR (text detection, a 0/180 degree orientation classifier, text recognition)
through `rapidocr-onnxruntime`, whose wheel ships the ONNX models: OCR works offline, in
every preset (`tiny` included), and its tests check real readings.

Why two modules. A question about a sign, a label or a number ("What does the sign say?",
"What is the bus number?") wants the words as Text: that is what Result returns, Vqa-style,
and what Eval compares (`{TEXT} == 'STOP'`, and a number read as text compares with numbers).
A program that finds, counts, crops, tags or blurs text wants regions: LocText gives one
region per line of text, `label` = the line, `score` = the recogniser's confidence, boxes in
the image's pixels, so Crop, Tag, Count and Select work on text as on any object. One
detector and one recogniser serve both (the model manager holds one engine), and LocText
reads Ocr's section of the configuration.

Reading order. PP-OCR's detector sometimes splits one line into several boxes ('Main',
'Street'); boxes are grouped into rows (their vertical centres within half a line height of
each other), rows sorted top to bottom, boxes in a row left to right, and boxes of a row
closer than `merge_gap` line heights are joined with a space into one line. Ocr's text is
every line in that order, joined with single spaces (one line: answers and Eval want one).

No text in the image: Ocr gives '' and LocText empty Objects (not an error).

Known limits of the shipped recogniser (PP-OCRv4, Chinese and English): it can drop the space
between a word and a number in small print ('PLATFORM4'), and confuse O and 0 in some
monospace fonts; LocText's `text=` match ignores spaces and case for that reason.

Settings (section `[Ocr]`, shared by LocText; defaults in `Ocr.presets` below):
    checkpoint: "pp-ocrv4" for the models inside the wheel, or a folder with `det*.onnx`,
        `rec*.onnx`, `cls*.onnx` (PP-OCR exports) and optionally the recogniser's character
        list `*.txt` (for another language).
    min_score: lines the recogniser is less sure of are dropped (0..1).
    use_angle_cls: run the orientation classifier (reads upside-down text).
    merge_gap: boxes of one row closer than this many line heights form one line.
    max_side: longer images are scaled down to this side before detection.
    threads: onnxruntime threads per session (0: its default); not in the cache key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from visprog.models import ModelTool, SettingsError
from visprog.registry import Tool
from visprog.values import Objects

from visprog.models.images import rgb_image

BUILTIN = "pp-ocrv4"  # the detection/recognition models that ship inside the wheel

Line = tuple[tuple[float, float, float, float], str, float]  # (box xyxy, text, score)


# -- loading ---------------------------------------------------------------------------------

def _find(folder: Path, pattern: str) -> str | None:
    found = sorted(folder.glob(pattern))
    return str(found[0]) if found else None


def load_rapidocr(path: str, device: str, dtype: Any, *, max_side: int = 2000,
                  threads: int = 0) -> Any:
    """A RapidOCR engine: the wheel's PP-OCR models for `path` == "pp-ocrv4", else the
    `det*.onnx`, `rec*.onnx`, `cls*.onnx` (and optional `*.txt` keys) of the folder `path`.

    onnxruntime runs on the CPU here whatever `device` says (its GPU build is a separate
    package); `dtype` does not apply to these float32 exports.
    """
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        raise ImportError("Ocr needs rapidocr-onnxruntime: pip install 'visprog[ocr]' "
                          "(or pip install rapidocr-onnxruntime)") from e
    # text_score 0: every reading comes back, min_score filters them here
    kwargs: dict[str, Any] = {"max_side_len": int(max_side), "text_score": 0.0,
                              "print_verbose": False}
    if threads:
        kwargs["intra_op_num_threads"] = int(threads)
    if path != BUILTIN:
        folder = Path(path)
        det, rec, cls = (_find(folder, f"{p}*.onnx") for p in ("det", "rec", "cls"))
        if det is None or rec is None:
            raise FileNotFoundError(f"{folder} has no det*.onnx and rec*.onnx PP-OCR models")
        kwargs.update(det_model_path=det, rec_model_path=rec)
        if cls is not None:
            kwargs["cls_model_path"] = cls
        keys = _find(folder, "*.txt")
        if keys is not None:
            kwargs["rec_keys_path"] = keys
    return RapidOCR(**kwargs)


def bgr(image: Image.Image) -> np.ndarray:
    """RapidOCR takes a 3-channel array as BGR (OpenCV's order)."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def read(engine: Any, array: np.ndarray, use_angle_cls: bool) -> list[tuple[Any, str, float]]:
    """The engine's raw readings: (quadrilateral of 4 points, text, score) per box."""
    result, _ = engine(array, use_cls=use_angle_cls)
    return [(quad, str(text), float(score)) for quad, text, score in (result or [])]


def lines_from(readings: Sequence[tuple[Any, str, float]], size: tuple[int, int],
               min_score: float, merge_gap: float) -> list[Line]:
    """The readings as lines in reading order: (box xyxy, text, score), see the module doc."""
    boxes = []
    for quad, text, score in readings:
        text = " ".join(text.split())
        if not text or score < min_score:
            continue
        q = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
        x1, y1 = q.min(axis=0)
        x2, y2 = q.max(axis=0)
        boxes.append((float(x1), float(y1), float(x2), float(y2), text, score))
    rows: list[list[tuple]] = []
    for b in sorted(boxes, key=lambda b: (b[1] + b[3]) / 2):
        cy, h = (b[1] + b[3]) / 2, b[3] - b[1]
        if rows:
            row = rows[-1]
            rcy = sum((r[1] + r[3]) / 2 for r in row) / len(row)
            rh = min(r[3] - r[1] for r in row)
            if abs(cy - rcy) < 0.5 * min(h, rh):
                row.append(b)
                continue
        rows.append([b])
    lines = []
    for row in rows:
        row.sort(key=lambda b: b[0])
        cur = list(row[0])
        for b in row[1:]:
            height = max(cur[3] - cur[1], b[3] - b[1])
            if b[0] - cur[2] < merge_gap * height:
                cur = [min(cur[0], b[0]), min(cur[1], b[1]), max(cur[2], b[2]),
                       max(cur[3], b[3]), cur[4] + " " + b[4], min(cur[5], b[5])]
            else:
                lines.append(cur)
                cur = list(b)
        lines.append(cur)
    return [((ln[0], ln[1], ln[2], ln[3]), ln[4], float(ln[5])) for ln in lines]


def matches(line: str, query: str) -> bool:
    """LocText's test: the query is in the line, ignoring case and spaces."""
    def squash(s: str) -> str:
        return "".join(s.casefold().split())

    return squash(query) in squash(line)


# -- the tools -------------------------------------------------------------------------------

class Ocr(ModelTool):
    name = "Ocr"
    tasks = ("gqa", "video")  # the planner's prompts that describe it
    params = {"image": "Image"}
    returns = "Text"
    doc = ("reads the text in the image (signs, labels, numbers), lines in reading order "
           "joined by spaces; '' when there is none")
    presets = {
        # OCR is real in every preset (tiny too): its models ship in the wheel
        "default": {"checkpoint": BUILTIN, "min_score": 0.5, "use_angle_cls": True,
                    "merge_gap": 1.0, "max_side": 2000, "threads": 0},
    }
    uses_torch = False  # onnxruntime

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        min_score = float(s["min_score"])
        if not 0.0 <= min_score <= 1.0:
            raise SettingsError(f"{self.name}: min_score must be within 0..1, got {min_score}")
        # threads change speed, not readings: kept out of the settings (the cache key);
        # `forward` reads them from all_settings
        int(s["threads"])
        return {"checkpoint": str(s["checkpoint"]), "min_score": min_score,
                "use_angle_cls": bool(s["use_angle_cls"]), "merge_gap": float(s["merge_gap"]),
                "max_side": int(s["max_side"])}

    def preprocess(self, call: dict[str, Any]) -> tuple[Image.Image, str | None]:
        return rgb_image(call["image"]), call.get("text")

    def forward(self, items: list[tuple[Image.Image, str | None]]) -> list[list[Line]]:
        s = self.settings
        max_side, threads = s["max_side"], int(self.all_settings["threads"])

        def loader(path: str, device: str, dtype: Any) -> Any:
            return load_rapidocr(path, device, dtype, max_side=max_side, threads=threads)

        # the engine is built with max_side and threads: settings that differ there get
        # their own (the model manager shares a bundle by kind and checkpoint)
        kind = f"rapidocr(max_side={max_side}, threads={threads})"
        engine = self.model(kind, s["checkpoint"], loader, half=False)
        # PP-OCR's pipeline takes one image at a time: the batch is a loop
        return [lines_from(read(engine, bgr(im), s["use_angle_cls"]), im.size, s["min_score"],
                           s["merge_gap"]) for im, _ in items]

    def postprocess(self, item: Any, lines: list[Line]) -> str:
        return " ".join(text for _, text, _ in lines)


class LocText(Ocr):
    section = "Ocr"
    name = "LocText"
    tasks = ("gqa", "knowtag")  # the planner's prompts that describe it
    params = {"image": "Image", "text": "Text|None"}
    defaults = {"text": None}
    returns = "Objects"
    doc = ("finds the lines of text in the image (each labelled with what it says); with "
           "text=, only the lines containing it")

    def postprocess(self, item: tuple[Image.Image, str | None], lines: list[Line]) -> Objects:
        image, query = item
        if query is not None and query.strip():
            lines = [ln for ln in lines if matches(ln[1], query)]
        return Objects([b for b, _, _ in lines], image.size,
                       labels=[t for _, t, _ in lines],
                       scores=[sc for _, _, sc in lines])


TOOLS = [Ocr, LocText]


def build(settings: dict[str, Any] | None = None, ctx: Any = None) -> list[Tool]:
    """Ocr and LocText, both with one `[Ocr]` section (they share the engine)."""
    return [cls.build(settings, ctx) for cls in TOOLS]
