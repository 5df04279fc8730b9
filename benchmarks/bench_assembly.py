"""How an engine is assembled, printed as figures (issue 18, "one assembly").

1. Upward climbs while constructing `VisProg` the way `visprog exec` does: every call, made
   while the constructor runs, from a function of one layer to a function of a higher layer
   (docs/architecture.md's ranks; tools/ sits between engine/ and planning/: config.py
   imports it, and it imports models/ and below). Each distinct caller -> callee pair counts
   once. A climb is a call back up: a callback, or a lower layer reaching over its head.
2. The same with the layer sequence: the layers of the functions that run, in call order,
   consecutive repeats merged; the number of steps up in it (how often a reader following
   the construction goes back up).
3. How many times the installed packages' entry points are read per `VisProg`.
4. Lines of visprog/api.py.

Run: python benchmarks/bench_assembly.py [--preset tiny]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
RANKS = {"errors": 0, "values": 1, "registry": 2, "language": 3, "models": 3, "traces": 3,
         "engine": 4, "tools": 4.5, "planning": 5, "evaluation": 5, "hosting": 6,
         "config": 7, "query": 7, "api": 8, "cli": 9}


def layer_of(filename: str) -> str | None:
    path = Path(filename)
    try:
        rel = path.resolve().relative_to(ROOT)
    except (ValueError, OSError):
        return None
    parts = rel.parts
    if parts[0] == "tools":
        return "tools"
    if parts[0] != "visprog" or len(parts) < 2:
        return None
    name = parts[1].removesuffix(".py")
    return name if name in RANKS else None


def trace_construction(make) -> tuple[set[tuple[str, str]], list[str]]:
    """(upward caller->callee pairs, the merged layer sequence) while `make()` runs."""
    upward: set[tuple[str, str]] = set()
    sequence: list[str] = []

    def where(frame) -> tuple[str | None, str]:
        code = frame.f_code
        return layer_of(code.co_filename), f"{Path(code.co_filename).name}:{code.co_name}"

    def profile(frame, event, arg):  # noqa: ANN001
        if event != "call":
            return
        callee_layer, callee = where(frame)
        if callee_layer is None:
            return
        if not sequence or sequence[-1] != callee_layer:
            sequence.append(callee_layer)
        caller_frame = frame.f_back
        while caller_frame is not None and layer_of(caller_frame.f_code.co_filename) is None:
            caller_frame = caller_frame.f_back
        if caller_frame is None:
            return
        caller_layer, caller = where(caller_frame)
        if RANKS[callee_layer] > RANKS[caller_layer]:
            upward.add((f"{caller_layer}/{caller}", f"{callee_layer}/{callee}"))

    sys.setprofile(profile)
    try:
        make()
    finally:
        sys.setprofile(None)
    return upward, sequence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    args = p.parse_args()

    from visprog.api import VisProg
    from visprog.cli import build_parser

    VisProg(preset=args.preset, cache=False)  # imports and first-time work out of the way
    cli = build_parser().parse_args(["exec", "--preset", args.preset, "--no-cache",
                                     "N=Count(box=Loc(image=IMAGE, object='x'))"])

    def construct():
        return VisProg(preset=cli.preset, config=cli.config, device=cli.device,
                       cache=not cli.no_cache, cache_dir=cli.cache_dir)

    upward, sequence = trace_construction(construct)
    steps_up = sum(1 for a, b in zip(sequence, sequence[1:]) if RANKS[b] > RANKS[a])
    print(f"upward calls while constructing VisProg: {len(upward)}")
    for caller, callee in sorted(upward):
        print(f"  {caller} -> {callee}")
    print(f"steps up in the layer sequence: {steps_up}")
    print("  " + " -> ".join(sequence))

    import importlib.metadata as md

    real = md.entry_points
    reads = []

    def counting(*a, **kw):
        if kw.get("group") == "visprog.tools":
            reads.append(1)
        return real(*a, **kw)

    # every reader in visprog/ and tools/ imports entry_points by name
    targets = [name for name, mod in list(sys.modules.items())
               if (name.startswith("visprog") or name.startswith("tools"))
               and getattr(mod, "entry_points", None) is real]
    with mock.patch.object(md, "entry_points", counting):
        patches = [mock.patch(f"{t}.entry_points", counting) for t in targets]
        for patch in patches:
            patch.start()
        try:
            construct()
        finally:
            for patch in patches:
                patch.stop()
    print(f"entry-point reads per VisProg: {len(reads)}")
    lines = len((ROOT / "visprog" / "api.py").read_text(encoding="utf-8").splitlines())
    print(f"lines of visprog/api.py: {lines}")


if __name__ == "__main__":
    main()
