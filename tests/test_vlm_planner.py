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

from visprog.api import VisProg
from visprog.language.parser import parse  # noqa: E402
from visprog.models.vlm import VLM_KIND, load_vlm  # noqa: E402
from visprog.planning.llm import LLMError, OpenAIChat  # noqa: E402
from visprog.planning.llm_local import LocalConstrained  # noqa: E402
from visprog.traces.events import PlanAttempt, Repair  # noqa: E402

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


def _critic_after(vqa_images):
    """The critic's verdict and sampled replies, a plan and a free-text reply (the local
    backend's three decoders), and the next-token logits of every decode step, on a fresh
    engine whose VLM first answered Vqa on `vqa_images` in one batch."""
    import torch

    from visprog.planning.critic import VERDICT_GRAMMAR, Critic

    vp = VisProg(preset="tiny", cache=False)
    if vqa_images:
        program = "A=Vqa(image=IMAGE, question='what color is the car?')"
        results = vp.run_batch([{"program": program, "image": im} for im in vqa_images],
                               batch_size=len(vqa_images))
        assert all(r.ok for r in results)
    model, _ = vp.models.get(VLM_KIND, "tiny:qwen3_vl", load_vlm)
    if vqa_images:  # what the bug fed into the critic's decoding
        assert model.model.rope_deltas is not None and model.model.rope_deltas.shape[0] == 2
    logits = []
    hook = model.lm_head.register_forward_hook(
        lambda mod, args, out: logits.append(out[0, -1].detach().clone()))
    try:
        verdict = Critic(vp.llm, max_tokens=48).judge(
            "How many cats?", "N=Count(box=CATS)", ["1. ... -> Number: 0"], "0")
        sampled = vp.llm.constrain_grammar(VERDICT_GRAMMAR).chat(
            [{"role": "user", "content": "is it right?"}], temperature=1.0, n=2, seed=5)
        plan = vp.plan("How many dogs are there?").text
        free = vp.llm.chat([{"role": "user", "content": "say something"}], max_tokens=8,
                           temperature=1.0, seed=2).text
    finally:
        hook.remove()
    return verdict, sampled, torch.stack(logits), plan, free


def test_the_critic_after_a_batched_vqa_decodes_as_a_model_that_never_ran_vqa():
    # Qwen3-VL keeps the rope offsets of its last generate (a batch of 2 here, 736 positions
    # for a 1024x768 image) and adds them to any cached decode step given no positions: the
    # critic then crashed ("Sizes of tensors must match") or decoded at wrong positions.
    fresh = _critic_after([])
    after = _critic_after([picture(0, (1024, 768)), picture(1, (320, 240))])
    assert after[0].to_dict() == fresh[0].to_dict()  # verdict, reply, usage
    assert after[1].texts == fresh[1].texts and after[1].usage == fresh[1].usage
    assert after[3:] == fresh[3:]  # the planner's program and free text too
    # every decode step saw the same positions: the logits are equal, not just the argmax
    # (wrong positions moved them by ~0.03 on this tiny model)
    assert after[2].shape == fresh[2].shape
    assert float((after[2] - fresh[2]).abs().max()) < 1e-5


def test_a_batch_with_vqa_and_the_critic_runs_to_the_end():
    # the case: two items with questions batched through Vqa, then the critic on
    # each; it raised "Sizes of tensors must match" and aborted the whole batch
    vp = VisProg(preset="tiny", cache=False)
    program = "A=Vqa(image=IMAGE, question='what color is the car?')"
    items = [{"program": program, "image": picture(0, (1024, 768)), "question": "What color?"},
             {"program": program, "image": picture(1, (320, 240)), "question": "Which color?"}]
    results = vp.run_batch(items, repair={"critic": True, "checks": False}, batch_size=2)
    assert [r.ok for r in results] == [True, True]
    for r in results:
        repair = r.trace.find(Repair)
        assert repair and repair[0].attempts[0].critic.clear
