"""Rough edges of the command line (issue 20 items 15, 17, 19, 21): a forgotten input says how
to pass it; eval's flags say what they do (no --select without --vote, --no-plan-cache);
`run` takes a pair as --left/--right and plans it as one; a programs file that names no item,
or a JSONL line without a question, is said so; `trace show` of a trace that moved without
its images prints it and names what is missing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from llm_server import ScriptedServer
from visprog.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, build_parser, main
from visprog.evaluation.datasets import DatasetError, detect_format, load_dataset

pytestmark = pytest.mark.usefixtures("no_llm_env")

TINY = ["--preset", "tiny"]
TRUE = 'A=Eval(expr="2 > 1")\nFINAL=Result(var=A)'
IMAGE_PROGRAM = "L=Loc(image=IMAGE, object='LEFT')\nN=Count(box=L)\n"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.vp").write_text(IMAGE_PROGRAM)
    Image.new("RGB", (40, 30), (30, 60, 90)).save(tmp_path / "photo.png")
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def use_server(monkeypatch, server: ScriptedServer) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("VISPROG_LLM_MODEL", "m")


# -- item 15: a forgotten input ------------------------------------------------------------------

def test_exec_with_a_pair_on_an_image_program_says_how_to_pass_the_image(work, capsys):
    code, out, err = run_cli(capsys, "exec", "ok.vp", "--left", "photo.png", "--right",
                             "photo.png", *TINY)
    assert code == EXIT_ERROR and out == ""
    assert err.startswith("ok.vp:1:7: undefined variable 'IMAGE': the input IMAGE was not given")
    assert "this run's inputs are LEFT, RIGHT" in err and "--image PATH on the command line" in err
    assert "quotes" not in err


# -- item 17: counts read as English --------------------------------------------------------------

def test_check_counts_its_steps_in_english(work, capsys):
    (work / "one.vp").write_text("N=Eval(expr='1')\n")
    assert run_cli(capsys, "check", "one.vp", *TINY)[1] == "ok: 1 step\n"
    assert run_cli(capsys, "check", "ok.vp", *TINY)[1] == "ok: 2 steps\n"


# -- item 19: eval's and run's flags --------------------------------------------------------------

def subcommand_help(name: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name].format_help()


def test_eval_offers_no_select_without_a_vote(tmp_path, capsys):
    eval_help = subcommand_help("eval")
    assert "--vote" not in eval_help and "--select" not in eval_help
    assert "--no-plan-cache" in eval_help
    run_help = subcommand_help("run")
    assert "--vote" in run_help and "--select" in run_help and "--left" in run_help
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "d.jsonl"), "--select", "majority"])
    assert e.value.code == EXIT_USAGE


def test_eval_no_plan_cache_asks_the_llm_again(tmp_path, monkeypatch, capsys):
    Image.new("RGB", (16, 16), "gray").save(tmp_path / "a.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "q", "image": "a.png", "question": "Is it gray?",
                                "answer": "yes"}) + "\n")
    base = ["eval", str(data), *TINY, "--no-progress"]
    with ScriptedServer([TRUE, TRUE]) as server:
        use_server(monkeypatch, server)
        assert main(base + ["--out", str(tmp_path / "1.jsonl")]) == EXIT_OK
        assert main(base + ["--out", str(tmp_path / "2.jsonl")]) == EXIT_OK
        assert len(server.requests) == 1  # the second run's plan came from the program cache
        assert main(base + ["--out", str(tmp_path / "3.jsonl"), "--no-plan-cache"]) == EXIT_OK
        assert len(server.requests) == 2
    capsys.readouterr()


def test_run_takes_a_pair_as_left_and_right(work, monkeypatch, capsys):
    pair = 'A=Vqa(image=LEFT, question="dogs?")\nB=Eval(expr="2 > 1")\nFINAL=Result(var=B)'
    with ScriptedServer([pair, pair]) as server:
        use_server(monkeypatch, server)
        base = ["run", "There are two dogs.", *TINY, "--no-cache", "--no-plan-cache",
                "--no-repair"]
        code, out, err = run_cli(capsys, *base, "--left", "photo.png", "--right", "photo.png")
        assert (code, out) == (EXIT_OK, "True\n"), err
        # --image with --right is a pair too: planned as the nlvr task, not as gqa
        code, out, err = run_cli(capsys, *base, "--image", "photo.png", "--right", "photo.png")
        assert (code, out) == (EXIT_OK, "True\n"), err
        for request in server.requests:
            asked = request["messages"][-1]["content"]
            assert asked.startswith("Statement: There are two dogs."), asked


@pytest.mark.parametrize("argv, message", [
    (["--image", "photo.png", "--right", "photo.png", "--task", "gqa"],
     "--task gqa takes one image"),
    (["--image", "photo.png", "--left", "photo.png", "--right", "photo.png"], "not both"),
    (["--task", "nlvr", "--image", "photo.png"], "--task nlvr compares two images"),
    (["--left", "photo.png"], "--task nlvr compares two images"),
    ([], "give an input image"),
])
def test_run_image_flags_that_do_not_fit_are_usage_errors(work, capsys, argv, message):
    code, _, err = run_cli(capsys, "run", "Is it?", *TINY, *argv)
    assert code == EXIT_USAGE and message in err


def test_a_programs_file_that_names_no_item_is_said_so(tmp_path, capsys):
    Image.new("RGB", (16, 16), "gray").save(tmp_path / "a.png")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "image": "a.png", "question": "n?",
                                        "answer": "1"}) + "\n" for i in range(2)))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "x1", "program": "N=Eval(expr='1')"}) + "\n")
    code, _, err = run_cli(capsys, "eval", str(data), "--programs", str(other), *TINY)
    assert code == EXIT_ERROR
    assert "none of the programs is used: 1 id of" in err and "('x1')" in err
    assert "its ids look like 'q0'" in err
    some = tmp_path / "some.jsonl"
    some.write_text(json.dumps({"id": "q0", "program": "N=Eval(expr='1')"}) + "\n"
                    + json.dumps({"id": "Q1", "program": "N=Eval(expr='1')"}) + "\n")
    with pytest.warns(UserWarning, match=r"1 id of .*some.jsonl \('Q1'\) name no item"):
        items = load_dataset(data, programs=some)
    assert items[0].program and items[1].program is None


def test_a_jsonl_line_without_a_question_names_the_field(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "foo", "picture": "a.png", "answer": "x"}) + "\n")
    assert detect_format(data) == "jsonl"
    with pytest.raises(DatasetError, match=r"d.jsonl:1: missing field 'question'"):
        load_dataset(data)
    one_line_gqa = tmp_path / "q.json"
    one_line_gqa.write_text(json.dumps({"01": {"imageId": "1", "question": "q", "answer": "a"},
                                        "02": {"imageId": "2", "question": "q", "answer": "b"}}))
    assert detect_format(one_line_gqa) == "gqa"


# -- item 21: a trace that moved without its images -------------------------------------------------

def test_trace_show_of_a_trace_without_its_files_folder(work, capsys):
    from visprog.traces.json_io import TraceLoadError
    from visprog.traces.records import Trace

    assert run_cli(capsys, "exec", "ok.vp", "--image", "photo.png", "--json", "t.json",
                   *TINY)[0] == EXIT_OK
    (work / "moved").mkdir()
    shutil.move(work / "t.json", work / "moved" / "t.json")  # t_files/ stays behind
    code, out, err = run_cli(capsys, "trace", "show", "moved/t.json")
    assert code == EXIT_OK, err
    assert "[1] line 1: L = Loc" in out and "result: 1" in out
    assert "image file of this trace is missing" in err
    assert str((work / "moved" / "t_files").resolve()) in err
    with pytest.raises(TraceLoadError, match="image file not found"):
        Trace.load_json(work / "moved" / "t.json")  # loading it for its images still says so
    missing: list[str] = []
    trace = Trace.load_json(work / "moved" / "t.json", missing=missing)
    assert str(trace.inputs["IMAGE"]) == "image 40x30 (file missing)" and len(missing) == 1


def test_eval_flags_reach_the_engine_and_every_ray_worker(tmp_path, monkeypatch):
    """--no-plan-cache and --frames are settings of the one recipe that the client's engine
    and each Ray worker's are assembled from (the workers used the config's before)."""
    import visprog.evaluation.harness as harness
    import visprog.hosting.cluster as cluster

    made = {}
    monkeypatch.setattr(cluster, "ray_executor",
                        lambda address, factory: made.setdefault("factory", factory))
    monkeypatch.setattr(harness, "cmd_eval",
                        lambda args, vp, executor, **kw: made.update(vp=vp) or EXIT_OK)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "q", "image": "a.png", "question": "?"}) + "\n")
    assert main(["eval", str(data), *TINY, "--no-progress", "--no-cache", "--no-plan-cache",
                 "--frames", "3", "--ray", "auto"]) == EXIT_OK
    worker = made["factory"]()
    for vp in (made["vp"], worker):
        assert vp.config["planner"]["cache"] is False
        assert vp.video_settings.frames == 3 and vp.config["video"]["frames"] == 3
