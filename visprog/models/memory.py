"""A memory budget for loaded models: least-recently-used models are unloaded to stay under it.

Configured in `[models]`:

    [models]
    memory_budget = "6GB"     # bytes with a unit (B, KB, MB, GB, TB; KiB, MiB, GiB, TiB)
    # memory_budget = 0.5     # or a fraction of the device's memory (GPU memory on CUDA, RAM else)

Sizes are the model manager's own accounting: the bytes of each loaded model's parameters and
buffers, as `ModelManager.loaded()` reports them. (Activations and the CUDA allocator's slack
are not counted, so leave headroom.) When a load pushes the total over the budget, the models
used least recently are unloaded until it fits; a model that alone exceeds the budget stays
loaded (a run can't go on without it) and an `over_budget` event says so. An unloaded model is
loaded again, through the same loader, the next time a tool asks for it.

Every load and unload is recorded in `manager.events` (dicts with `event`, `kind`,
`checkpoint`, `bytes`, and `reason: "memory_budget"` for evictions), so a run's trace can copy
the events that happened during it.

The policy wraps the model manager from the outside (`BudgetedModelManager` uses only its public
`get`, `loaded` and `unload`), so tools and loaders don't change.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Mapping

from visprog.errors import ConfigError
from visprog.models.manager import ModelManager

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")

Key = tuple[str, str]  # (kind, checkpoint as configured)


def parse_budget(value: Any, total_bytes: int | None = None) -> int | None:
    """A configured budget -> bytes, or None for no budget.

    Args:
        value: None, 0, "" or "none" (no budget); a fraction 0 < x <= 1 of `total_bytes`;
            a number of bytes (> 1); or a string with a unit ("6GB", "512 MiB", "1.5g").
        total_bytes: the device's memory, needed for fractions.

    Raises:
        ConfigError: an unreadable value, a negative one, or a fraction without a total.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower()
                                           in ("", "none", "off", "0")):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"memory_budget: expected a size like '6GB' or a fraction, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        m = _SIZE.match(str(value))
        if not m or m.group(2).lower() not in ("", *_UNITS):
            raise ConfigError(f"memory_budget: can't read {value!r}; write a size like '6GB', "
                              "'512MiB', or a fraction of the device's memory like 0.5")
        number, unit = float(m.group(1)), m.group(2).lower()
    if number < 0:
        raise ConfigError(f"memory_budget must not be negative, got {value!r}")
    if number == 0:
        return None
    if unit:
        return int(number * _UNITS[unit])
    if number <= 1:
        if not total_bytes:
            raise ConfigError(f"memory_budget {value!r} is a fraction, but the device's "
                              "memory is unknown; give a size like '6GB'")
        return int(number * total_bytes)
    return int(number)


def device_memory(device: str) -> int | None:
    """Total memory of a device in bytes: GPU memory for "cuda[:i]", physical RAM otherwise."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not on every platform
        return None


def format_bytes(n: int | float | None) -> str:
    """1536000000 -> '1.54 GB'."""
    if n is None:
        return "none"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


class MemoryBudget:
    """The LRU policy, separate from any manager so it can be tested and reused.

    Args:
        limit: the budget in bytes.
    """

    def __init__(self, limit: int):
        if limit <= 0:
            raise ConfigError(f"memory budget must be positive, got {limit}")
        self.limit = int(limit)
        self._order: OrderedDict[Key, None] = OrderedDict()  # least recently used first

    def touch(self, key: Key) -> None:
        """Mark a model as just used."""
        self._order.pop(key, None)
        self._order[key] = None

    def forget(self, key: Key) -> None:
        self._order.pop(key, None)

    def victims(self, sizes: Mapping[Key, int], keep: Key | None = None,
                incoming: int = 0) -> list[Key]:
        """Which loaded models to unload, least recently used first, so that the loaded
        `sizes` plus `incoming` bytes fit the budget. `keep` is never chosen."""
        total = sum(sizes.values()) + incoming
        order = [k for k in self._order if k in sizes] + [k for k in sizes if k not in self._order]
        out = []
        for key in order:
            if total <= self.limit:
                break
            if key == keep:
                continue
            out.append(key)
            total -= sizes[key]
        return out


def make_manager(models_config: Mapping[str, Any] | None = None, *,
                 device: str | None = None) -> ModelManager:
    """The model manager for a `[models]` config section: a `BudgetedModelManager` when it
    sets `memory_budget`, else a plain `ModelManager`."""
    cfg = dict(models_config or {})
    dev = device or cfg.get("device")
    budget = cfg.get("memory_budget")
    threads = cfg.get("cpu_threads")
    if budget is None or parse_budget(budget, total_bytes=2**40) is None:
        return ModelManager(device=dev, half=cfg.get("half"), cpu_threads=threads)
    return BudgetedModelManager(device=dev, half=cfg.get("half"), budget=budget,
                                cpu_threads=threads)


class BudgetedModelManager(ModelManager):
    """A `ModelManager` that keeps the loaded models under a memory budget (see module doc).

    Args:
        device, half: as `ModelManager`.
        budget: bytes, a size string ("6GB") or a fraction of the device's memory.
    """

    def __init__(self, device: str | None = None, half: bool | None = None, *,
                 budget: Any = None, **kwargs: Any):
        super().__init__(device=device, half=half, **kwargs)
        parse_budget(budget, total_bytes=2**40)  # a bad value fails now, not at first load
        self._budget_value = budget
        self._policy: MemoryBudget | None = None
        self._known_sizes: dict[Key, int] = {}  # remembered across unloads

    @property
    def budget(self) -> MemoryBudget:
        if self._policy is None:  # resolved on first use: a fraction needs the device
            total = device_memory(self.device) if _is_fraction(self._budget_value) else None
            limit = parse_budget(self._budget_value, total_bytes=total)
            if limit is None:
                raise ConfigError("BudgetedModelManager needs a memory budget")
            self._policy = MemoryBudget(limit)
        return self._policy

    def _sizes(self) -> dict[Key, int]:
        return {(e["kind"], e["checkpoint"]): int(e["bytes"]) for e in self.loaded()}

    def get(self, kind: str, checkpoint: str, loader: Any, *, half: bool | None = None,
            dtype: str = "auto") -> Any:
        key = (kind, checkpoint)
        with self._lock:
            sizes = self._sizes()
            fresh = key not in sizes
            if fresh and key in self._known_sizes:
                # A reload of a known size: make room first, so memory never peaks over
                # the budget by this model.
                self._evict(self.budget.victims(sizes, keep=key,
                                                incoming=self._known_sizes[key]))
            n_events = len(self.events)
            bundle = super().get(kind, checkpoint, loader, half=half, dtype=dtype)
            self.budget.touch(key)
            if fresh:
                sizes = self._sizes()
                size = sizes.get(key, 0)
                self._known_sizes[key] = size
                for e in self.events[n_events:]:
                    if e.get("event") == "load":
                        e["bytes"] = size
                self._evict(self.budget.victims(sizes, keep=key))
                total = sum(self._sizes().values())
                if total > self.budget.limit:
                    self.events.append({"event": "over_budget", "kind": kind,
                                        "checkpoint": checkpoint, "bytes": total,
                                        "limit": self.budget.limit})
            return bundle

    def _evict(self, keys: list[Key]) -> None:
        for kind, checkpoint in keys:
            n_events = len(self.events)
            self.unload(kind=kind, checkpoint=checkpoint)
            for e in self.events[n_events:]:
                if e.get("event") == "unload":
                    e["reason"] = "memory_budget"
                    e["bytes"] = self._known_sizes.get((kind, checkpoint))

    def unload(self, kind: str | None = None, checkpoint: str | None = None) -> int:
        with self._lock:
            before = self._sizes()
            n = super().unload(kind=kind, checkpoint=checkpoint)
            after = self._sizes()
            for k in before:
                if k not in after:
                    self.budget.forget(k)
            return n

    def loaded_bytes(self) -> int:
        """The bytes of every loaded model, by the manager's accounting."""
        return sum(self._sizes().values())


def _is_fraction(value: Any) -> bool:
    try:
        return 0 < float(value) <= 1
    except (TypeError, ValueError):
        return False
