"""Where a model module runs: in this process (the default) or on a Ray Serve deployment.

Hosting is configuration, not code. A module's section names its host:

    [Vqa]
    host = "ray"                 # "local" (default): in this process
    ray_address = "auto"         # the Ray cluster: "auto", "10.0.0.5:6379", "ray://head:10001"
    ray_app = "visprog"          # deployments are Serve applications named "<ray_app>-<Module>"
    replicas = 1                 # (server side) replicas of the deployment
    gpu_fraction = 0.5           # (server side) GPUs per replica; 0 on a CPU cluster
    num_cpus = 1                 # (server side) CPUs per replica
    max_batch_size = 16          # calls a request carries; calls a replica's batched call takes
    batch_wait_s = 0.01          # (server side) how long a replica waits to fill a batch
                                 # while requests come together (visprog/hosting/serve.py)
    timeout_s = 120              # (client side) per request
    retries = 2                  # (client side) extra attempts when the host fails
    warmup = true                # (server side) load the models when a replica starts

These keys are taken out of the section before the module is built, so the tool's declared
settings, and with them the step cache keys, are the same wherever it runs.

`visprog serve --config FILE` (visprog/serve.py) starts the deployments. Here, on the client
side, `host_tools` swaps each hosted tool for a `Tool` with the same name, arguments, returns,
version and settings whose calls go to the deployment: the calls of a batch go together, up
to `max_batch_size` a request, and the replica's `@serve.batch` coalesces concurrent requests
(from many threads or interpreters) into calls of the module's batched entry point.

Values cross the wire as `visprog.codec` bytes (raw pixels, packed masks, JSON), never as
pickles of user data. A tool's own error (a bad argument, a `ModelLoadError`) comes back as
that error, of the same class (every visprog error class lives in `visprog.errors`); a failure
of the host (unreachable, no such deployment, a replica that died, a timeout) is retried
`retries` times and then raised as `HostError`, naming the module and the address. Nothing is
returned for a failed call, so the interpreter caches nothing for it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from visprog.values import codec
from visprog.errors import (ConfigError, HostError, RemoteToolError, VisProgError, error_fields,
                            first_line, rebuild_error)
from visprog.registry import Tool

HOSTS = ("local", "ray")


@dataclass(frozen=True)
class ModuleCatalog:
    """What hosting knows of the modules, handed down by the layer that assembles the tools
    (`visprog.config.module_catalog()`), so hosting never imports tools/. Picklable: a Ray
    replica receives it and assembles the module it serves with `assemble(config, module)`
    (`visprog.config.assemble_replica`: an object with `.registry` and `.models`)."""

    model_modules: frozenset[str]
    plain_modules: frozenset[str]
    assemble: Callable[[Mapping[str, Any], str], Any]


@dataclass(frozen=True)
class HostSpec:
    """Where and how one module is hosted (the hosting keys of its config section)."""

    module: str
    host: str = "local"
    ray_address: str = "auto"
    ray_app: str = "visprog"
    replicas: int = 1
    gpu_fraction: float = 0.0
    num_cpus: float = 1.0
    max_batch_size: int = 16
    batch_wait_s: float = 0.01
    timeout_s: float = 120.0
    retries: int = 2
    warmup: bool = True

    @property
    def app_name(self) -> str:
        """The Serve application (and deployment) that serves this module."""
        return f"{self.ray_app}-{self.module}"

    @property
    def remote(self) -> bool:
        return self.host != "local"


HOST_KEYS = tuple(f.name for f in dataclasses.fields(HostSpec) if f.name != "module")


def host_spec(module: str, section: Mapping[str, Any]) -> HostSpec:
    """The `HostSpec` of a module's config section (defaults for keys it doesn't set).

    Raises:
        ConfigError: an unknown host, a bad value, or a module that can't be hosted.
    """
    values = {k: section[k] for k in HOST_KEYS if k in section}
    try:
        spec = HostSpec(module=module, **values)
        spec = dataclasses.replace(
            spec, host=str(spec.host).lower(), ray_address=str(spec.ray_address),
            ray_app=str(spec.ray_app), replicas=int(spec.replicas),
            gpu_fraction=float(spec.gpu_fraction), num_cpus=float(spec.num_cpus),
            max_batch_size=int(spec.max_batch_size), batch_wait_s=float(spec.batch_wait_s),
            timeout_s=float(spec.timeout_s), retries=int(spec.retries),
            warmup=bool(spec.warmup))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{module}]: bad hosting setting: {e}") from e
    if spec.host not in HOSTS:
        raise ConfigError(f"[{module}] host = {spec.host!r}; choose one of {', '.join(HOSTS)}")
    bad = [k for k in ("replicas", "max_batch_size") if getattr(spec, k) < 1]
    bad += [k for k in ("timeout_s",) if getattr(spec, k) <= 0]
    bad += [k for k in ("gpu_fraction", "num_cpus", "batch_wait_s", "retries")
            if getattr(spec, k) < 0]
    if bad:
        raise ConfigError(f"[{module}]: {', '.join(bad)} out of range")
    return spec


def split_config(config: Mapping[str, Any], model_modules: Iterable[str] = (),
                 plain_modules: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, HostSpec]]:
    """(the config with hosting keys removed from model modules' sections, the `HostSpec` of
    every hosted module).

    Only model modules (`model_modules`, from the layer that assembles the tools) can be
    hosted; a plain module's section (`plain_modules`) that sets `host` is an error. Other
    tables (`[models]`, `[llm]`...) pass through.
    """
    model_modules, plain_modules = set(model_modules), set(plain_modules)
    tools_config: dict[str, Any] = {}
    hosts: dict[str, HostSpec] = {}
    for name, section in config.items():
        if name not in model_modules or not isinstance(section, Mapping):
            if isinstance(section, Mapping) and "host" in section and name in plain_modules:
                raise ConfigError(f"[{name}] sets host, but only model modules can be "
                                  f"hosted: {', '.join(sorted(model_modules))}")
            tools_config[name] = section
            continue
        spec = host_spec(name, section)
        tools_config[name] = {k: v for k, v in section.items() if k not in HOST_KEYS}
        if spec.remote:
            hosts[name] = spec
    return tools_config, hosts


def host_tools(tools: Sequence[Tool], hosts: Mapping[str, HostSpec]) -> list[Tool]:
    """The tools, with each hosted one replaced by its remote twin (see `remote_tool`).

    Raises:
        ConfigError: a hosted tool that declares itself not hostable (it uses what lives
            with the caller, such as the planner's LLM client).
    """
    for t in tools:
        if t.name in hosts and not t.hostable:
            raise ConfigError(f"[{t.name}] can't be hosted remotely: it uses what lives with "
                              "the caller (the planner's LLM client); remove its host setting")
    return [remote_tool(t, hosts[t.name]) if t.name in hosts else t for t in tools]


# -- the wire format -------------------------------------------------------------------------

def encode_request(calls: Sequence[Mapping[str, Any]], module: str = "") -> bytes:
    """One request: one or more calls of a module (a batch travels as one request, so the
    replica gets it whole instead of as pieces that arrive apart)."""
    try:
        # raw pixels: PNG would cost tens of ms a photo at each end of every request
        return codec.encode({"calls": [dict(c) for c in calls]}, raw_images=True)
    except TypeError as e:
        raise VisProgError(f"{module}: an argument can't be sent to a remote host: {e}") from e


def decode_request(data: bytes) -> list[dict[str, Any]]:
    body = codec.decode(data)
    calls = body.get("calls") if isinstance(body, dict) else None
    if not isinstance(calls, list) or not calls or not all(isinstance(c, dict) for c in calls):
        raise ValueError("not a visprog request")
    return calls


def outcome_ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def outcome_error(error: BaseException) -> dict[str, Any]:
    """A call's error as it travels: its class name, message and plain attributes (a
    `ModelLoadError`'s checkpoint), so the client raises the same class again."""
    return {"error": {"type": type(error).__name__, "message": str(error),
                      "fields": error_fields(error)}}


def encode_reply(outcomes: Sequence[Mapping[str, Any]]) -> bytes:
    """The reply to a request: one `outcome_ok`/`outcome_error` per call, in order."""
    return codec.encode({"results": list(outcomes)}, raw_images=True)


def encode_error(error: BaseException) -> bytes:
    """The reply to a request that could not be read at all."""
    return codec.encode(outcome_error(error))


def _raise_remote(error: Any) -> None:
    kind = error.get("type", "") if isinstance(error, dict) else ""
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    fields = error.get("fields") if isinstance(error, dict) else None
    raised = rebuild_error(str(kind), str(message), fields if isinstance(fields, dict) else None)
    raise raised or RemoteToolError(f"{kind}: {message}")


def decode_reply(data: bytes, module: str, calls: int) -> list[Any]:
    """The values a replica sent for a request of `calls` calls; a call's error is raised
    again here (the first one, in call order)."""
    body = codec.decode(data)
    if isinstance(body, dict) and "error" in body:
        _raise_remote(body["error"])
    results = body.get("results") if isinstance(body, dict) else None
    if (not isinstance(results, list) or len(results) != calls
            or not all(isinstance(r, dict) and ("ok" in r or "error" in r) for r in results)):
        raise HostError(f"{module}: the host sent a reply that is not a visprog result",
                        module=module, address="?")
    for r in results:
        if "ok" not in r:
            _raise_remote(r["error"])
    return [r["ok"] for r in results]


# -- the client ------------------------------------------------------------------------------

# Ray 2.59+ starts local clusters with token authentication: `ray.init()` writes a token to
# ~/.ray/auth_token and only clients that send it may connect. Ray itself sends it only when
# a client finds the cluster by "auto"; `connect_ray` does so for an explicit address too.
RAY_AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_HINT = ("set RAY_AUTH_TOKEN to the token in the server's ~/.ray/auth_token, or "
              "RAY_AUTH_TOKEN_PATH to a copy of that file")


def token_path() -> str:
    """Where Ray keeps this user's cluster token (`RAY_AUTH_TOKEN_PATH`, else Ray's default)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join("~", ".ray", "auth_token")
    return os.path.expanduser(path)


def ray_token_available() -> bool:
    """Whether this process has a Ray cluster token to send (the environment or the file)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(token_path())


def connect_ray(address: str) -> None:
    """Join the Ray cluster at `address`, unless this process already has.

    When the user has not chosen an authentication mode (`RAY_AUTH_MODE`) and a token is
    at hand, it is sent: a cluster with token authentication (the default for one started
    by `visprog serve` without `--address`) needs it, and one without ignores it.
    """
    import ray

    if ray.is_initialized():  # the cluster this process already joined
        return
    if os.environ.get(RAY_AUTH_MODE) is None and ray_token_available():
        os.environ[RAY_AUTH_MODE] = "token"
        try:  # Ray reads its configuration once; have it read the mode again
            from ray._raylet import Config
            Config.initialize("")
        except (ImportError, AttributeError):
            pass
    ray.init(address=address, log_to_driver=False)


def _settings_json(settings: Mapping[str, Any]) -> str:
    return json.dumps(dict(settings), sort_keys=True, default=str)


class RayModuleClient:
    """Sends one module's calls to its Ray Serve deployment.

    Args:
        spec: where the deployment is and how to call it.
        declaration: the local tool; the deployment's version and settings must match it
            (else cache keys would name results computed with other settings).
    """

    def __init__(self, spec: HostSpec, declaration: Tool):
        self.spec = spec
        self.declaration = declaration
        self._handle: Any = None
        self._lock = threading.Lock()
        self.requests = 0        # requests sent, retries included
        self.retried = 0         # requests sent again after a host failure
        # where this client's time went: encoding requests, waiting for the replies (the
        # round trip: routing, transfer, the replica's queue and work), decoding them
        self.seconds = {"encode": 0.0, "wait": 0.0, "decode": 0.0}

    @property
    def address(self) -> str:
        """The configured address, with the cluster's own address once connected."""
        spec = self.spec.ray_address
        try:
            import ray

            if ray.is_initialized():
                actual = ray.get_runtime_context().gcs_address
                if actual and actual != spec:
                    return f"{spec} ({actual})"
        except Exception:  # only for messages
            pass
        return spec

    def _fail(self, what: str, error: BaseException | None, attempts: int) -> HostError:
        detail = f": {type(error).__name__}: {first_line(error)}" if error else ""
        return HostError(
            f"{self.spec.module}: the Ray Serve host at {self.address} (application "
            f"{self.spec.app_name!r}) {what} after {attempts} attempt"
            f"{'s' if attempts != 1 else ''}{detail}\n  how to fix: start it with "
            f"`visprog serve --config FILE` (the same config), check `ray_address` (and, on "
            f"another machine, the cluster's token: {TOKEN_HINT}), or set "
            f"host = \"local\" for [{self.spec.module}]",
            module=self.spec.module, address=self.address)

    def _connect(self) -> Any:
        """The deployment handle, connecting to the cluster and checking the declaration
        the first time."""
        with self._lock:
            if self._handle is not None:
                return self._handle
            try:
                import ray
                from ray import serve
            except ImportError as e:  # not a host failure: retrying can't help
                raise HostError(
                    f"{self.spec.module} is hosted on Ray Serve (host = \"ray\"), but Ray is "
                    f"not installed here ({e}); pip install 'visprog[ray]', or set "
                    f"host = \"local\" for [{self.spec.module}]",
                    module=self.spec.module, address=self.spec.ray_address) from e

            connect_ray(self.spec.ray_address)
            handle = serve.get_app_handle(self.spec.app_name)
            served = handle.describe.remote().result(timeout_s=self.spec.timeout_s)
            mine = {"name": self.declaration.name, "version": self.declaration.version,
                    "settings": _settings_json(self.declaration.settings)}
            theirs = {k: served.get(k) for k in mine}
            if theirs != mine:
                raise HostError(
                    f"{self.spec.module}: the deployment {self.spec.app_name!r} at "
                    f"{self.address} serves {theirs}, but this interpreter is configured "
                    f"with {mine}; start the server with the same config (results and cache "
                    "keys would not match)", module=self.spec.module, address=self.address)
            self._handle = handle
            return handle

    def call(self, calls: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Send the calls, `max_batch_size` to a request (requests sent concurrently, so
        several replicas can share a big batch), and return the outputs in order.

        Host failures are retried (only the failed requests); a tool's own error is raised
        as it came (the first one, in call order).

        Raises:
            HostError: the host failed on some request `retries + 1` times.
        """
        size = max(1, self.spec.max_batch_size)
        groups = [calls[i:i + size] for i in range(0, len(calls), size)]
        t0 = time.perf_counter()
        payloads = [encode_request(g, self.spec.module) for g in groups]
        t1 = time.perf_counter()
        self._spent("encode", t1 - t0)
        replies: list[bytes | None] = [None] * len(payloads)
        pending = list(range(len(payloads)))
        attempts, last_error = 0, None
        while pending:
            if attempts > self.spec.retries:
                raise self._fail("failed", last_error, attempts)
            if attempts:
                self.retried += len(pending)
                time.sleep(min(0.5 * 2 ** (attempts - 1), 5.0))
            attempts += 1
            try:
                handle = self._connect()
            except HostError:
                raise
            except Exception as e:  # unreachable cluster, no such application...
                last_error = e
                continue
            deadline = time.monotonic() + self.spec.timeout_s
            # the number of calls sizes the replica's batches without decoding the bytes
            sent = [(i, handle.remote(payloads[i], len(groups[i]))) for i in pending]
            self.requests += len(sent)
            failed = []
            for i, response in sent:
                try:
                    replies[i] = response.result(timeout_s=max(0.0, deadline - time.monotonic()))
                except Exception as e:  # replica died, timed out, unavailable...
                    if isinstance(e, TimeoutError):
                        response.cancel()
                    failed.append(i)
                    last_error = e
            pending = failed
        t2 = time.perf_counter()
        self._spent("wait", t2 - t1)
        try:
            return [value for group, reply in zip(groups, replies)
                    for value in decode_reply(reply, self.spec.module, len(group))]  # type: ignore[arg-type]
        finally:
            self._spent("decode", time.perf_counter() - t2)

    def _spent(self, what: str, seconds: float) -> None:
        with self._lock:  # callers in many threads share one client
            self.seconds[what] += seconds

    def stats(self) -> dict[str, Any]:
        """The deployment's counters (batches, calls, batch sizes, model events), asked of
        one replica."""
        handle = self._connect()
        return handle.stats.remote().result(timeout_s=self.spec.timeout_s)


def remote_tool(tool: Tool, spec: HostSpec, client: RayModuleClient | None = None) -> Tool:
    """A `Tool` with `tool`'s declaration whose calls go to the module's deployment.

    The connection is made on the first call, so building a VisProg with hosted modules
    needs no running cluster (and `visprog check` works offline).
    """
    client = client or RayModuleClient(spec, tool)

    def call_remote(**kwargs: Any) -> Any:
        return client.call([kwargs])[0]

    def call_remote_batch(calls: list[dict[str, Any]]) -> list[Any]:
        return client.call(calls)

    call_remote.host = client  # type: ignore[attr-defined]
    call_remote_batch.host = client  # type: ignore[attr-defined]
    return dataclasses.replace(tool, fn=call_remote, batch_fn=call_remote_batch)


def client_of(tool: Tool) -> RayModuleClient | None:
    """The `RayModuleClient` behind a hosted tool, or None for an in-process one."""
    return getattr(tool.fn, "host", None)


# -- evaluation on a cluster -----------------------------------------------------------------

# Environment a worker needs to build the same engine (LLM settings, model cache, offline
# flags); forwarded to the Ray tasks.
