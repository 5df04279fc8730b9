"""`visprog eval` on video questions (issue 22 item 8): the NExT-QA and EgoSchema readers on
small files in their published formats (NExT-QA's val.csv with map_vid_vidorID.json and
NExTVideo/ folders; EgoSchema's questions.json with subset_answers.json and videos/), JSONL
items with a "video" (and options), multiple-choice scoring as the official scripts score
the chosen option, the frames a run looked at (read by modules or shown to the planner) of
those sampled, and the command line. The clips are written with PyAV."""
from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")

from llm_server import ScriptedServer, scripted_client  # noqa: E402
from video_clips import square_frames, write_clip  # noqa: E402
from visprog.errors import DatasetError, VisProgWarning  # noqa: E402
from visprog.evaluation.answers import is_correct  # noqa: E402
from visprog.evaluation.datasets import detect_format, load_dataset  # noqa: E402
from visprog.evaluation.frames import frames_looked_at  # noqa: E402
from visprog.evaluation.harness import evaluate, format_summary, read_results  # noqa: E402
from visprog.registry import tool  # noqa: E402
from visprog.traces.events import Round  # noqa: E402
from visprog.traces.records import Trace  # noqa: E402
from visprog.traces.step import StepRecord  # noqa: E402
from visprog.values import Video  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_llm_env")

NEXTQA_HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                 "a0", "a1", "a2", "a3", "a4"]
NEXTQA_ROWS = [
    ["4010069381", "369", "640", "480", "how do the two man play the instrument", "3", "6", "CH",
     "roll the handle", "tap their feet", "strum the string", "hit with sticks",
     "pat with hand"],
    ["2834146886", "1881", "496", "370", "what does the white dog do after going to the cushion",
     "2", "8", "TP", "drink again", "shake its body", "smells the black dog", "wagging tail",
     "touch lady in blue stripes"],
    ["8547321641", "327", "640", "362", "how many babies are in the video", "4", "7", "DC",
     "kitchen", "four", "two", "three", "one"],
]
EGO_UIDS = ["001934bb-81bd-4cd8-a574-0472ef3f6678", "0074f737-11cb-497d-8d07-77c3a8127391",
            "00b9a0de-c59e-49cb-a127-6081e2fb8c8e"]


@pytest.fixture(scope="module")
def clip_frames():
    return square_frames(8)


def nextqa(tmp_path, frames, *, mapped=True):
    """NExT-QA as published: dataset/nextqa/val.csv (+ map_vid_vidorID.json), and the
    videos as NExTVideo/<folder>/<video id>.mp4 (or <video id>.mp4 without the map)."""
    root = tmp_path / "nextqa"
    (root / "NExTVideo").mkdir(parents=True)
    with open(root / "val.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(NEXTQA_HEADER)
        w.writerows(NEXTQA_ROWS)
    mapping = {row[0]: f"10{i:02d}/{row[0]}" for i, row in enumerate(NEXTQA_ROWS)}
    if mapped:
        (root / "map_vid_vidorID.json").write_text(json.dumps(mapping))
    for vid, rel in mapping.items():
        target = root / "NExTVideo" / (rel if mapped else vid)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_clip(target.with_suffix(".mp4"), frames, fps=4)
    return root / "val.csv"


def egoschema(tmp_path, frames, *, answers=True, pretty=False):
    """EgoSchema as published: questions.json (a list), subset_answers.json, videos/."""
    root = tmp_path / "egoschema"
    (root / "videos").mkdir(parents=True)
    questions = [{"q_uid": uid, "google_drive_id": f"drive{i}",
                  "question": f"What is c doing in video {i}?",
                  **{f"option {k}": f"c does thing {k} of video {i}" for k in range(5)}}
                 for i, uid in enumerate(EGO_UIDS)]
    (root / "questions.json").write_text(json.dumps(questions, indent=2 if pretty else None))
    if answers:
        (root / "subset_answers.json").write_text(json.dumps({EGO_UIDS[0]: 3, EGO_UIDS[1]: 0}))
    for uid in EGO_UIDS:
        write_clip(root / "videos" / f"{uid}.mp4", frames, fps=4)
    return root / "questions.json"


# --------------------------------------------------------------------------- readers


def test_nextqa_is_read_as_published(tmp_path, clip_frames):
    path = nextqa(tmp_path, clip_frames)
    assert detect_format(path) == "nextqa"
    items = load_dataset(path)
    assert [it.id for it in items] == ["4010069381_6", "2834146886_8", "8547321641_7"]
    first = items[0]
    assert first.task == "video" and first.image is None
    assert first.question == ("how do the two man play the instrument\n(A) roll the handle\n"
                              "(B) tap their feet\n(C) strum the string\n(D) hit with sticks\n"
                              "(E) pat with hand")
    assert first.answer == "D" and first.options["D"] == "hit with sticks"
    assert first.video == str(path.parent / "NExTVideo" / "1000" / "4010069381.mp4")
    # the official script counts TP as TN, and reports the groups C, T, D
    assert [it.types for it in items] == [{"type": "CH", "group": "causal"},
                                          {"type": "TN", "group": "temporal"},
                                          {"type": "DC", "group": "descriptive"}]
    # without the map, <video id>.mp4 in the videos folder (given with --videos)
    bare = nextqa(tmp_path / "bare", clip_frames, mapped=False)
    items = load_dataset(bare, images=bare.parent / "NExTVideo")
    assert items[2].video == str(bare.parent / "NExTVideo" / "8547321641.mp4")


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[1].__setitem__(5, "7"), "val.csv:2: the answer '7' is not the index"),
    (lambda rows: rows[2].__setitem__(9, " "), "val.csv:3: option 1 is empty"),
    (lambda rows: rows.insert(0, ["video", "question"]), "missing answer, qid, type, a0, a1"),
])
def test_nextqa_refuses_bad_rows(tmp_path, change, message):
    rows = [NEXTQA_HEADER] + [list(r) for r in NEXTQA_ROWS]
    change(rows)
    if rows[0] == ["video", "question"]:
        rows = [rows[0], ["1", "q"]]
    path = tmp_path / "val.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path)


@pytest.mark.parametrize("pretty", [False, True])
def test_egoschema_is_read_with_its_published_answers(tmp_path, clip_frames, pretty):
    path = egoschema(tmp_path, clip_frames, pretty=pretty)
    assert detect_format(path) == "egoschema" and detect_format(path.parent) == "egoschema"
    with pytest.warns(VisProgWarning, match="1 question with no answer in subset_answers.json"):
        items = load_dataset(path.parent)  # the folder works as the file does
    assert [it.id for it in items] == EGO_UIDS[:2]
    assert [it.answer for it in items] == ["D", "A"] and items[0].task == "video"
    assert items[0].question.startswith("What is c doing in video 0?\n(A) c does thing 0")
    assert items[0].question.endswith("(E) c does thing 4 of video 0")
    assert items[1].video == str(path.parent / "videos" / f"{EGO_UIDS[1]}.mp4")


def test_egoschema_without_answers_says_where_they_are(tmp_path, clip_frames):
    path = egoschema(tmp_path, clip_frames, answers=False)
    with pytest.raises(DatasetError, match="subset_answers.json beside the questions"):
        load_dataset(path)
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps([{"id": 1}]))
    with pytest.raises(DatasetError, match="EgoSchema's questions"):
        detect_format(bad)


def test_jsonl_items_with_a_video_and_options(tmp_path):
    rows = [{"id": "a", "video": "clips/a.mp4", "question": "What moves?", "answer": "square"},
            {"id": "b", "video": "b.mp4", "question": "Which way?", "options": ["left", "right"],
             "answer": 1},
            {"id": "c", "video": "c.mp4", "question": "Colour?",
             "options": {"A": "red", "B": "blue"}, "answer": "red"},
            {"id": "d", "image": "d.png", "question": "Q?", "options": ["x", "y"],
             "answer": "(B)"}]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_dataset(tmp_path / "v.jsonl")
    assert [(it.task, it.answer) for it in items] == [("video", "square"), ("video", "B"),
                                                      ("video", "A"), ("gqa", "B")]
    assert items[0].video == str(tmp_path / "clips" / "a.mp4") and items[0].image is None
    assert items[1].question == "Which way?\n(A) left\n(B) right"
    for bad, message in (({"video": "x.mp4", "image": "y.png"}, "not both"),
                         ({"video": "x.mp4", "options": ["only one"]}, "two or more"),
                         ({"video": "x.mp4", "options": ["a", "b"], "answer": 5}, "index")):
        (tmp_path / "bad.jsonl").write_text(json.dumps(
            {"question": "q", "answer": "A", **bad}) + "\n")
        with pytest.raises(DatasetError, match=message):
            load_dataset(tmp_path / "bad.jsonl")


def test_scored_by_the_chosen_option_as_the_official_scripts():
    options = {"A": "kitchen", "B": "four", "C": "two", "D": "three", "E": "one"}
    assert is_correct("E", "E", options) and is_correct("(E)", "E", options)
    assert is_correct("one", "E", options) and is_correct("1", "E", options)
    assert not is_correct("D", "E", options) and not is_correct("five", "E", options)
    assert not is_correct("", "E", options)


# --------------------------------------------------------------------------- frames looked at


@tool("Brightness", params={"image": "Image"}, returns="Number", draw_on=None)
def brightness(image):
    """Mean brightness (reads one image's pixels)."""
    return float(np.asarray(image.convert("L")).mean())


@tool("Glance", params={"video": "Video"}, returns="Number", draw_on=None,
      settings={"frames": 2})
def glance(video):
    """Reads two frames of the video, spread evenly (its `frames` setting)."""
    return float(len(video.evenly(2)))


def small_video(n=6):
    frames = [Image.new("RGB", (32, 24), (i * 30, 0, 0)) for i in range(n)]
    return Video(frames, [i / 2 for i in range(n)], sampling={"fps": 2})


def test_frames_looked_at_reads_what_modules_and_the_planner_saw():
    from visprog import VisProg

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    vp.register(brightness)
    vp.register(glance)
    video = small_video()
    out = vp.execute("F=FrameAt(video=VIDEO, time=1)\nB=Brightness(image=F)\n"
                     "G=Glance(video=VIDEO)\nC=Clip(video=VIDEO, start=2, end=3)\n"
                     "N=Frames(video=C, n=1)", video=video)
    # FrameAt, Clip, Frames only choose; Brightness read frame 2, Glance frames 1 and 4
    assert frames_looked_at(out.trace, vp.registry) == 3
    assert frames_looked_at(out.trace) == 6  # without settings: all 6, frame 2 among them
    assert frames_looked_at(vp.execute("F=FrameAt(video=VIDEO, time=1)",
                                       video=video).trace, vp.registry) == 0
    assert frames_looked_at(Trace("")) is None  # no video, no figure
    # the planner's frames: a Look at the video (by time), a Look at a frame in a round
    # whose images were sent
    trace = Trace("", steps=[StepRecord(0, 1, "L=Look(var=VIDEO)", "L", "Look",
                                        {"var": video}, {"var": "VIDEO"}, video),
                             StepRecord(1, 2, "F=FrameAt(video=VIDEO, time=2.6)", "F",
                                        "FrameAt", {"video": video, "time": 2.6},
                                        {"video": "VIDEO"}, video.frames[5].copy()),
                             StepRecord(2, 3, "M=Look(var=F)", "M", "Look",
                                        {"var": video.frames[5]}, {"var": "F"},
                                        video.frames[5].copy())],
                  inputs={"VIDEO": video})
    trace.add_event(Round(0, "L=Look(var=VIDEO)", steps=[0], images=["x"] * 2,
                          frames=[0.0, 1.0]))
    trace.add_event(Round(1, "...", steps=[1, 2], images=[]))
    assert frames_looked_at(trace) == 2  # frames 0 and 2; the frame's Look was not sent
    trace.events[-1].images = ["y"]
    assert frames_looked_at(trace) == 3


# --------------------------------------------------------------------------- evaluate


def test_evaluate_nextqa_reports_accuracy_by_type_and_frames(tmp_path, clip_frames):
    from visprog import VisProg

    path = nextqa(tmp_path, clip_frames)
    items = load_dataset(path)
    # ready programs: one right, one reading a frame, one wrong, one that reads two frames
    programs = {"4010069381_6": "A=Eval(expr=\"'D'\")",
                "2834146886_8": "F=FrameAt(video=VIDEO, time=0)\nB=Brightness(image=F)\n"
                                "A=Eval(expr=\"'smells the black dog' if {B} > 0 else 'A'\")",
                "8547321641_7": "G=Glance(video=VIDEO)\nA=Eval(expr=\"'two'\")"}
    for it in items:
        it.program = programs[it.id]
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    vp.register(brightness)
    vp.register(glance)
    summary = evaluate(vp, items, tmp_path / "r.jsonl", progress=False)
    rows = {r["id"]: r for r in read_results(tmp_path / "r.jsonl")}
    assert [rows[i]["correct"] for i in programs] == [True, True, False]
    assert [rows[i]["chosen"] for i in programs] == ["D", "C", "C"]
    assert [rows[i]["frames"] for i in programs] == [0, 1, 2]
    assert all(rows[i]["frames_sampled"] == 4 for i in programs)  # 2 s at 2 a second
    assert summary["accuracy"] == round(2 / 3, 4)
    assert summary["by_type"]["group"] == {
        "causal": {"n": 1, "correct": 1, "accuracy": 1.0},
        "descriptive": {"n": 1, "correct": 0, "accuracy": 0.0},
        "temporal": {"n": 1, "correct": 1, "accuracy": 1.0}}
    assert summary["by_type"]["type"]["TN"]["n"] == 1
    assert summary["cost"]["frames"] == 1.0 and summary["cost"]["frames_sampled"] == 4.0
    text = format_summary(summary)
    assert "frames looked at: 1 per video item (of 4 sampled)" in text
    assert "by group: causal 100.0% (n=1), descriptive 0.0% (n=1), temporal 100.0% (n=1)" in text


def test_a_missing_video_is_named_with_the_flag_to_fix_it(tmp_path, clip_frames):
    from visprog import VisProg

    path = nextqa(tmp_path, clip_frames)
    items = load_dataset(path)
    for it in items:
        it.program = "A=Eval(expr=\"'A'\")"
    (path.parent / "NExTVideo" / "1000" / "4010069381.mp4").unlink()
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    evaluate(vp, items, tmp_path / "r.jsonl", progress=False)
    rows = {r["id"]: r for r in read_results(tmp_path / "r.jsonl")}
    gone = rows["4010069381_6"]
    assert gone["status"] == "error" and gone["cause"] == "input"
    assert "video file not found" in gone["error"] and "--videos" in gone["error"]
    assert "frames" not in gone and rows["8547321641_7"]["frames"] == 0
    with pytest.raises(DatasetError, match="has its videos.*--videos"):
        evaluate(vp, items[:1], tmp_path / "none.jsonl", progress=False)


def test_evaluate_in_agent_mode_counts_the_frames_the_planner_saw(tmp_path, clip_frames):
    from visprog import VisProg

    path = egoschema(tmp_path, clip_frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisProgWarning)
        items = load_dataset(path)
    rounds = {0: "L=Look(var=VIDEO)", 1: "A=Eval(expr=\"'D'\")\nFINAL=Result(var=A)"}

    def respond(body):  # by the rounds seen since the question (the examples come before)
        messages = body["messages"]
        start = max(i for i, m in enumerate(messages) if m["role"] == "user"
                    and str(m["content"]).startswith("Question: "))
        return rounds[sum(m["role"] == "assistant" for m in messages[start:])]

    with ScriptedServer([], respond=respond) as server:
        llm = scripted_client(server)
        llm.takes_images = True
        vp = VisProg(preset="tiny", cache=False, plugins=False, llm=llm)
        summary = evaluate(vp, items, tmp_path / "r.jsonl", progress=False, mode="agent",
                           repair=False)
    rows = {r["id"]: r for r in read_results(tmp_path / "r.jsonl")}
    assert [rows[u]["correct"] for u in EGO_UIDS[:2]] == [True, False]
    # a Look at the 4-frame video shows all 4 (look_frames 4), each sent as an image
    assert [rows[u]["frames"] for u in EGO_UIDS[:2]] == [4, 4]
    assert [rows[u]["images"] for u in EGO_UIDS[:2]] == [4, 4]
    assert summary["cost"]["frames"] == 4.0 and summary["accuracy"] == 0.5


def test_visprog_eval_reads_nextqa_with_videos_and_sampling(tmp_path, clip_frames, capsys):
    from visprog.cli import main

    path = nextqa(tmp_path, clip_frames)
    videos = tmp_path / "elsewhere"
    (path.parent / "NExTVideo").rename(videos)
    programs = tmp_path / "p.jsonl"
    programs.write_text("".join(json.dumps({"id": f"{r[0]}_{r[6]}",
                                            "program": "S=Frames(video=VIDEO, n=1)\n"
                                                       "A=Eval(expr=\"'D'\")"}) + "\n"
                                for r in NEXTQA_ROWS))
    code = main(["eval", str(path), "--videos", str(videos), "--programs", str(programs),
                 "--preset", "tiny", "--no-progress", "--no-cache", "--frames", "3",
                 "--out", str(tmp_path / "r.jsonl")])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy: 33.33% (1/3)" in out
    assert "frames looked at: 0 per video item (of 3 sampled)" in out
    assert "by type: CH 100.0% (n=1), DC 0.0% (n=1), TN 0.0% (n=1)" in out
    assert main(["eval", str(path), "--videos", str(videos), "--preset", "tiny",
                 "--no-progress", "--fps", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "fps must be at least" in capsys.readouterr().err
