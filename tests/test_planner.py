"""The planner: prompts and examples, reply cleaning, the repair loop (through the real
`openai` client and a loopback server), the program cache, voting."""
from __future__ import annotations

import pytest
from PIL import Image

from llm_server import ScriptedServer, scripted_client
from visprog.language.checker import check
from visprog.language.parser import parse
from visprog.planning.loop import RunAttempt, majority, select
from visprog.planning.planner import Plan, Planner, PlanningError, attempt_events, clean_reply
from visprog.planning.program_cache import ProgramCache, default_program_cache_dir
from visprog.planning.prompts import (PROMPT_VERSION, TASKS, Example, bow_cosine, build_messages,
                                      described_tools, load_examples, module_descriptions,
                                      select_examples, system_prompt)
from visprog.registry import Registry, tool
from visprog.config import find_modules
from visprog.traces.events import PlanAttempt, PlanCacheHit, Vote
from visprog.traces.records import Trace
from visprog.values.text import answer_key, normalize

GOOD = "CATS=Loc(image=IMAGE, object='cat')\nN=Count(box=CATS)\nFINAL=Result(var=N)"
BAD = "CATS=Lco(image=IMAGE, object='cat')\nN=Count(box=DOGS)\nFINAL=Result(var=N)"

pytestmark = pytest.mark.usefixtures("no_llm_env")  # only the LLM settings a test makes


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(find_modules(plugins=False).tools())


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("task", list(TASKS))
def test_examples_parse_check_and_cover_the_task_modules(registry, task):
    """The modules that say a task's prompt describes them are exactly those its examples
    use: the declarations in tools/ and the examples agree."""
    spec = TASKS[task]
    described = {t.name for t in described_tools(registry, spec)}
    examples = load_examples(task)
    assert len(examples) >= 4
    used = set()
    for ex in examples:
        program = parse(ex.program)
        assert check(program, registry, spec.inputs) == [], (task, ex.question)
        assert program[len(program) - 1].module == "Result"
        used |= {s.module for s in program}
    assert used == described, f"{task}: unused {described - used}, undeclared {used - described}"


def test_module_descriptions_come_from_the_registry(registry):
    @tool("Caption", params={"image": "Image", "style": "Text"}, returns="Text")
    def caption(image, style="short"):
        """Describes the image in one sentence."""
        return "a picture"

    @tool("Compare", params={"left": "Image", "right": "Image"}, returns="Bool",
          tasks=["nlvr"])
    def compare(left, right):
        """Whether the two images look alike."""
        return True

    extended = Registry([*registry, caption, compare])
    for spec in TASKS.values():
        text = system_prompt(extended, spec)
        # A new module shows in every task's prompt, signature and doc, without edits...
        assert "Caption(image: Image, style: Text = 'short') -> Text: Describes the image" in text
        # ...or in the prompts of the tasks it names
        assert ("Compare(left: Image, right: Image) -> Bool" in text) == (spec.name == "nlvr")
        for t in described_tools(registry, spec):
            assert t.signature() in text
        assert described_tools(extended, spec)[-1].name == "Result"  # a program ends with it
    gqa = module_descriptions(registry, TASKS["gqa"])
    assert "Replace(" not in gqa and "Loc(image: Image, object: Text) -> Objects" in gqa
    assert "LEFT (Image), RIGHT (Image)" in system_prompt(registry, TASKS["nlvr"])


def test_example_selection():
    examples = load_examples("gqa")
    q = "Are there more trucks than cars on the road?"
    assert select_examples(examples, q, "all") == examples
    similar = select_examples(examples, q, 3, how="similar")
    assert len(similar) == 3 and similar[-1].question == "Are there more cars than trucks?"
    r1 = select_examples(examples, q, 4, how="random", seed=1)
    assert r1 == select_examples(examples, q, 4, how="random", seed=1)
    assert any(select_examples(examples, q, 4, how="random", seed=s) != r1 for s in range(2, 6))
    assert select_examples(examples, q, 100) == examples
    for bad in (-1, "some"):
        with pytest.raises(ValueError):
            select_examples(examples, q, bad)
    with pytest.raises(ValueError):
        select_examples(examples, q, 2, how="best")
    assert bow_cosine("a red car", "the red car!") > bow_cosine("a red car", "blue sky")
    assert bow_cosine("", "x") == 0.0


def test_messages_layout(registry):
    ex = [Example("How many cups?", "C=Loc(image=IMAGE, object='cup')\nR=Result(var=C)")]
    msgs = build_messages(registry, TASKS["nlvr"], "Both images show cats.", ex)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "Statement: How many cups?"
    assert msgs[-1]["content"] == "Statement: Both images show cats."


# --------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize("reply, expected", [
    (GOOD, GOOD),
    ("Here is the program:\n```python\n" + GOOD + "\n```\nThis counts the cats.", GOOD),
    ("```\n" + GOOD + "\n```", GOOD),
    ("Program:\n" + GOOD + "\n\nExplanation: Loc finds cats, Count counts them.", GOOD),
    ("Program: " + GOOD, GOOD),
    ("1. CATS=Loc(image=IMAGE, object='cat')\n2. N=Count(box=CATS)\n3. FINAL=Result(var=N)", GOOD),
    ("Step 1: CATS=Loc(image=IMAGE, object='cat')\nStep 2: N=Count(box=CATS)\n"
     "Step 3: FINAL=Result(var=N)", GOOD),
    ("- `CATS=Loc(image=IMAGE, object='cat')`\n- `N=Count(box=CATS)`\n- `FINAL=Result(var=N)`",
     GOOD),
    # a call over several lines keeps its continuation lines
    ("Sure!\nCATS=Loc(image=IMAGE,\n    object='cat')\nFINAL=Result(var=CATS)\nDone.",
     "CATS=Loc(image=IMAGE,\n    object='cat')\nFINAL=Result(var=CATS)"),
    # prose between steps goes; a malformed step stays for the parser to report
    ("A=Loc(image=IMAGE, object='cat')\nNow we count them\nB=Count(box A)\nR=Result(var=B)",
     "A=Loc(image=IMAGE, object='cat')\nB=Count(box A)\nR=Result(var=B)"),
    ("# count the cats\n" + GOOD, "# count the cats\n" + GOOD),
    ("I cannot help with that.", "I cannot help with that."),
    ("", ""),
])
def test_clean_reply(reply, expected):
    assert clean_reply(reply) == expected


# --------------------------------------------------------------------------- planning


def test_plan_valid_program(registry):
    with ScriptedServer([GOOD]) as server:
        plan = Planner(scripted_client(server), registry, task="gqa", cache=False).plan("How many cats?")
    assert isinstance(plan, Plan) and plan.text == GOOD and not plan.cached
    assert [s.target for s in plan.program] == ["CATS", "N", "FINAL"]
    assert len(plan.attempts) == 1 and plan.attempts[0].ok
    assert plan.usage["completion_tokens"] == len(GOOD.split())
    sent = server.requests[0]["messages"]
    assert sent[0]["role"] == "system" and "Count(box: Objects|Tracks) -> Number" in sent[0]["content"]
    assert sent[-1] == {"role": "user", "content": "Question: How many cats?"}
    assert len(sent) == 2 + 2 * len(load_examples("gqa"))


def test_plan_cleans_prose_and_fences(registry):
    wrapped = "Sure, here you go:\n\n```\n" + GOOD + "\n```\n\nThe answer is the count."
    with ScriptedServer([wrapped]) as server:
        plan = Planner(scripted_client(server), registry, cache=False).plan("How many cats?")
    assert plan.text == GOOD
    assert plan.attempts[0].reply == wrapped
    assert len(server.requests) == 1


def test_invalid_then_repaired(registry):
    with ScriptedServer([BAD, GOOD]) as server:
        plan = Planner(scripted_client(server), registry, cache=False).plan("How many cats?")
    assert plan.text == GOOD
    assert [a.ok for a in plan.attempts] == [False, True]
    first = plan.attempts[0]
    assert {d.message for d in first.diagnostics} >= {"unknown module 'Lco'",
                                                       "undefined variable 'DOGS'"}
    second = server.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": BAD}
    repair = second[-1]["content"]
    assert "1. line 1" in repair and "2. line 2" in repair and "did you mean 'Loc'" in repair
    assert second[:-2] == server.requests[0]["messages"]
    events = plan.events()
    assert all(isinstance(e, PlanAttempt) for e in events) and len(events) == 2
    assert events[0].errors and events[0].usage["total_tokens"] > 0 and events[1].ok
    assert [e.index for e in events] == [0, 1] and events[0].question == "How many cats?"


def test_never_valid_lists_every_attempt(registry):
    replies = ["I am not sure how to do that.", BAD]
    with ScriptedServer(replies) as server:
        with pytest.raises(PlanningError) as err:
            Planner(scripted_client(server), registry, attempts=2, cache=False).plan("How many cats?")
    e = err.value
    assert len(e.attempts) == 2 and len(server.requests) == 2
    events = attempt_events(e.attempts, e.question, "gqa")
    assert [(a.index, a.ok, a.task) for a in events] == [(0, False, "gqa"), (1, False, "gqa")]
    msg = str(e)
    assert "after 2 attempts" in msg and "attempt 1:" in msg and "attempt 2:" in msg
    assert "unknown module 'Lco'" in msg


def test_planner_needs_an_llm(registry):
    with pytest.raises(Exception, match="VISPROG_LLM_MODEL"):
        Planner(None, registry)


def test_program_cache_hit_makes_no_request(registry, tmp_path):
    cache = ProgramCache(tmp_path / "programs")
    with ScriptedServer([GOOD, GOOD.replace("'cat'", "'dog'")]) as server:
        llm = scripted_client(server)
        first = Planner(llm, registry, cache=cache).plan("How many cats?")
        again = Planner(llm, registry, cache=cache).plan("How many cats?")
        assert len(server.requests) == 1
        assert again.cached and again.attempts == [] and again.text == first.text
        assert [type(e) for e in again.events()] == [PlanCacheHit]
        # Another question (or other sampling) is another key.
        other = Planner(llm, registry, cache=cache).plan("How many dogs?")
        assert not other.cached and len(server.requests) == 2
    assert cache.hits == 1 and cache.writes == 2
    assert len(list((tmp_path / "programs").glob("??/*.json"))) == 2


def test_program_cache_key_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path))
    assert default_program_cache_dir() == tmp_path / "programs"
    cache = ProgramCache()
    key = {"llm": {"backend": "openai", "model": "m"}, "prompt_version": PROMPT_VERSION,
           "task": "gqa", "question": "q", "temperature": 0.0}
    assert cache.get(key) is None
    assert cache.put(key, ["A=Eval(expr=\"1\")"])
    assert cache.get(key) == ["A=Eval(expr=\"1\")"]
    assert cache.get({**key, "temperature": 0.7}) is None
    assert cache.get({**key, "llm": {"backend": "openai", "model": "other"}}) is None
    cache.path_for(key).write_text("{not json")  # a corrupt entry is a miss, not a crash
    assert cache.get(key) is None
    assert not list(cache.path_for(key).parent.glob(".tmp-*"))
    assert cache.clear() == 1


def test_program_cache_unwritable_warns_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = ProgramCache(blocker / "programs")  # under a file: can't be created
    with pytest.warns(UserWarning, match="not writable"):
        assert cache.put({"q": 1}, ["A=Eval(expr=\"1\")"]) is False
    assert cache.put({"q": 2}, ["A=Eval(expr=\"1\")"]) is False


def test_plan_k_samples_and_repairs_each(registry):
    samples = [GOOD, BAD, GOOD.replace("'cat'", "'kitten'")]
    with ScriptedServer([samples, GOOD]) as server:
        plans = Planner(scripted_client(server), registry, cache=False, seed=4).plan_k(
            "How many cats?", 3, temperature=0.8)
    assert len(plans) == 3 and all(p.program for p in plans)
    assert [len(p.attempts) for p in plans] == [1, 2, 1]
    first = server.requests[0]
    assert first["n"] == 3 and first["temperature"] == 0.8 and first["seed"] == 4
    assert "n" not in server.requests[1]  # a repair asks for one program
    assert server.requests[1]["messages"][-2]["content"] == BAD
    with pytest.raises(ValueError):
        Planner(scripted_client(server), registry, cache=False).plan_k("q", 0)


# --------------------------------------------------------------------------- voting


@pytest.mark.parametrize("value, key", [
    ("Yes.", "yes"), (True, "yes"), ("  TRUE ", "yes"), (False, "no"), ("no", "no"),
    (3, "3"), (3.0, "3"), ("3", "3"), (" the red  Car ", "red car"), (2.5, "2.5"),
    (None, ""), ("two", "2"), ("Two.", "2"),
])
def test_answer_key_is_the_scoring_normal_form(value, key):
    assert answer_key(value) == key == normalize(value)


def _attempt(value, source="A=Eval(expr=\"1\")\nR=Result(var=A)", error=None):
    return RunAttempt("first", source, parsed=parse(source), value=value,
                      trace=Trace(program=source), error=error, finished=True)


def test_majority_selection_keeps_every_run():
    from visprog.errors import VisProgError

    runs = [_attempt("no"), _attempt("Yes"), _attempt(None, error=VisProgError("step 2 failed")),
            _attempt(True), _attempt("yes.")]
    assert select(runs, "majority") == 1
    event = runs[1].trace.events[-1]
    assert isinstance(event, Vote) and event.chosen == 1 and event.select == "majority"
    assert event.counts == {"no": 1, "yes": 3} and event.pool == [0, 1, 3, 4]
    assert [r.key for r in event.runs] == ["no", "yes", None, "yes", "yes"]
    assert [r.answer for r in event.runs] == ["no", "Yes", None, True, "yes."]
    assert event.runs[2].error == "step 2 failed"
    assert majority(["b", "c", "c", "b"]) == (0, {"b": 2, "c": 2})  # ties: the earliest
    img = Image.new("RGB", (4, 4), "red")
    assert answer_key(img) == answer_key(img.copy()) != answer_key(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError):
        select([_attempt(None, error=VisProgError("x"))])
    with pytest.raises(ValueError):
        select([])


@pytest.mark.parametrize("answers", [["two", "2", "3"], ["3", "two", "2"]])
def test_vote_counts_number_words_as_numbers(answers, tmp_path):
    """vote=3 with answers "two", "2" and "3": the answer is 2, whatever the order (the
    vote counts answers in the scorer's normal form)."""
    from visprog.api import VisProg

    picture = tmp_path / "p.png"
    Image.new("RGB", (16, 16), "gray").save(picture)
    programs = [f"A=Eval(expr=\"'{a}'\")\nFINAL=Result(var=A)" for a in answers]
    with ScriptedServer([programs]) as server:
        vp = VisProg(preset="tiny", cache=False, plugins=False, llm=scripted_client(server))
        out = vp.run(picture, "How many dogs are there?", vote=3)
    assert normalize(out.value) == "2" and out.value in ("two", "2")
    vote = out.trace.events[-1]
    assert isinstance(vote, Vote) and vote.counts == {"2": 2, "3": 1}
    assert answers[vote.chosen] == out.value


# --------------------------------------------------------------------------- local model


def test_planner_with_constrained_local_model(registry, tmp_path):
    torch = pytest.importorskip("torch")
    from test_llm import _tiny_gpt2

    from visprog.planning.llm_local import LocalConstrained

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        llm = LocalConstrained(_tiny_gpt2(tmp_path / "lm"), max_steps=3, max_string=10)
        planner = Planner(llm, registry, task="nlvr", examples=2, cache=False,
                          max_tokens=100)
        plan = planner.plan("Both images show a dog.")
    finally:
        torch.set_num_threads(before)
    # A random model, but constrained: the first attempt is valid, for nlvr's inputs.
    assert len(plan.attempts) == 1 and plan.attempts[0].ok
    assert check(plan.program, registry, {"LEFT": "Image", "RIGHT": "Image"}) == []
    assert "IMAGE" not in plan.text


# --------------------------------------------------------------------------- API and CLI

EVAL_GQA = 'TWO=Eval(expr="1 + 1")\nFINAL=Result(var=TWO)'
EVAL_BAD = 'TWO=Evl(expr="1 + 1")\nFINAL=Result(var=TWO)'


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "scene.png"
    Image.new("RGB", (32, 24), (90, 140, 200)).save(path)
    return path


def test_visprog_run_plans_executes_and_traces(picture):
    from visprog.api import VisProg

    with ScriptedServer([EVAL_BAD, EVAL_GQA]) as server:
        vp = VisProg(preset="tiny", cache=False, llm=scripted_client(server))
        out = vp.run(picture, "What is one plus one?", task="gqa")
    assert out.value == 2 and out.program.source == EVAL_GQA
    events = out.trace.find(PlanAttempt)
    assert [e.ok for e in events] == [False, True]
    assert "unknown module 'Evl'" in events[0].errors[0].message
    assert all(e.usage["total_tokens"] > 0 for e in events)
    assert out.trace.meta["task"] == "gqa" and out.trace.meta["question"] == "What is one plus one?"


def test_visprog_run_nlvr_pair_and_vote(picture):
    from visprog.api import VisProg

    yes = 'A=Eval(expr="2 > 1")\nFINAL=Result(var=A)'
    no = 'A=Eval(expr="2 < 1")\nFINAL=Result(var=A)'
    with ScriptedServer([yes, [no, yes, yes]]) as server:
        vp = VisProg(preset="tiny", cache=False, llm=scripted_client(server))
        out = vp.run((picture, picture), "Both images are blue.", task="nlvr")
        assert out.value is True
        system = server.requests[0]["messages"][0]["content"]
        assert "LEFT (Image), RIGHT (Image)" in system
        voted = vp.run(picture, "Both images are blue.", task="nlvr", right=picture, vote=3)
    assert voted.value is True
    event = voted.trace.events[-1]
    assert isinstance(event, Vote) and event.counts == {"no": 1, "yes": 2}
    assert len(event.runs) == 3 and event.chosen == 1
    assert server.requests[1]["n"] == 3


def test_visprog_plan_cache_and_errors(picture, monkeypatch):
    from visprog.api import VisProg
    from visprog.errors import ImageError
    from visprog.planning.llm import LLMError

    with ScriptedServer([EVAL_GQA]) as server:
        vp = VisProg(preset="tiny", llm=scripted_client(server))  # cache on: programs cached too
        assert vp.plan("What is one plus one?").text == EVAL_GQA
        assert vp.plan("What is one plus one?").cached
        with pytest.raises(ImageError):
            vp.run(picture.parent / "missing.png", "What is one plus one?")
        assert len(server.requests) == 1  # cache hit, and a bad image fails before planning
    # (Vqa on BLIP: no local VLM to plan with, so nothing plans without an LLM configured)
    blip = {"Vqa": {"backend": "blip"}}
    with pytest.raises(LLMError, match="VISPROG_LLM_MODEL"):
        VisProg(preset="tiny", cache=False, config=blip).plan("q")
    monkeypatch.setenv("VISPROG_LLM_MODEL", "m")  # a model but no key: said when planning
    vp = VisProg(preset="tiny", cache=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        vp.plan("q")


def test_cli_plan_and_run(picture, monkeypatch, capsys, tmp_path):
    from visprog.cli import main

    with ScriptedServer([EVAL_GQA, EVAL_GQA]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        monkeypatch.setenv("VISPROG_LLM_MODEL", "cli-model")
        assert main(["plan", "What is one plus one?", "--preset", "tiny", "--no-plan-cache"]) == 0
        assert capsys.readouterr().out.strip() == EVAL_GQA
        html = tmp_path / "t.html"
        code = main(["run", "--image", str(picture), "What is one plus one?", "--preset", "tiny",
                     "--no-cache", "--html", str(html), "-v"])
        captured = capsys.readouterr()
        assert code == 0 and captured.out.strip() == "2"
        assert "plan: ok" in captured.err and html.exists()
    assert server.requests[0]["model"] == "cli-model"
    monkeypatch.delenv("VISPROG_LLM_MODEL")
    assert main(["plan", "q", "--preset", "tiny"]) == 1
    assert "VISPROG_LLM_MODEL" in capsys.readouterr().err
    assert main(["run", "q", "--preset", "tiny"]) == 2  # no image
    assert main(["run", "q", "--image", str(picture), "--task", "nlvr", "--preset", "tiny"]) == 2
