"""High-resolution benchmarks (issue 21 item 7): V*Bench and HR-Bench read in their published
formats (written here by the tests: V*Bench's test_questions.jsonl and its official folder
of images beside JSON annotations, HR-Bench's VLMEvalKit TSV with base64 images), scored by
the option the answer chooses, and `visprog eval --mode oneshot|agent`."""
from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprog.errors import ConfigError
from visprog.evaluation.answers import choose_option, is_correct
from visprog.evaluation.datasets import DatasetError, detect_format, load_dataset
from visprog.evaluation.harness import evaluate, read_results
from visprog.registry import tool

COLOURS = {"red": (200, 30, 30), "blue": (20, 20, 220), "green": (20, 200, 20),
           "white": (250, 250, 250)}
VSTAR_SUFFIX = "Answer with the option's letter from the given choices directly."


def jpeg_bytes(rgb, size=(48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG")
    return buf.getvalue()


def png_bytes(rgb, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- choosing an option ---------------------------------------------------------------------

OPTS = {"A": "red", "B": "blue", "C": "dark blue", "D": "white"}
SIDES = {"A": "The steel ladder is on the left side of the wagon.",
         "B": "The steel ladder is on the right side of the wagon."}


@pytest.mark.parametrize("prediction, options, chosen", [
    ("B", OPTS, "B"), ("(b)", OPTS, "B"), ("b.", OPTS, "B"), ("Answer: D", OPTS, "D"),
    ("The answer is (A)", OPTS, "A"), ("(C) dark blue", OPTS, "C"), ("C. dark blue", OPTS, "C"),
    ("red", OPTS, "A"), ("Red.", OPTS, "A"), ("the white", OPTS, "D"),
    ("dark blue", OPTS, "C"),            # equal to one option beats containing another
    ("light blue", OPTS, "B"),           # holds "blue" only
    ("blue", {"A": "dark blue", "B": "light blue"}, None),  # inside two options: none
    ("blue and red", OPTS, None), ("purple", OPTS, None), ("", OPTS, None), (None, OPTS, None),
    ("E", OPTS, None),                   # not a letter of the options; no option's text
    ("left", SIDES, "A"), ("on the right side", SIDES, "B"), ("yes", SIDES, None),
    (True, {"A": "yes", "B": "no"}, "A"), (2, {"A": "1", "B": "2"}, "B"),
    ("a", {"A": "cat", "B": "dog"}, "A"),  # a lone letter is the letter
    ("a cat", {"A": "cat", "B": "dog"}, "A"),  # the article, not option A
])
def test_choose_option(prediction, options, chosen):
    assert choose_option(prediction, options) == chosen


def test_multiple_choice_is_right_by_the_chosen_option():
    assert is_correct("blue", "B", OPTS) and is_correct("(B)", "b", OPTS)
    assert not is_correct("red", "B", OPTS) and not is_correct("purple", "B", OPTS)
    assert is_correct("blue", "blue") and not is_correct("blue", "B")  # no options: the text


# -- V*Bench ----------------------------------------------------------------------------------

def make_vstar_jsonl(tmp: Path) -> Path:
    for name in ("red", "blue"):
        (tmp / "direct_attributes").mkdir(exist_ok=True)
        (tmp / "direct_attributes" / f"sa_{name}.jpg").write_bytes(jpeg_bytes(COLOURS[name]))
    (tmp / "relative_position").mkdir(exist_ok=True)
    (tmp / "relative_position" / "sa_79958.jpg").write_bytes(jpeg_bytes(COLOURS["green"]))
    rows = [
        {"image": "direct_attributes/sa_red.jpg",
         "text": "What is the color of the cup?\n(A) blue\n(B) red\n(C) green\n(D) white\n"
                 + VSTAR_SUFFIX, "category": "direct_attributes", "question_id": 0,
         "label": "B"},
        {"image": "direct_attributes/sa_blue.jpg",
         "text": "What is the color of the glove?\n(A) blue\n(B) red\n(C) green\n(D) white\n"
                 + VSTAR_SUFFIX, "category": "direct_attributes", "question_id": 1,
         "label": "A"},
        {"image": "relative_position/sa_79958.jpg",
         "text": "Is the steel ladder on the left or right side of the wagon?\n"
                 f"(A) {SIDES['A']}\n(B) {SIDES['B']}\n" + VSTAR_SUFFIX,
         "category": "relative_position", "question_id": 2, "label": "A"},
    ]
    return write_jsonl(tmp / "test_questions.jsonl", rows)


def test_vstar_test_questions_jsonl(tmp_path):
    path = make_vstar_jsonl(tmp_path)
    assert detect_format(path) == "vstar"
    items = load_dataset(path)
    assert [i.id for i in items] == ["0", "1", "2"]
    first = items[0]
    assert first.options == {"A": "blue", "B": "red", "C": "green", "D": "white"}
    assert first.answer == "B" and first.task == "gqa"
    assert first.question == ("What is the color of the cup?\n(A) blue\n(B) red\n(C) green\n"
                              "(D) white")  # the letter-only instruction is left out
    assert first.image == str(tmp_path / "direct_attributes" / "sa_red.jpg")
    assert first.types == {"category": "direct_attributes"}
    assert items[2].options == SIDES and items[2].types == {"category": "relative_position"}


def make_vstar_folder(tmp: Path) -> Path:
    root = tmp / "vstar_bench"
    for category, name, rgb, question, options in [
        ("direct_attributes", "sa_4690", COLOURS["red"], "What is the color of the cup?",
         ["red", "blue", "green", "white"]),
        ("direct_attributes", "sa_17", COLOURS["blue"], "What is the color of the bag?",
         ["blue", "red", "white", "green"]),
        ("relative_position", "sa_79958", COLOURS["green"],
         "Is the steel ladder on the left or right side of the wagon?",
         [SIDES["A"], SIDES["B"]]),
    ]:
        (root / category).mkdir(parents=True, exist_ok=True)
        (root / category / f"{name}.jpg").write_bytes(jpeg_bytes(rgb))
        (root / category / f"{name}.json").write_text(json.dumps(
            {"target_object": ["thing"], "bbox": [[1, 2, 3, 4]], "question": question,
             "options": options}), encoding="utf-8")
    return root


def test_vstar_official_folder_first_option_is_right_but_not_always_a(tmp_path):
    root = make_vstar_folder(tmp_path)
    assert detect_format(root) == "vstar"
    items = load_dataset(root)
    assert [i.id for i in items] == ["direct_attributes/sa_17", "direct_attributes/sa_4690",
                                     "relative_position/sa_79958"]
    by_id = {i.id: i for i in items}
    cup = by_id["direct_attributes/sa_4690"]
    assert cup.options[cup.answer] == "red"  # the annotation's first option
    assert sorted(cup.options.values()) == ["blue", "green", "red", "white"]
    bag = by_id["direct_attributes/sa_17"]
    assert bag.options[bag.answer] == "blue"
    assert by_id["relative_position/sa_79958"].options[
        by_id["relative_position/sa_79958"].answer] == SIDES["A"]
    assert {i.answer for i in items} != {"A"}  # shuffled: an always-(A) answer does not win
    assert [(i.options, i.answer) for i in load_dataset(root)] == [
        (i.options, i.answer) for i in items]  # the same order every time
    assert cup.image == str(root / "direct_attributes" / "sa_4690.jpg")
    assert cup.types == {"category": "direct_attributes"}


def test_vstar_bad_files(tmp_path):
    bad = write_jsonl(tmp_path / "q.jsonl", [{"image": "x.jpg", "text": "What? (A) a (B) b",
                                              "label": "A", "category": "c"}])
    with pytest.raises(DatasetError, match="options"):
        load_dataset(bad, "vstar")
    wrong = write_jsonl(tmp_path / "w.jsonl", [{"image": "x.jpg", "text": "What?\n(A) a\n(B) b",
                                                "label": "C"}])
    with pytest.raises(DatasetError, match="not one of the options"):
        load_dataset(wrong, "vstar")
    root = make_vstar_folder(tmp_path)
    (root / "direct_attributes" / "sa_17.jpg").unlink()
    with pytest.raises(DatasetError, match="no image beside it"):
        load_dataset(root)
    (root / "direct_attributes" / "sa_17.json").write_text('{"question": "q", "options": ["x"]}')
    with pytest.raises(DatasetError, match="two or more"):
        load_dataset(root)
    (tmp_path / "empty" / "relative_position").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no V\\*Bench annotations"):
        load_dataset(tmp_path / "empty")


# -- HR-Bench ---------------------------------------------------------------------------------

HR_HEADER = ["index", "question", "answer", "A", "B", "C", "D", "category", "cycle_category",
             "image"]


def make_hrbench(tmp: Path, rows=None) -> Path:
    """VLMEvalKit's TSV: a base64 image per row, or the index of the row that holds it."""
    red, blue = base64.b64encode(jpeg_bytes(COLOURS["red"])).decode(), \
        base64.b64encode(png_bytes(COLOURS["blue"])).decode()
    rows = rows or [
        [0, "What is the color of the umbrella?", "A", "red", "blue", "green", "white",
         "single", "0", red],
        [1, "What is the color of the car?", "B", "red", "blue", "green", "white", "cross",
         "0", blue],
        [2, "What is the color of the umbrella?", "C", "blue", "green", "red", "white",
         "single", "1", "0"],    # the same image as row 0, cycled options
        [3, "What is the color of the car?", "D", "green", "white", "red", "blue", "cross",
         "1", "1"],
    ]
    text = "\t".join(HR_HEADER) + "\n" + "".join(
        "\t".join(str(v) for v in r) + "\n" for r in rows)
    path = tmp / "hr_bench_4k.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_hrbench_tsv_writes_each_image_once(tmp_path):
    path = make_hrbench(tmp_path)
    assert detect_format(path) == "hrbench"
    items = load_dataset(path)
    assert [i.id for i in items] == ["0", "1", "2", "3"]
    folder = tmp_path / "hr_bench_4k_images"
    assert sorted(p.name for p in folder.iterdir()) == ["0.jpg", "1.png"]
    assert items[0].image == items[2].image == str(folder / "0.jpg")
    assert items[1].image == items[3].image == str(folder / "1.png")
    assert Image.open(items[1].image).size == (40, 30)
    assert items[0].options == {"A": "red", "B": "blue", "C": "green", "D": "white"}
    assert items[2].answer == "C" and items[2].options["C"] == "red"
    assert items[3].types == {"category": "cross", "cycle": "1"}
    assert items[0].question.endswith("umbrella?\n(A) red\n(B) blue\n(C) green\n(D) white")
    before = (folder / "0.jpg").stat().st_mtime_ns
    other = load_dataset(path, images=tmp_path / "elsewhere")
    assert other[0].image == str(tmp_path / "elsewhere" / "0.jpg")
    load_dataset(path)
    assert (folder / "0.jpg").stat().st_mtime_ns == before  # not written again


def test_hrbench_a_reference_to_a_later_row_and_bad_rows(tmp_path):
    red = base64.b64encode(jpeg_bytes(COLOURS["red"])).decode()
    later = make_hrbench(tmp_path, [
        [5, "q?", "A", "x", "y", "", "", "single", "0", "6"],
        [6, "q?", "B", "x", "y", "", "", "single", "0", red]])
    items = load_dataset(later)
    assert items[0].image == items[1].image and items[0].options == {"A": "x", "B": "y"}
    for rows, message in [
        ([[1, "q?", "A", "x", "y", "", "", "s", "0", "9"]], "holds no image"),
        ([[1, "q?", "A", "x", "y", "", "", "s", "0", "!" * 80]], "neither base64"),
        ([[1, "q?", "A", "x", "y", "", "", "s", "0",
           base64.b64encode(b"not an image at all, just bytes" * 3).decode()]], "not a JPEG"),
        ([[1, "q?", "E", "x", "y", "", "", "s", "0", red]], "not one of the options"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_dataset(make_hrbench(tmp_path, rows))
    headless = tmp_path / "other.tsv"
    headless.write_text("id\tquestion\n1\tq\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="not an HR-Bench TSV"):
        load_dataset(headless)


def test_hrbench_an_index_cannot_write_outside_the_images_folder(tmp_path):
    red = base64.b64encode(jpeg_bytes(COLOURS["red"])).decode()
    path = make_hrbench(tmp_path, [["../../evil", "q?", "A", "x", "y", "", "", "s", "0", red]])
    (item,) = load_dataset(path)
    image = Path(item.image)
    assert image.parent == tmp_path / "hr_bench_4k_images" and image.is_file()
    assert "/" not in image.name and not (tmp_path.parent / "evil.jpg").exists()


# -- scoring end to end ---------------------------------------------------------------------

def colour_engine():
    from visprog.api import VisProg

    def name(image):
        mean = np.asarray(image).reshape(-1, 3).mean(0)
        return max(COLOURS, key=lambda c: -np.abs(mean - COLOURS[c]).sum())

    @tool("Colour", params={"image": "Image"}, returns="Text")
    def colour(image):
        return name(image)

    # no LLM: every item carries its program
    vp = VisProg(preset="tiny", cache=False, plugins=False, config={"Vqa": {"backend": "blip"}})
    vp.register(replace(colour, batch_fn=lambda calls: [name(c["image"]) for c in calls]))
    return vp


def test_hrbench_and_vstar_scored_by_the_chosen_option(tmp_path):
    items = load_dataset(make_hrbench(tmp_path))
    for item in items:
        item.program = "A=Colour(image=IMAGE)"  # the colour's name: chooses the option by text
    items[3].program = "A=Eval(expr=\"'(B)'\")"  # a letter: white, wrong
    summary = evaluate(colour_engine(), items, tmp_path / "hr.jsonl", progress=False)
    records = {r["id"]: r for r in read_results(tmp_path / "hr.jsonl")}
    assert [records[i]["chosen"] for i in "0123"] == ["A", "B", "C", "B"]
    assert [records[i]["correct"] for i in "0123"] == [True, True, True, False]
    assert summary["accuracy"] == 0.75 and summary["mode"] == "oneshot"
    assert summary["by_type"]["cycle"]["1"]["accuracy"] == 0.5
    assert summary["by_type"]["category"]["single"]["accuracy"] == 1.0

    (tmp_path / "v").mkdir()
    vstar = load_dataset(make_vstar_jsonl(tmp_path / "v"))
    for item in vstar:
        item.program = "A=Colour(image=IMAGE)"
    vstar[2].program = "A=Eval(expr=\"'left'\")"
    summary = evaluate(colour_engine(), vstar, tmp_path / "v.jsonl", progress=False)
    records = {r["id"]: r for r in read_results(tmp_path / "v.jsonl")}
    assert records["0"]["chosen"] == "B" and records["1"]["chosen"] == "A"
    assert records["2"]["chosen"] == "A" and summary["correct"] == 3


def test_cli_eval_reads_the_new_formats_and_refuses_bad_modes(tmp_path, capsys):
    from visprog.cli import main

    path = make_hrbench(tmp_path)
    programs = write_jsonl(tmp_path / "p.jsonl", [
        {"id": str(i), "program": "A=Eval(expr=\"'A'\")"} for i in range(4)])
    args = ["eval", str(path), "--preset", "tiny", "--no-cache", "--no-progress",
            "--programs", str(programs), "--format", "hrbench", "--no-repair"]
    assert main(args) == 0
    assert "accuracy: 25.00% (1/4)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(args + ["--mode", "sometimes"])
    assert e.value.code == 2


def test_agent_mode_is_refused_where_run_batch_or_the_executor_takes_none(tmp_path):
    """An engine (or an executor) of a version without planning modes: agent mode is
    refused, clearly and before anything is written, not run as one-shot."""
    vp = colour_engine()
    real = vp.run_batch
    vp.run_batch = lambda items, *, batch_size, use_cache, on_item, repair=None: real(
        items, batch_size=batch_size, use_cache=use_cache, on_item=on_item)
    items = load_dataset(make_hrbench(tmp_path))
    out = tmp_path / "agent.jsonl"
    with pytest.raises(ConfigError, match="VisProg.run_batch takes no mode argument"):
        evaluate(vp, items, out, progress=False, mode="agent")
    assert not out.exists()

    def executor(chunks, *, batch_size, use_cache):
        return []

    with pytest.raises(ConfigError, match="the executor takes no agent argument"):
        evaluate(colour_engine(), items, out, progress=False, agent={"rounds": 2},
                 executor=executor)
    assert not out.exists()


def test_the_ray_executor_hands_the_mode_and_budgets_to_each_chunk(tmp_path):
    """`visprog eval --ray` in agent mode: the executor takes mode= and agent= (so evaluate
    does not refuse it) and each chunk's worker passes them to run_batch."""
    import inspect

    from visprog.hosting import cluster

    params = inspect.signature(cluster.ray_executor("auto", colour_engine)).parameters
    assert {"mode", "agent"} <= set(params)
    vp = colour_engine()
    seen = []
    real = vp.run_batch

    def run_batch(items, **kw):
        seen.append((kw.pop("mode", None), kw.pop("agent", None)))
        return real(items, **kw)

    vp.run_batch = run_batch
    items = load_dataset(make_hrbench(tmp_path))
    for item in items:
        item.program = "A=Colour(image=IMAGE)"
    lines = cluster._eval_chunk("t", lambda: vp, items, "auto", False, "agent", {"rounds": 2})
    assert seen == [("agent", {"rounds": 2})] and [r["correct"] for r in lines] == [True] * 4
    cluster._ENGINES.clear()


LOOK = "L=Look(var=IMAGE)"
ANSWER_A = "A=Eval(expr=\"'A'\")\nFINAL=Result(var=A)"


def user_text(message):
    content = message["content"]
    return content if isinstance(content, str) else "\n".join(
        p["text"] for p in content if p["type"] == "text")


@pytest.mark.parametrize("bench", ["hrbench", "vstar"])
def test_cli_eval_of_the_benchmarks_in_both_modes_reports_the_cost_per_item(
        bench, tmp_path, monkeypatch, capsys):
    """`visprog eval` on V*Bench and HR-Bench with a scripted server that takes images:
    --mode agent looks at the image in round 1 and answers a letter in round 2 (the image
    sent with round 2's request), --mode oneshot answers at once; each summary has the
    accuracy by the chosen option and the cost per item, printed and in its JSON."""
    from llm_server import ScriptedServer
    from visprog.cli import main

    if bench == "hrbench":
        path, right = make_hrbench(tmp_path), 1 / 4
    else:
        (tmp_path / "v").mkdir()
        path, right = make_vstar_jsonl(tmp_path / "v"), 2 / 3
    n = len(load_dataset(path))

    def agent(body):
        last = user_text(body["messages"][-1])
        return ANSWER_A if last.startswith("Round 1 ran") else LOOK

    figures = {}
    for mode, respond in (("agent", agent), ("oneshot", lambda body: ANSWER_A)):
        with ScriptedServer([], respond=respond) as server:
            monkeypatch.setenv("OPENAI_BASE_URL", server.url)
            monkeypatch.setenv("OPENAI_API_KEY", "k")
            monkeypatch.setenv("VISPROG_LLM_MODEL", "m")
            monkeypatch.setenv("VISPROG_LLM_IMAGES", "1")
            out, summary_path = tmp_path / f"{mode}.jsonl", tmp_path / f"{mode}.json"
            assert main(["eval", str(path), "--preset", "tiny", "--no-progress", "--no-cache",
                         "--no-plan-cache", "--no-repair", "--mode", mode, "--out", str(out),
                         "--summary", str(summary_path)]) == 0
        printed = capsys.readouterr().out
        summary = json.loads(summary_path.read_text())
        rows = list(read_results(out))
        assert summary["mode"] == mode and summary["accuracy"] == round(right, 4)
        assert all(r["chosen"] == "A" for r in rows) and len(rows) == n
        questions = [user_text(m) for r in server.requests for m in r["messages"]
                     if m["role"] == "user" and "(A) " in user_text(m)]
        assert questions  # the options went to the planner as "(A) ..." lines
        cost = summary["cost"]
        if mode == "agent":
            assert len(server.requests) == 2 * n
            sent = [p for r in server.requests for p in r["messages"][-1]["content"]
                    if isinstance(r["messages"][-1]["content"], list)
                    and p["type"] == "image_url"]
            assert len(sent) == n  # each item's image, once, with its round 2
            assert (cost["rounds"], cost["steps"], cost["llm_calls"], cost["images"]) == (
                2, 3, 2, 1)
            assert cost["image_tokens"] > 0
        else:
            assert len(server.requests) == n
            assert (cost["rounds"], cost["steps"], cost["llm_calls"], cost["images"],
                    cost["image_tokens"]) == (1, 2, 1, 0, 0)
        assert cost["llm_tokens"] > 0 and cost["seconds"] > 0
        assert all(r["rounds"] == cost["rounds"] and r["llm_tokens"] > 0 for r in rows)
        assert (f"per item: {cost['rounds']:g} rounds, {cost['steps']:g} steps, "
                f"{cost['llm_calls']:g} LLM calls, {cost['llm_tokens']:g} LLM tokens, "
                f"{cost['images']:g} images") in printed
        figures[mode] = cost
    assert figures["agent"]["llm_tokens"] > figures["oneshot"]["llm_tokens"]


def test_evaluate_passes_the_mode_to_run_batch(tmp_path, monkeypatch):
    """The agent mode itself is VisProg's; the harness hands it over as `mode=`."""
    vp = colour_engine()
    seen = []
    real = vp.run_batch

    def run_batch(items, *, mode="oneshot", **kw):  # the signature agent mode gives it
        seen.append(mode)
        return real(items, **kw)

    monkeypatch.setattr(vp, "run_batch", run_batch)
    items = load_dataset(make_hrbench(tmp_path))
    for item in items:
        item.program = "A=Colour(image=IMAGE)"
    summary = evaluate(vp, items, tmp_path / "r.jsonl", progress=False, mode="agent")
    assert seen == ["agent"] and summary["mode"] == "agent" and summary["correct"] == 4
    evaluate(vp, items, tmp_path / "r2.jsonl", progress=False)
    assert seen == ["agent", "oneshot"]
    with pytest.raises(ConfigError, match="unknown planning mode"):
        evaluate(vp, items, tmp_path / "r3.jsonl", progress=False, mode="twoshot")


def test_eval_on_the_cluster_hands_the_cli_repair_flags_to_each_chunk(tmp_path):
    """`visprog eval --ray ... --repair 0 --critic`: the flags reach the workers' run_batch
    (they used the config's settings before), through the executor and `_eval_chunk`."""
    from visprog.evaluation.harness import evaluate
    from visprog.hosting import cluster

    vp = colour_engine()
    seen = []
    real = vp.run_batch

    def run_batch(items, **kw):
        seen.append(kw.get("repair"))
        return real(items, **kw)

    vp.run_batch = run_batch
    items = load_dataset(make_hrbench(tmp_path))
    for item in items:
        item.program = "A=Colour(image=IMAGE)"
    flags = {"attempts": 0, "critic": True}

    def executor(chunks, **kw):  # what ray_executor's run does, in this process
        assert kw["repair"] == flags
        for chunk in chunks:
            yield from cluster._eval_chunk("t", lambda: vp, list(chunk), kw["batch_size"],
                                           kw["use_cache"], kw.get("mode"), kw.get("agent"),
                                           kw.get("repair"))

    summary = evaluate(vp, items, tmp_path / "r.jsonl", executor=executor, repair=flags,
                       progress=False)
    assert summary["accuracy"] == 1.0 and seen and all(r == flags for r in seen)
    cluster._ENGINES.clear()
    import inspect
    assert "repair" in inspect.signature(cluster.ray_executor("auto", colour_engine)).parameters
