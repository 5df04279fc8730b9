"""Vqa with chat vision-language models: tiny random Qwen3-VL, Qwen2.5-VL and SmolVLM built
offline and loaded through the real loader (visprog.models.vlm.load_vlm), and the
OpenAI-compatible endpoint backend against the scripted loopback server (it receives the
image and answers a word)."""
from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llm_server import Reply, ScriptedServer  # noqa: E402

from visprog.config import load_config  # noqa: E402
from visprog.errors import ConfigError  # noqa: E402
from visprog.models import ModelManager  # noqa: E402
from visprog.models.vlm import VLM_KIND, load_vlm, template_kwargs  # noqa: E402
from visprog.models import resolve_checkpoint  # noqa: E402
from visprog.models import ToolContext  # noqa: E402
from visprog.tools import vqa as vqa_mod  # noqa: E402

CFG = load_config("tiny")
VLMS = ["tiny:qwen3_vl", "tiny:qwen2_5_vl", "tiny:qwen3_5", "tiny:smolvlm"]


@pytest.fixture(scope="module")
def ctx():
    return ToolContext(models=ModelManager(device="cpu"))


def image(size=(160, 120), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def vlm(ck, ctx, **kw):
    return vqa_mod.Vqa.build({**CFG["Vqa"], "checkpoints": {"vlm": ck}, **kw}, ctx)


def needs(ck):
    if ck == "tiny:smolvlm":
        pytest.importorskip("num2words")  # SmolVLMProcessor refuses to start without it


# -- answers from the chat models ---------------------------------------------------------------

@pytest.mark.parametrize("ck", VLMS)
def test_vlm_batch_equals_one_by_one(ctx, ck):
    needs(ck)
    tool = vlm(ck, ctx, max_new_tokens=6)
    calls = [{"image": image((97, 31), 1), "question": "how many dogs are there?"},
             {"image": image((640, 480), 2), "question": "is the car red?"},
             {"image": image((120, 400), 3), "question": "what color?"}]
    got = tool.batch_fn(calls)
    assert got == [tool(**c) for c in calls]
    assert all(isinstance(a, str) and a == vqa_mod.short_answer(a) for a in got)
    assert len(ctx.models.loaded()) >= 1 and tool.batch_fn([]) == []


@pytest.mark.parametrize("ck", VLMS)
def test_vlm_batch_is_left_padded_through_the_chat_template(ctx, ck):
    """The batch is one left-padded tensor whose rows end where each answer starts, and the
    padded row's next-token logits are the lone conversation's."""
    import torch

    needs(ck)
    bundle = ctx.models.get(VLM_KIND, ck, load_vlm)
    model, processor = bundle
    images, questions = [image((200, 150), 4), image((64, 64), 5)], ["what color is the car?", "how many?"]
    batch = vqa_mod.vlm_inputs(bundle, images, questions, vqa_mod.INSTRUCTION)
    mask = batch["attention_mask"]
    assert bool((mask[:, -1] == 1).all()) and int(mask.sum(1).min()) < mask.shape[1]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"},
                                      {"type": "text", "text": "q"}]}], add_generation_prompt=True,
        tokenize=False, **template_kwargs(processor.chat_template))
    # the answer comes next (after Qwen3.5's empty think block)
    assert text.rstrip().endswith(("assistant", "Assistant:", "</think>"))
    short = int(mask.sum(1).argmin())
    alone = vqa_mod.vlm_inputs(bundle, images[short:short + 1], questions[short:short + 1],
                               vqa_mod.INSTRUCTION)
    with torch.inference_mode():
        diff = (model(**alone).logits[0, -1] - model(**batch).logits[short, -1]).abs().max()
    assert float(diff) < 1e-4


def test_vlm_prompt_carries_the_question_and_the_short_answer_instruction(ctx):
    bundle = ctx.models.get(VLM_KIND, "tiny:qwen3_vl", load_vlm)
    inputs = vqa_mod.vlm_inputs(bundle, [image()], ["what color is the car?"], vqa_mod.INSTRUCTION)
    text = bundle[1].tokenizer.decode(inputs["input_ids"][0])
    assert "what color is the car?\n" + vqa_mod.INSTRUCTION in text
    assert "<|vision_start|><|image_pad|>" in text and text.endswith("<|im_start|>assistant\n")


def test_qwen3_5_answers_without_thinking(ctx):
    """Qwen3.5's template starts a <think> block unless told not to; Vqa wants the answer at
    once, so its prompt ends in the empty think block (the published non-thinking form)."""
    bundle = ctx.models.get(VLM_KIND, "tiny:qwen3_5", load_vlm)
    assert type(bundle[0]).__name__ == "Qwen3_5ForConditionalGeneration"
    ids = vqa_mod.vlm_inputs(bundle, [image()], ["is it red?"], "")["input_ids"][0]
    text = bundle[1].tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert isinstance(vlm("tiny:qwen3_5", ctx)(image=image(), question="is it red?"), str)


def test_max_pixels_bounds_the_image_tokens(ctx):
    """A 4000x3000 photo would be ~11700 image tokens for Qwen3-VL (one per 32x32 pixels);
    max_pixels scales it down first, so the model sees at most max_pixels / 1024."""
    big = Image.new("RGB", (4000, 3000), "white")
    bundle = ctx.models.get(VLM_KIND, "tiny:qwen3_vl", load_vlm)
    pad = bundle[1].tokenizer.convert_tokens_to_ids("<|image_pad|>")
    counts = {}
    for max_pixels in (0, 200_000):
        tool = vqa_mod.Vqa({**CFG["Vqa"], "max_pixels": max_pixels}, ctx)
        im, q = tool.preprocess({"image": big, "question": "what is it?"})
        ids = vqa_mod.vlm_inputs(bundle, [im], [q], "")["input_ids"]
        counts[max_pixels] = int((ids == pad).sum())
    assert counts[0] > 10_000 and counts[200_000] <= 200_000 // 1024
    tool = vlm("tiny:qwen3_vl", ctx, max_pixels=200_000)
    start = time.perf_counter()
    assert isinstance(tool(image=big, question="what is it?"), str)
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("raw, short", [
    ("Yes, there is a red dog on the left.", "yes"),
    ("No.", "no"),
    ("There are 2 dogs.", "2 dogs"),
    ("The answer is: Two.", "two"),
    ("  \n\nRed car\nand more text", "red car"),
    ('"blue"', "blue"),
    ("a very long sentence with many words in it", "a very long"),
    ("", ""),
])
def test_short_answer(raw, short):
    assert vqa_mod.short_answer(raw, 3) == short


def test_a_long_generated_answer_is_cut_and_eval_reads_it(ctx):
    """SmolVLM's random weights write words: with room for 40 tokens the answer is still at
    most max_answer_words words, and Eval compares it without failing."""
    pytest.importorskip("num2words")
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False,
                 config={"Vqa": {"checkpoints": {"vlm": "tiny:smolvlm"}, "max_new_tokens": 40,
                                 "max_answer_words": 2}})
    out = vp.execute("A=Vqa(image=IMAGE, question='how many dogs are there?')\n"
                     "B=Eval(expr=\"'yes' if {A} == 'two' else 'no'\")\n"
                     "C=Eval(expr=\"{A} == 'x' or {A} != 'x'\")\nRESULT=Result(var=C)",
                     image=image())
    answer = out.trace["A"].output
    assert isinstance(answer, str) and 1 <= len(answer.split()) <= 2
    assert out.trace["B"].output in ("yes", "no") and out.value is True


def test_presets_and_settings(ctx):
    assert load_config("default")["Vqa"]["backend"] == "vlm"
    tool = vlm("tiny:qwen3_vl", ctx)
    assert tool.settings["checkpoint"] == "tiny:qwen3_vl" and tool.settings["backend"] == "vlm"
    assert set(tool.settings) == {"backend", "checkpoint", "max_new_tokens", "instruction",
                                  "max_pixels", "max_answer_words"}
    # classic keeps today's settings (and cache keys) exactly
    fixture = json.loads((Path(__file__).parent / "fixtures" /
                          "tool_declarations.json").read_text())
    classic = vqa_mod.Vqa.build(load_config("classic")["Vqa"], ctx)
    assert dict(classic.settings) == fixture["default/nollm"]["Vqa"]["settings"]  # the old default
    assert classic.settings["checkpoint"] == "Salesforce/blip-vqa-capfilt-large"
    with pytest.raises(ConfigError, match="vlm, endpoint, blip, vilt"):
        vqa_mod.Vqa.build({**CFG["Vqa"], "backend": "gpt"}, ctx)


# -- the OpenAI-compatible endpoint -------------------------------------------------------------

def endpoint(server, **kw):
    ep = {"model": "served-vlm", "base_url": server.url, "api_key": "test-key",
          "backoff": 0.01, **kw}
    return vqa_mod.Vqa.build({**CFG["Vqa"], "backend": "endpoint", "endpoint": ep}, ToolContext())


def sent_image(request):
    content = request["messages"][0]["content"]
    url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    text = next(c["text"] for c in content if c["type"] == "text")
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), text


def test_endpoint_sends_the_image_and_reads_a_word():
    picture = image((90, 60), 7)
    with ScriptedServer([Reply("Two.")]) as server:
        answer = endpoint(server)(image=picture, question="how many dogs are there?")
    assert answer == "two" and len(server.requests) == 1
    got, text = sent_image(server.requests[0])
    assert np.array_equal(np.asarray(got), np.asarray(picture))  # PNG: our pixels exactly
    assert text.startswith("how many dogs are there?") and vqa_mod.INSTRUCTION in text
    req = server.requests[0]
    assert req["model"] == "served-vlm" and req["temperature"] == 0.0 and req["max_tokens"] == 5


def test_endpoint_requests_run_in_parallel_bounded_by_concurrency():
    calls = [{"image": image((40 + i, 30), i), "question": f"q{i}?"} for i in range(6)]
    with ScriptedServer([Reply("Yes", delay=0.6)] * 6) as server:
        tool = endpoint(server, concurrency=3)
        start = time.perf_counter()
        answers = tool.batch_fn(calls)
        took = time.perf_counter() - start
    assert answers == ["yes"] * 6 and len(server.requests) == 6
    assert 1.1 < took < 3.0  # two waves of three, not six in a row (3.6 s) nor one wave
    widths = sorted(sent_image(r)[0].size[0] for r in server.requests)
    assert widths == [40 + i for i in range(6)]  # each call's own image


def test_endpoint_keeps_order_and_retries_server_errors():
    calls = [{"image": image(seed=i), "question": "what color?"} for i in range(2)]
    script = [Reply("busy", status=503, headers={"retry-after": "0"}), Reply("Red."),
              Reply("There are 2 dogs.")]
    with ScriptedServer(script) as server:
        answers = endpoint(server, concurrency=1).batch_fn(calls)
    assert answers == ["red", "2 dogs"] and len(server.requests) == 3


@pytest.mark.parametrize("reply, needle", [
    (Reply("no such model", status=404), "HTTP 404"),
    (Reply("bad key", status=401), "VISPROG_VQA_API_KEY"),
    (Reply("down", status=500), "failed after 2 attempts"),
])
def test_endpoint_errors_say_what_happened(reply, needle):
    from visprog.models.remote import RemoteModelError

    with ScriptedServer([reply, reply]) as server:
        with pytest.raises(RemoteModelError, match=needle):
            endpoint(server, max_retries=1)(image=image(), question="what?")


def test_endpoint_timeout_and_unreachable_server():
    from visprog.models.remote import RemoteModelError

    with ScriptedServer([Reply("late", delay=3)]) as server:
        with pytest.raises(RemoteModelError, match="timeout"):
            endpoint(server, timeout=0.3, max_retries=0)(image=image(), question="what?")
        url = server.url
    with pytest.raises(RemoteModelError, match="cannot connect"):
        vqa_mod.Vqa.build({**CFG["Vqa"], "backend": "endpoint",
                       "endpoint": {"model": "m", "base_url": url, "api_key": "k",
                                    "max_retries": 0}}, ToolContext())(image=image(), question="q")


def test_endpoint_settings(monkeypatch):
    monkeypatch.delenv("VISPROG_VQA_MODEL", raising=False)
    with pytest.raises(ConfigError, match="needs a model"):
        vqa_mod.Vqa.build({**CFG["Vqa"], "backend": "endpoint"}, ToolContext())
    monkeypatch.setenv("VISPROG_VQA_MODEL", "env-vlm")
    monkeypatch.setenv("VISPROG_VQA_API_KEY", "secret")
    tool = vqa_mod.Vqa.build({**CFG["Vqa"], "backend": "endpoint",
                          "endpoint": {"base_url": "http://127.0.0.1:9/v1"}}, ToolContext())
    assert tool.settings["model"] == "env-vlm" and "secret" not in json.dumps(dict(tool.settings))
    assert tool.settings["base_url"] == "http://127.0.0.1:9/v1"
