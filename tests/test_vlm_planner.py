"""The same VLM as Vqa and as the local planner: one copy in the model manager serves both
roles (text-only, grammar-constrained generation for planning), and with no LLM configured
the presets whose Vqa is a local VLM plan with it. The tiny random Qwen3-VL is built
offline and loaded through the real loaders; its programs are meaningless but parse and
check (the grammar constraint)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from visprog.api import VisProg  # noqa: E402
from visprog.language.parser import parse  # noqa: E402
from visprog.models.vlm import VLM_KIND, load_vlm  # noqa: E402
from visprog.planning.llm import LLMError, OpenAIChat  # noqa: E402
from visprog.planning.llm_local import LocalConstrained  # noqa: E402
from visprog.traces.events import PlanAttempt  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_llm_env")  # only the LLM settings a test makes


def picture(seed=0, size=(160, 120)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def loads(vp):
    return [e for e in vp.models.events if e["event"] == "load"]


def test_no_llm_configured_plans_with_vqas_vlm_one_copy_for_both_roles():
    vp = VisProg(preset="tiny", cache=False)
    assert isinstance(vp.llm, LocalConstrained)
    assert vp.llm.describe()["model"] == vp.config["Vqa"]["checkpoints"]["vlm"] == "tiny:qwen3_vl"
    answer = vp.execute("A=Vqa(image=IMAGE, question='what color is the car?')",
                        image=picture()).value
    assert isinstance(answer, str)
    plan = vp.plan("How many dogs are there?")
    assert plan.program.steps and vp.check(plan.program) == []
    assert [(e["kind"], e["checkpoint"]) for e in loads(vp)] == [(VLM_KIND, "tiny:qwen3_vl")]
    model, _ = vp.models.get(VLM_KIND, "tiny:qwen3_vl", load_vlm)
    assert vp.llm._shared.model is model  # the very object Vqa generates with
    # Vqa still answers after the planner's text-only passes (and the other way round)
    assert vp.execute("A=Vqa(image=IMAGE, question='is it red?')", image=picture(1)).value \
        is not None
    assert len(loads(vp)) == 1


def test_planning_first_then_vqa_is_one_load_too():
    vp = VisProg(preset="tiny", cache=False)
    vp.plan("Is there a cat?")
    vp.execute("A=Vqa(image=IMAGE, question='is there a cat?')", image=picture(2))
    assert [e["kind"] for e in loads(vp)] == [VLM_KIND]


@pytest.mark.parametrize("llm", [{"backend": "local"},
                                 {"backend": "local", "model_path": "tiny:qwen3_vl"}])
def test_llm_backend_local_may_point_at_the_vqa_checkpoint(llm):
    vp = VisProg(preset="tiny", cache=False, config={"llm": llm})
    assert vp.llm.describe()["model"] == "tiny:qwen3_vl"
    vp.plan("What color is the car?")
    vp.execute("A=Vqa(image=IMAGE, question='what color is the car?')", image=picture())
    assert len(loads(vp)) == 1


def test_a_configured_llm_wins_and_none_turns_planning_off(monkeypatch):
    vp = VisProg(preset="tiny", cache=False, config={"llm": {"backend": "none"}})
    assert vp.llm is None
    with pytest.raises(LLMError):
        vp.plan("q")
    # Vqa on BLIP (the classic preset's): nothing to plan with, today's message
    with pytest.raises(LLMError, match="VISPROG_LLM_MODEL"):
        VisProg(preset="classic", cache=False).plan("q")
    monkeypatch.setenv("VISPROG_LLM_MODEL", "served")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    assert isinstance(VisProg(preset="tiny", cache=False).llm, OpenAIChat)


def test_cli_run_with_no_llm_settings_plans_through_the_local_vlm(tmp_path, capsys):
    from visprog.cli import main
    from visprog.traces.records import Trace

    image = tmp_path / "photo.png"
    picture(3).save(image)
    trace = tmp_path / "trace.json"
    code = main(["run", "--image", str(image), "--preset", "tiny", "--json", str(trace),
                 "How many dogs are there?"])
    out = capsys.readouterr()
    assert trace.exists(), out.err
    saved = Trace.load_json(trace)
    attempts = saved.find(PlanAttempt)
    assert attempts and attempts[-1].ok
    parse(saved.program)  # the planned program, as it ran
    assert code == 0 or "step" in out.err.lower()  # a random program may fail at a step


def test_planning_and_vqa_use_transformers_cache_api_not_the_deprecated_one(caplog):
    """transformers 5.25 renamed the key-value cache `cache`; `past_key_values` warns on every
    call (a FutureWarning, and a log line) and goes in 5.40. The planner's decoding loop uses
    the new name, so neither shows."""
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.warning_once.cache_clear()  # "once" per process: start afresh
    vp = VisProg(preset="tiny", cache=False)
    root = transformers_logging.get_logger("transformers")
    propagates = root.propagate
    root.propagate = True  # transformers keeps its records to its own handler: let caplog see
    try:
        with warnings.catch_warnings(record=True) as caught, \
                caplog.at_level(logging.WARNING, logger="transformers"):
            warnings.simplefilter("always")
            vp.plan("How many dogs are there?")
            vp.execute("A=Vqa(image=IMAGE, question='is it red?')", image=picture(3))
    finally:
        root.propagate = propagates
    deprecated = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    deprecated += [r.getMessage() for r in caplog.records if "past_key_values" in r.getMessage()]
    assert deprecated == []
