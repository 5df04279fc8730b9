"""Hosting without a cluster: the hosting keys of the config, and the wire format requests and
replies travel in (visprog/hosting/client.py, visprog/hosting/serve.py). None of this needs
Ray, so these tests run where Ray is not installed; the last one proves it by hiding Ray.
The tests that need a running Ray Serve are in tests/test_hosting.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from visprog.api import VisProg
from visprog.config import module_catalog
from visprog.config import load_config
from visprog.errors import ConfigError, StepError
from visprog.hosting.client import HostError, client_of, split_config
from visprog.values import codec

from hosting_helpers import hosted, picture


# -- configuration -----------------------------------------------------------------------------

def test_hosting_keys_leave_the_settings():
    cfg = load_config("tiny", overrides=hosted(modules=("Vqa",)))
    catalog = module_catalog()
    tools_cfg, hosts = split_config(cfg, catalog.model_modules, catalog.plain_modules)
    assert set(hosts) == {"Vqa"} and hosts["Vqa"].app_name == "visprog-Vqa"
    assert "host" not in tools_cfg["Vqa"] and tools_cfg["Vqa"]["backend"] == "vlm"
    local = VisProg(preset="tiny", cache=False).registry.get("Vqa")
    remote = VisProg(preset="tiny", cache=False, config=cfg).registry.get("Vqa")
    assert client_of(remote) is not None and client_of(local) is None
    for field in ("name", "params", "returns", "version", "settings", "doc", "cacheable"):
        assert getattr(remote, field) == getattr(local, field), field


@pytest.mark.parametrize("override, message", [
    ({"Vqa": {"host": "gpu-box"}}, "choose one of"),
    ({"Vqa": {"host": "ray", "replicas": 0}}, "out of range"),
    ({"Vqa": {"host": "ray", "timeout_s": "soon"}}, "bad hosting setting"),
    ({"Count": {"host": "ray"}}, "only model modules"),
    ({"List": {"host": "ray"}}, "LLM"),
])
def test_bad_hosting_config(override, message):
    with pytest.raises(ConfigError, match=message):
        VisProg(preset="tiny", cache=False, config=override)


# -- the wire format (no cluster) --------------------------------------------------------------

def test_wire_round_trip_of_a_request_and_its_reply():
    from visprog.hosting.client import (decode_reply, decode_request, encode_reply, encode_request,
                                 outcome_ok)

    calls = [{"image": picture(1), "question": "what?"}, {"image": picture(2), "question": ""}]
    back = decode_request(encode_request(calls))
    assert [c["question"] for c in back] == ["what?", ""]
    assert [c["image"].tobytes() for c in back] == [c["image"].tobytes() for c in calls]
    reply = encode_reply([outcome_ok("red"), outcome_ok(picture(3))])
    values = decode_reply(reply, "Vqa", 2)
    assert values[0] == "red" and values[1].tobytes() == picture(3).tobytes()


def test_wire_errors_come_back_in_call_order():
    from visprog.hosting.client import decode_reply, encode_error, encode_reply, outcome_error, outcome_ok

    reply = encode_reply([outcome_ok(1), outcome_error(ValueError("first")),
                          outcome_error(KeyError("second"))])
    with pytest.raises(ValueError, match="first"):
        decode_reply(reply, "Vqa", 3)
    with pytest.raises(ValueError, match="unreadable"):
        decode_reply(encode_error(ValueError("unreadable")), "Vqa", 1)


@pytest.mark.parametrize("body", [{"results": ["x"]}, {"results": [{"ok": 1}]}, [1, 2], "ok"],
                         ids=["not an outcome", "wrong count", "a list", "a string"])
def test_wire_refuses_replies_that_are_not_results(body):
    from visprog.hosting.client import decode_reply

    with pytest.raises(HostError, match="not a visprog result"):
        decode_reply(codec.encode(body), "Vqa", 2)


@pytest.mark.parametrize("body", [{"calls": []}, {"calls": [1]}, {"call": {}}, "x"],
                         ids=["no calls", "not a dict", "old single form", "a string"])
def test_wire_refuses_requests_that_are_not_calls(body):
    from visprog.hosting.client import decode_request

    with pytest.raises(ValueError, match="not a visprog request"):
        decode_request(codec.encode(body))


def test_a_value_the_wire_cannot_carry_fails_only_its_own_call():
    from visprog.hosting.client import decode_reply, outcome_ok
    from visprog.hosting.serve import ModuleServer

    reply = ModuleServer._encode([outcome_ok(1), outcome_ok(object()), outcome_ok("x")])
    with pytest.raises(TypeError, match="object"):
        decode_reply(reply, "Vqa", 3)
    body = codec.decode(reply)["results"]
    assert body[0] == {"ok": 1} and body[2] == {"ok": "x"} and "error" in body[1]


def replica_of(tool):
    """A replica's request handling (`ModuleServer._run`: decode, run the calls through the
    engine's chunk runner, encode) without Ray: only what `_run` reads is set."""
    from visprog.hosting.serve import ModuleServer

    server = ModuleServer.__new__(ModuleServer)
    server.tool, server.max_batch_size = tool, 8
    server.batches, server.calls, server.batch_sizes = 0, 0, []
    return server


class ThroughTheWire:
    """A `RayModuleClient` stand-in whose requests go through the wire format to a replica's
    request handling in this process."""

    def __init__(self, server):
        self.server = server

    def call(self, calls):
        from visprog.hosting.client import decode_reply, encode_request

        reply = self.server._run([encode_request(calls, self.server.tool.name)])[0]
        return decode_reply(reply, self.server.tool.name, len(calls))


def test_an_error_raised_in_a_replica_reaches_the_client_as_the_same_class():
    """A replica's ModelLoadError (whose constructor takes a checkpoint besides the message)
    comes back as a ModelLoadError with its checkpoint, not as a RemoteToolError; through an
    engine, it is the cause of the StepError, as for a module that runs in-process."""
    from visprog.errors import ModelLoadError, RemoteToolError
    from visprog.hosting.client import HostSpec, remote_tool
    from visprog.registry import tool

    class OwnError(Exception):
        pass

    @tool("Broken", params={"image": "Image", "what": "Text"}, returns="Text")
    def broken(image, what):
        if what == "own":
            raise OwnError("a class only the replica has")
        raise ModelLoadError(f"could not load model {what!r}: no such folder", checkpoint=what)

    wire = ThroughTheWire(replica_of(broken))
    with pytest.raises(ModelLoadError, match="no such folder") as err:
        wire.call([{"image": picture(1), "what": "/models/vqa"}])
    assert type(err.value) is ModelLoadError and err.value.checkpoint == "/models/vqa"
    with pytest.raises(RemoteToolError, match="OwnError: a class only the replica has"):
        wire.call([{"image": picture(1), "what": "own"}])

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    vp.register(remote_tool(broken, HostSpec("Broken", host="ray"), client=wire))
    with pytest.raises(StepError) as step:
        vp.execute("A=Broken(image=IMAGE, what='/models/x')", image=picture(2))
    assert type(step.value.cause) is ModelLoadError and step.value.cause.checkpoint == "/models/x"


def test_rebuilt_errors_take_only_plain_instance_data():
    from visprog.errors import HostError, ModelLoadError, rebuild_error

    e = rebuild_error("HostError", "down", {"module": "Vqa", "address": "h:1",
                                            "args": "x", "with_traceback": "x", "_x": 1,
                                            "cause": ["not", "plain"]})
    assert type(e) is HostError and str(e) == "down" and e.module == "Vqa"
    assert callable(e.with_traceback) and e.args == ("down",) and not hasattr(e, "_x")
    assert not hasattr(e, "cause")
    assert isinstance(rebuild_error("KeyError", "k"), KeyError)
    assert rebuild_error("SystemExit", "bye") is None  # only visprog's and plain Python errors
    assert rebuild_error("first_line", "x") is None    # a function of visprog.errors, not a class
    assert rebuild_error("ModelLoadError", "m").args == ("m",)
    assert isinstance(rebuild_error("ModelLoadError", "m"), ModelLoadError)


def test_every_error_class_lives_in_visprog_errors():
    """No error class is defined anywhere else in visprog/, so each can be rebuilt by name on
    the other side of the wire; the exceptions are signals one module raises and catches
    itself (or turns into one of visprog.errors), which never reach a caller."""
    import ast

    root = Path(__file__).resolve().parents[1] / "visprog"
    elsewhere = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "errors.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases):
                elsewhere.append(f"{path.relative_to(root)}: {node.name}")
    internal = ["cli.py: UsageError",                 # the command line's exit status 2
                "language/fastparse.py: NoFastPath",  # "ask Lark instead"
                "models/openai_api.py: NotACompletion",  # retried, then the caller's error
                "query/expr.py: ExprProblem"]         # becomes a QueryError with its hint
    assert elsewhere == internal, elsewhere


def test_a_replica_waits_for_company_only_where_there_is_some():
    """The replica's batching policy, without Ray: before each request is queued it sets how
    long the batch that request may open waits for company. A new replica waits; a lone
    request after a batch of one does not; a request that finds others in the replica does,
    and so does the next one after a batch of several. The calls a request says it carries
    size batches, clamped to 1..max_batch_size."""
    import asyncio

    from visprog.hosting.serve import ModuleServer

    class Batcher:  # what ModuleServer uses of Ray Serve's @serve.batch wrapper
        def __init__(self):
            self.waits, self.queued = [], []

        def set_batch_wait_timeout_s(self, seconds):
            self.waits.append(seconds)

        async def __call__(self, arrival):
            done = asyncio.get_running_loop().create_future()
            self.queued.append((arrival, done))
            return await done

    server = ModuleServer.__new__(ModuleServer)
    server.max_batch_size, server.batch_wait_s = 8, 0.25
    server.run_batch = batcher = Batcher()
    server._run = lambda requests: [b"reply " + r for r in requests]

    async def batch() -> None:
        """Run everything queued as one batch, as Ray Serve would."""
        taken, batcher.queued = batcher.queued, []
        replies = await server._run_async([a for a, _ in taken])
        for (_, done), reply in zip(taken, replies):
            done.set_result(reply)

    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        first = loop.create_task(server(b"a", 3))
        await asyncio.sleep(0)
        assert batcher.waits == [0.25]                 # a new replica waits for company
        await batch()
        assert await first == b"reply a" and batcher.queued == []
        lone = loop.create_task(server(b"b"))
        await asyncio.sleep(0)
        assert batcher.waits[-1] == 0.0                # alone, after a batch of one
        company = loop.create_task(server(b"c", 1))
        await asyncio.sleep(0)
        assert batcher.waits[-1] == 0.25               # another one is in the replica
        await batch()                                  # b and c together
        assert [await lone, await company] == [b"reply b", b"reply c"]
        after_two = loop.create_task(server(b"d", "not a number"))
        await asyncio.sleep(0)
        assert batcher.waits[-1] == 0.25               # the last batch had company
        calls = [a.calls for a, _ in batcher.queued]
        await batch()
        await after_two
        big = loop.create_task(server(b"e", 500))
        await asyncio.sleep(0)
        assert batcher.waits[-1] == 0.0                # alone again: no wait
        calls += [a.calls for a, _ in batcher.queued]
        await batch()
        await big
        return calls

    assert asyncio.run(scenario()) == [1, 8]           # clamped to 1..max_batch_size
    assert server.in_replica == 0                      # every request answered


# -- without Ray installed ---------------------------------------------------------------------

def test_a_hosted_module_without_ray_fails_clearly(monkeypatch):
    """Building an engine with a hosted module needs no Ray; calling it without Ray is a
    StepError whose cause is a HostError naming the module and how to install Ray (at once:
    retrying can't help)."""
    monkeypatch.setitem(sys.modules, "ray", None)    # `import ray` now raises ImportError
    vp = VisProg(preset="tiny", cache=False, config=hosted(modules=("Vqa",), retries=0))
    with pytest.raises(StepError) as err:
        vp.execute("A=Vqa(image=IMAGE, question='what is it?')", image=picture(1))
    cause = err.value.__cause__
    assert isinstance(cause, HostError) and cause.module == "Vqa"
    assert "pip install 'visprog[ray]'" in str(cause) and 'host = "local"' in str(cause)


def test_this_file_runs_with_ray_hidden(tmp_path):
    """The other tests of this file, in a fresh interpreter where `import ray` fails: none is
    skipped or fails. (tests/test_hosting.py, by contrast, skips itself there.)"""
    hide = ("import sys; sys.modules['ray'] = sys.modules['ray.serve'] = None; "
            "import pytest; sys.exit(pytest.main(sys.argv[1:]))")
    here = Path(__file__)
    proc = subprocess.run(
        [sys.executable, "-c", hide, str(here), "-q", "-p", "no:cacheprovider", "-rs",
         "-k", "not this_file_runs_with_ray_hidden",
         "--rootdir", str(here.parent.parent)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
