"""Images reach every planner that takes them (issue 21 item 4).

- The chat protocol: a message's content is a string or a list of text and image parts; a
  client that takes no images gets the text.
- The OpenAI-compatible client, against the scripted loopback server: with images on, an
  image part arrives as one `image_url` data URL (bounded in size); off, as text only.
- The local VLM planner (tiny random Qwen3-VL, Qwen2.5-VL, Qwen3.5 and SmolVLM built offline,
  loaded through the real loaders): image parts go through the processor under the grammar
  constraint; a conversation gets the same tokens alone and batched; the cached decode at
  our explicit positions gives the logits of one uncached forward at the model's own
  (multimodal) positions; a text-only turn still works.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_server import ScriptedServer, scripted_client
from visprog.planning.chat import (IMAGE_MAX_PIXELS, check_messages, content_text, for_client,
                                   message_images, takes_images, text_messages)
from visprog.planning.llm import LLMError, OpenAIChat, make_llm, message_to_openai

pytestmark = pytest.mark.usefixtures("no_llm_env")

PROGRAM = "CATS=Loc(image=IMAGE, object='cat')\nN=Count(box=CATS)\nFINAL=Result(var=N)"


def picture(size=(160, 120), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def gradient(size=(64, 48)):
    """A smooth picture: JPEG keeps it close (random noise it does not)."""
    x = np.linspace(0, 255, size[0])[None, :, None]
    y = np.linspace(0, 255, size[1])[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], 2).astype(np.uint8))


def looked(image, text="Round 1 found 2 cats. This is what CATS looks like:"):
    """A conversation whose last turn carries an image, as an agent's observation does."""
    return [{"role": "system", "content": "You write programs."},
            {"role": "user", "content": "Question: how many cats?"},
            {"role": "assistant", "content": "CATS=Loc(image=IMAGE, object='cat')"},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image", "image": image},
                                         {"type": "text", "text": "Write the next steps."}]}]


def image_urls(body):
    return [p for m in body["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p.get("type") == "image_url"]


def decoded(url):
    head, data = url.split(",", 1)
    return head, Image.open(io.BytesIO(base64.b64decode(data)))


# -- the protocol ----------------------------------------------------------------------------

def test_text_of_messages_with_image_parts():
    msgs = looked(picture())
    assert content_text(msgs[3]["content"]) == (
        "Round 1 found 2 cats. This is what CATS looks like:\nWrite the next steps.")
    assert content_text("as is") == "as is"
    text = text_messages(msgs)
    assert all(isinstance(m["content"], str) for m in text) and text[:3] == msgs[:3]
    assert message_images(msgs) == [msgs[3]["content"][1]["image"]] and message_images(text) == []

    class Foreign:  # a client of someone else's that says nothing about images
        def chat(self, messages, **kw): ...

    class Seeing(Foreign):
        takes_images = True

    assert not takes_images(Foreign()) and for_client(Foreign(), msgs) == text
    assert takes_images(Seeing()) and for_client(Seeing(), msgs) is msgs


@pytest.mark.parametrize("bad, needle", [
    ([], "non-empty"),
    ([{"content": "x"}], "message 0"),
    ([{"role": "user", "content": 3}], "string or a list"),
    ([{"role": "user", "content": [{"type": "video", "video": 1}]}], "type 'video'"),
    ([{"role": "user", "content": [{"type": "image", "image": "cat.png"}]}], "PIL image"),
    ([{"role": "user", "content": [{"type": "text", "text": None}]}], "text part"),
])
def test_malformed_messages_are_refused_before_any_request(bad, needle):
    with pytest.raises(LLMError, match=needle):
        check_messages(bad)
    with ScriptedServer([PROGRAM]) as server:
        with pytest.raises(LLMError, match=needle):
            scripted_client(server, images=True).chat(bad)
    assert server.requests == []


# -- the OpenAI-compatible client -------------------------------------------------------------

def test_an_image_part_reaches_a_server_that_takes_images_as_one_image_url():
    image = gradient((64, 48))
    with ScriptedServer([PROGRAM]) as server:
        client = scripted_client(server, images=True)
        assert client.takes_images
        assert client.chat(looked(image)).text == PROGRAM
    body = server.requests[0]
    assert body["messages"][:3] == looked(image)[:3]  # string contents pass as they are
    last = body["messages"][3]["content"]
    assert [p["type"] for p in last] == ["text", "image_url", "text"]
    assert last[0]["text"].startswith("Round 1") and last[2]["text"] == "Write the next steps."
    (part,) = image_urls(body)
    head, got = decoded(part["image_url"]["url"])
    assert head == "data:image/jpeg;base64" and got.size == (64, 48)
    # JPEG at quality 95: the server sees (nearly) our pixels
    assert np.abs(np.asarray(got, float) - np.asarray(image, float)).mean() < 3


def test_a_server_without_images_gets_the_text_and_no_image_part():
    with ScriptedServer([PROGRAM]) as server:
        client = scripted_client(server)
        assert not client.takes_images
        client.chat(looked(picture()))
    body = server.requests[0]
    assert image_urls(body) == [] and "base64" not in str(body)
    assert body["messages"][3]["content"] == (
        "Round 1 found 2 cats. This is what CATS looks like:\nWrite the next steps.")


def test_images_are_bounded_and_png_on_request():
    big = picture((3000, 2000), 2)
    with ScriptedServer([PROGRAM, PROGRAM]) as server:
        scripted_client(server, images=True).chat(looked(big))
        scripted_client(server, images=True, image_format="png",
                        image_max_pixels=200 * 100).chat(looked(picture((64, 48))))
    _, sent = decoded(image_urls(server.requests[0])[0]["image_url"]["url"])
    w, h = sent.size
    assert w * h <= IMAGE_MAX_PIXELS and abs(w / h - 1.5) < 0.01
    head, small = decoded(image_urls(server.requests[1])[0]["image_url"]["url"])
    assert head == "data:image/png;base64" and small.size == (64, 48)  # within the bound: as is
    assert np.array_equal(np.asarray(small), np.asarray(picture((64, 48))))  # lossless


def test_images_setting_from_config_and_environment(monkeypatch):
    base = {"backend": "openai", "model": "m", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"}
    plain = make_llm(base)
    assert not plain.takes_images
    # the cache key of a text-only client is as before; a seeing one says what it is shown
    assert set(plain.describe()) == {"backend", "model", "base_url", "grammar"}
    seeing = make_llm({**base, "images": True, "image_max_pixels": 512 * 512})
    assert seeing.takes_images and seeing.describe()["images"] is True
    assert seeing.describe()["image_max_pixels"] == 512 * 512
    monkeypatch.setenv("VISPROG_LLM_IMAGES", "1")
    assert make_llm(base).takes_images
    assert not make_llm({**base, "images": False}).takes_images  # the config wins
    monkeypatch.setenv("VISPROG_LLM_IMAGES", "sometimes")
    with pytest.raises(LLMError, match="VISPROG_LLM_IMAGES"):
        make_llm(base)
    monkeypatch.delenv("VISPROG_LLM_IMAGES")
    for bad in ({"image_format": "gif"}, {"image_max_pixels": 10}, {"image_max_pixels": "big"},
                {"images": "perhaps"}):
        with pytest.raises(LLMError):
            OpenAIChat(**{k: v for k, v in base.items() if k != "backend"}, **bad)


def test_message_to_openai():
    image = picture((40, 30))
    msg = {"role": "user", "content": [{"type": "image", "image": image},
                                       {"type": "text", "text": "what is this?"}]}
    sent = message_to_openai(msg, True)
    assert sent["role"] == "user"
    assert sent["content"][1] == {"type": "text", "text": "what is this?"}
    assert sent["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert message_to_openai(msg, False) == {"role": "user", "content": "what is this?"}
    assert message_to_openai({"role": "system", "content": "s"}, True) == {
        "role": "system", "content": "s"}
    assert msg["content"][0]["image"] is image  # the caller's message is not changed


# -- the local VLM planner --------------------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from visprog.models import ModelManager  # noqa: E402
from visprog.planning.llm_local import LocalConstrained, _prompt_positions  # noqa: E402
from visprog.registry import Registry  # noqa: E402
from visprog.config import find_modules  # noqa: E402
from visprog.language.checker import check  # noqa: E402
from visprog.language.parser import parse  # noqa: E402

VLMS = ["tiny:qwen3_vl", "tiny:qwen2_5_vl", "tiny:qwen3_5", "tiny:smolvlm"]
INPUTS = {"IMAGE": "Image"}


@pytest.fixture(scope="module")
def registry():
    return Registry(find_modules(plugins=False).tools())


@pytest.fixture(scope="module")
def models():
    return ModelManager(device="cpu")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planner(ck, models, registry, **kw):
    if ck == "tiny:smolvlm":
        pytest.importorskip("num2words")  # SmolVLMProcessor refuses to start without it
    kw = {"max_steps": 2, "max_string": 6, "max_list": 2, **kw}  # short programs: quick tests
    return LocalConstrained(ck, models=models, **kw).constrain_to(registry, INPUTS)


def test_the_tiny_presets_planner_takes_images_and_a_text_model_does_not(models, registry,
                                                                        tmp_path):
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False)
    assert isinstance(vp.llm, LocalConstrained) and vp.llm.takes_images
    assert not LocalConstrained("tiny:qwen3_vl", models=models, images=False).takes_images
    gpt = LocalConstrained(str(tmp_path / "some-text-model"))  # no manager: a causal LM
    assert not gpt.takes_images


@pytest.mark.parametrize("ck", VLMS)
def test_an_image_part_reaches_the_local_vlm_under_the_grammar(ck, models, registry, one_thread):
    llm = planner(ck, models, registry)
    assert llm.takes_images
    seeing = llm.chat(looked(picture()), max_tokens=40)
    program = parse(seeing.text)
    assert check(program, registry, INPUTS) == [] and program[len(program) - 1].module == "Result"
    # the image became image tokens of the prompt; without it they are gone
    blind = llm.chat(text_messages(looked(picture())), max_tokens=40)
    assert seeing.usage["image_tokens"] > 0 and "image_tokens" not in blind.usage
    assert seeing.usage["prompt_tokens"] >= (blind.usage["prompt_tokens"]
                                             + seeing.usage["image_tokens"])
    off = planner(ck, models, registry, images=False)
    assert off.chat(looked(picture()), max_tokens=40).text == blind.text  # text only


@pytest.mark.parametrize("ck", VLMS)
def test_batched_and_alone_give_the_same_tokens(ck, models, registry, one_thread):
    """Left padding, two images of other sizes, a text-only row, greedy and sampled."""
    llm = planner(ck, models, registry)
    convs = [looked(picture((160, 120), 3)),
             [{"role": "user", "content": [{"type": "image", "image": picture((90, 300), 4)},
                                           {"type": "text", "text": "how many dogs?"}]}],
             [{"role": "user", "content": "what color is the car?"}]]
    sampled = [{"temperature": 1.0, "seed": 7, "n": 2}] if ck == "tiny:qwen3_vl" else []
    for kw in [{"temperature": 0.0}] + sampled:  # (sampling once: the slower models cost time)
        alone = [llm.chat(c, max_tokens=40, **kw) for c in convs]
        together = llm.chat_many(convs, max_tokens=40, **kw)
        assert [r.texts for r in together] == [r.texts for r in alone]
        assert [r.usage for r in together] == [r.usage for r in alone]
        for r in together:
            for text in r.texts:
                assert check(parse(text), registry, INPUTS) == []


class Forced:
    """A writer that feeds given tokens and records the logits it was shown."""

    def __init__(self, tokens):
        self.tokens, self.seen, self.done = list(tokens), [], False

    def step(self, logits):
        self.seen.append(logits.detach().clone())
        if not self.tokens:
            self.done = True
            return None
        return self.tokens.pop(0)


@pytest.mark.parametrize("ck", VLMS)
def test_cached_decode_at_our_positions_equals_one_full_forward(ck, models, registry, one_thread):
    """The positions are right: prompt + 5 tokens decoded with the cache at our explicit
    positions give the logits of one uncached forward over the whole text, where the model
    finds its own positions (3-D multimodal ones for Qwen-VL) from the padded batch."""
    llm = planner(ck, models, registry)
    model, tok = llm._load()
    rows = [looked(picture((160, 120), 5)), [{"role": "user", "content": "how many dogs?"}],
            [{"role": "user", "content": [{"type": "image", "image": picture((64, 200), 6)},
                                          {"type": "text", "text": "is it red?"}]}]]
    batch, _, _ = llm._encode(rows, keep=10 ** 6)
    forced = [[11, 12, 13, 14, 15], [21, 22, 23, 24, 25], [31, 32, 33, 34, 35]]
    writers = [Forced(t) for t in forced]
    llm._decode(dict(batch), writers)
    new = torch.tensor(forced)
    full = dict(batch)
    full["input_ids"] = torch.cat([batch["input_ids"], new], 1)
    full["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(new)], 1)
    if "mm_token_type_ids" in full:
        full["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"],
                                               torch.zeros_like(new)], 1)
    if getattr(getattr(model, "model", None), "get_rope_index", None) is None:
        # no multimodal rope: positions count the real tokens, as generate() does
        full["position_ids"] = _prompt_positions(model, full)[0]
    else:
        model.model.rope_deltas = None  # let it compute the 3-D positions afresh
    with torch.no_grad():
        logits = model(**full, use_cache=False).logits
    width = batch["input_ids"].shape[1]
    for b, w in enumerate(writers):
        assert len(w.seen) == 6
        for i, seen in enumerate(w.seen):
            assert (logits[b, width - 1 + i] - seen).abs().max().item() < 1e-4, (b, i)


def test_a_text_only_turn_after_images_and_after_vqa_is_unchanged(models, registry, one_thread):
    from visprog.config import load_config
    from visprog.models import ToolContext
    from visprog.tools import vqa as vqa_mod

    llm = planner("tiny:qwen3_vl", models, registry)
    text = [{"role": "user", "content": "how many dogs are there?"}]
    before = llm.chat(text, max_tokens=40)
    llm.chat(looked(picture((300, 200), 8)), max_tokens=40)
    assert llm.chat(text, max_tokens=40).texts == before.texts
    # Vqa's batched generate leaves rope offsets in the shared model: they change nothing
    vqa = vqa_mod.Vqa.build({**load_config("tiny")["Vqa"]}, ToolContext(models=models))
    vqa.batch_fn([{"image": picture((200, 90), 9), "question": "what color?"},
                  {"image": picture((60, 60), 10), "question": "how many?"}])
    assert llm.chat(text, max_tokens=40).texts == before.texts


def test_an_image_that_can_not_fit_the_context_is_left_out_with_a_note(models, registry):
    llm = planner("tiny:qwen3_vl", models, registry, image_max_pixels=4096 * 4096)
    # the context (32768) less what is kept for the reply leaves about 4000 tokens for the
    # prompt; the image alone is 2400x2400 / 32^2 = 5625: the planner writes without it
    seen = llm.chat(looked(picture((2400, 2400), 11)), max_tokens=28000)
    assert "image_tokens" not in seen.usage and seen.usage["prompt_tokens"] < 4000
    assert check(parse(seen.text), registry, INPUTS) == []  # still a valid program
    with pytest.raises(LLMError, match="image_max_pixels"):
        LocalConstrained("tiny:qwen3_vl", image_max_pixels=0)


def test_a_hub_id_in_the_local_cache_is_recognised_as_a_vlm(tmp_path, registry):
    """The default preset names Vqa's VLM by hub id: the planner must load it as the VLM
    bundle Vqa shares (it was read as a causal LM, which transformers can't build from a
    Qwen3-VL config). Checked in a fresh process against a hub cache written here, offline."""
    import os
    import shutil
    import subprocess
    import sys

    from visprog.models import resolve_checkpoint

    tiny = Path(resolve_checkpoint("tiny:qwen3_vl"))
    snapshot = tmp_path / "hub" / "models--someone--tiny-vl" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    shutil.copy(tiny / "config.json", snapshot / "config.json")
    (tmp_path / "hub" / "models--someone--tiny-vl" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-vl" / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = ("from visprog.models.vlm import is_vlm_checkpoint as v; "
            "print(v('someone/tiny-vl'), v('someone/not-there'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]


def test_a_cache_key_of_messages_with_images_digests_their_pixels():
    """The planner's cache key digests the chat: an image part is keyed by its pixels (it
    was a TypeError from json.dumps), and a chat of text alone keys as it always did."""
    import hashlib
    import json

    from visprog.planning.planner import messages_digest

    text = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert messages_digest(text) == hashlib.sha256(
        json.dumps(text, sort_keys=True).encode("utf-8")).hexdigest()
    same = messages_digest(looked(picture(seed=1)))
    assert same == messages_digest(looked(picture(seed=1)))  # another copy, same pixels
    assert same != messages_digest(looked(picture(seed=2)))
    assert same != messages_digest(looked(picture(seed=1).convert("L")))
    assert same != messages_digest(text_messages(looked(picture(seed=1))))
    with pytest.raises(TypeError, match="cache key"):
        messages_digest([{"role": "user", "content": [{"type": "x", "x": object()}]}])


def test_images_over_the_context_are_left_out_oldest_first(models, registry, one_thread,
                                                             monkeypatch):
    """The newest observation matters most: when a prompt with its images does not fit the
    model's context, its oldest images give way to a note, one at a time, until it fits."""
    import visprog.planning.llm_local as local

    llm = planner("tiny:qwen3_vl", models, registry)
    two = looked(picture((160, 120), 2))
    two[1] = {"role": "user", "content": [{"type": "text", "text": "Question: how many cats?"},
                                          {"type": "image", "image": picture((160, 120), 1)}]}
    one = [*two[:1], {"role": "user", "content": [two[1]["content"][0],
                                                  {"type": "text", "text": local.LEFT_OUT}]},
           *two[2:]]
    full, fits = llm.chat(two, max_tokens=20), llm.chat(one, max_tokens=20)
    assert full.usage["image_tokens"] == 2 * fits.usage["image_tokens"] > 0
    # a context that holds the prompt with one image, not with two
    room = fits.usage["prompt_tokens"] + 20 + local._GENERATION_MARGIN
    monkeypatch.setattr(local, "_context_size", lambda model: room)
    trimmed = llm.chat(two, max_tokens=20)
    assert trimmed.usage == fits.usage and trimmed.text == fits.text  # the older image left out
    # too small even without images: a clear error, not a cut prompt
    monkeypatch.setattr(local, "_context_size", lambda model: 20 + local._GENERATION_MARGIN + 40)
    with pytest.raises(LLMError, match="no image left to leave out"):
        llm.chat(two, max_tokens=20)
