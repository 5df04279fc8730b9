"""How an engine is assembled, printed as figures (issue 18, "one assembly").

Layers are docs/architecture.md's ranks; tools/ sits between engine/ and planning/ (config.py
imports it, and it imports models/ and below).

1. Climbs while constructing `VisProg` with `visprog exec`'s arguments: the path a reader
   follows, the layers of the constructor and of the functions it and they call (two calls
   deep), in call order, repeats merged; a climb is a step to a higher layer than the one
   before (today's `api -> config -> models -> api -> hosting -> config ...`).
2. Upward calls while constructing: a function of one layer calling a plain function (or a
   generator, lambda) of a higher layer, each caller -> callee pair once; a method called on
   an object handed down (a module's `configure`, the LLM's `describe`) is not counted.
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


def trace_construction(make, depth: int = 2) -> tuple[list[str], set[tuple[str, str]]]:
    """(the reading path of layers `depth` calls deep, the upward calls) while `make()` runs."""
    path: list[str] = []
    upward: set[tuple[str, str]] = set()
    top: list[object] = []

    def where(code) -> str:
        return f"{layer_of(code.co_filename)}/{Path(code.co_filename).name}:{code.co_name}"

    def profile(frame, event, arg):  # noqa: ANN001
        if event != "call":
            return
        code = frame.f_code
        callee_layer = layer_of(code.co_filename)
        if callee_layer is None:
            return
        if not top:
            top.append(frame)  # VisProg.__init__
        # calls between this frame and the constructor's
        d, f = 0, frame
        while f is not None and f is not top[0]:
            if layer_of(f.f_code.co_filename) is not None:
                d += 1
            f = f.f_back
        if f is not None and d <= depth and (not path or path[-1] != callee_layer):
            path.append(callee_layer)
        caller = frame.f_back
        while caller is not None and layer_of(caller.f_code.co_filename) is None:
            caller = caller.f_back
        if caller is None:
            return
        caller_layer = layer_of(caller.f_code.co_filename)
        method = code.co_argcount > 0 and code.co_varnames[0] in ("self", "cls")
        if RANKS[callee_layer] > RANKS[caller_layer] and not method:
            upward.add((where(caller.f_code), where(code)))

    sys.setprofile(profile)
    try:
        make()
    finally:
        sys.setprofile(None)
    return path, upward


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--smoke", action="store_true",
                   help="the same measures (they take seconds on the tiny preset)")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset = "tiny"

    from visprog.api import VisProg
    from visprog.cli import build_parser

    VisProg(preset=args.preset, cache=False)  # imports and first-time work out of the way
    cli = build_parser().parse_args(["exec", "--preset", args.preset, "--no-cache",
                                     "N=Count(box=Loc(image=IMAGE, object='x'))"])

    def construct():
        return VisProg(preset=cli.preset, config=cli.config, device=cli.device,
                       cache=not cli.no_cache, cache_dir=cli.cache_dir)

    path, upward = trace_construction(construct)
    climbs = sum(1 for a, b in zip(path, path[1:]) if RANKS[b] > RANKS[a])
    print(f"climbs while constructing VisProg: {climbs}")
    print("  " + " -> ".join(path))
    print(f"upward calls while constructing VisProg: {len(upward)}")
    for caller, callee in sorted(upward):
        print(f"  {caller} -> {callee}")

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
