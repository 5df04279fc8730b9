"""The one request loop for OpenAI-compatible servers (visprog/models/openai_api.py), through
both of its users against the scripted loopback server (tests/llm_server.py): the planner's
client (`OpenAIChat.chat`) and Vqa's endpoint backend (a built `Vqa` tool). Each case runs for
both, so the two cannot drift apart again: a 429 then success (Retry-After honoured), a
server that never answers against an enclosing deadline, a reply that is not a chat
completion (a proxy's HTML page) retried and then named."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from llm_server import Reply, ScriptedServer, scripted_client
from visprog.models.openai_api import deadline, time_left
from visprog.models.remote import RemoteModelError
from visprog.planning.chat import LLMError

pytestmark = pytest.mark.usefixtures("no_llm_env")

PICTURE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))


def planner_client(server, **kw):
    """Ask the planner's client; its answer as text."""
    client = scripted_client(server, **kw)
    return lambda: client.chat([{"role": "user", "content": "hi"}]).text


def vqa_endpoint(server, **kw):
    """Ask Vqa's endpoint backend (a built tool); its answer as text."""
    from visprog.config import load_config
    from visprog.models import ToolContext
    from visprog.tools.vqa import Vqa

    ep = {"model": "served-vlm", "base_url": server.url, "api_key": "k", "backoff": 0.01, **kw}
    tool = Vqa.build({**load_config("tiny")["Vqa"], "backend": "endpoint", "endpoint": ep},
                     ToolContext())
    return lambda: tool(image=PICTURE, question="what is it?")


USERS = {"planner": (planner_client, LLMError, "LLM request"),
         "vqa": (vqa_endpoint, RemoteModelError, "vision request")}


@pytest.fixture(params=list(USERS))
def user(request):
    return USERS[request.param]


def test_a_429_then_success_waits_the_retry_after(user):
    make, _, _ = user
    script = [Reply("slow down", status=429, headers={"retry-after": "0.4"}), Reply("Cat")]
    with ScriptedServer(script) as server:
        ask = make(server, max_retries=2)
        started = time.monotonic()
        assert ask().lower() == "cat"
        took = time.monotonic() - started
    assert len(server.requests) == 2
    assert took >= 0.4, took  # the server's wait, not the 0.01 s backoff


def test_a_retry_after_past_the_cap_falls_back_to_the_backoff(user):
    make, _, _ = user
    script = [Reply("busy", status=503, headers={"retry-after": "3600"}), Reply("Cat")]
    with ScriptedServer(script) as server:
        started = time.monotonic()
        assert make(server, max_retries=1, max_backoff=0.05)().lower() == "cat"
    assert time.monotonic() - started < 3


def test_a_server_that_never_answers_ends_at_the_deadline(user):
    make, error, what = user
    with ScriptedServer([Reply("late", delay=8)] * 4) as server:
        ask = make(server, timeout=5, max_retries=3)
        started = time.monotonic()
        with deadline(1.0, "deadline_s", "the test"), pytest.raises(error) as err:
            ask()
        took = time.monotonic() - started
    assert took < 4, took  # (max_retries + 1) x timeout would be 20 s
    message = str(err.value)
    assert message.startswith(f"{what} to {server.url} stopped"), message
    assert "deadline of 1 s for the test (deadline_s) was reached" in message
    assert "no reply within" in message
    assert time_left() is None  # the deadline ended with its block


@pytest.mark.parametrize("reply", [
    Reply(raw=b"<html><body>502 from the proxy</body></html>", content_type="text/html"),
    Reply(raw=b"<html>declared as JSON, is not</html>"),
    Reply(raw=b'{"id": "x", "object": "list"}'),  # JSON, but no choices
], ids=["html", "not json", "no choices"])
def test_a_reply_that_is_not_a_completion_is_retried_then_named(user, reply):
    make, error, what = user
    with ScriptedServer([reply, "Dog"]) as server:
        assert make(server, max_retries=2)().lower() == "dog"
    with ScriptedServer([reply] * 3) as server:
        with pytest.raises(error) as err:
            make(server, max_retries=2)()
    assert len(server.requests) == 3
    message = str(err.value)
    assert message.startswith(f"{what} to {server.url} (model ")
    assert "failed after 3 attempts (max_retries=2)" in message
    assert "not a chat completion" in message


def test_a_refusal_is_not_retried_and_says_what_to_check(user):
    make, error, what = user
    with ScriptedServer([Reply("bad key", status=401)] * 3) as server:
        with pytest.raises(error, match=rf"{what} to .* was refused: HTTP 401: bad key; check"):
            make(server, max_retries=3)()
    assert len(server.requests) == 1


def test_vqa_batches_in_threads_keep_the_callers_deadline():
    """Vqa's endpoint sends a batch's requests from worker threads: the deadline holds there
    too (a thread would otherwise start with no deadline and wait out every timeout)."""
    from visprog.config import load_config
    from visprog.models import ToolContext
    from visprog.tools.vqa import Vqa

    with ScriptedServer([Reply("late", delay=8)] * 8) as server:
        ep = {"model": "m", "base_url": server.url, "api_key": "k", "backoff": 0.01,
              "timeout": 5, "max_retries": 3, "concurrency": 2}
        tool = Vqa.build({**load_config("tiny")["Vqa"], "backend": "endpoint", "endpoint": ep},
                         ToolContext())
        started = time.monotonic()
        with deadline(1.0), pytest.raises(RemoteModelError, match="deadline of 1 s"):
            tool.batch_fn([{"image": PICTURE, "question": "a?"},
                           {"image": PICTURE, "question": "b?"}])
        assert time.monotonic() - started < 4
