"""Agent mode (issue 21): the planner writes the program in rounds and sees what each round
gave. Look and Region, the engine going on from a kept run, rounds parsed and checked
against the program so far, observations (text, and images for a model that takes them),
the budgets, a step that raises mid-round, batched rounds across items, the trace's rounds
(JSON, HTML), the saved program re-run with no LLM, the CLI, and the tiny local VLM planner
end to end. The LLM is the scripted loopback server of tests/llm_server.py through the real
`openai` client."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from llm_server import Reply, ScriptedServer, image_parts, scripted_client, text_of
from visprog.errors import ConfigError, StepError, VisProgError
from visprog.language.parser import parse
from visprog.planning.agent import AgentError, AgentSettings, look_at
from visprog.planning.loop import RepairSettings
from visprog.registry import tool
from visprog.traces.events import AgentRun, PlanAttempt, Round
from visprog.traces.records import Trace
from visprog.values import Objects

pytestmark = pytest.mark.usefixtures("no_llm_env")

LOOK_ROUND = "BOX=Region(image=IMAGE, box=[100, 100, 600, 700])\nLOOK=Look(var=BOX)"
ANSWER_ROUND = "ZOOM=Crop(image=IMAGE, box=BOX)\nN=Count(box=BOX)\nFINAL=Result(var=N)"


def scene(size=(320, 240), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "scene.png"
    scene().save(path)
    return path


def engine(server, *, images=False, **kw):
    from visprog.api import VisProg

    llm = scripted_client(server)
    llm.takes_images = images
    kw.setdefault("cache", False)
    return VisProg(preset="tiny", llm=llm, plugins=False, **kw)


# --------------------------------------------------------------------------- Region and Look


def test_region_reads_boxes_from_0_to_1000_and_refuses_bad_ones():
    from visprog.tools.region import pixel_box, region

    assert pixel_box([0, 0, 1000, 1000], (640, 480)) == (0, 0, 640, 480)
    assert pixel_box([100, 250, 501, 500], (640, 480)) == (64, 120, 321, 240)  # outward
    assert pixel_box([999.9, 999.9, 1000, 1000], (640, 480)) == (639, 479, 640, 480)
    objs = region(image=scene((640, 480)), box=[100, 250, 500, 500])
    assert isinstance(objs, Objects) and objs.image_size == (640, 480)
    assert objs.labels == ["region"] and objs[0].box == (64.0, 120.0, 320.0, 240.0)
    bad = {"four numbers": [[1, 2, 3], "0,0,10,10", [0, 0, 10, "x"], [True, 0, 5, 5], None],
           "outside the image": [[0, 0, 1200, 900], [-5, 0, 10, 10]],
           "is empty": [[500, 100, 500, 200], [600, 100, 400, 200], [0, 300, 10, 300]]}
    for why, boxes in bad.items():
        for box in boxes:
            with pytest.raises(ValueError, match=why):
                region(image=scene(), box=box)


def test_region_in_a_program_refuses_clearly_and_zooms_keeping_pixels():
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    big = scene((3840, 2160))
    out = vp.execute("R=Region(image=IMAGE, box=[500, 500, 600, 600])\n"
                     "Z=Crop(image=IMAGE, box=R)\nL=Look(var=Z)", image=big)
    # Crop's context margin around a 384x216 box of the 4K image, at full resolution
    assert out.value.size == (576, 324)
    assert out.trace["L"].output is out.trace["Z"].output  # Look gives its value back
    with pytest.raises(StepError, match="Region: box .* outside the image") as e:
        vp.execute("R=Region(image=IMAGE, box=[0, 0, 3840, 2160])", image=big)
    assert e.value.module == "Region"


def test_vqa_min_pixels_scales_small_crops_up_and_is_keyed_only_when_set():
    from visprog.api import VisProg
    from visprog.tools.vqa import bound_pixels

    small = scene((40, 20))
    assert bound_pixels(small, 1024 * 1024).size == (40, 20)
    up = bound_pixels(small, 1024 * 1024, 65536)
    assert up.size[0] * up.size[1] >= 65536 and abs(up.size[0] / up.size[1] - 2) < 0.01
    assert bound_pixels(scene((2000, 2000)), 1024 * 1024, 65536).size == (1024, 1024)
    plain = VisProg(preset="tiny", cache=False, plugins=False).registry.get("Vqa").settings
    assert "min_pixels" not in plain  # the default's cache keys are what they were
    set_ = VisProg(preset="tiny", cache=False, plugins=False,
                   config={"Vqa": {"min_pixels": 65536}}).registry.get("Vqa").settings
    assert set_["min_pixels"] == 65536


def test_look_is_not_cached_and_shows_what_it_looks_at():
    from visprog.api import VisProg
    from visprog.engine.cache import StepCache

    vp = VisProg(preset="tiny", cache=StepCache(memory=True), plugins=False)
    program = ("R=Region(image=IMAGE, box=[0, 0, 500, 500])\nL=Look(var=R)\n"
               "N=Count(box=R)\nT=Look(var=N)\nI=Look(var=IMAGE)")
    first = vp.execute(program, image=scene())
    again = vp.execute(program, image=scene())
    assert again.trace["R"].cached and not again.trace["L"].cached
    assert again.value is again.trace.inputs["IMAGE"]
    settings = AgentSettings(look_max_pixels=100 * 100, look_min_pixels=50 * 50)
    view = look_at(first.trace, 1, settings, True)
    text, [im] = view.text, view.images
    assert text.startswith("Look at R: 1 region of a 320x240 image (drawn in {image})")
    assert "region [0, 0, 500, 500]" in text
    assert im.size[0] * im.size[1] <= 100 * 100 and im.size != (320, 240)
    assert np.asarray(im).std() > 0  # the scene with the box drawn over it
    view = look_at(first.trace, 1, settings, False)
    text, shown = view.text, view.images
    assert shown == [] and "region [0, 0, 500, 500]" in text and "{image}" not in text
    view = look_at(first.trace, 3, settings, True)
    assert view.text == "Look at N: Number: 1" and view.images == []
    view = look_at(first.trace, 4, settings, True)
    text, [im] = view.text, view.images
    assert text == "Look at IMAGE: an image of 320x240 pixels ({image})."
    assert im.size[0] * im.size[1] <= 100 * 100
    tiny = Trace("L=Look(var=X)", steps=[first.trace.steps[4]])
    tiny.steps[0].output = scene((10, 10))
    [im] = look_at(tiny, 0, settings, True).images
    assert im.size[0] * im.size[1] >= 50 * 50  # small crops are scaled up to be seen


# --------------------------------------------------------------------------- the engine


def counting_tool(calls):
    @tool("Bump", params={"x": "Number"}, returns="Number", draw_on=None, cacheable=False)
    def bump(x):
        calls.append(x)
        return x + 1
    return bump


def test_the_engine_goes_on_from_a_kept_run_without_running_earlier_steps():
    from visprog.api import VisProg
    from visprog.engine.core import Job

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    calls: list[int] = []
    vp.register(counting_tool(calls))
    first = parse("A=Bump(x=1)\nB=Bump(x=A)")
    [res] = vp.engine.run([Job(first, {}, keep=True)])
    assert res.value == 3 and calls == [1, 2] and res.state is not None
    more = parse(first.source + "\nC=Bump(x=B)\nD=Eval(expr=\"{C} * 10\")")
    [res2] = vp.engine.run([Job(more, {}, resume=res.state, keep=True)])
    assert res2.value == 40 and calls == [1, 2, 3]  # only the new steps ran
    assert res2.trace is res.trace and [s.target for s in res2.trace.steps] == list("ABCD")
    assert res2.trace.program == more.source
    with pytest.raises(ValueError, match="start with the steps that already ran"):
        vp.engine.run([Job(parse("A=Bump(x=5)\nX=Bump(x=A)"), {}, resume=res2.state)])
    # a failed last step is rewound: the next round replaces it
    bad = parse(more.source + "\nE=Eval(expr=\"{D} / 0\")\nF=Bump(x=D)")
    [res3] = vp.engine.run([Job(bad, {}, resume=res2.state, keep=True)])
    assert isinstance(res3.error, StepError) and res3.trace.steps[-1].target == "E"
    fixed = parse(more.source + "\nE=Eval(expr=\"{D} / 4\")")
    [res4] = vp.engine.run([Job(fixed, {}, resume=res3.state, keep=True)])
    assert res4.error is None and res4.value == 10
    assert [s.target for s in res4.trace.steps] == list("ABCDE") and res4.trace.error is None
    assert calls == [1, 2, 3]


# --------------------------------------------------------------------------- rounds


def test_a_round_is_checked_against_the_program_so_far(picture):
    from visprog.api import VisProg
    from visprog.planning.planner import Planner

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    planner = Planner(object(), vp.registry, cache=False)
    prefix = parse("BOX=Loc(image=IMAGE, object='cup')\nLOOK=Look(var=BOX)")
    ok = planner.judge_round("N=Count(box=BOX)\nFINAL=Result(var=N)", prefix,
                             {"IMAGE": "Image"})
    assert ok.ok and [s.target for s in ok.program.steps] == ["BOX", "LOOK", "N", "FINAL"]
    assert ok.text == "N=Count(box=BOX)\nFINAL=Result(var=N)"
    bad = planner.judge_round("N=Count(box=BOXES)\nM=Count(box=IMAGE)", prefix,
                              {"IMAGE": "Image"})
    # errors are numbered by the reply's own lines
    assert [(d.line, d.message) for d in bad.diagnostics] == [
        (1, "undefined variable 'BOXES'"), (2, "Count's 'box' takes Objects or Tracks; IMAGE is Image")]
    assert "did you mean 'BOX'" in str(bad.diagnostics[0])
    assert planner.judge_round("N=Count(box=", prefix).diagnostics[0].line == 1
    assert "no steps" in planner.judge_round("```\n```", prefix).diagnostics[0].message


def test_agent_prompt_describes_look_and_region_and_the_oneshot_prompt_does_not():
    from visprog.api import VisProg
    from visprog.planning.planner import Planner
    from visprog.planning.prompts import build_messages, load_examples, task_spec

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    planner = Planner(object(), vp.registry, cache=False)
    messages = planner.agent_messages("What is on the sign?")
    system = messages[0]["content"]
    assert "- Look(var: Any) -> Any" in system and "- Region(image: Image, box: Any)" in system
    assert "0 to 1000" in system and "Result" in system
    assert messages[-1]["content"] == "Question: What is on the sign?"
    assert any(m["role"] == "user" and m["content"].startswith("Round 1 ran:")
               for m in messages)
    oneshot = build_messages(vp.registry, task_spec("gqa"), "q", load_examples("gqa"))
    assert "Look(" not in oneshot[0]["content"] and "Region(" not in oneshot[0]["content"]


@pytest.mark.parametrize("task", ["gqa", "nlvr", "imgedit", "video"])
def test_agent_examples_check_round_by_round(task):
    from visprog.api import VisProg
    from visprog.language.checker import check
    from visprog.planning.prompts import (agent_task, described_tools, load_agent_examples,
                                          task_spec)

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    spec = agent_task(task_spec(task))
    described = {t.name for t in described_tools(vp.registry, spec)}
    looked = False
    for ex in load_agent_examples(task):
        text = ""
        for k, r in enumerate(ex.rounds):
            text = (text + "\n" + r.program).strip()
            program = parse(text)
            assert check(program, vp.registry, dict(spec.inputs)) == [], (ex.question, text)
            modules = {s.module for s in parse(r.program).steps}
            assert modules <= described, modules - described
            last = k == len(ex.rounds) - 1
            assert bool(r.observation) != last, "every round but the last has one"
            assert ("Result" in modules) == last
            if r.observation:
                looked = True
                assert r.observation.startswith(f"Round {k + 1} ran:")
                numbered = re.findall(r"^(\d+)\. (\S+?=)", r.observation, re.M)
                steps = parse(text).steps
                assert numbered == [(str(i + 1), steps[i].target + "=")
                                    for i in range(len(steps) - len(parse(r.program).steps),
                                                   len(steps))]
    assert looked or task == "imgedit"  # one-shot examples are one round each


# --------------------------------------------------------------------------- a run


@pytest.mark.parametrize("images", [True, False])
def test_two_rounds_look_then_answer(picture, images):
    with ScriptedServer([LOOK_ROUND, ANSWER_ROUND]) as server:
        vp = engine(server, images=images)
        out = vp.run(str(picture), "How many boxes are there?", mode="agent")
    assert out.value == 1 and len(server.requests) == 2
    first, second = server.requests
    assert not any(image_parts(m) for m in first["messages"])
    shown = image_parts(second["messages"][-1])
    assert len(shown) == (1 if images else 0)
    if images:
        url = shown[0]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")  # JPEG q95 by default
        assert isinstance(second["messages"][-1]["content"], list)
    else:
        assert isinstance(second["messages"][-1]["content"], str)
    told = text_of(second["messages"][-1])
    assert told.startswith("Round 1 ran:\n1. BOX=Region(image=IMAGE, box=[100, 100, 600, 700])"
                           " -> Objects: 1 region (region)\n2. LOOK=Look(var=BOX) ->")
    assert "Look at BOX: 1 region of a 320x240 image" in told
    assert "region [100, 100, 600, 700]" in told
    assert second["messages"][-2] == {"role": "assistant", "content": LOOK_ROUND}
    # the rounds in the trace
    rounds = out.trace.find(Round)
    assert [r.program for r in rounds] == [LOOK_ROUND, ANSWER_ROUND]
    assert rounds[0].steps == [0, 1] and rounds[1].steps == [2, 3, 4]
    assert rounds[0].looks == ["BOX"] and len(rounds[0].images) == (1 if images else 0)
    assert rounds[0].observation == told and rounds[1].observation == ""
    assert all(isinstance(r.plan[-1], PlanAttempt) and r.plan[-1].ok for r in rounds)
    assert rounds[0].usage["total_tokens"] > 0 and rounds[0].calls == 1
    [end] = out.trace.find(AgentRun)
    assert (end.stop, end.answer, end.rounds, end.steps, end.calls) == ("result", "result", 2,
                                                                         5, 2)
    assert end.images == (1 if images else 0) and (end.image_tokens > 0) == images
    assert out.program.source == LOOK_ROUND + "\n" + ANSWER_ROUND
    assert out.trace.program == out.program.source
    assert [s.index for s in out.trace.steps] == [0, 1, 2, 3, 4]


def test_the_finished_program_runs_again_with_no_llm(picture, tmp_path, monkeypatch, capsys):
    from visprog.cli import main

    saved = tmp_path / "agent.vp"
    trace_json = tmp_path / "t.json"
    with ScriptedServer([LOOK_ROUND, ANSWER_ROUND]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        monkeypatch.setenv("VISPROG_LLM_MODEL", "m")
        code = main(["run", "--image", str(picture), "How many boxes?", "--agent",
                     "--preset", "tiny", "--program", str(saved), "--json", str(trace_json),
                     "-v"])
        captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == "1", captured.err
    assert "round 1: BOX=Region(image=IMAGE, box=[100, 100, 600, 700]); LOOK=Look(var=BOX), " \
           "shown BOX" in captured.err
    assert "agent: stopped by result after 2 rounds, 5 steps, 2 LLM calls" in captured.err
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "VISPROG_LLM_MODEL"):
        monkeypatch.delenv(name)
    assert main(["exec", str(saved), "--image", str(picture), "--preset", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == "1"
    loaded = Trace.load_json(trace_json)
    assert [r.program for r in loaded.find(Round)] == [LOOK_ROUND, ANSWER_ROUND]
    assert loaded.find(AgentRun)[0].stop == "result" and loaded.program == saved.read_text().strip()


def test_a_step_raising_mid_round_comes_back_and_leaves_the_program(picture):
    r1 = ('A=Eval(expr="6 * 7")\nB=Eval(expr="{A} / 0")\nC=Eval(expr="{B} + 1")\n'
          'L=Look(var=C)')
    r2 = 'B=Eval(expr="{A} / 2")\nFINAL=Result(var=B)'
    with ScriptedServer([r1, r2]) as server:
        out = engine(server).run(str(picture), "How many?", mode="agent")
    assert out.value == 21
    told = text_of(server.requests[1]["messages"][-1])
    assert "2. B=Eval(expr=\"{A} / 0\") -> error: " in told
    assert "Step 2 (B=Eval(expr=\"{A} / 0\")) failed: ZeroDivisionError" in told \
        or "Step 2 (B=Eval(expr=\"{A} / 0\")) failed:" in told
    assert "Not run, as they came after the failed step: C=Eval(expr=\"{B} + 1\"); " \
           "L=Look(var=C)" in told
    assert out.program.source == 'A=Eval(expr="6 * 7")\n' + r2
    assert [s.target for s in out.trace.steps] == ["A", "B", "FINAL"]
    rounds = out.trace.find(Round)
    assert rounds[0].error and "division" in rounds[0].error and rounds[0].steps == [0, 1]
    assert rounds[1].steps == [1, 2]


def test_the_checks_findings_come_back_as_an_observation(picture):
    r1 = "A=Eval(expr=\"'blue'\")\nFINAL=Result(var=A)"
    r2 = "B=Eval(expr=\"'yes'\")\nFINAL=Result(var=B)"
    with ScriptedServer([r1, r2]) as server:
        out = engine(server).run(str(picture), "Is the sky blue?", mode="agent")
    assert out.value == "yes" and len(server.requests) == 2
    told = text_of(server.requests[1]["messages"][-1])
    assert "The result does not fit the question:\n1. [answer_type]" in told
    with ScriptedServer([r1]) as server:  # checks only: the first Result stands
        out = engine(server).run(str(picture), "Is the sky blue?", mode="agent", repair=0)
    assert out.value == "blue" and len(server.requests) == 1


# --------------------------------------------------------------------------- budgets


def no_result_round(k):
    return f'V{k}=Eval(expr="{k} * 10")\nL{k}=Look(var=V{k})'


def test_the_rounds_budget_ends_with_the_last_value(picture):
    with ScriptedServer([no_result_round(1), no_result_round(2)]) as server:
        out = engine(server).run(str(picture), "q?", mode="agent", agent={"rounds": 2},
                                 repair=False)
    assert out.value == 20 and len(server.requests) == 2
    [end] = out.trace.find(AgentRun)
    assert (end.stop, end.answer, end.rounds) == ("rounds", "last value", 2)
    assert "last round" in text_of(server.requests[1]["messages"][-1])
    assert out.trace.result == 20


def test_the_steps_budget_does_not_run_the_round_that_passes_it(picture):
    big = "\n".join(f'S{i}=Eval(expr="{i}")' for i in range(5))
    with ScriptedServer([no_result_round(1), big]) as server:
        out = engine(server).run(str(picture), "q?", mode="agent", agent={"steps": 4},
                                 repair=False)
    assert out.value == 10 and [s.target for s in out.trace.steps] == ["V1", "L1"]
    [end] = out.trace.find(AgentRun)
    assert end.stop == "steps" and "5 steps would pass the budget of 4" in end.note


def test_the_images_budget_ends_the_run_before_sending(picture):
    r1 = "L=Look(var=IMAGE)"
    with ScriptedServer([r1, no_result_round(2)]) as server:
        out = engine(server, images=True).run(str(picture), "q?", mode="agent",
                                              agent={"images": 0}, repair=False)
    assert len(server.requests) == 1 and out.value is out.trace.inputs["IMAGE"]
    assert out.trace.find(AgentRun)[0].stop == "images"
    with ScriptedServer([r1, "FINAL=Result(var=L)"]) as server:  # text only: nothing sent
        out = engine(server).run(str(picture), "q?", mode="agent", agent={"images": 0},
                                 repair=False)
    assert len(server.requests) == 2 and out.trace.find(AgentRun)[0].stop == "result"


def test_the_deadline_ends_the_run(picture):
    with ScriptedServer([no_result_round(1), Reply(no_result_round(2), delay=3)]) as server:
        vp = engine(server)
        started = time.perf_counter()
        out = vp.run(str(picture), "q?", mode="agent", repair=False, deadline_s=1.0)
    assert time.perf_counter() - started < 2.9
    assert out.value == 10
    [end] = out.trace.find(AgentRun)
    assert end.stop == "deadline" and end.answer == "last value"


def test_no_value_at_all_is_a_clear_error(picture):
    with ScriptedServer(['B=Eval(expr="1 / 0")', 'B=Eval(expr="2 / 0")']) as server:
        with pytest.raises(AgentError, match="stopped before any step ran.*2 rounds") as e:
            engine(server).run(str(picture), "q?", mode="agent", agent={"rounds": 2})
    assert e.value.trace.find(AgentRun)[0].answer is None
    assert len(e.value.trace.find(Round)) == 2 and e.value.trace.steps == []
    # a first round that never parses fails as a plan does
    from visprog.planning.planner import PlanningError
    with ScriptedServer(["nonsense", "more nonsense", "still nonsense"]) as server:
        with pytest.raises(PlanningError):
            engine(server).run(str(picture), "q?", mode="agent")


def test_planning_that_fails_later_ends_with_the_last_value(picture):
    with ScriptedServer([no_result_round(1), Reply("down", status=400)]) as server:
        out = engine(server).run(str(picture), "q?", mode="agent", repair=False)
    assert out.value == 10 and out.trace.find(AgentRun)[0].stop == "planning"


def test_bad_agent_settings_are_refused(picture):
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    for bad in ({"rounds": 0}, {"turns": 3}, {"steps": 1.5}, {"look_min_pixels": 10 ** 9}):
        with pytest.raises(ConfigError, match="agent|rounds|steps|turns|look"):
            vp.repair_settings(mode="agent", agent=bad)
    with pytest.raises(ConfigError, match="mode must be one of"):
        vp.repair_settings(mode="agentic")
    cfg = VisProg(preset="tiny", cache=False, plugins=False,
                  config={"planner": {"mode": "agent", "agent_rounds": 3}})
    settings = cfg.repair_settings()
    assert settings.mode == "agent" and settings.agent.rounds == 3
    assert RepairSettings.make(None, {}).mode == "oneshot"
    with ScriptedServer([]) as server:
        with pytest.raises(ValueError, match="one-shot"):
            engine(server).run(str(picture), "q?", mode="agent", vote=3)


def test_config_mode_agent_is_used_by_run(picture):
    with ScriptedServer([LOOK_ROUND, ANSWER_ROUND]) as server:
        vp = engine(server, config={"planner": {"mode": "agent"}})
        out = vp.run(str(picture), "How many boxes?")
    assert out.value == 1 and len(out.trace.find(Round)) == 2


# --------------------------------------------------------------------------- batched


def scripted_by_question(plans):
    """A server answer chosen by the request's question and how many rounds it has seen
    (after the question: the examples' observations come before it): the requests of a
    round go out in parallel, in no known order."""
    def respond(body):
        messages = body["messages"]
        question = next(text_of(m) for m in reversed(messages)
                        if m["role"] == "user" and text_of(m).startswith("Question: "))
        return plans[question[len("Question: "):]][rounds_seen(body)]
    return respond


PLANS = {
    "two rounds?": [no_result_round(1), 'FINAL=Result(var=V1)'],
    "one round?": ['X=Eval(expr="5")\nFINAL=Result(var=X)'],
    "three rounds?": [no_result_round(1), no_result_round(2), 'FINAL=Result(var=V2)'],
}


def rounds_seen(request):
    messages = request["messages"]
    start = max(i for i, m in enumerate(messages)
                if m["role"] == "user" and text_of(m).startswith("Question: "))
    return sum(m["role"] == "user" and text_of(m).startswith("Round ")
               for m in messages[start:])


def test_run_batch_in_agent_mode_advances_every_item_round_by_round(picture):
    from visprog.engine.batch import BatchItem

    with ScriptedServer([], respond=scripted_by_question(PLANS)) as server:
        vp = engine(server)
        items = [BatchItem(None, image=str(picture), question=q, id=q) for q in PLANS]
        items.append(BatchItem('A=Eval(expr="7")', image=str(picture), id="given"))
        results = vp.run_batch(items, mode="agent", repair=False)
    assert [r.value for r in results] == [10, 5, 20, 7]
    # the requests of a round all come before any of the next; done items drop out
    assert [rounds_seen(r) for r in server.requests] == [0, 0, 0, 1, 1, 2]
    assert [len(r.trace.find(Round)) for r in results[:3]] == [2, 1, 3]
    assert results[3].trace.find(Round) == []  # a given program runs as it is
    # batched with each other in the engine too: the items' steps ran in shared rounds
    assert all(r.trace.find(AgentRun)[0].stop == "result" for r in results[:3])


def test_evaluate_in_agent_mode_reports_costs_per_item(tmp_path, picture):
    from visprog.evaluation.datasets import EvalItem
    from visprog.evaluation.harness import evaluate, format_summary, read_results

    items = [EvalItem(q, q, image=str(picture),
                      answer={"two rounds?": "10", "one round?": "5",
                              "three rounds?": "0"}[q]) for q in PLANS]
    with ScriptedServer([], respond=scripted_by_question(PLANS)) as server:
        vp = engine(server)
        summary = evaluate(vp, items, tmp_path / "r.jsonl", progress=False, mode="agent",
                           repair=False)
    rows = {r["id"]: r for r in read_results(tmp_path / "r.jsonl")}
    assert summary["accuracy"] == round(2 / 3, 4) and summary["mode"] == "agent"
    assert [rows[q]["rounds"] for q in PLANS] == [2, 1, 3]
    assert [rows[q]["llm_calls"] for q in PLANS] == [2, 1, 3]
    assert [rows[q]["steps"] for q in PLANS] == [3, 2, 5]
    assert all(rows[q]["llm_tokens"] > 0 for q in PLANS)
    cost = summary["cost"]
    assert cost["rounds"] == 2 and cost["llm_calls"] == 2 and cost["steps"] == round(10 / 3, 3)
    assert cost["seconds"] > 0
    assert "per item: 2 rounds, 3.333 steps, 2 LLM calls" in format_summary(summary)
    assert [rounds_seen(r) for r in server.requests] == [0, 0, 0, 1, 1, 2]
    # one-shot on the same items reports the same figures
    with ScriptedServer([], respond=lambda body: 'X=Eval(expr="5")\nFINAL=Result(var=X)') \
            as server:
        oneshot = evaluate(engine(server), items, tmp_path / "o.jsonl", progress=False,
                           repair=False)
    assert oneshot["mode"] == "oneshot" and oneshot["cost"]["rounds"] == 1
    assert oneshot["cost"]["llm_calls"] == 1 and oneshot["cost"]["steps"] == 2


# --------------------------------------------------------------------------- trace and demo


def test_html_and_json_show_the_rounds_with_the_images_the_planner_saw(picture, tmp_path):
    with ScriptedServer([LOOK_ROUND, ANSWER_ROUND]) as server:
        out = engine(server, images=True).run(str(picture), "How many boxes?", mode="agent")
    page = out.trace.to_html()
    assert "<h2>Rounds</h2>" in page and "<h3>Round 1</h3>" in page
    assert "image 1 shown to the planner" in page and 'alt="round 1 image 1"' in page
    assert "Stopped by <b>result</b> after 2 rounds" in page
    assert "Look at BOX: 1 region of a 320x240 image (drawn in image 1)" in page
    path = out.trace.save_json(tmp_path / "t.json")
    loaded = Trace.load_json(path)
    r = loaded.find(Round)[0]
    assert len(r.images) == 1 and isinstance(r.images[0], Image.Image)
    assert r.images[0].size == out.trace.find(Round)[0].images[0].size
    assert loaded.find(AgentRun)[0].to_dict() == out.trace.find(AgentRun)[0].to_dict()
    assert loaded.to_html().count("shown to the planner") == 1


def test_round_events_are_escaped_in_html():
    trace = Trace(program="A=Eval(expr='1')")
    trace.add_event(Round(0, "<script>x</script>", observation="<b>told</b>",
                          error="<i>bad</i>"))
    trace.add_event(AgentRun("rounds", "last value", 1, note="<u>n</u>"))
    page = trace.to_html()
    assert "<script>x" not in page and "&lt;script&gt;" in page
    assert "<b>told</b>" not in page and "&lt;i&gt;bad" in page and "&lt;u&gt;n" in page


def test_demo_ask_in_agent_mode_lists_the_rounds_with_their_images(picture, tmp_path):
    from visprog.demos import app as demo

    with ScriptedServer([LOOK_ROUND, ANSWER_ROUND]) as server:
        vp = engine(server, images=True)
        program, out = demo.ask(vp, "How many boxes?", "gqa", str(picture), agent=True,
                                folders=demo.RunFolders(tmp_path))
    assert out.ok and out.result_text == "1" and program == LOOK_ROUND + "\n" + ANSWER_ROUND
    assert "Answered in 2 rounds" in out.message
    assert "round 1: <code>BOX=Region" in out.message and "(looked at BOX)" in out.message
    assert out.message.count("<img ") == 1 and "Rounds" in out.trace_html
    with ScriptedServer(['B=Eval(expr="1 / 0")']) as server:
        _, out = demo.ask(engine(server), "How many?", "gqa", str(picture), agent=True,
                          folders=demo.RunFolders(tmp_path))
    assert not out.ok and "round 1" in out.message


# --------------------------------------------------------------------------- the local VLM


def test_the_tiny_local_vlm_planner_runs_agent_mode_end_to_end():
    """`--preset tiny` with no LLM configured plans with Vqa's tiny Qwen3-VL under the
    grammar: every round it writes parses and checks against the program so far, a round
    ends at a Look or a Result, and the finished program runs again to the same answer.
    (What a Look shows reaching this planner: the next two tests.)"""
    pytest.importorskip("torch")
    pytest.importorskip("llguidance")
    from visprog.api import VisProg
    from visprog.planning.llm_local import LocalConstrained

    vp = VisProg(preset="tiny", cache=False, config={  # no examples: a shorter prompt
        "llm": {"backend": "local", "max_steps": 4}, "planner": {"examples": 0}})
    assert isinstance(vp.llm, LocalConstrained)
    out = vp.run(scene((160, 120)), "How many dogs are there?", mode="agent",
                 agent={"rounds": 2}, repair=False)
    rounds = out.trace.find(Round)
    assert 1 <= len(rounds) <= 2
    text = ""
    for r in rounds:
        assert r.plan[-1].ok and not r.plan[-1].errors
        steps = parse(r.program).steps
        assert 1 <= len(steps) <= 4
        last = vp.registry.get(steps[-1].module)
        assert last.result or last.name == "Look" or len(steps) == 4
        text = (text + "\n" + r.program).strip()
        assert vp.check(text, {"IMAGE": "Image"}) == []
    end = out.trace.find(AgentRun)[0]
    assert end.stop in ("result", "rounds") and end.calls == len(rounds)
    again = vp.execute(out.program, image=out.trace.inputs["IMAGE"])
    same = again.value == out.value if not isinstance(out.value, Image.Image) else \
        again.value.tobytes() == out.value.tobytes()
    assert same


def test_the_local_planner_writes_a_round_of_many_items_as_one_batch(monkeypatch):
    """The rounds of several items go to the local model as one batched generation (one
    forward pass per token for all), each row held to its own grammar and variables, and
    give what one-at-a-time generation gives."""
    pytest.importorskip("torch")
    pytest.importorskip("llguidance")
    from visprog.api import VisProg
    from visprog.engine.batch import BatchItem
    from visprog.planning.chat import ChatCall, chat_many
    from visprog.planning.llm_local import LocalConstrained

    vp = VisProg(preset="tiny", cache=False, config={
        "llm": {"backend": "local", "max_steps": 4}, "planner": {"examples": 0}})
    envs = [{"IMAGE": "Image"}, {"IMAGE": "Image", "BOX": "Objects"},
            {"LEFT": "Image", "RIGHT": "Image"}]
    views = [vp.llm.constrain_to(vp.registry, e) for e in envs]
    for v in views:
        v.round_ends = ("Look",)
    chats = [[{"role": "user", "content": "How many dogs? " * (k + 1)}] for k in range(3)]
    for temperature in (0.0, 1.0):
        alone = [v.chat(m, temperature=temperature, max_tokens=60, seed=5).text
                 for v, m in zip(views, chats)]
        calls = chat_many([ChatCall(v, m) for v, m in zip(views, chats)],
                          temperature=temperature, max_tokens=60, seed=5, n=1)
        assert [c.error for c in calls] == [None] * 3
        assert [c.reply.text for c in calls] == alone
        assert all(c.reply.usage["completion_tokens"] > 0 for c in calls)
    batches = []
    real = LocalConstrained.chat_batch

    def spy(self, calls, **sampling):
        batches.append(len(calls))
        return real(self, calls, **sampling)

    monkeypatch.setattr(LocalConstrained, "chat_batch", spy)
    image = scene((96, 64))
    items = [BatchItem(None, image=image, question=q, id=q)
             for q in ("How many dogs?", "What colour is the car?", "Is there a cat?")]
    results = vp.run_batch(items, mode="agent", agent={"rounds": 2}, repair=False)
    assert batches and batches[0] == 3 and all(b > 1 for b in batches)
    for res in results:
        assert res.error is None or isinstance(res.error, VisProgError)
        rounds = res.trace.find(Round)
        assert rounds and all(r.plan[-1].ok for r in rounds)


def test_the_tiny_local_vlm_planner_sees_what_a_look_showed():
    """Agent mode end to end under `--preset tiny` with the tiny local VLM planner: a round
    that ends at a Look has its image sent with the next round's request, through the
    processor and chat template under the grammar (the reply's prompt has image tokens),
    and the next round is valid against the program so far. The random model chooses what
    it writes; sampled with a seed, some of the first seeds write a Look of the image."""
    pytest.importorskip("torch")
    pytest.importorskip("llguidance")
    from visprog.api import VisProg

    base = VisProg(preset="tiny", cache=False, config={
        "llm": {"backend": "local", "max_steps": 2}, "planner": {"examples": 0}})
    assert base.llm.takes_images
    for seed in range(16):
        vp = VisProg(preset="tiny", cache=False, llm=base.llm, config={
            "planner": {"examples": 0, "temperature": 1.0, "seed": seed}})
        try:
            out = vp.run(scene((160, 120)), "How many dogs are there?", mode="agent",
                         agent={"rounds": 2}, repair=False)
        except VisProgError:
            continue
        rounds = out.trace.find(Round)
        if len(rounds) == 2 and rounds[0].images:
            break
    else:
        pytest.fail("no seed of 16 wrote a round that Looks at an image")
    first, second = rounds
    assert parse(first.program).steps[-1].module == "Look" and len(first.images) == 1
    [reply] = second.plan
    assert reply.ok and reply.usage["image_tokens"] > 0  # the image, as the model's tokens
    assert "image_tokens" not in first.plan[-1].usage     # round 1 had none to see
    assert vp.check(first.program + "\n" + second.program, {"IMAGE": "Image"}) == []
    end = out.trace.find(AgentRun)[0]
    assert end.images == 1 and end.image_tokens == first.image_tokens > 0


def test_the_local_vlm_planner_writes_rounds_with_images_as_one_batch(monkeypatch):
    """Rounds of several items whose observations carry images go to the local VLM as one
    batch (`chat_many` -> `chat_batch` -> the decoder's `chat_many` with each item's view),
    each image reaching the model, and give what each item's round alone gives."""
    pytest.importorskip("torch")
    pytest.importorskip("llguidance")
    from visprog.api import VisProg
    from visprog.planning.llm_local import LocalConstrained
    from visprog.planning.planner import RoundRequest
    from visprog.planning.prompts import observation_parts

    vp = VisProg(preset="tiny", cache=False, config={
        "llm": {"backend": "local", "max_steps": 3}, "planner": {"examples": 0}})
    planner = vp.planner("gqa")
    prefixes = ["L=Look(var=IMAGE)", "BOX=Loc(image=IMAGE, object='dog')\nL=Look(var=BOX)",
                "N=Eval(expr=\"2\")\nL=Look(var=N)"]
    shown = [[scene((160, 120), 1)], [scene((90, 200), 2), scene((64, 64), 3)], []]
    requests = []
    for prefix, images in zip(prefixes, shown):
        q = "How many dogs are there?"
        messages = planner.agent_messages(q) + [
            {"role": "assistant", "content": prefix},
            {"role": "user", "content": observation_parts("Round 1 ran. Look:", images)}]
        requests.append(RoundRequest(q, messages, parse(prefix), {"IMAGE": "Image"}))
    batches = []
    real = LocalConstrained.chat_batch

    def spy(self, calls, **sampling):
        batches.append(len(calls))
        return real(self, calls, **sampling)

    alone = [planner.write_rounds([r])[0] for r in requests]
    monkeypatch.setattr(LocalConstrained, "chat_batch", spy)
    together = planner.write_rounds(requests)
    assert batches and batches[0] == 3
    for a, t, prefix, images in zip(alone, together, prefixes, shown):
        assert t.error is None and t.plan is not None
        assert t.plan.text == a.plan.text
        assert t.attempts[0].usage == a.attempts[0].usage
        assert (t.attempts[0].usage.get("image_tokens", 0) > 0) == bool(images)
        assert t.plan.program.source.startswith(prefix + "\n")  # the new steps go on from it
        assert vp.check(t.plan.program.source, {"IMAGE": "Image"}) == []


def test_images_of_an_observation_never_sent_are_not_counted(picture):
    """The rounds budget ends the run after round 2's Look: its image was never sent, so
    the run's images (and their tokens) are round 1's alone."""
    with ScriptedServer(["L1=Look(var=IMAGE)", "L2=Look(var=IMAGE)"]) as server:
        out = engine(server, images=True).run(str(picture), "q?", mode="agent",
                                              agent={"rounds": 2}, repair=False)
    assert len(server.requests) == 2 and len(image_parts(server.requests[1]["messages"][-1])) == 1
    first, second = out.trace.find(Round)
    assert len(first.images) == 1 and len(second.images) == 1  # both were looked at
    end = out.trace.find(AgentRun)[0]
    assert end.stop == "rounds" and end.images == 1
    assert end.image_tokens == first.image_tokens > 0


def test_a_look_at_objects_finds_the_image_they_were_found_in_through_aliases():
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    big = Image.new("RGB", (300, 200), (250, 10, 10))
    out = vp.execute("R=Region(image=IMAGE, box=[0, 0, 500, 500])\nA=R\nL1=Look(var=A)\n"
                     "L2=Look(var=L1)", image=big)
    settings = AgentSettings()
    [drawn] = look_at(out.trace, 3, settings, True).images
    assert abs(drawn.size[0] / drawn.size[1] - 1.5) < 0.01  # scaled up into the bounds
    # the red picture under the box, not the grey canvas of objects with no image
    assert np.asarray(drawn)[150, 250].tolist() == [250, 10, 10]


def test_a_planner_that_fails_as_a_whole_ends_only_its_items(picture):
    from visprog.engine.batch import BatchItem
    from visprog.planning.planner import Planner

    def broken(self, requests):
        raise RuntimeError("the planner broke")

    with ScriptedServer([]) as server:
        vp = engine(server)
        original = Planner.write_rounds
        Planner.write_rounds = broken
        try:
            results = vp.run_batch([BatchItem(None, image=str(picture), question="q?"),
                                    BatchItem('A=Eval(expr="3")', image=str(picture))],
                                   mode="agent")
        finally:
            Planner.write_rounds = original
    assert isinstance(results[0].error, AgentError) and "the planner broke" in str(
        results[0].error)
    assert results[1].value == 3


def test_visprog_eval_in_agent_mode_from_the_config(tmp_path, picture, monkeypatch, capsys):
    from visprog.cli import main

    rows = [{"id": q, "image": str(picture), "question": q, "answer": a}
            for q, a in (("two rounds?", "10"), ("one round?", "5"))]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "agent.toml").write_text('[planner]\nmode = "agent"\nrepair = false\n')
    with ScriptedServer([], respond=scripted_by_question(PLANS)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        monkeypatch.setenv("VISPROG_LLM_MODEL", "m")
        code = main(["eval", str(tmp_path / "d.jsonl"), "--preset", "tiny", "--no-progress",
                     "--config", str(tmp_path / "agent.toml"), "--out",
                     str(tmp_path / "r.jsonl")])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy: 100.00% (2/2)" in out
    assert "per item: 1.5 rounds, 2.5 steps, 1.5 LLM calls" in out
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["mode"] == "agent" and summary["cost"]["rounds"] == 1.5


def test_cli_refuses_agent_flags_that_do_not_fit(picture, monkeypatch, capsys):
    from visprog.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("VISPROG_LLM_MODEL", "m")
    base = ["run", "--image", str(picture), "q?", "--preset", "tiny"]
    assert main(base + ["--agent", "--vote", "3"]) == 2
    assert "one-shot mode" in capsys.readouterr().err
    assert main(base + ["--rounds", "3"]) == 2
    assert "add --agent" in capsys.readouterr().err
    assert main(base + ["--agent", "--rounds", "0"]) == 2
