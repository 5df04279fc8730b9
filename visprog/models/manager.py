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
from typing import Any, Callable, Iterable

from visprog.errors import ConfigError
from visprog.models.checkpoints import (ModelLoadError, hub_unreachable, load_error,
                                        looks_like_path, quiet_loading, resolve_checkpoint)
from visprog.models.library_logs import route_library_logs

Loader = Callable[[str, str, Any], Any]  # (path_or_id, device, dtype or None) -> model bundle

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
        half: load in float16 on CUDA (None or True: yes; False: no). Ignored elsewhere.
        cpu_threads: torch's CPU threads while this manager's models run (see
            `use_cpu_threads`); None leaves torch's default.

    Example:
        >>> mm = ModelManager(device="cpu")
        >>> model, processor = mm.get("clip", "tiny:clip", load_clip)  # doctest: +SKIP
    """

    def __init__(self, device: str | None = None, half: bool | None = None,
                 cpu_threads: int | None = None):
        self._device_arg = device
        self._device: str | None = None
        self._half = half
        self.cpu_threads = check_cpu_threads(cpu_threads)
        self._models: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.RLock()
        self.events: list[dict[str, Any]] = []

    @property
    def device(self) -> str:
        if self._device is None:  # resolved on first use: it imports torch
            self._device = pick_device(self._device_arg)
        return self._device

    def dtype(self, half: bool | None = None) -> Any:
        """The dtype loaders should use: float16 on CUDA unless `half` is False, else None
        (float32). Half precision is never used on CPU or MPS, whatever `half` says."""
        want = self._half if half is None else half
        if want is False or not self.device.startswith("cuda"):
            return None
        import torch

        return torch.float16

    def get(self, kind: str, checkpoint: str, loader: Loader, *, half: bool | None = None) -> Any:
        """The model bundle for (kind, checkpoint), loading it with `loader` the first time.

        Args:
            kind: what the loader makes ("grounding_dino", "sam", ...); tools asking for the
                same kind and checkpoint get the same object.
            checkpoint: as configured (`tiny:<name>`, a local path or a hub id).
            loader: `loader(path_or_id, device, dtype)` returning the bundle (a model, or a
                tuple of model and processor).
            half: False for models that must stay in float32 even on CUDA.

        Raises:
            ModelLoadError: the checkpoint is missing or could not be loaded.
        """
        if self.cpu_threads is not None:
            use_cpu_threads(self.cpu_threads)
        resolved = resolve_checkpoint(checkpoint)
        key = (kind, resolved)
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                return entry["bundle"]
            if looks_like_path(resolved):
                if not os.path.exists(os.path.expanduser(resolved)):
                    raise load_error(checkpoint, FileNotFoundError(f"no such folder: {resolved}"))
            else:
                hub_unreachable()  # no network: load from the local cache, or fail at once
            dtype = self.dtype(half)
            t0 = time.perf_counter()
            route_library_logs()  # before the libraries' first words, which loads provoke
            try:
                with quiet_loading():
                    bundle = loader(os.path.expanduser(resolved) if looks_like_path(resolved)
                                    else resolved, self.device, dtype)
            except ModelLoadError:
                raise
            except Exception as e:  # from_pretrained raises OSError, ValueError, HF errors...
                raise load_error(checkpoint, e) from e
            modules = _modules_in(bundle)
            for m in modules:
                m.eval()
            seconds = time.perf_counter() - t0
            self._models[key] = {"kind": kind, "checkpoint": checkpoint, "path": resolved,
                                 "device": self.device, "dtype": str(dtype or "float32"),
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
