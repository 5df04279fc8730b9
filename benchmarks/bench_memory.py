"""Peak memory: lazy model loading (a program that uses only Vqa) versus every model up front.

Each mode runs in a fresh Python process, and the peak resident memory of that process
(and, on CUDA, the peak GPU memory torch allocated) is reported with the models the model
manager ended up holding.

- lazy: `VisProg(...)`, then a one-step `Vqa` program: only BLIP is loaded.
- eager: every model module is called once first (which loads all their models, as an
  engine that loads everything at start-up would), then the same program.

    python benchmarks/bench_memory.py                 # tiny preset: offline, small models
    python benchmarks/bench_memory.py --full-size     # Loc and Vqa full size (random weights)
    python benchmarks/bench_memory.py --smoke         # eager loads Loc and Vqa only (the tests)

With `--full-size` the Loc and Vqa models of the default preset (MM-GroundingDINO and
Qwen3-VL-2B; with `--full-size classic`, GroundingDINO and BLIP VQA), built from their
published configs with random weights as in bench_batch.py, replace their tiny versions;
the other modules keep the preset's checkpoints. `--preset default` uses the real
checkpoints (they must already be in the Hugging Face cache: nothing is downloaded here).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROGRAM = "ANSWER=Vqa(image=IMAGE, question='what color is the car?')"


def dummy_args(tool, image):
    """Arguments of the declared types, to call any model module once."""
    from visprog.values import Objects, Region

    w, h = image.size
    objects = Objects.empty((w, h)).with_regions(
        [Region(box=(w * 0.2, h * 0.2, w * 0.6, h * 0.7), label="car")])
    by_type = {"Image": image, "Objects": objects, "Text": "car", "TextList": ["car", "dog"],
               "Number": 2}
    args = {}
    for p in tool.params:
        if not p.required:
            continue
        kind = next((t for t in ("Image", "Objects", "TextList", "Text", "Number")
                     if t in p.types), None)
        args[p.name] = by_type[kind]
    return args


def child(args) -> dict:
    """One mode, in this process: returns the figures."""
    from PIL import Image

    from visprog.api import VisProg

    config = {}
    if args.full_size:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_batch import full_size_config

        config = full_size_config(args.full_size, Path(args.work), 224)
    base_rss = _peak_rss_mb()
    vp = VisProg(preset=args.preset, config=config, cache=False, plugins=False,
                 device=args.device)
    image = Image.new("RGB", (320, 240), (120, 140, 200))
    skipped = []
    t0 = time.perf_counter()
    if args.mode == "eager":
        # the model modules: the tools with a section of settings
        modules = [n for n, section in vp.config.items()
                   if isinstance(section, dict) and vp.registry.find(n) is not None]
        for name in args.modules.split(",") if args.modules else modules:
            tool = vp.registry.find(name)
            if tool is None:
                continue
            try:
                tool(**dummy_args(tool, image))
            except Exception as e:  # e.g. List without an LLM: nothing to load
                skipped.append(f"{name}: {type(e).__name__}")
    up_front_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    value = vp.execute(PROGRAM, image).value
    run_s = time.perf_counter() - t0
    loaded = vp.models.loaded()
    out = {"mode": args.mode, "peak_rss_mb": round(_peak_rss_mb(), 1),
           "rss_before_engine_mb": round(base_rss, 1),
           "models": [f"{m['kind']}:{Path(str(m['checkpoint'])).name}" for m in loaded],
           "model_mb": round(sum(m.get("bytes", 0) for m in loaded) / 2**20, 1),
           "up_front_s": round(up_front_s, 2), "program_s": round(run_s, 2),
           "answer": value, "skipped": skipped, "device": vp.models.device}
    if vp.models.device.startswith("cuda"):
        import torch

        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default=None, help="cpu, cuda (default: the preset's)")
    p.add_argument("--full-size", nargs="?", const="default", default=None,
                   help="full-size random Loc and Vqa of this preset (default, or classic)")
    p.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp"))
                                         / "visprog_bench_models"))
    p.add_argument("--modules", default="",
                   help="eager: call only these model modules up front (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="eager calls Loc and Vqa only (checks that the benchmark runs)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--mode", choices=("lazy", "eager"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.modules, args.full_size = args.modules or "Loc,Vqa", None
    if args.mode:  # the child process
        print("RESULT " + json.dumps(child(args)))
        return 0
    if args.full_size:  # build the checkpoints once, outside the measured processes
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_batch import full_size_config
        full_size_config(args.full_size, Path(args.work), 224)
    rows = []
    for mode in ("lazy", "eager"):
        cmd = [sys.executable, __file__, "--mode", mode, "--preset", args.preset,
               "--work", args.work, "--modules", args.modules] + (
               ["--full-size", args.full_size] if args.full_size else []) + (
               ["--device", args.device] if args.device else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
            return 1
        rows.append(json.loads(line[len("RESULT "):]))
    print(f"preset {args.preset}{' + full-size BLIP/GroundingDINO' if args.full_size else ''}, "
          f"device {rows[0]['device']}; program: {PROGRAM}")
    print(f"{'mode':6s} {'peak RSS MB':>12s} {'models MB':>10s} {'peak GPU MB':>12s} "
          f"{'load s':>7s} {'run s':>6s}  models loaded")
    for r in rows:
        print(f"{r['mode']:6s} {r['peak_rss_mb']:12.1f} {r['model_mb']:10.1f} "
              f"{r.get('peak_gpu_mb', float('nan')):12.1f} {r['up_front_s']:7.2f} "
              f"{r['program_s']:6.2f}  {len(r['models'])}: {', '.join(r['models'])}")
        if r["skipped"]:
            print(f"       not loaded up front: {'; '.join(r['skipped'])}")
    lazy, eager = rows
    print(f"lazy loading saves {eager['peak_rss_mb'] - lazy['peak_rss_mb']:.0f} MB of peak RSS "
          f"({lazy['peak_rss_mb'] / eager['peak_rss_mb']:.0%} of eager)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
