"""The model manager: loads each (kind, checkpoint) once, on first use, on the chosen device
and dtype, and hands the same object to every tool that asks (Loc and Select share one
GroundingDINO). It can list and unload what it holds, and records each load and unload as an
event (the engine copies a run's events into its trace).

torch is imported only when a model is loaded, so importing this module stays cheap.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any, Callable, Iterable

from visprog.errors import ConfigError
from visprog.models.checkpoints import (TINY_PREFIX, ModelLoadError, hub_unreachable,
                                        load_error, looks_like_path, quiet_loading,
                                        resolve_checkpoint, tiny_dir)
from visprog.models.dtypes import (DeviceCaps, check_dtype_setting, choose_dtype, device_caps,
                                   read_published_dtype, torch_dtype)

# (path_or_id, device, dtype) -> model bundle. The manager always gives a torch dtype (None
# from an older caller means float32): a loader must pass it on, since transformers 5's
# from_pretrained without one keeps the checkpoint's own (bfloat16 on CPU, say).
Loader = Callable[[str, str, Any], Any]

# -- the manager -----------------------------------------------------------------------------

def _modules_in(obj: Any) -> list[Any]:
    """The torch modules inside a loaded bundle (a model, a tuple/dict of parts, a pipeline)."""
    import torch

    found: list[Any] = []
    seen: set[int] = set()

    def walk(o: Any, depth: int) -> None:
        if id(o) in seen or depth > 2:
            return
        seen.add(id(o))
        if isinstance(o, torch.nn.Module):
            found.append(o)
        elif isinstance(o, (tuple, list)):
            for v in o:
                walk(v, depth + 1)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(getattr(o, "components", None), dict):  # diffusers pipelines
            walk(o.components, depth + 1)
        elif hasattr(o, "__dict__") and depth < 2:
            for v in vars(o).values():
                walk(v, depth + 1)

    walk(obj, 0)
    return found


def _nbytes(modules: Iterable[Any]) -> int:
    total = 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            total += t.numel() * t.element_size()
    return total


def pick_device(device: str | None = None) -> str:
    """'cuda' if available, then 'mps', then 'cpu'; an explicit device ('auto' = None) wins."""
    if device and device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def available_devices() -> list[str]:
    """The devices torch can use here: 'cpu', then 'cuda:0'.. and 'mps' where present."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | None) -> str | None:
    """`device` if this machine has it ('auto'/None: the best available, always fine).

    Raises:
        ConfigError: an unknown device name, or one this machine lacks; the message lists
            the devices present.
    """
    if device is None or device == "auto":
        return device
    present = available_devices()
    name = str(device).strip().lower()
    kind, _, index = name.partition(":")
    ok = (name in present or (kind == "cuda" and not index and any(d.startswith("cuda:")
                                                                     for d in present)))
    if not ok:
        known = kind in ("cpu", "cuda", "mps") and (not index or index.isdigit())
        what = "is not available here" if known else "is not a device"
        raise ConfigError(f"device {device!r} {what}; devices here: {', '.join(present)} "
                          "(or auto)")
    return device


def check_cpu_threads(value: Any) -> int | None:
    """`[models] cpu_threads`: a whole number of threads >= 1, or None/"auto" (torch's own
    default: one per core).

    Raises:
        ConfigError: anything else.
    """
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"[models] cpu_threads = {value!r}; give a whole number >= 1, "
                          "or \"auto\" for one thread per core")
    return value


def use_cpu_threads(n: int) -> None:
    """Run torch's CPU kernels on `n` threads (process-wide).

    Why: a kernel splits its sums by thread, so another thread count gives other last bits
    (scores a float32 ulp apart). A Ray replica runs with the thread count Ray gives it
    (OMP_NUM_THREADS = its CPUs, at least 1); pinning the count on both sides makes hosted
    and in-process results identical, and tiny-preset results the same on every machine.
    """
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class ModelManager:
    """Loads models lazily, once per (kind, checkpoint), and shares them.

    Args:
        device: "cuda", "cuda:1", "mps", "cpu", or None/"auto" to pick the best available.
        half: whether a model whose `dtype` setting is "auto" may run in half precision on
            a GPU although its checkpoint was published in float32 (None or True: yes, in
            bfloat16 where the GPU has it, else float16; False: no). See
            `visprog.models.dtypes`; CPU and MPS always load "auto" models in float32.
        cpu_threads: torch's CPU threads while this manager's models run (see
            `use_cpu_threads`); None leaves torch's default.
        caps: the device's capabilities (`visprog.models.dtypes.DeviceCaps`); None detects
            them on first use. Given, they decide the dtypes as on that device (tests).

    Example:
        >>> mm = ModelManager(device="cpu")
        >>> model, processor = mm.get("clip", "tiny:clip", load_clip)  # doctest: +SKIP
    """

    def __init__(self, device: str | None = None, half: bool | None = None,
                 cpu_threads: int | None = None, caps: DeviceCaps | None = None):
        self._device_arg = device
        self._device: str | None = None
        self._half = half
        self._caps = caps
        self.cpu_threads = check_cpu_threads(cpu_threads)
        self._models: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.RLock()
        self.events: list[dict[str, Any]] = []
        self._dtype_warned: set[tuple[str, str]] = set()

    @property
    def device(self) -> str:
        if self._device is None:  # resolved on first use: it imports torch
            self._device = pick_device(self._device_arg)
        return self._device

    @property
    def caps(self) -> DeviceCaps:
        """What the device computes in (given, or detected on first use)."""
        if self._caps is None:
            self._caps = device_caps(self.device)
        return self._caps

    def dtype(self, half: bool | None = None) -> Any:
        """The torch dtype of an "auto" model whose checkpoint was published in float32
        (most), or None for float32. Kept for callers that predate per-model dtypes; see
        `dtype_for`."""
        name = choose_dtype("auto", "float32", self.caps, half=self._want_half(half))
        return None if name == "float32" else torch_dtype(name)

    def dtype_for(self, checkpoint: str, setting: str = "auto", *,
                  half: bool | None = None) -> str:
        """The dtype name ("bfloat16", "float16", "float32") `checkpoint` loads in with a
        module's `dtype` setting, decided as `get` decides it; builds, loads and downloads
        nothing (a hub checkpoint's published type is read from the local cache, and one
        not there counts as float32; a `tiny:` model not yet built is float32, as its
        builders write it).

        Raises:
            DtypeError: a bad setting, or an explicit type the device lacks.
        """
        setting = "fp32" if half is False else check_dtype_setting(setting)
        published = None
        if setting == "auto" and self.caps.kind == "cuda":  # else it decides nothing
            published = read_published_dtype(self._local_path(checkpoint))
        return choose_dtype(setting, published, self.caps, half=self._want_half(half))

    def _want_half(self, half: bool | None) -> bool:
        want = self._half if half is None else half
        return want is not False

    @staticmethod
    def _local_path(checkpoint: str) -> str:
        if checkpoint.startswith(TINY_PREFIX):
            return str(tiny_dir() / checkpoint[len(TINY_PREFIX):])
        return checkpoint

    def get(self, kind: str, checkpoint: str, loader: Loader, *, half: bool | None = None,
            dtype: str = "auto") -> Any:
        """The model bundle for (kind, checkpoint), loading it with `loader` the first time.

        Args:
            kind: what the loader makes ("grounding_dino", "sam", ...); tools asking for the
                same kind and checkpoint get the same object.
            checkpoint: as configured (`tiny:<name>`, a local path or a hub id).
            loader: `loader(path_or_id, device, dtype)` returning the bundle (a model, or a
                tuple of model and processor).
            half: False for models that must stay in float32 even on CUDA.
            dtype: the module's `dtype` setting ("auto", "bf16", "fp16", "fp32"; see
                `visprog.models.dtypes`). The first load of a (kind, checkpoint) decides it;
                a later call that asks for another explicit type gets the loaded model and
                a warning.

        Raises:
            ModelLoadError: the checkpoint is missing or could not be loaded.
            DtypeError: a bad `dtype`, or an explicit type the device lacks.
        """
        setting = "fp32" if half is False else check_dtype_setting(dtype)
        if self.cpu_threads is not None:
            use_cpu_threads(self.cpu_threads)
        resolved = resolve_checkpoint(checkpoint)
        key = (kind, resolved)
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                if setting != "auto" and entry["dtype"] != choose_dtype(
                        setting, None, self.caps) and (kind, setting) not in self._dtype_warned:
                    self._dtype_warned.add((kind, setting))
                    warnings.warn(f"{checkpoint} ({kind}) is already loaded in "
                                  f"{entry['dtype']}; dtype {setting!r} applies only to a "
                                  "model it loads first", RuntimeWarning, stacklevel=3)
                return entry["bundle"]
            online = False
            if looks_like_path(resolved):
                if not os.path.exists(os.path.expanduser(resolved)):
                    raise load_error(checkpoint, FileNotFoundError(f"no such folder: {resolved}"))
            else:
                online = not hub_unreachable()  # no network: the local cache, or fail at once
            published = None
            if setting == "auto" and self.caps.kind == "cuda":  # else it decides nothing
                published = read_published_dtype(os.path.expanduser(resolved), download=online)
            name = choose_dtype(setting, published, self.caps, half=self._want_half(half))
            t0 = time.perf_counter()
            try:
                with quiet_loading():
                    bundle = loader(os.path.expanduser(resolved) if looks_like_path(resolved)
                                    else resolved, self.device, torch_dtype(name))
            except ModelLoadError:
                raise
            except Exception as e:  # from_pretrained raises OSError, ValueError, HF errors...
                raise load_error(checkpoint, e) from e
            modules = _modules_in(bundle)
            for m in modules:
                m.eval()
            seconds = time.perf_counter() - t0
            self._models[key] = {"kind": kind, "checkpoint": checkpoint, "path": resolved,
                                 "device": self.device, "dtype": name,
                                 "bytes": _nbytes(modules), "load_seconds": seconds,
                                 "bundle": bundle}
            self.events.append({"event": "load", "kind": kind, "checkpoint": checkpoint,
                                "seconds": seconds})
            return bundle

    def loaded(self) -> list[dict[str, Any]]:
        """What is loaded: kind, checkpoint, device, dtype, bytes, load_seconds."""
        with self._lock:
            return [{k: v for k, v in e.items() if k not in ("bundle", "path")}
                    for e in self._models.values()]

    def unload(self, kind: str | None = None, checkpoint: str | None = None) -> int:
        """Drop the matching models (all when no filter) and free their memory.

        Returns:
            how many models were unloaded.
        """
        with self._lock:
            keys = [k for k, e in self._models.items()
                    if (kind is None or e["kind"] == kind)
                    and (checkpoint is None or checkpoint in (e["checkpoint"], e["path"]))]
            for k in keys:
                e = self._models.pop(k)
                t0 = time.perf_counter()
                del e["bundle"]
                self.events.append({"event": "unload", "kind": e["kind"],
                                    "checkpoint": e["checkpoint"],
                                    "seconds": time.perf_counter() - t0})
        if keys:
            import gc

            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return len(keys)


_DEFAULT: ModelManager | None = None
_DEFAULT_LOCK = threading.Lock()


def default_manager() -> ModelManager:
    """The process-wide manager, made on first use (device auto, half on CUDA)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ModelManager()
        return _DEFAULT


def manager_of(ctx: Any) -> ModelManager:
    """The manager a tool should use: `ctx.models`, else the process-wide one."""
    return getattr(ctx, "models", None) or default_manager()


# -- helpers shared by the model tools -------------------------------------------------------

def to_model_inputs(inputs: Any, device: str, dtype: Any = None) -> dict[str, Any]:
    """Processor outputs moved to the model's device; floating tensors cast to its dtype."""
    import torch

    out = {}
    for k, v in dict(inputs).items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def model_dtype(model: Any) -> Any:
    """The dtype of a model's first floating parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None
