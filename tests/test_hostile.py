"""Hostile and degenerate input, each with its expected clean outcome.

Programs, images, saved traces, cache folders and LLM replies that a careless or hostile
user (or a broken server) can hand visprog. Each ends the way the README promises: exit code
1 with a located message on stderr (no traceback), or a run that goes on with a one-line
warning; and nothing wrong is cached.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_server import Reply, ScriptedServer, scripted_client
from visprog.api import VisProg
from visprog.cli import main
from visprog.engine.cache import StepCache
from visprog.errors import ImageError, VisProgError
from visprog.planning.chat import LLMError, deadline
from visprog.planning.planner import Planner
from visprog.traces.json_io import TraceLoadError
from visprog.traces.records import Trace
from visprog.values import MAX_NESTING

REPO = Path(__file__).resolve().parent.parent
PHOTO = str(REPO / "examples" / "astronaut.jpg")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def small_image(tmp_path: Path, size: tuple[int, int], name: str = "in.png") -> str:
    path = tmp_path / name
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3),
                                                      dtype=np.uint8)).save(path)
    return str(path)


# -- programs ----------------------------------------------------------------------------

DEEP = 2000
HOSTILE_PROGRAMS = [
    # (id, program, line:column, message part)
    ("deeply nested list", "N=Count(box=" + "[" * DEEP + "]" * DEEP + ")", "1:9",
     f"nests lists more than {MAX_NESTING} deep"),
    ("nested list one over", "T=Eval(expr='1', x=" + "[" * (MAX_NESTING + 1) + "1"
     + "]" * (MAX_NESTING + 1) + ")", "1:18", "nests lists"),
    ("never closed list", "N=Count(box=" + "[" * DEEP, "1:", "unexpected end of program"),
    ("empty program", "", "1:1", "the program has no steps"),
    ("only comments", "# a comment\n\n   # another\n", "1:1", "the program has no steps"),
    ("assigns True", "True=Eval(expr='1')", "1:1", "can't assign to True"),
    ("assigns False", "A=Eval(expr='1')\nFalse=A", "2:1", "can't assign to False"),
    ("assigns None", "None=Eval(expr='1')", "1:1", "can't assign to None"),
    ("assigns an input", "IMAGE=Eval(expr='1')", "1:1",
     "can't assign to IMAGE: 'IMAGE' is an input"),
    ("deeply nested Eval", "A=Eval(expr='" + "(" * 150 + "1" + ")" * 150 + "')", "1:8",
     "nested too deeply"),
    ("very long Eval", "A=Eval(expr='" + "1+" * 5000 + "1')", "1:8", "too long"),
]


@pytest.mark.parametrize("text,where,message", [c[1:] for c in HOSTILE_PROGRAMS],
                         ids=[c[0] for c in HOSTILE_PROGRAMS])
@pytest.mark.parametrize("command", ["check", "exec"])
def test_hostile_program_is_a_located_error(capsys, tmp_path, command, text, where, message):
    path = write(tmp_path, "p.vp", text)
    argv = [command, path, "--preset", "tiny", "--no-cache"]
    if command == "exec":
        argv += ["--image", small_image(tmp_path, (32, 24))]
    code, out, err = cli(capsys, *argv)
    assert code == 1 and out == ""
    assert f"{path}:{where}" in err and message in err, err


@pytest.mark.parametrize("text", ["", "# nothing\n", "True=Eval(expr='1')",
                                  "N=Count(box=" + "[" * DEEP + "]" * DEEP + ")"])
def test_hostile_program_is_refused_by_the_api_before_anything_runs(text):
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    with pytest.raises(VisProgError) as err:
        vp.execute(text, image=Image.new("RGB", (32, 24)))
    assert getattr(err.value, "diagnostics", None), err.value


def test_planner_and_checker_agree_on_a_reply_without_steps():
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    planner = Planner(llm=object(), registry=vp.registry, cache=False)
    for reply in ("# only a comment", "```\n# X\n```"):
        attempt = planner.judge(reply)
        assert not attempt.ok
        assert [d.message for d in attempt.diagnostics] == ["the program has no steps"]
        assert [d.message for d in vp.check(attempt.text)] == ["the program has no steps"]


def test_a_tool_output_nested_too_deeply_fails_its_step_and_the_trace_saves(tmp_path):
    from visprog.errors import StepError
    from visprog.registry import tool

    @tool("Deep", params={}, returns="Any")
    def deep():
        value: list = []
        for _ in range(5000):
            value = [value]
        return value

    vp = VisProg(preset="tiny", cache=StepCache(memory=True, disk_dir=tmp_path / "c"),
                 plugins=False)
    vp.register(deep)
    with pytest.raises(StepError, match=f"nested more than {MAX_NESTING} deep") as err:
        vp.execute("A=Eval(expr='1')\nD=Deep()")
    trace = err.value.trace
    trace.save_json(tmp_path / "t.json")
    trace.save_html(tmp_path / "t.html")
    assert Trace.load_json(tmp_path / "t.json").steps[1].error
    assert len(vp.cache.memory) == 1  # only the Eval step: nothing of the failed one


def test_a_query_argument_nested_too_deeply_is_refused_as_written(tiny_vp):
    from visprog.query.program import QueryError

    deep: object = "dog"
    for _ in range(DEEP):
        deep = [deep]
    img = tiny_vp.image(Image.new("RGB", (32, 24)))
    objs = img.loc("dog")
    with pytest.raises(QueryError, match=f"nests lists more than {MAX_NESTING} deep"):
        img.classify(objs, deep)
    assert img.classify(objs, ["dog", "cat"]).program  # a flat list is fine


# -- traces ------------------------------------------------------------------------------

def _trace_doc(output) -> dict:
    return {"format": "visprog-trace", "version": 1, "program": "A=Eval(expr='1')",
            "steps": [{"index": 0, "line": 1, "source": "A=Eval(expr='1')", "target": "A",
                       "module": "Eval", "output": output}]}


@pytest.mark.parametrize("text,message", [
    ('{"format": "visprog-trace", "version": 1, "steps": ' + "[" * 100_000 + "]" * 100_000
     + "}", "nested too deeply"),
    (json.dumps(_trace_doc(json.loads("[" * (MAX_NESTING + 5) + "]" * (MAX_NESTING + 5)))),
     f"more than {MAX_NESTING} deep"),
], ids=["deeper than the JSON parser goes", "deeper than values may be"])
def test_hostile_trace_file_is_a_clear_error(capsys, tmp_path, text, message):
    path = write(tmp_path, "t.json", text)
    with pytest.raises(TraceLoadError, match=message):
        Trace.load_json(path)
    code, out, err = cli(capsys, "trace", "show", path)
    assert code == 1 and message in err and str(path) in err


def test_a_trace_of_values_within_the_limit_loads(tmp_path):
    nested = json.loads("[" * MAX_NESTING + "]" * MAX_NESTING)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_trace_doc(nested)))
    assert Trace.load_json(path).steps[0].output == nested


# -- images ------------------------------------------------------------------------------

BAD_IMAGES = [
    # (id, size, message part)
    ("a 20000x1 strip", (20000, 1), "shorter side is under the minimum of 8 pixels"),
    ("a 5x5 thumbnail", (5, 5), "under the minimum of 8"),
    ("a 2000x50 banner", (2000, 50), "40.0 times its short side, over the limit of 20"),
]


@pytest.mark.parametrize("size,message", [c[1:] for c in BAD_IMAGES],
                         ids=[c[0] for c in BAD_IMAGES])
def test_degenerate_input_image_is_refused_when_bound(capsys, tmp_path, size, message):
    image = small_image(tmp_path, size)
    program = write(tmp_path, "p.vp", "A=Vqa(image=IMAGE, question='what is it?')")
    code, out, err = cli(capsys, "exec", program, "--image", image, "--preset", "tiny",
                         "--no-cache")
    assert code == 1 and message in err, err
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    with pytest.raises(ImageError, match="min_side|max_aspect"):
        vp.bind(image)


def test_image_limits_are_settings():
    vp = VisProg(preset="tiny", cache=False, plugins=False, min_side=None, max_aspect=None)
    assert vp.bind(Image.new("RGB", (2000, 1)))["IMAGE"].size == (2000, 1)
    strict = VisProg(preset="tiny", cache=False, plugins=False, min_side=64, max_aspect=2)
    with pytest.raises(ImageError, match="minimum of 64"):
        strict.bind(Image.new("RGB", (100, 50)))
    with pytest.raises(ImageError, match="over the limit of 2"):
        strict.bind(Image.new("RGB", (300, 100)))


STRIP_CALLS = {  # a model module and its arguments besides the image
    "Loc": {"object": "dog"},
    "Vqa": {"question": "what is it?"},
    "Seg": {},
    "Select": {"query": "dog", "category": None},
    "Classify": {"categories": ["dog", "cat"]},
}


@pytest.fixture(scope="module")
def tiny_vp():
    return VisProg(preset="tiny", cache=False, plugins=False)


@pytest.mark.parametrize("size", [(2000, 4), (3, 1500)], ids=["wide strip", "tall strip"])
@pytest.mark.parametrize("module", sorted(STRIP_CALLS))
def test_model_modules_take_strips_that_steps_make(tiny_vp, module, size):
    """A step can make an image far thinner than any input may be (CropLeftOf at an edge):
    the model modules pad it for the processor and answer about the strip itself."""
    from visprog.values import Objects

    w, h = size
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), np.uint8))
    kwargs = {"image": image, **STRIP_CALLS[module]}
    if module in ("Select", "Classify"):
        kwargs["object"] = Objects([(0, 0, w, h), (0, 0, w / 2, h / 2)], size,
                                   labels=["dog", "cat"])
    out = tiny_vp.registry.get(module)(**kwargs)
    if isinstance(out, Objects):
        assert out.image_size == size
        assert all(r.mask is None or r.mask.shape == (h, w) for r in out)


def test_padding_keeps_real_processors_within_their_limits():
    """ViLT's real processor (shortest edge 384, longest 640, multiples of 32) turns a strip
    more than 20 times longer than wide into zero pixels; padded, it does not."""
    transformers = pytest.importorskip("transformers")
    from visprog.models import MODEL_MAX_ASPECT, model_image

    processor = transformers.ViltImageProcessorPil()
    strip = Image.new("RGB", (1, 64), (200, 10, 10))
    with pytest.raises(ValueError):
        processor(images=[strip], return_tensors="pt")
    padded = model_image(strip)
    assert padded.size == (7, 64) and padded.getpixel((0, 10)) == (200, 10, 10)
    assert max(padded.size) <= MODEL_MAX_ASPECT * min(padded.size)
    assert min(processor(images=[padded], return_tensors="pt")["pixel_values"].shape[-2:]) > 0
    normal = Image.new("RGB", (64, 48))
    assert model_image(normal) is normal


# -- cache folders -----------------------------------------------------------------------

def test_a_cache_folder_that_is_a_file_does_not_fail_the_run(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(blocker))
    monkeypatch.setenv("VISPROG_TINY_DIR", str(blocker / "tiny"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    # a model step runs (its tiny model is built), then the program ends in a known word
    program = write(tmp_path, "p.vp", "A=Vqa(image=IMAGE, question='what is it?')\n"
                                      "B=Eval(expr=\"'done'\")")
    code, out, err = cli(capsys, "exec", program, "--image", PHOTO, "--preset", "tiny")
    assert code == 0 and out.strip() == "done", err
    assert "visprog: warning: can't build tiny models in" in err
    assert str(blocker) in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("visprog: warning: ") for line in lines), err
    assert any((tmp_path / "tmp").glob("visprog-tiny-*/qwen3_vl/visprog_tiny.json"))


def test_a_corrupt_cache_entry_warns_in_one_line_and_is_recomputed(capsys, tmp_path):
    cache = tmp_path / "cache"
    program = write(tmp_path, "p.vp", "A=Vqa(image=IMAGE, question='what is it?')")
    argv = ["exec", program, "--image", PHOTO, "--preset", "tiny", "--cache-dir", str(cache)]
    code, first, _ = cli(capsys, *argv)
    assert code == 0
    entries = list(cache.glob("??/*.vpc"))
    assert len(entries) == 1
    entries[0].write_bytes(entries[0].read_bytes()[:-7] + b"garbage")
    code, second, err = cli(capsys, *argv)
    assert code == 0 and second == first
    assert err.count("\n") == 1 and err.startswith("visprog: warning: step cache: corrupt"), err
    code, third, err = cli(capsys, *argv)  # the recomputed value was stored afresh
    assert code == 0 and third == first and err == ""


# -- LLM servers -------------------------------------------------------------------------

NOT_JSON = [
    Reply(raw=b"<html><body>502 from the proxy</body></html>", content_type="text/html"),
    Reply(raw=b"<html>declared as JSON, is not</html>"),
    Reply(raw=b'{"id": "x", "object": "list"}'),  # JSON, but no choices
]


@pytest.mark.parametrize("reply", NOT_JSON, ids=["html", "not json", "no choices"])
def test_a_200_that_is_not_a_completion_is_retried_then_a_clear_error(reply):
    with ScriptedServer([reply] * 3) as server:
        client = scripted_client(server, max_retries=2)
        with pytest.raises(LLMError, match="not a chat completion") as err:
            client.chat([{"role": "user", "content": "hi"}])
        assert "after 3 attempts" in str(err.value) and len(server.requests) == 3
    with ScriptedServer([reply, "X=Eval(expr='1')"]) as server:
        assert scripted_client(server, max_retries=2).chat(
            [{"role": "user", "content": "hi"}]).text == "X=Eval(expr='1')"


@pytest.mark.usefixtures("no_llm_env")
def test_cli_plan_against_a_broken_server(capsys, monkeypatch, tmp_path):
    with ScriptedServer([NOT_JSON[0]] * 4) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("VISPROG_LLM_MODEL", "test-model")
        config = write(tmp_path, "c.toml", "[llm]\nbackoff = 0.01\n")
        code, out, err = cli(capsys, "plan", "Is there a dog?", "--config", config,
                             "--preset", "tiny", "--no-plan-cache")
    assert code == 1 and out == ""
    assert err.startswith("visprog: error: LLM request to") and "not a chat completion" in err


def test_a_server_that_never_answers_ends_at_the_planning_deadline(tiny_vp):
    with ScriptedServer([Reply("X=Eval(expr='1')", delay=8)] * 4) as server:
        client = scripted_client(server, timeout=5, max_retries=3)
        planner = Planner(client, tiny_vp.registry, cache=False, deadline_s=1.5)
        started = time.monotonic()
        with pytest.raises(LLMError) as err:
            planner.plan("Is there a dog?")
        took = time.monotonic() - started
    assert took < 4, took  # (max_retries + 1) x timeout would be 20 s
    message = str(err.value)
    assert "deadline of 1.5 s for planning (deadline_s) was reached" in message, message
    assert "no reply within" in message


def test_without_a_deadline_the_per_request_limit_is_named():
    with ScriptedServer([Reply("X", delay=3)] * 4) as server:
        client = scripted_client(server, timeout=0.3, max_retries=1)
        with pytest.raises(LLMError, match=r"after 2 attempts \(max_retries=1\): no reply "
                                           r"within 0.3 s \(timeout\)"):
            client.chat([{"role": "user", "content": "hi"}])
        with deadline(30), pytest.raises(LLMError, match="max_retries=1"):
            client.chat([{"role": "user", "content": "hi"}])  # a far deadline changes nothing


# -- no network --------------------------------------------------------------------------

def test_without_network_a_hub_checkpoint_fails_fast_with_advice(tmp_path):
    """No hub to reach (a closed local port stands for it) and nothing in the local cache:
    the first model load fails at once, with the advice, instead of retrying for minutes;
    and so does the next."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    program = write(tmp_path, "p.vp", "A=Vqa(image=IMAGE, question='what is it?')\n"
                                      "B=Loc(image=IMAGE, object='dog')\n")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "visprog.cli", "exec", program, "--image", PHOTO,
                          "--no-cache"], capture_output=True, text=True, env=env, timeout=300)
    took = time.monotonic() - started
    assert run.returncode == 1, run.stderr[-2000:]
    assert "can't be reached (no network?)" in run.stderr
    for advice in ("huggingface-cli download", "HF_HUB_OFFLINE=1", "local path", "--preset tiny"):
        assert advice in run.stderr
    assert "Traceback" not in run.stderr and "Retrying in" not in run.stderr
    assert took < 90, took


# -- progress bars -----------------------------------------------------------------------

def test_loading_tiny_models_draws_no_progress_bars(capfd, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from visprog.models import ModelManager
    from visprog.tools.vqa import load_vilt

    monkeypatch.setenv("VISPROG_TINY_DIR", str(tmp_path / "tiny"))  # built here, afresh
    capfd.readouterr()
    ModelManager(device="cpu").get("vilt", "tiny:vilt", load_vilt)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err


def test_long_work_still_shows_its_progress_bar(capfd, monkeypatch):
    pytest.importorskip("transformers")
    from transformers.utils import logging as transformers_logging

    from visprog.models import checkpoints

    monkeypatch.setattr(checkpoints, "LOAD_BAR_DELAY_S", 0.2)
    capfd.readouterr()
    with checkpoints.quiet_loading():
        for _ in transformers_logging.tqdm(range(3), desc="slow shards"):
            time.sleep(0.15)
        for _ in transformers_logging.tqdm(range(3), desc="quick shards"):
            pass
    err = capfd.readouterr().err
    assert "slow shards" in err and "quick shards" not in err, err
