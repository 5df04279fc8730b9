"""Evaluation: answer normalisation, the three data set formats, scoring and the failure
breakdown, resuming after a kill, and the `visprog eval`/`visprog batch` commands."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprog.evaluation.answers import is_correct
from visprog.evaluation.datasets import DatasetError, EvalItem, detect_format, load_dataset
from visprog.evaluation.harness import evaluate, format_summary, read_results, select, summarize
from visprog.registry import tool
from visprog.values.text import normalize, show

# -- normalisation ------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normal", [
    ("Yes", "yes"), ("yes.", "yes"), (" NO ", "no"), (True, "yes"), (False, "no"),
    ("True", "yes"), ("false", "no"), ("two", "2"), ("Two dogs", "2 dogs"), ("2.0", "2"),
    (2.0, "2"), (3, "3"), (1.5, "1.5"), ("1.5", "1.5"), ("the red car", "red car"),
    ("A man", "man"), ("an apple!", "apple"), ("man's hat", "mans hat"),
    ("black-and-white", "black and white"), ("left, right", "left right"), ("", ""),
    (None, ""), ("zero", "0"), ("twenty", "20"), ("twenty-one", "20 1"), ("07", "7"),
    (["a cat", "Dog"], "cat, dog"), ("The", ""), ("t-shirt", "t shirt"),
])
def test_normalize(raw, normal):
    assert normalize(raw) == normal


@pytest.mark.parametrize("prediction, answer, right", [
    ("Yes", "yes", True), (True, "yes", True), (True, "True", True), (False, "True", False),
    ("2", "two", True), (2, "two", True), ("the table", "table", True), ("", "", False),
    (None, "yes", False), ("red", "blue", False), (Image.new("RGB", (2, 2)), "yes", False),
    ("three", "3.0", True),
])
def test_is_correct(prediction, answer, right):
    assert is_correct(prediction, answer) is right


@pytest.mark.parametrize("value, task, shown", [
    (True, "gqa", "yes"), (False, "nlvr", "False"), (3.0, "gqa", "3"), ("red", "gqa", "red"),
    (None, "gqa", ""), (Image.new("RGB", (2, 2)), "gqa", "image 2x2"), (["a", 1], "gqa", "a, 1"),
])
def test_predictions_read_as_the_benchmark_writes_them(value, task, shown):
    assert show(value, task=task) == shown


# -- data sets ----------------------------------------------------------------------------

def save_image(path: Path, color=(200, 30, 30), size=(24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_gqa(tmp: Path) -> Path:
    save_image(tmp / "images" / "2354786.jpg")
    save_image(tmp / "images" / "n161313.jpg", (20, 20, 220))
    questions = {
        "02930152": {"imageId": "2354786", "question": "Is the sky dark?", "answer": "yes",
                     "fullAnswer": "Yes, the sky is dark.", "isBalanced": True,
                     "types": {"structural": "verify", "semantic": "attr",
                               "detailed": "verifyAttr"}},
        "07333408": {"imageId": "n161313", "question": "What color is it?", "answer": "blue",
                     "types": {"structural": "query", "semantic": "attr",
                               "detailed": "colorObj"}},
    }
    path = tmp / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions), encoding="utf-8")
    return path


def make_nlvr2(tmp: Path) -> Path:
    rows = [
        {"validation": {}, "sentence": "One image shows exactly two dogs.", "left_url": "x",
         "writer": "1", "label": "True", "identifier": "dev-850-0-0", "synset": "dog"},
        {"sentence": "There are four birds.", "label": "False", "identifier": "dev-850-0-1"},
        {"sentence": "A train.", "label": "True", "identifier": "train-10171-0-0",
         "directory": 74},
        {"sentence": "Cups.", "label": "False", "identifier": "custom-1",
         "left": "l.png", "right": "r.png"},
    ]
    for name in ("dev-850-0-img0.png", "dev-850-0-img1.png", "74/train-10171-0-img0.png",
                 "74/train-10171-0-img1.png", "l.png", "r.png"):
        save_image(tmp / "img" / name)
    return write_jsonl(tmp / "dev.json", rows)


def test_gqa_format(tmp_path):
    path = make_gqa(tmp_path)
    assert detect_format(path) == "gqa"
    items = load_dataset(path)
    assert [i.id for i in items] == ["02930152", "07333408"]
    first = items[0]
    assert (first.question, first.answer, first.task) == ("Is the sky dark?", "yes", "gqa")
    assert first.image == str(tmp_path / "images" / "2354786.jpg")
    assert first.types == {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}
    assert first.program is None
    other = load_dataset(path, "gqa", images=tmp_path / "elsewhere")
    assert other[1].image == str(tmp_path / "elsewhere" / "n161313.jpg")


def test_nlvr2_format(tmp_path):
    path = make_nlvr2(tmp_path)
    assert detect_format(path) == "nlvr2"
    items = load_dataset(path, images=tmp_path / "img")
    img = tmp_path / "img"
    assert (items[0].left, items[0].right) == (str(img / "dev-850-0-img0.png"),
                                               str(img / "dev-850-0-img1.png"))
    assert items[1].left == items[0].left  # same pair, another statement
    assert items[2].left == str(img / "74" / "train-10171-0-img0.png")
    assert (items[3].left, items[3].right) == (str(img / "l.png"), str(img / "r.png"))
    assert [i.answer for i in items] == ["True", "False", "True", "False"]
    assert {i.task for i in items} == {"nlvr"} and items[0].types == {"split": "dev"}
    assert all(Path(p).exists() for i in items for p in (i.left, i.right))


def test_jsonl_format_and_programs_file(tmp_path):
    save_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"id": "x", "image": "a.png", "question": "q?", "answer": "yes", "type": "verify"},
        {"image": "a.png", "question": "q2?", "answer": 3, "program": "A=Eval(expr='3')"},
        {"left": "a.png", "right": "a.png", "question": "s", "answer": "True"},
    ])
    programs = write_jsonl(tmp_path / "progs.jsonl", [{"id": "x", "program": "A=Eval(expr='1')"},
                                                      {"id": "nope", "program": "B=1"}])
    assert detect_format(path) == "jsonl"
    with pytest.warns(UserWarning, match="'nope'.* name no item"):  # not used: said so
        items = load_dataset(path, programs=programs)
    assert [i.id for i in items] == ["x", "2", "3"]
    assert items[0].program == "A=Eval(expr='1')" and items[0].types == {"type": "verify"}
    assert items[1].answer == "3" and items[1].program == "A=Eval(expr='3')"
    assert items[2].task == "nlvr" and items[2].image is None and items[2].left.endswith("a.png")


@pytest.mark.parametrize("content, fmt, message", [
    ('{"image": "a.png", "question": "q"}\n', "jsonl", "missing field 'answer'"),
    ('{"image": "a.png", "question": "q", "answer": "a"}\n{oops\n', "jsonl", "bad JSON"),
    ('[1, 2]\n', "jsonl", "must be a JSON object"),
    ('{"id": 1, "image": "a", "question": "q", "answer": "a"}\n'
     '{"id": 1, "image": "b", "question": "q", "answer": "a"}\n', "jsonl", "more than once"),
    ('{"q1": {"question": "q", "answer": "a"}}', "gqa", "missing field 'imageId'"),
    ('[]', "gqa", "object of question id"),
    ('{"q1": {"imageId": "1", "question": "q", ', "gqa", "not a GQA questions file"),
    ('{"identifier": "nodash", "sentence": "s", "label": "True"}\n', "nlvr2", "identifier"),
    ('{"identifier": "dev-1-0-0", "sentence": "s"}\n', "nlvr2", "missing field 'label'"),
    ('{}', "csv", "unknown data set format"),
])
def test_bad_data_sets(tmp_path, content, fmt, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, fmt)


def test_missing_and_undetectable_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing.json")
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(DatasetError, match="can't tell"):
        load_dataset(tmp_path / "x.txt")


def test_select_is_seeded():
    items = [EvalItem(str(i), "q", "a") for i in range(50)]
    assert [i.id for i in select(items, limit=3)] == ["0", "1", "2"]
    a = select(items, limit=10, shuffle=True, seed=1)
    assert [i.id for i in a] == [i.id for i in select(items, limit=10, shuffle=True, seed=1)]
    assert [i.id for i in a] != [i.id for i in select(items, limit=10, shuffle=True, seed=2)]
    assert len(select(items, limit=100)) == 50
    with pytest.raises(ValueError):
        select(items, limit=-1)


# -- scoring ------------------------------------------------------------------------------

COLOURS = {"red": (200, 30, 30), "blue": (20, 20, 220), "green": (20, 200, 20)}


class ColourTool:
    """A batched test module: the name of the image's dominant colour."""

    def __init__(self):
        self.chunks: list[int] = []

    def make(self):
        def name(image):
            mean = np.asarray(image).reshape(-1, 3).mean(0)
            return max(COLOURS, key=lambda c: -np.abs(mean - COLOURS[c]).sum())

        @tool("Colour", params={"image": "Image"}, returns="Text")
        def colour(image):
            return name(image)

        def batch(calls):
            self.chunks.append(len(calls))
            return [name(c["image"]) for c in calls]

        return replace(colour, batch_fn=batch)


def engine(colour: ColourTool | None = None):
    from visprog.api import VisProg

    # no LLM (Vqa on BLIP: a local chat VLM would plan the items that have no program)
    vp = VisProg(preset="tiny", cache=False, plugins=False, config={"Vqa": {"backend": "blip"}})
    vp.register((colour or ColourTool()).make())
    return vp


def make_scored_set(tmp: Path, n_extra: int = 0) -> Path:
    for name, rgb in COLOURS.items():
        save_image(tmp / f"{name}.png", rgb)
    ask = "A=Colour(image=IMAGE)"
    rows = [
        {"id": "right1", "image": "red.png", "question": "colour?", "answer": "Red",
         "program": ask, "type": "colour"},
        {"id": "right2", "image": "blue.png", "question": "colour?", "answer": "the blue",
         "program": ask, "type": "colour"},
        {"id": "wrong", "image": "green.png", "question": "colour?", "answer": "red",
         "program": ask, "type": "colour"},
        {"id": "verify", "image": "red.png", "question": "is it red?", "answer": "yes",
         "program": ask + "\nB=Eval(expr=\"{A} == 'red'\")", "type": "verify"},
        {"id": "noprog", "image": "red.png", "question": "colour?", "answer": "red"},
        {"id": "badprog", "image": "red.png", "question": "colour?", "answer": "red",
         "program": "A=Colour(img=IMAGE)"},
        {"id": "parse", "image": "red.png", "question": "colour?", "answer": "red",
         "program": "A=Colour(image=IMAGE"},
        {"id": "runtime", "image": "red.png", "question": "n?", "answer": "1",
         "program": "A=Eval(expr='1 / 0')", "type": "verify"},
        {"id": "noimage", "image": "missing.png", "question": "colour?", "answer": "red",
         "program": ask},
    ]
    rows += [{"id": f"extra{i}", "image": "blue.png", "question": "colour?", "answer": "blue",
              "program": ask, "type": "colour"} for i in range(n_extra)]
    return write_jsonl(tmp / "set.jsonl", rows)


def test_evaluate_scores_and_breaks_down_failures(tmp_path):
    colour = ColourTool()
    items = load_dataset(make_scored_set(tmp_path))
    out = tmp_path / "res" / "results.jsonl"
    summary = evaluate(engine(colour), items, out, batch_size=8, progress=False)
    assert (summary["total"], summary["done"], summary["correct"]) == (9, 9, 3)
    assert summary["accuracy"] == round(3 / 9, 4)
    assert summary["failures"] == {"no_program": 3, "error": 2, "wrong": 1}
    assert summary["by_type"]["type"]["colour"] == {"n": 3, "correct": 2,
                                                    "accuracy": round(2 / 3, 4)}
    assert summary["by_type"]["type"]["verify"]["n"] == 2
    records = {r["id"]: r for r in read_results(out)}
    assert records["right1"]["prediction"] == "red" and records["right1"]["correct"]
    assert records["verify"]["prediction"] == "yes"
    assert records["wrong"]["status"] == "wrong" and records["wrong"]["prediction"] == "green"
    assert records["noprog"]["program"] is None and "no LLM" in records["noprog"]["error"]
    assert records["badprog"]["status"] == "no_program" and "CheckError" in records["badprog"]["error"]
    assert records["parse"]["status"] == "no_program"
    assert records["runtime"]["status"] == "error" and "division" in records["runtime"]["error"]
    assert records["noimage"]["status"] == "error" and "ImageError" in records["noimage"]["error"]
    assert records["runtime"]["program"] == "A=Eval(expr='1 / 0')"
    saved = json.loads((tmp_path / "res" / "results.summary.json").read_text())
    assert saved["accuracy"] == summary["accuracy"]
    assert colour.chunks == [3]  # red (shared by 2 programs), blue, green: one batch
    assert "accuracy: 33.33% (3/9)" in format_summary(summary)


def test_nlvr_and_gqa_files_end_to_end(tmp_path):
    gqa = load_dataset(make_gqa(tmp_path))
    for item in gqa:
        item.program = "A=Colour(image=IMAGE)\nB=Eval(expr=\"{A} == 'red'\")"
    s = evaluate(engine(), gqa, tmp_path / "gqa.jsonl", progress=False)
    assert s["correct"] == 1 and s["failures"]["wrong"] == 1  # "Is the sky dark" -> yes
    assert s["by_type"]["structural"]["verify"]["accuracy"] == 1.0
    nlvr = load_dataset(make_nlvr2(tmp_path), images=tmp_path / "img")
    for item in nlvr:
        item.program = ("L=Colour(image=LEFT)\nR=Colour(image=RIGHT)\n"
                        "A=Eval(expr='{L} == {R}')")
    s = evaluate(engine(), nlvr, tmp_path / "nlvr.jsonl", progress=False)
    records = {r["id"]: r for r in read_results(tmp_path / "nlvr.jsonl")}
    assert records["dev-850-0-0"]["prediction"] == "True" and records["dev-850-0-0"]["correct"]
    assert s["correct"] == 2 and s["failures"]["wrong"] == 2


def test_resume_after_partial_results_with_a_truncated_line(tmp_path):
    items = load_dataset(make_scored_set(tmp_path, n_extra=11))
    out = tmp_path / "results.jsonl"
    evaluate(engine(), items[:5], out, progress=False)
    whole = out.read_text().splitlines(keepends=True)
    # a kill in the middle of writing the sixth line
    partial = json.dumps({"id": items[5].id, "status": "correct", "correct": True})
    out.write_text("".join(whole) + partial[:17], encoding="utf-8")
    colour = ColourTool()
    summary = evaluate(engine(colour), items, out, progress=False)
    ids = [r["id"] for r in read_results(out)]
    # "noprog" (no LLM to plan it) failed outside the program: it ran again, the rest did not
    assert sorted(set(ids)) == sorted(i.id for i in items)
    assert [i for i in ids if ids.count(i) > 1] == ["noprog", "noprog"]
    assert all(json.loads(line) for line in out.read_text().splitlines())
    assert summary["done"] == summary["total"] == len(items)
    run = summary["this_run"]
    assert (run["resumed"], run["retried"], run["new"]) == (4, 1, len(items) - 5)
    assert run["items"] == len(items) - 4
    assert f"this run: {len(items) - 5} new, 1 retried" in format_summary(summary)
    # retried once more (still no LLM), "noimage" too; the rest are done
    again = evaluate(engine(), items, out, progress=False)
    assert again["this_run"]["items"] == 2 and again["correct"] == summary["correct"]
    assert (again["this_run"]["resumed"], again["this_run"]["retried"]) == (len(items) - 2, 2)


@pytest.mark.parametrize("tail, kept", [
    (b"", 2), (b'{"id": "c", "status"', 2), (b'{"id": "c", "correct": false}', 2),
    (b'{"id": "c", "correct": false}\n', 3), (b"\n\n", 2),
])
def test_read_results_repairs_only_the_last_line(tmp_path, tail, kept):
    path = tmp_path / "r.jsonl"
    good = b'{"id": "a", "correct": true}\n{"id": "b", "correct": false}\n'
    path.write_bytes(good + tail)
    assert len(read_results(path)) == kept
    assert path.read_bytes().endswith(b"\n") or path.read_bytes() == b""


def test_damaged_middle_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b", oops\n{"id": "c"}\n')
    with pytest.warns(UserWarning, match="damaged"):
        assert [r["id"] for r in read_results(path)] == ["a", "c"]


def test_summarize_counts_last_line_per_id_and_filters():
    rows = [{"id": "a", "status": "error", "correct": False},
            {"id": "a", "status": "correct", "correct": True},
            {"id": "b", "status": "wrong", "correct": False, "types": {"t": "x"}}]
    s = summarize(rows)
    assert (s["done"], s["correct"], s["failures"]["wrong"]) == (2, 1, 1)
    s = summarize(rows, ["b", "z"])
    assert (s["total"], s["done"], s["accuracy"]) == (2, 1, 0.0)
    assert summarize([], [])["accuracy"] is None


KILL_SCRIPT = """
import sys, time
from dataclasses import replace
from visprog.api import VisProg
from visprog.evaluation.datasets import load_dataset
from visprog.evaluation.harness import evaluate
from visprog.registry import tool

@tool("Slow", params={"image": "Image"}, returns="Text")
def slow(image):
    time.sleep(0.05)
    return "red"

vp = VisProg(preset="tiny", cache=False, plugins=False)
vp.register(slow)
evaluate(vp, load_dataset(sys.argv[1]), sys.argv[2], batch_size=1, chunk_size=1,
         progress=False)
"""


def test_resume_after_a_real_kill(tmp_path):
    save_image(tmp_path / "red.png")
    rows = [{"id": f"q{i}", "image": "red.png", "question": "c?", "answer": "red",
             "program": f"A=Slow(image=IMAGE)\nB=Eval(expr=\"{{A}} + '{i}'\")\nC=Slow(image=IMAGE)"}
            for i in range(200)]
    data = write_jsonl(tmp_path / "set.jsonl", rows)
    out = tmp_path / "out.jsonl"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(out)])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = len(read_results(out, repair=False))
    assert 5 <= before < 200
    vp = engine()

    @tool("Slow", params={"image": "Image"}, returns="Text")
    def fast(image):
        return "red"

    vp.register(fast)
    summary = evaluate(vp, load_dataset(data), out, progress=False)
    ids = [r["id"] for r in read_results(out)]
    assert len(ids) == len(set(ids)) == 200
    assert summary["this_run"]["items"] == 200 - before
    assert summary["done"] == 200


# -- commands -----------------------------------------------------------------------------

def test_cli_eval_limit_shuffle_and_resume(tmp_path, capsys):
    from visprog.cli import main

    save_image(tmp_path / "a.png")
    rows = [{"id": f"q{i}", "image": "a.png", "question": "sum?", "answer": ["three", "4"][i % 2],
             "program": "A=Eval(expr='1 + 2')", "type": ["even", "odd"][i % 2]} for i in range(10)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    args = ["eval", str(data), "--preset", "tiny", "--no-cache", "--no-progress",
            "--limit", "4", "--shuffle", "--seed", "3", "--batch-size", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "accuracy:" in printed and "by type:" in printed
    first = [r["id"] for r in read_results(tmp_path / "d.results.jsonl")]
    assert len(first) == 4
    assert main(args[:5] + ["--no-progress"]) == 0  # all ten now; the four are not redone
    records = read_results(tmp_path / "d.results.jsonl")
    assert len(records) == 10 and [r["id"] for r in records[:4]] == first
    summary = json.loads((tmp_path / "d.results.summary.json").read_text())
    assert summary["by_type"]["type"]["even"]["accuracy"] == 1.0
    assert summary["by_type"]["type"]["odd"]["accuracy"] == 0.0


@pytest.mark.parametrize("extra, code", [(["--batch-size", "0"], 2), (["--format", "xml"], 2)])
def test_cli_eval_bad_flags(tmp_path, extra, code):
    from visprog.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "x.jsonl"), *extra])
    assert e.value.code == code


def test_cli_eval_missing_file_is_an_error(tmp_path, capsys):
    from visprog.cli import main

    assert main(["eval", str(tmp_path / "x.jsonl"), "--preset", "tiny"]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_batch(tmp_path, capsys):
    from visprog.cli import main

    save_image(tmp_path / "a.png")
    (tmp_path / "p.vp").write_text("N=Eval(expr='2 * 3')\n")
    items = write_jsonl(tmp_path / "items.jsonl", [
        {"id": "one", "program": "A=Eval(expr='1 + 1')", "image": "a.png"},
        {"id": "two", "program_file": "p.vp", "image": "a.png"},
        {"id": "bad", "program": "A=Eval(expr='1 / 0')", "image": "a.png"},
        {"id": "crop", "program": "B=Crop(image=IMAGE, box=OBJ)", "image": "a.png"},
    ])
    out = tmp_path / "out.jsonl"
    code = main(["batch", str(items), "--preset", "tiny", "--no-cache", "--out", str(out),
                 "--traces", str(tmp_path / "traces")])
    assert code == 1  # some items failed
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["one"]["value"] == 2 and rows["two"]["value"] == 6 and rows["one"]["ok"]
    assert not rows["bad"]["ok"] and "division" in rows["bad"]["error"]
    assert "OBJ" in rows["crop"]["error"]
    assert (tmp_path / "traces" / "one.json").exists()
