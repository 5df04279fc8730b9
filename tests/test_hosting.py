"""Model modules hosted on Ray Serve (visprog/hosting/client.py, visprog/hosting/serve.py),
against a local Ray instance started once for this file (CPU, the tiny preset). The hosting
config and the wire format need no Ray: they are tested in tests/test_hosting_wire.py.

Covered: remote and in-process runs give the same values, traces and cache keys; a batch
travels as requests of `max_batch_size` calls; concurrent requests are coalesced into batches
by the replica; a tool's own error comes back as itself;
a replica killed mid-call gives a clear HostError (no retries) or a retried, correct answer,
and nothing is cached for a failed step; a missing host and a mismatched deployment fail
clearly; `visprog serve` deploys to a running cluster, and says so when there is nothing to
serve.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.slow   # a local Ray cluster: minutes on two cores

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ray", reason="the hosting tests need Ray Serve: pip install 'visprog[ray]'")
pytest.importorskip("ray.serve", reason="the hosting tests need Ray Serve: pip install 'visprog[ray]'")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from visprog.values import codec  # noqa: E402
from visprog.api import VisProg  # noqa: E402
from visprog.config import module_catalog  # noqa: E402
from visprog.engine.cache import StepCache  # noqa: E402
from visprog.config import load_config  # noqa: E402
from visprog.errors import StepError  # noqa: E402
from visprog.hosting.client import HostError, client_of  # noqa: E402
from visprog.hosting.serve import deploy  # noqa: E402

from hosting_helpers import HOST, HOSTED, PROGRAM, hosted, picture  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray instance and the deployments of Loc, Vqa and Classify for the file.

    The tiny models are built here first, in a folder the replicas see too (they inherit
    this process's environment), so no replica builds them."""
    tiny = tmp_path_factory.mktemp("tiny-models")
    cache = tmp_path_factory.mktemp("replica-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISPROG_TINY_DIR", str(tiny))
        mp.setenv("VISPROG_CACHE_DIR", str(cache))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry from a test run
        VisProg(preset="tiny", cache=False).execute(PROGRAM, image=picture(0))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            deploy(load_config("tiny", overrides=hosted()), module_catalog())
            yield ray.get_runtime_context().gcs_address
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def local_vp(cluster):
    return VisProg(preset="tiny", cache=False)


def fingerprint(trace) -> list:
    """What must match between runs: per step its module, arguments and output (by content)."""
    return [(r.target, r.module, {k: codec.digest(v) for k, v in r.args.items()},
             codec.digest(r.output), r.error) for r in trace.steps]


# -- same results ------------------------------------------------------------------------------

def test_remote_and_in_process_runs_match(cluster, local_vp):
    cache = StepCache(memory=True)
    remote = VisProg(preset="tiny", cache=cache, config=hosted())
    for seed in (1, 2):
        image = picture(seed, size=(160 + 40 * seed, 120))
        here = local_vp.execute(PROGRAM, image=image)
        there = remote.execute(PROGRAM, image=image)
        assert there.value == here.value
        assert fingerprint(there.trace) == fingerprint(here.trace)
        assert not any(r.cached for r in there.trace.steps if r.module in HOSTED)
        # Same cache keys: an in-process interpreter sharing the cache finds every step.
        again = VisProg(preset="tiny", cache=cache).execute(PROGRAM, image=image)
        assert all(r.cached for r in again.trace.steps if r.module)
        assert fingerprint(again.trace) == fingerprint(here.trace)


def test_a_batch_travels_as_requests_of_max_batch_size(cluster, local_vp):
    """run_batch's 16 Vqa calls go as 2 requests of 8 (max_batch_size), each run as one batch
    of the module's batched entry point; the values are the in-process ones."""
    remote = VisProg(preset="tiny", cache=False, config=hosted())
    client = client_of(remote.registry.get("Vqa"))
    before, sent = client.stats(), client.requests
    items = [{"program": "A=Vqa(image=IMAGE, question='what color is the car?')",
              "image": picture(10 + i)} for i in range(16)]
    results = remote.run_batch(items, batch_size=16)
    after = client.stats()
    assert client.requests - sent == 2
    assert after["calls"] - before["calls"] == 16
    assert after["batch_sizes"][len(before["batch_sizes"]):] == [8, 8]
    expected = [local_vp.execute(i["program"], image=i["image"]).value for i in items]
    assert [r.value for r in results] == expected
    # The replica's model manager loaded BLIP once, and says so.
    assert [e["kind"] for e in after["events"] if e["event"] == "load"] == ["vlm"]


def test_concurrent_requests_are_coalesced(cluster, local_vp):
    """Single-call requests from many threads at once: Ray Serve's batching puts them
    together (fewer batches than calls), and each caller gets its own answer."""
    remote = VisProg(preset="tiny", cache=False, config=hosted())
    client = client_of(remote.registry.get("Vqa"))
    before = client.stats()
    program = "A=Vqa(image=IMAGE, question='what color is the car?')"
    images = [picture(40 + i) for i in range(12)]
    values: list = [None] * len(images)
    start = threading.Barrier(len(images))

    def ask(i: int) -> None:
        start.wait()
        values[i] = remote.execute(program, image=images[i]).value

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = client.stats()
    sizes = after["batch_sizes"][len(before["batch_sizes"]):]
    assert after["calls"] - before["calls"] == len(images)
    assert len(sizes) < len(images) and max(sizes) > 1, sizes
    assert values == [local_vp.execute(program, image=im).value for im in images]


def test_tool_error_comes_back_as_itself(cluster, local_vp):
    program = "A=Vqa(image=IMAGE, question='  ')"
    with pytest.raises(StepError) as here:
        local_vp.execute(program, image=picture(3))
    remote = VisProg(preset="tiny", cache=False, config=hosted())
    with pytest.raises(StepError) as there:
        remote.execute(program, image=picture(3))
    assert there.value.trace.steps[-1].error == here.value.trace.steps[-1].error
    assert client_of(remote.registry.get("Vqa")).retried == 0   # not a host failure


# -- failures ----------------------------------------------------------------------------------

def test_missing_host_fails_clearly_and_caches_nothing(cluster):
    cache = StepCache(memory=True)
    vp = VisProg(preset="tiny", cache=cache,
                 config=hosted(app="nowhere", modules=("Vqa",), retries=1))
    started = time.perf_counter()
    with pytest.raises(StepError) as err:
        vp.execute("A=Vqa(image=IMAGE, question='what is it?')", image=picture(4))
    cause = err.value.__cause__
    assert isinstance(cause, HostError)
    assert cause.module == "Vqa" and cluster in cause.address
    assert "nowhere-Vqa" in str(cause) and "after 2 attempts" in str(cause)
    assert time.perf_counter() - started < 30
    assert len(cache.memory) == 0


def test_deployment_with_other_settings_is_refused(cluster):
    vp = VisProg(preset="tiny", cache=False,
                 config={"Vqa": {**HOST, "max_new_tokens": 3}})
    with pytest.raises(StepError) as err:
        vp.execute("A=Vqa(image=IMAGE, question='what is it?')", image=picture(5))
    assert isinstance(err.value.__cause__, HostError)
    assert "same config" in str(err.value.__cause__)


def _replica_actors(app: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}-Vqa#")]


def _wait_ready(app: str, timeout: float = 90.0) -> None:
    handle = serve.get_app_handle(f"{app}-Vqa")
    deadline = time.monotonic() + timeout
    while True:
        try:
            handle.describe.remote().result(timeout_s=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def served_by_cli(cluster, tmp_path_factory):
    """`visprog serve` run in another process deploys Vqa (app 'cli') to the test cluster and
    exits. Its replica waits 2 s to fill a batch (of 4 calls) when it waits at all, which
    gives the kill test its window and the waiting test clear figures."""
    config = tmp_path_factory.mktemp("serve-cli") / "cluster.toml"
    config.write_text('[Vqa]\nhost = "ray"\nray_app = "cli"\nnum_cpus = 0.25\n'
                      'batch_wait_s = 2.0\nmax_batch_size = 4\n')
    env = {**os.environ, "RAY_ADDRESS": ""}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "visprog.cli", "serve", "--preset", "tiny",
             "--config", str(config), "--address", cluster],
            capture_output=True, text=True, timeout=180, env=env)
        yield proc, config
    finally:
        serve.delete("cli-Vqa")


def test_serve_command_deploys_to_a_running_cluster(cluster, served_by_cli, local_vp):
    proc, config = served_by_cli
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serving Vqa as 'cli-Vqa'" in proc.stdout
    assert f'ray_address = "{cluster}"' in proc.stdout
    vp = VisProg(preset="tiny", cache=False, config=str(config))
    program = "A=Vqa(image=IMAGE, question='how many dogs are there?')"
    assert vp.execute(program, image=picture(7)).value == \
        local_vp.execute(program, image=picture(7)).value


def _replica_actors(app: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}-Vqa#")]


def _fresh_replica(app: str, timeout: float = 120.0) -> None:
    """Replace the app's replica by a new one (which has served nothing yet) and wait for it."""
    old = set(_replica_actors(app))
    for name in old:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + timeout
    while not (set(_replica_actors(app)) - old):
        assert time.monotonic() < deadline, "Serve did not replace the replica"
        time.sleep(0.5)
    _wait_ready(app, timeout)


def test_full_and_lone_requests_do_not_wait_for_company(cluster, served_by_cli):
    """The 'cli' replica waits up to 2 s to fill a batch of 4 calls, where company is likely
    (the policy itself: tests/test_hosting_wire.py). A request that fills a batch runs at
    once (though a new replica waits for company); so does a lone request after a batch of
    one. The client's timing and the replica's own, both reported, say so."""
    assert served_by_cli[0].returncode == 0, served_by_cli[0].stderr[-2000:]
    _fresh_replica("cli")
    vp = VisProg(preset="tiny", cache=False, config=str(served_by_cli[1]))
    client = client_of(vp.registry.get("Vqa"))

    def queued(calls: int) -> float:
        """Seconds the requests of one call of `calls` questions waited in the replica."""
        before = client.stats()["seconds"]["queued"]
        client.call([{"image": picture(80 + i), "question": "what is it?"}
                     for i in range(calls)])
        return client.stats()["seconds"]["queued"] - before

    assert queued(4) < 1.0         # full: no wait, though a new replica waits for company
    assert queued(1) < 1.0         # alone, after a batch of one request: no wait
    assert queued(1) < 1.0
    stats = client.stats()
    assert stats["requests"] == 3 and stats["calls"] == 6 and stats["seconds"]["run"] > 0
    assert client.seconds["wait"] > stats["seconds"]["run"] > 0 and client.seconds["encode"] > 0


def _kill_replica_soon(app: str, delay: float) -> threading.Thread:
    def kill():
        time.sleep(delay)
        for name in _replica_actors(app):
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_replica_killed_mid_call(cluster, served_by_cli, local_vp):
    """The replica (new, so waiting 2 s to fill a batch) is killed while our request waits in
    it. Without retries: a HostError naming the module and address, and no cache entry. With
    retries: Serve starts a new replica and the retried request gives the right answer (or,
    if that takes too long, the same clear error: never a wrong answer)."""
    assert served_by_cli[0].returncode == 0, served_by_cli[0].stderr[-2000:]
    app = "cli"
    _fresh_replica(app)  # one that has answered a lone request answers the next at once
    program = "A=Vqa(image=IMAGE, question='is there a cat?')"
    image = picture(6)
    expected = local_vp.execute(program, image=image).value
    cache = StepCache(memory=True)
    no_retry = VisProg(preset="tiny", cache=cache,
                       config=hosted(app=app, modules=("Vqa",), retries=0))
    client_of(no_retry.registry.get("Vqa"))._connect()   # connected before the kill
    killer = _kill_replica_soon(app, delay=0.7)
    with pytest.raises(StepError) as err:
        no_retry.execute(program, image=image)
    killer.join()
    cause = err.value.__cause__
    assert isinstance(cause, HostError) and cause.module == "Vqa"
    assert "died" in str(cause)
    assert f"{app}-Vqa" in str(cause) and cluster in str(cause)
    assert len(cache.memory) == 0

    _wait_ready(app)  # Serve has replaced the killed replica
    retrying = VisProg(preset="tiny", cache=cache,
                       config=hosted(app=app, modules=("Vqa",), retries=6))
    client = client_of(retrying.registry.get("Vqa"))
    client._connect()
    killer = _kill_replica_soon(app, delay=0.7)
    try:
        out = retrying.execute(program, image=image)
    except StepError as e:
        assert isinstance(e.__cause__, HostError)
        assert len(cache.memory) == 0
    else:
        assert out.value == expected
        assert client.retried >= 1
        assert len(cache.memory) == 1
    killer.join()


def test_eval_spread_over_the_cluster(cluster, tmp_path):
    """`evaluate` with the Ray executor: the same result lines and summary as on one machine,
    and a rerun resumes from the file."""
    import json

    from visprog.evaluation.datasets import load_dataset
    from visprog.evaluation.harness import evaluate, read_results
    from visprog.hosting.cluster import ray_executor

    questions = ["is there a dog?", "what color is the car?", "how many cats are there?"]
    with open(tmp_path / "data.jsonl", "w") as f:
        for i in range(6):
            picture(20 + i).save(tmp_path / f"{i}.png")
            f.write(json.dumps({"id": f"q{i}", "image": f"{i}.png", "question": questions[i % 3],
                                "answer": "yes" if i % 2 else "red", "type": f"t{i % 2}",
                                "program": f"A=Vqa(image=IMAGE, question='{questions[i % 3]}')"
                                           if i != 4 else "A=Vqa(image=IMAGE"}) + "\n")
    items = load_dataset(tmp_path / "data.jsonl")
    vp = VisProg(preset="tiny", cache=False)
    here = evaluate(vp, items, tmp_path / "here.jsonl", chunk_size=2, progress=False)
    executor = ray_executor(cluster, functools.partial(VisProg.from_recipe, vp.assembly.recipe),
                            num_cpus=0.25)
    first = evaluate(vp, items, tmp_path / "there.jsonl", chunk_size=2, progress=False,
                     limit=3, executor=executor)
    assert first["this_run"]["items"] == 3
    there = evaluate(vp, items, tmp_path / "there.jsonl", chunk_size=2, progress=False,
                     executor=executor)
    assert there["this_run"]["items"] == 3          # resumed: only the rest ran

    def by_id(path):
        return sorted(read_results(path), key=lambda r: r["id"])

    assert by_id(tmp_path / "there.jsonl") == by_id(tmp_path / "here.jsonl")
    for key in ("total", "done", "correct", "accuracy", "failures", "by_type"):
        assert there[key] == here[key], key
    assert {r["status"] for r in by_id(tmp_path / "here.jsonl")} >= {"no_program"}


def test_serve_command_without_hosted_modules(capsys):
    from visprog.cli import main

    assert main(["serve", "--preset", "tiny"]) == 2
    assert "no module to serve" in capsys.readouterr().err
