"""Which ready calls run together, and how many at a time.

In each round every active program waits at its next call step; the waiting steps are
grouped by module. Plain modules (no batch entry point) run first, so that programs that are
behind catch up; when every waiting step is a batched module, the largest group runs (ties:
the group whose programs are furthest behind). A lone run is the same loop with one program.

Batch size: an int, or "auto" (`AutoBatchSize`): it starts at 1 on a CPU (a full-size model is
compute-bound there: batching saves nothing and a big batch can be slower) and at 8 on CUDA,
and doubles per module while the measured time per call improves by at least 15%, up to 64;
the first chunk at each size is not measured (it pays for loading the model, and on a GPU for
the allocator and kernel choice of a new shape). The sizes are kept across runs.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

AUTO = "auto"
AUTO_START = {"cpu": 1, "mps": 4, "cuda": 8}
AUTO_MAX = 64
AUTO_GAIN = 0.85  # a bigger batch is kept when its time per call is at most 85% of the best


class AutoBatchSize:
    """Chooses each module's batch size by measuring (see the module docstring).

    Args:
        device: where the models run ("cpu", "cuda", "cuda:1", "mps").
    """

    def __init__(self, device: str = "cpu"):
        kind = device.split(":")[0]
        self.start = AUTO_START.get(kind, 1)
        self._state: dict[str, dict[str, Any]] = {}

    def _get(self, module: str) -> dict[str, Any]:
        return self._state.setdefault(module, {"size": self.start, "best": None,
                                               "warm": 0, "settled": False})

    def size(self, module: str) -> int:
        return self._get(module)["size"]

    def observe(self, module: str, calls: int, seconds: float) -> None:
        """Record that a chunk of `calls` calls took `seconds`."""
        s = self._get(module)
        if s["settled"] or calls != s["size"]:
            return  # only full chunks at the size being tried say anything about it
        if s["warm"] != calls:
            # the first chunk at each size pays for one-off work (loading the model, the
            # GPU allocator and kernel choice for a new shape): not measured
            s["warm"] = calls
            return
        per_call = seconds / calls
        best = s["best"]
        if best is None or per_call <= best[1] * AUTO_GAIN:
            s["best"] = (calls, per_call)
            if calls * 2 <= AUTO_MAX:
                s["size"] = calls * 2
            else:
                s["settled"] = True
        else:
            s["size"] = best[0]
            s["settled"] = True

    def sizes(self) -> dict[str, int]:
        """The current size per module (for reports)."""
        return {m: s["size"] for m, s in self._state.items()}


class FixedBatchSize:
    """The same batch size for every module."""

    def __init__(self, size: int):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size must be a positive int or 'auto', got {size!r}")
        self._size = size

    def size(self, module: str) -> int:
        return self._size

    def observe(self, module: str, calls: int, seconds: float) -> None:
        pass

    def sizes(self) -> dict[str, int]:
        return {}


def make_batch_size(batch_size: int | str | Any, device: str = "cpu") -> Any:
    """An int, "auto", or an object with `size(module)` and `observe(...)` -> that object."""
    if batch_size == AUTO:
        return AutoBatchSize(device)
    if hasattr(batch_size, "size") and hasattr(batch_size, "observe"):
        return batch_size
    if isinstance(batch_size, str) and batch_size.isdigit():
        batch_size = int(batch_size)
    return FixedBatchSize(batch_size)


def choose_groups(groups: Mapping[str, Sequence[Any]], tools: Mapping[str, Any]) -> list[str]:
    """The module groups to run this round (see the module docstring). `groups` maps a
    module name to the programs waiting at a call of it (objects with a `pc`), `tools` a
    module name to its tool."""
    if len(groups) == 1:
        return list(groups)
    plain = [name for name in groups if tools[name].batch_fn is None]
    if plain:  # cheap steps first, so that programs catch up at the model steps
        return plain
    return [max(groups, key=lambda n: (len(groups[n]), -min(r.pc for r in groups[n])))]


def batch_size_arg(text: str) -> int | str:
    """argparse type of --batch-size: "auto" or a positive int."""
    import argparse

    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return value
