"""LLM clients: the OpenAI-compatible one through the real `openai` client against a loopback
server (tests/llm_server.py), and the grammar-constrained local one on a tiny random GPT-2."""
from __future__ import annotations

import socket
import time

import lark
import pytest

from llm_server import Reply, ScriptedServer, scripted_client
from visprog.language.checker import check
from visprog.errors import ParseError
from visprog.planning.llm import LLMError, LLMReply, OpenAIChat, make_llm
from visprog.planning.llm_grammar import StepGrammar, fits, program_grammar
from visprog.values.types import parse_types
from visprog.language.parser import parse
from visprog.planning.prompts import TASKS, load_examples
from visprog.registry import Registry, tool
from visprog.config import find_modules

PROGRAM = "CATS=Loc(image=IMAGE, object='cat')\nN=Count(box=CATS)\nFINAL=Result(var=N)"
MESSAGES = [{"role": "user", "content": "Question: how many cats?"}]

pytestmark = pytest.mark.usefixtures("no_llm_env")  # only the LLM settings a test makes


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(find_modules(plugins=False).tools())


# --------------------------------------------------------------------------- OpenAI-compatible


def test_reply_through_openai_client():
    with ScriptedServer([PROGRAM]) as server:
        reply = scripted_client(server).chat(MESSAGES, temperature=0.0, max_tokens=64, seed=3,
                                             stop=["\n\n\n"])
    assert isinstance(reply, LLMReply)
    assert reply.text == PROGRAM and reply.texts == [PROGRAM]
    assert reply.model == "test-model"
    assert reply.usage["completion_tokens"] == len(PROGRAM.split())
    assert reply.usage["total_tokens"] == reply.usage["prompt_tokens"] + len(PROGRAM.split())
    body = server.requests[0]
    assert server.paths == ["/v1/chat/completions"]
    assert body["model"] == "test-model" and body["messages"] == MESSAGES
    assert body["max_tokens"] == 64 and body["seed"] == 3 and body["stop"] == ["\n\n\n"]
    assert "guided_grammar" not in body  # grammar passing is off by default


def test_429_then_success_retries():
    script = [Reply("slow down", status=429, headers={"retry-after": "0"}), Reply(PROGRAM)]
    with ScriptedServer(script) as server:
        reply = scripted_client(server, max_retries=2).chat(MESSAGES)
    assert reply.text == PROGRAM
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_retries_are_bounded(status):
    with ScriptedServer([Reply("boom", status=status)] * 3) as server:
        with pytest.raises(LLMError) as err:
            scripted_client(server, max_retries=2).chat(MESSAGES)
    assert len(server.requests) == 3
    msg = str(err.value)
    assert "after 3 attempts" in msg and f"HTTP {status}" in msg and "boom" in msg


def test_reply_slower_than_timeout_fails_in_bounded_time():
    with ScriptedServer([Reply(PROGRAM, delay=5.0)] * 2) as server:
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="timeout"):
            scripted_client(server, timeout=0.3, max_retries=1).chat(MESSAGES)
        elapsed = time.monotonic() - t0
    assert elapsed < 3.0, elapsed
    assert len(server.requests) == 2


@pytest.mark.parametrize("status, needle", [(401, "OPENAI_API_KEY"), (404, "VISPROG_LLM_MODEL"),
                                            (400, "HTTP 400")])
def test_client_errors_are_not_retried(status, needle):
    with ScriptedServer([Reply("nope", status=status)] * 3) as server:
        with pytest.raises(LLMError, match=needle):
            scripted_client(server, max_retries=3).chat(MESSAGES)
    assert len(server.requests) == 1


def test_no_server_names_base_url():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = OpenAIChat(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k",
                   max_retries=1, backoff=0.01, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(LLMError, match="OPENAI_BASE_URL"):
        c.chat(MESSAGES)
    assert time.monotonic() - t0 < 10


def test_missing_key_and_model_name_what_to_set(monkeypatch):
    with pytest.raises(LLMError, match="VISPROG_LLM_MODEL"):
        OpenAIChat(api_key="k")
    with pytest.raises(LLMError, match="set OPENAI_API_KEY"):
        OpenAIChat(model="m")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    monkeypatch.setenv("VISPROG_LLM_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    c = OpenAIChat()
    assert c.describe() == {"backend": "openai", "model": "env-model",
                            "base_url": "http://127.0.0.1:9/v1", "grammar": None}


def test_fewer_choices_than_n_asks_again():
    with ScriptedServer(["A=Eval(expr=\"1\")", ["B=Eval(expr=\"2\")", "C=Eval(expr=\"3\")"]]) as server:
        reply = scripted_client(server).chat(MESSAGES, n=3, seed=10, temperature=0.7)
    assert reply.texts == ['A=Eval(expr="1")', 'B=Eval(expr="2")', 'C=Eval(expr="3")']
    assert [r["n"] for r in server.requests] == [3, 2]
    assert [r["seed"] for r in server.requests] == [10, 11]
    assert reply.usage["completion_tokens"] == 3


def test_grammar_is_passed_when_asked(registry):
    with ScriptedServer([PROGRAM, PROGRAM]) as server:
        c = scripted_client(server, grammar="vllm")
        c.constrain_to(registry, {"IMAGE": "Image"}).chat(MESSAGES)
        c.chat(MESSAGES)  # the client itself (e.g. for List) sends no grammar
        plain = scripted_client(server)
        assert plain.constrain_to(registry, {"IMAGE": "Image"}) is plain
    sent = server.requests[0]["guided_grammar"]
    assert "\"Loc(\"" in sent and "\"object=\"" in sent
    assert "guided_grammar" not in server.requests[1]
    with pytest.raises(LLMError, match="grammar mode"):
        OpenAIChat(model="m", api_key="k", grammar="xgrammar-ish")


def test_make_llm_from_config_and_env(monkeypatch):
    assert make_llm(None) is None  # nothing configured: no planner
    assert make_llm({"backend": "none"}) is None
    with pytest.raises(LLMError, match="unknown LLM backend"):
        make_llm({"backend": "magic"})
    with pytest.raises(LLMError, match="VISPROG_LLM_PATH"):
        make_llm({"backend": "local"})
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        make_llm({"model": "m"})
    c = make_llm({"backend": "openai", "model": "m", "api_key": "k", "timeout": 5,
                  "base_url": "http://127.0.0.1:9/v1", "ignored_key": 1})
    assert isinstance(c, OpenAIChat) and c.timeout == 5 and c.model == "m"
    monkeypatch.setenv("VISPROG_LLM_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    c = make_llm(None)
    assert isinstance(c, OpenAIChat) and c.model == "env-model"


# --------------------------------------------------------------------------- grammars


@pytest.mark.parametrize("value, param, ok", [
    ("Image", "Image", True), ("Objects", "Image", False), ("Bool|Number|Text", "Text", True),
    ("Text", "Text|None", True), ("Any", "Image", True), ("Image", "Any", True),
])
def test_fits_is_the_checkers_rule(value, param, ok):
    assert fits(parse_types(value), parse_types(param)) is ok


def test_program_grammar_accepts_every_example(registry):
    parser = lark.Lark(program_grammar(registry))
    for name in TASKS:
        for ex in load_examples(name):
            parser.parse(ex.program)  # raises on a program outside the grammar
    with pytest.raises(lark.exceptions.LarkError):
        parser.parse("X=Lco(image=IMAGE, object='cat')")  # unknown module
    with pytest.raises(lark.exceptions.LarkError):
        parser.parse("X=Loc(img=IMAGE, object='cat')")  # unknown argument


def test_grammars_follow_the_registry(registry):
    @tool("Caption", params={"image": "Image", "style": "Text"}, returns="Text")
    def caption(image, style="short"):
        """Describes the image."""
        return "a picture"

    extended = Registry([*registry, caption])
    text = program_grammar(extended)
    assert "\"Caption(\"" in text and "\"style=\"" in text
    lark.Lark(text).parse("C=Caption(image=IMAGE)\nD=Caption(image=IMAGE, style='long')")
    step = StepGrammar(extended).text({"IMAGE": frozenset({"Image"})})
    assert "\"Caption(\"" in step


def test_step_grammar_offers_only_what_fits(registry):
    import llguidance

    g = StepGrammar(registry)
    only_image = g.text({"IMAGE": frozenset({"Image"})})
    # Nothing of type Objects exists yet, so Count and the crops can't be called.
    assert "\"Count(\"" not in only_image and "\"Crop(\"" not in only_image
    assert "\"Loc(\"" in only_image
    with_objects = g.text({"IMAGE": frozenset({"Image"}), "CATS": frozenset({"Objects"})})
    assert "\"Count(\"" in with_objects
    final = g.text({"IMAGE": frozenset({"Image"})}, final=True)
    assert "\"Result(\"" in final and "\"Loc(\"" not in final
    for text in (only_image, with_objects, final):
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            llguidance.grammar_from("lark", text))
        assert not is_error, messages
    with pytest.raises(ValueError, match="bind an input"):
        StepGrammar(Registry([registry.get("Count"), registry.get("Crop")])).text({})


# --------------------------------------------------------------------------- local constrained


def _tiny_gpt2(directory) -> str:
    """A tiny random GPT-2 with a byte-level tokenizer of the 256 bytes + eos, saved."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>")
    torch.manual_seed(0)
    eos = vocab["<|endoftext|>"]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2,
                                       n_positions=2048, bos_token_id=eos, eos_token_id=eos))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return _tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def one_thread():
    """A tiny model decodes fastest on one thread (and leaves the other core alone)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("task", ["gqa", "nlvr"])
def test_constrained_samples_always_parse_and_check(tiny_lm, registry, task, one_thread):
    from visprog.planning.llm_local import LocalConstrained

    inputs = dict(TASKS[task].inputs)
    base = LocalConstrained(tiny_lm, max_steps=4, max_string=8, max_list=2)
    llm = base.constrain_to(registry, inputs)
    modules = set()
    seeds = range(20) if task == "gqa" else range(6)
    reply = None
    for seed in seeds:
        reply = llm.chat(MESSAGES, temperature=1.0, max_tokens=90, seed=seed)
        program = parse(reply.text)  # raises ParseError if not a program
        assert check(program, registry, inputs) == [], reply.text
        assert 1 <= len(program) <= 4
        assert program[len(program) - 1].module == "Result"
        modules |= {s.module for s in program}
    assert reply is not None and reply.usage["completion_tokens"] > 0
    assert len(modules) >= 3  # a random model wanders over many modules
    assert llm.describe()["backend"] == "local" and llm.describe()["model"] == tiny_lm


def test_constrained_greedy_is_deterministic_and_n_samples(tiny_lm, registry, one_thread):
    from visprog.planning.llm_local import LocalConstrained

    llm = LocalConstrained(tiny_lm, registry=registry, inputs={"IMAGE": "Image"}, max_steps=3,
                           max_string=8)
    a = llm.chat(MESSAGES, temperature=0.0, max_tokens=60)
    b = llm.chat(MESSAGES, temperature=0.0, max_tokens=60)
    assert a.text == b.text
    many = llm.chat(MESSAGES, temperature=1.0, max_tokens=60, n=3, seed=5)
    assert len(many.texts) == 3 and many.text == many.texts[0]
    for text in many.texts:
        assert check(parse(text), registry, {"IMAGE": "Image"}) == []


def test_unconstrained_local_text_and_stop(tiny_lm, one_thread):
    from visprog.planning.llm_local import LocalConstrained

    llm = LocalConstrained(tiny_lm)
    reply = llm.chat(MESSAGES, temperature=1.0, max_tokens=12, seed=1)
    assert 0 < reply.usage["completion_tokens"] <= 12
    with pytest.raises(ParseError):  # free text from a random model is not a program
        parse(reply.text)
    again = llm.chat(MESSAGES, temperature=1.0, max_tokens=12, seed=1)
    assert again.text == reply.text
    stop = reply.text[3:5]
    cut = llm.chat(MESSAGES, temperature=1.0, max_tokens=12, seed=1, stop=[stop])
    assert cut.text == reply.text[:reply.text.find(stop)]


def test_local_backend_errors(tmp_path):
    from visprog.planning.llm_local import LocalConstrained

    with pytest.raises(LLMError, match="model_path"):
        LocalConstrained()
    with pytest.raises(LLMError, match="cannot load"):
        LocalConstrained(str(tmp_path / "missing")).chat(MESSAGES)
