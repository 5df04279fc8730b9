"""Ray Serve deployments of the model modules, and the `visprog serve` launcher.

One Serve application per hosted module, named `<ray_app>-<Module>` (see
visprog/hosting/client.py for the config keys). Each replica assembles its module exactly as
an in-process interpreter does (`visprog.config.assemble_replica`, handed down in the
catalog: the same settings, its own model manager, memory budget included) and serves:

- `__call__(request bytes, calls) -> reply bytes`: one or more calls (a client sends a
  batch's calls together, up to `max_batch_size` a request, and says how many). Ray Serve's
  `@serve.batch` coalesces the requests that arrive together, counting their calls: a batch
  is full at `max_batch_size` calls and then runs at once (a full request never waits);
  otherwise it waits at most `batch_wait_s` for more, but only where company is likely: a
  request that finds no other in the replica, when the last batch also held a single
  request, runs at once (a lone caller, one program after another, pays no wait); one that
  finds others there, or follows a batch of several, waits for company (so does the first
  request of a new replica). The calls go to the module's batched entry point
  `max_batch_size` at a time. If a batch raises, its calls run one by one so an error
  reaches only its own call.
- `describe()`: the module's declaration (name, version, settings), which clients check.
- `stats()`: counters for tests and monitoring: batches run, calls served, batch sizes, the
  replica's model load/unload events, and where its time went (`seconds`: waiting in the
  batch queue, decoding requests, running the module, encoding replies).

    visprog serve --config cluster.toml --preset default            # local Ray, blocks
    visprog serve --config cluster.toml --address 10.0.0.5:6379     # deploy to a cluster, exit

Requires the `ray` extra (`pip install "visprog[ray]"`).
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from visprog.hosting.client import (RAY_AUTH_MODE, TOKEN_HINT, HostSpec, ModuleCatalog,
                                    connect_ray, decode_request, encode_error, encode_reply,
                                    host_spec, outcome_error, outcome_ok, split_config,
                                    token_path)


# Ray starts its worker processes, every replica among them, at niceness 15, below its own
# daemons. A replica is the service here; at 15 it gets the CPU only when nothing else on
# the machine wants it (on a shared 2-core machine its module ran several times slower than
# the same module in the client's process). A local Ray that visprog starts runs them at the
# client's priority; for a cluster started with `ray start`, set RAY_worker_niceness=0 there.
LOCAL_RAY_SYSTEM_CONFIG = {"worker_niceness": 0}


def start_local_ray(num_cpus: float | None = None, **options: Any) -> None:
    """Start a local Ray instance for serving (no dashboard, workers at normal priority)."""
    import ray

    ray.init(include_dashboard=False, log_to_driver=False,
             _system_config=dict(LOCAL_RAY_SYSTEM_CONFIG),
             **({"num_cpus": num_cpus} if num_cpus else {}), **options)


@dataclass(frozen=True)
class Arrival:
    """A request as it waits in the batch queue: its bytes, how many calls it carries (as
    the client says, at least 1: it only sizes batches, the bytes are what runs) and when
    it came."""

    request: bytes
    calls: int
    at: float


class ModuleServer:
    """One replica of a module's deployment.

    Args:
        module: the tool name ("Vqa").
        config: the whole configuration (preset merged with the user's file); the replica
            uses `[models]` and the module's section.
        catalog: the modules and how to assemble one (`visprog.config.module_catalog()`).
        max_batch_size, batch_wait_s: Ray Serve batching of this replica.
    """

    # Where a replica's time goes (`stats()["seconds"]`) and how busy it is: counted from
    # these class defaults, so request handling needs nothing more from `__init__`.
    requests = 0
    queued_s = decode_s = run_s = encode_s = 0.0
    in_replica = 0             # requests received and not yet answered (the event loop's)
    last_batch_alone = False   # whether the last batch held a single request

    def __init__(self, module: str, config: Mapping[str, Any], catalog: ModuleCatalog,
                 max_batch_size: int = 16, batch_wait_s: float = 0.01, warmup: bool = True):
        from ray import serve

        assembly = catalog.assemble(config, module)
        self.models = assembly.models
        self.tool = assembly.registry.get(module)
        # Ray Serve's batching, made here so this module imports without ray (the CLI
        # builds its parser from it) and each deployment gets its own batch size.
        self.max_batch_size = max(1, max_batch_size)
        self.batch_wait_s = batch_wait_s
        # Batches are counted in calls, not requests: a request that fills one runs at once
        # instead of waiting batch_wait_s for company it has no room for.
        self.run_batch = serve.batch(
            max_batch_size=self.max_batch_size, batch_wait_timeout_s=batch_wait_s,
            batch_size_fn=lambda arrivals: sum(a.calls for a in arrivals))(self._run_async)
        self.batches = 0
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.warmup_error = warm_up(self.tool) if warmup else None

    async def __call__(self, request: bytes, calls: int = 1) -> bytes:
        try:
            calls = min(max(1, int(calls)), self.max_batch_size)
        except (TypeError, ValueError):
            calls = 1
        # Waiting for company pays only where there is some. Ray Serve reads the wait when a
        # batch's first request arrives (set here, just before it is queued).
        alone = self.in_replica == 0 and self.last_batch_alone
        self.run_batch.set_batch_wait_timeout_s(0.0 if alone else self.batch_wait_s)
        self.in_replica += 1
        try:
            return await self.run_batch(Arrival(request, calls, time.perf_counter()))
        finally:
            self.in_replica -= 1

    async def _run_async(self, arrivals: list[Arrival]) -> list[bytes]:
        now = time.perf_counter()
        self.queued_s += sum(now - a.at for a in arrivals)
        self.last_batch_alone = len(arrivals) == 1
        # The model runs in a worker thread so the replica keeps taking requests meanwhile.
        return await asyncio.to_thread(self._run, [a.request for a in arrivals])

    def _run(self, requests: list[bytes]) -> list[bytes]:
        t0 = time.perf_counter()
        replies: list[bytes | None] = [None] * len(requests)
        outcomes: dict[int, list[Any]] = {}
        flat: list[tuple[int, int, dict[str, Any]]] = []  # (request, call in it, kwargs)
        for i, data in enumerate(requests):
            try:
                calls = decode_request(data)
            except ValueError as e:
                replies[i] = encode_error(e)
                continue
            outcomes[i] = [None] * len(calls)
            flat += [(i, j, c) for j, c in enumerate(calls)]
        t1 = time.perf_counter()
        size = self.max_batch_size
        for start in range(0, len(flat), size):
            chunk = flat[start:start + size]
            self.batches += 1
            self.batch_sizes.append(len(chunk))
            self.calls += len(chunk)
            for (i, j, _), result in zip(chunk, self._run_calls([c for _, _, c in chunk])):
                outcomes[i][j] = result
        t2 = time.perf_counter()
        for i, results in outcomes.items():
            replies[i] = self._encode(results)
        self.requests += len(requests)
        self.decode_s += t1 - t0
        self.run_s += t2 - t1
        self.encode_s += time.perf_counter() - t2
        return replies  # type: ignore[return-value]

    @staticmethod
    def _encode(results: list[dict[str, Any]]) -> bytes:
        try:
            return encode_reply(results)
        except TypeError:  # a value the wire can't carry: an error for that call alone
            fixed = []
            for r in results:
                try:
                    encode_reply([r])
                    fixed.append(r)
                except TypeError as e:
                    fixed.append(outcome_error(e))
            return encode_reply(fixed)

    def _run_calls(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One outcome per call, through the engine's chunk runner (batched entry point, one
        by one if it raises, outputs checked against the declaration)."""
        from visprog.engine.core import run_chunk

        return [outcome_ok(v) if ok else outcome_error(v) for ok, v in run_chunk(self.tool, calls)]

    def describe(self) -> dict[str, Any]:
        from visprog.hosting.client import _settings_json

        return {"name": self.tool.name, "version": self.tool.version,
                "settings": _settings_json(self.tool.settings), "pid": os.getpid(),
                "device": self.models.device}

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "calls": self.calls,
                "batch_sizes": list(self.batch_sizes), "pid": os.getpid(),
                "requests": self.requests,
                "seconds": {"queued": self.queued_s, "decode": self.decode_s, "run": self.run_s,
                            "encode": self.encode_s},
                "events": [dict(e) for e in self.models.events],
                "warmup_error": self.warmup_error,
                "loaded": self.models.loaded()}


def warm_up(tool: Any) -> str | None:
    """Call the tool once on made-up arguments of its declared types, so that its libraries
    and models load while the replica starts rather than on the first request. Returns the
    error, if any (a warm-up that fails is not fatal: the first request will say why)."""
    from PIL import Image

    from visprog.values import Objects

    size = (64, 48)
    samples = {"Image": Image.new("RGB", size, (127, 127, 127)), "Text": "object",
               "TextList": ["object"], "Number": 1, "Bool": True,
               "Objects": Objects([(8, 8, 40, 40)], size, labels=["object"])}
    kwargs = {}
    for p in tool.params:
        if not p.required:
            continue
        kind = next((t for t in ("Image", "Objects", "TextList", "Text", "Number", "Bool")
                     if t in p.types), None)
        if kind is None:
            return f"no sample value for {p.name}: {p.type_str}"
        kwargs[p.name] = samples[kind]
    try:
        tool.fn(**kwargs)
    except Exception as e:  # reported by stats(); requests still get their own errors
        return f"{type(e).__name__}: {e}"
    return None


def deployment_for(spec: HostSpec, config: Mapping[str, Any], catalog: ModuleCatalog) -> Any:
    """The bound Serve application of one module."""
    from ray import serve

    options = {"num_cpus": spec.num_cpus}
    if spec.gpu_fraction:
        options["num_gpus"] = spec.gpu_fraction
    dep = serve.deployment(ModuleServer).options(
        name=spec.app_name, num_replicas=spec.replicas, ray_actor_options=options,
        # Enough requests in a replica at once to fill a batch.
        max_ongoing_requests=max(2 * spec.max_batch_size, 8),
        health_check_period_s=2.0, health_check_timeout_s=30.0)
    return dep.bind(spec.module, dict(config), catalog, spec.max_batch_size, spec.batch_wait_s,
                    spec.warmup)


def hosted_specs(config: Mapping[str, Any], catalog: ModuleCatalog,
                 modules: Sequence[str] = ()) -> list[HostSpec]:
    """The modules to deploy: those named, else every module whose config says host = "ray"."""
    from visprog.errors import ConfigError

    _, hosts = split_config(config, catalog.model_modules, catalog.plain_modules)
    if not modules:
        return list(hosts.values())
    specs = []
    for name in modules:
        canonical = next((m for m in catalog.model_modules if m.lower() == name.lower()), None)
        if canonical is None:
            raise ConfigError(f"can't serve {name!r}: model modules are "
                              f"{', '.join(sorted(catalog.model_modules))}")
        specs.append(hosts.get(canonical)
                     or host_spec(canonical, {**config.get(canonical, {}), "host": "ray"}))
    return specs


def deploy(config: Mapping[str, Any], catalog: ModuleCatalog,
           modules: Sequence[str] = ()) -> dict[str, Any]:
    """Start (or update) the deployments of the hosted modules on the connected Ray cluster
    and wait until they are ready.

    Returns:
        module name -> its `DeploymentHandle`.
    """
    from ray import serve

    serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy
    specs = hosted_specs(config, catalog, modules)
    # run_many starts the applications together (each replica loads its libraries at once).
    handles = serve.run_many([serve.RunTarget(deployment_for(s, config, catalog), name=s.app_name,
                                              route_prefix=None) for s in specs])
    return {s.module: h for s, h in zip(specs, handles)}


def main(args: Any, config: Mapping[str, Any], catalog: ModuleCatalog) -> int:
    """`visprog serve`: connect to (or start) Ray, deploy, and wait (see `add_parser`).
    `config` is the loaded configuration, `catalog` the modules (from the CLI)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        print("visprog serve needs Ray Serve: pip install 'visprog[ray]'", file=sys.stderr)
        return 2

    specs = hosted_specs(config, catalog, args.module or ())
    if not specs:
        print("visprog serve: no module to serve; set host = \"ray\" in a module's section "
              "of the config, or name modules with --module", file=sys.stderr)
        return 2
    if args.address:
        connect_ray(args.address)
    else:
        start_local_ray(args.num_cpus)
    deploy(config, catalog, [s.module for s in specs])
    address = ray.get_runtime_context().gcs_address
    for s in specs:
        print(f"serving {s.module} as {s.app_name!r} ({s.replicas} replica(s), "
              f"{s.gpu_fraction} GPU each, batches up to {s.max_batch_size})")
    print(f"clients: set ray_address = \"{address}\" for these modules")
    if os.environ.get(RAY_AUTH_MODE, "").lower() == "token":
        print(f"token authentication is on: clients on this machine send the token in "
              f"{token_path()} by themselves; on other machines {TOKEN_HINT}")
    sys.stdout.flush()
    if args.address and not args.block:
        return 0  # the deployments live on in the cluster
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def add_serve_arguments(p: Any) -> None:
    """The `serve` subcommand's flags (visprog/cli.py makes the subparser)."""
    p.add_argument("--config", help="TOML file: the modules with host = \"ray\" are served")
    p.add_argument("--preset", default="default", help="model preset (default or tiny)")
    p.add_argument("--module", action="append",
                   help="serve this module even if its config doesn't say host = \"ray\" "
                        "(repeatable)")
    p.add_argument("--address", help="an existing Ray cluster ('auto', 'HOST:6379'); "
                                     "default: start a local Ray instance and keep serving")
    p.add_argument("--num-cpus", type=float, help="CPUs of the local Ray instance")
    p.add_argument("--block", action="store_true",
                   help="with --address: keep running (and shut Serve down on Ctrl-C)")
