"""Typed trace events: traces saved by visprog e41b002, when events were dicts (the fixtures
in tests/fixtures/trace_v1_events, see make_trace_events.py), load into typed events; every
kind round-trips through the value codec; the faces (HTML, `-v`, the demo, the evaluation
summary) read them."""
from __future__ import annotations

from pathlib import Path

import pytest

from visprog.errors import Diagnostic
from visprog.traces.events import (CacheFailure, Event, FailedStep, Finding, ModelEvent,
                                   ModelNote, PlanAttempt, PlanCacheHit, Repair, RunRecord,
                                   Verdict, Vote, event_from_dict)
from visprog.traces.records import Trace

FIXTURES = Path(__file__).parent / "fixtures" / "trace_v1_events"


def load(name: str) -> Trace:
    return Trace.load_json(FIXTURES / name)


def test_no_old_event_is_left_untyped():
    for path in sorted(FIXTURES.glob("*.json")):
        trace = Trace.load_json(path)
        assert trace.events and not any(type(e) is Event for e in trace.events), path.name


def test_vote_repair_and_model_events():
    trace = load("vote_repair.json")
    plans = trace.find(PlanAttempt)
    assert [(p.index, p.ok, p.revision) for p in plans] == [(0, False, 1), (1, True, 1)]
    assert isinstance(plans[0].errors[0], Diagnostic)
    assert plans[0].errors[0].message == "unknown module 'Evl'"
    assert plans[0].question == "What color is the sky?" and plans[0].usage["total_tokens"] > 0
    models = trace.find(ModelEvent)
    assert [m.kind for m in models] == ["model_unload", "model_load", "model_over_budget"]
    assert models[0].reason == "memory_budget" and models[0].model == "clip"
    assert models[1].checkpoint == "tiny:blip_vqa" and models[1].bytes > 0
    assert models[2].limit == 1
    [repair] = trace.find(Repair)
    assert repair.chosen == 1 and [a.reason for a in repair.attempts] == ["first", "check"]
    first = repair.attempts[0]
    assert first.answer is True and not first.passed
    assert first.findings == [Finding("answer_type", first.findings[0].message, None)]
    assert [type(p) for p in first.plan] == [PlanAttempt]
    assert repair.chosen_attempt.answer == "blue" and repair.chosen_attempt.plan_repairs == 1
    [vote] = trace.find(Vote)
    assert vote.select == "checks" and vote.chosen == 1 and vote.pool == [1]
    assert vote.counts == {"blue": 1, "yes": 1} and vote.pool_counts == {"blue": 1}
    assert [r.ran for r in vote.runs] == [False, True, True]
    assert "division by zero" in vote.runs[0].error


def test_critic_verdicts():
    [repair] = load("critic.json").find(Repair)
    verdicts = [a.critic for a in repair.attempts]
    assert all(isinstance(v, Verdict) for v in verdicts)
    assert [v.ok for v in verdicts] == [False, True]
    assert "adds the numbers" in verdicts[0].reason and verdicts[0].usage
    assert repair.attempts[0].state().startswith("critic: no: it adds the numbers")


def test_the_planners_old_vote_shape():
    [vote] = load("majority.json").find(Vote)
    assert vote.select == "majority" and vote.pool is None and vote.chosen == 1
    assert vote.counts == {"no": 1, "yes": 2}
    assert [r.answer for r in vote.runs] == ["no", "yes", "yes"]
    assert all(r.passed and r.ran for r in vote.runs)  # it had no "passed": a run that ran


def test_cache_hit_eval_item_and_note():
    [hit] = load("cache_hit.json").events
    assert isinstance(hit, PlanCacheHit) and hit.program.startswith("N=Eval")
    trace = load("eval_item.json")
    [repair] = trace.find(Repair)
    first = repair.attempts[0]
    assert first.failed_step == FailedStep(0, 1, "N", "Eval")
    assert [p.ok for p in first.plan] == [False, True] and first.plan[0].revision is None
    [note] = load("note.json").find(ModelNote)
    assert note.module == "Select" and "text tokens" in note.message
    assert note.data["query"].startswith("the red car")


def test_old_traces_save_and_load_back_equal(tmp_path):
    for path in sorted(FIXTURES.glob("*.json")):
        trace = Trace.load_json(path)
        again = Trace.load_json(trace.save_json(tmp_path / path.name))
        assert again.events == trace.events, path.name


def test_every_kind_round_trips(tmp_path):
    record = RunRecord(0, "A=1", {"odd": (1, 2)}, None, [Finding("answer_type", "m", 2)],
                       Verdict(True, clear=False, error="RuntimeError: boom"), False, "first",
                       "a note", FailedStep(1, 2, "X", None),
                       [PlanAttempt(0, "q", "gqa", "r", "t", False,
                                    [Diagnostic(1, 2, "t", "bad", "hint")], {"n": 1})], "k")
    events = [PlanAttempt(3, "q", "nlvr", revision=2), PlanCacheHit("q", "gqa", "P"),
              ModelEvent("load", "clip", "tiny:clip", 0.5, 100),
              ModelEvent("unload", "clip", "tiny:clip", 0.1, 100, "memory_budget"),
              ModelEvent("over_budget", "clip", "tiny:clip", bytes=100, limit=1),
              ModelNote("Select", "cut", {"query": "q"}), CacheFailure(2, "Loc", "disk full"),
              Repair(None, [record]), Vote(0, {"k": 1}, [record], "checks", [0], {"k": 1}),
              Event("someone_elses", {"x": [1, 2]})]
    trace = Trace(program="A=1", events=events)
    loaded = Trace.load_json(trace.save_json(tmp_path / "t.json"))
    assert loaded.events == events
    assert [e.kind for e in loaded.events] == [
        "plan_attempt", "plan_cache_hit", "model_load", "model_unload", "model_over_budget",
        "model_note", "cache_warning", "repair", "vote", "someone_elses"]


@pytest.mark.parametrize("d", [
    {"kind": "repair", "chosen": "first", "attempts": []},  # chosen is not an index
    {"kind": "vote", "runs": "nope"},
    {"kind": "plan_attempt", "surprise": 1},
    {"kind": "model_load", "name": "old"},
    {"kind": 3},
])
def test_data_that_does_not_fit_its_kind_stays_as_it_came(d):
    event = event_from_dict(d)
    assert type(event) is Event and event.to_dict() == {**d, "kind": str(d["kind"])}


def test_the_faces_read_typed_events(tmp_path, capsys):
    from visprog.cli import _print_repairs
    from visprog.demos import app as demo
    from visprog.evaluation.harness import _repairs

    trace = load("vote_repair.json")
    page = trace.to_html()
    assert "<h2>Attempts</h2>" in page and "Candidates" in page and "(selected by checks)" in page
    assert "1 parse/check repair" in page and "answer_type" in page
    _print_repairs(trace.events)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("  attempt 1 (first): flagged: the question asks for a colour")
    assert err[1] == " *attempt 2 (check): ok: blue"
    listed = demo.attempts_html(trace)
    assert "attempt 2, check (chosen): ok: blue" in listed
    rep = _repairs(trace.events)
    assert rep["kinds"] == ["check"] and rep["first_answer"] is True and rep["attempts"] == 2
    eval_rep = _repairs(load("eval_item.json").events)
    assert eval_rep["kinds"] == ["plan", "runtime"] and not eval_rep["first_ran"]


def test_a_result_that_can_not_be_cached_leaves_a_cache_warning(tmp_path):
    from PIL import Image

    from visprog.api import VisProg
    from visprog.engine.cache import MISS, CacheWarning

    class FullCache:
        def get(self, key):
            return MISS

        def put(self, key, value):
            raise OSError("No space left on device")

    vp = VisProg(preset="tiny", cache=FullCache(), plugins=False)
    image = Image.new("RGB", (32, 24), "gray")
    with pytest.warns(CacheWarning, match="No space left"):
        out = vp.execute("O=Loc(image=IMAGE, object='TOP')\nN=Count(box=O)", image=image)
    assert out.value == 1
    failures = out.trace.find(CacheFailure)
    assert [(f.step, f.module) for f in failures] == [(0, "Loc"), (1, "Count")]
    assert failures[0].message == "OSError: No space left on device"
    assert ">cache warning<" in out.trace.to_html()  # the kind, as a label
