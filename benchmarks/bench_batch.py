"""Batched versus one-at-a-time throughput of GQA-style programs (Loc, Count, Crop, Vqa).

The models are the full-size architectures of a preset's Loc and Vqa checkpoints, built from
their published configs with random weights by benchmarks/bench_models.py (nothing is
downloaded), saved once to a work folder and loaded by the real Loc and Vqa tools exactly as
a local checkpoint would be:

- `default` (the default): MM-GroundingDINO tiny (Swin-T, BERT-base, 900 queries) for Loc
  and Qwen3-VL-2B (its chat template, 10 new tokens) for Vqa;
- `--preset classic`: GroundingDINO-tiny and BLIP VQA (ViT-B/16 at 384 px, BERT-base).

Their answers are meaningless; their cost is real. Loc's box threshold is calibrated so
that Loc keeps about 8 boxes per image, as with trained weights (random weights pass hundreds).
The other modules keep the preset's settings.

Each image gets four programs (a count, a crop-then-ask, a plain question, a
left-of-a-person question). Two of them ask the same Vqa question of the whole image and two
locate the same object, as questions about one image do, so the batched run makes fewer
model calls: the count of module calls is printed for both.

    python benchmarks/bench_batch.py                      # CPU: 8 programs, small Loc input
    python benchmarks/bench_batch.py --preset classic     # GroundingDINO + BLIP instead
    python benchmarks/bench_batch.py --device cuda --reps 3 --sizes auto,8,32
    python benchmarks/bench_batch.py --smoke              # the tiny preset: seconds (the tests)

On a CPU the defaults are cut down, because a full-size call takes seconds there: 8 programs
over 2 images (the same four templates, so the same sharing) and a Loc input of 224 px
shortest edge (800 on CUDA, the checkpoint's own); the architectures are unchanged.
`--programs 32 --images 8` runs the full workload anywhere. The exit status is 1 when a
program fails; values that differ from the one-at-a-time run are counted ("same values"):
a padded batch may move a random model's near-tie.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEMPLATES = [
    # a count, then the same whole-image question as the plain one below
    "BOX0=Loc(image=IMAGE, object='car')\nN=Count(box=BOX0)\n"
    "A=Vqa(image=IMAGE, question='is it daytime?')\n"
    "FINAL=Eval(expr=\"'yes' if {N} > 0 and {A} == 'yes' else 'no'\")",
    # the same Loc as the count
    "BOX0=Loc(image=IMAGE, object='car')\nIMAGE0=Crop(image=IMAGE, box=BOX0)\n"
    "ANSWER0=Vqa(image=IMAGE0, question='what color is the car?')\nFINAL=Result(var=ANSWER0)",
    "ANSWER0=Vqa(image=IMAGE, question='is it daytime?')\nFINAL=Result(var=ANSWER0)",
    "BOX0=Loc(image=IMAGE, object='person')\nIMAGE0=CropLeftOf(image=IMAGE, box=BOX0)\n"
    "ANSWER0=Vqa(image=IMAGE0, question='what is to the left of the person?')\n"
    "FINAL=Result(var=ANSWER0)",
]

# preset -> (Loc's bench, Vqa's bench) in benchmarks/bench_models.py's BENCHES
FULL_SIZE = {"default": ("Loc[mm_grounding_dino]", "Vqa"),
             "classic": ("Loc[grounding_dino]", "Vqa[blip]")}


def full_size_config(preset: str, work: Path, loc_edge: int) -> dict[str, dict[str, Any]]:
    """Config overrides that point `preset`'s Loc and Vqa at full-size random checkpoints,
    saved into `work` the first time (each in a child process)."""
    from bench_models import BENCHES, ensure_saved

    if preset not in FULL_SIZE:
        raise SystemExit(f"full-size models exist for the presets {', '.join(FULL_SIZE)}, "
                         f"not {preset!r}")
    loc, vqa = FULL_SIZE[preset]
    overrides = {}
    for name, options, folder in ((loc, {"loc_edge": loc_edge}, f"{loc}_{loc_edge}"),
                                  (vqa, {}, vqa)):
        bench = BENCHES[name]
        saved = ensure_saved(name, work / folder.replace("[", "_").replace("]", ""), **options)
        overrides[bench.module] = {**bench.settings, **bench.checkpoints(saved)}
    return overrides


def calibrate_loc(preset: str, config: dict[str, Any], image: Any, device: str | None = None,
                  keep: int = 8) -> float:
    """A box threshold for Loc at which it keeps about `keep` boxes, as with trained weights.

    Random weights score most of the 900 queries alike, so at a trained model's threshold
    hundreds of boxes pass the post-processing; a trained detector passes a handful. A probe
    engine calls Loc once at threshold 0 (its NMS keeps at most max_detections), and the
    score of the `keep`-th box it found is the threshold; the probe's models are then let
    go. Give the result to the engine you measure as `{"Loc": {"box_threshold": t}}`."""
    from visprog.api import VisProg

    loc = {**config.get("Loc", {}), "box_threshold": 0.0, "text_threshold": 0.0}
    probe = VisProg(preset=preset, cache=False, plugins=False, device=device,
                    config={**config, "Loc": loc})
    found = probe.registry.get("Loc").fn(image=image, object="car")
    probe.models.unload()
    scores = sorted((float(s) for s in found.scores), reverse=True)
    return scores[min(keep, len(scores)) - 1] if scores else 0.0


def make_images(n: int, size: tuple[int, int]) -> list:
    """Synthetic street-like scenes: a sky, a road, a few coloured boxes."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(60, 200, 3)))
        d = ImageDraw.Draw(img)
        d.rectangle([0, size[1] * 2 // 3, size[0], size[1]], fill=(70, 70, 70))
        for _ in range(3 + i % 3):
            x = rng.integers(0, max(1, size[0] - 80))
            y = rng.integers(size[1] // 3, max(size[1] // 3 + 1, size[1] - 60))
            d.rectangle([x, y, x + rng.integers(30, 80), y + rng.integers(20, 60)],
                        fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        out.append(img)
    return out


class CallCounter:
    """Wraps a tool to count module calls (items) and model invocations (batches)."""

    def __init__(self):
        self.items: dict[str, int] = {}
        self.invocations: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.items.clear()
        self.invocations.clear()
        self.seconds.clear()

    def wrap(self, tool):
        name = tool.name

        def fn(**kwargs):
            t = time.perf_counter()
            try:
                return tool.fn(**kwargs)
            finally:
                self._count(name, 1, time.perf_counter() - t)

        def batch_fn(calls):
            t = time.perf_counter()
            try:
                return tool.batch_fn(calls)
            finally:
                self._count(name, len(calls), time.perf_counter() - t)

        return replace(tool, fn=fn, batch_fn=batch_fn)

    def _count(self, name: str, n: int, seconds: float) -> None:
        self.items[name] = self.items.get(name, 0) + n
        self.invocations[name] = self.invocations.get(name, 0) + 1
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def profile_modules(vp: Any, images: list, n: int, sync) -> list[dict[str, Any]]:
    """Each module's own batched entry point on n calls at once versus one call: where
    batching pays, module by module (seconds per call)."""
    cases = {"Loc": lambda im: {"image": im, "object": "car"},
             "Vqa": lambda im: {"image": im, "question": "what color is the car?"}}
    rows = []
    for name, call in cases.items():
        tool = vp.registry.get(name)
        row = {"module": name}
        for b in (1, n):
            calls = [call(images[i % len(images)]) for i in range(b)]
            sync()
            t = time.perf_counter()
            tool.batch_fn(calls)
            sync()
            row[f"batch_{b}_s_per_call"] = (time.perf_counter() - t) / b
        rows.append(row)
        print(f"  {name}: batch 1 {row['batch_1_s_per_call']:.3f} s/call, batch {n} "
              f"{row[f'batch_{n}_s_per_call']:.3f} s/call")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="default",
                   help="whose Loc and Vqa models: default (MM-GroundingDINO, Qwen3-VL-2B) "
                        "or classic (GroundingDINO, BLIP)")
    p.add_argument("--smoke", action="store_true",
                   help="the tiny preset's models, 4 programs over 1 small image (checks "
                        "that the benchmark runs; figures meaningless)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--reps", type=int, default=1, help="timed repetitions of each mode")
    p.add_argument("--sizes", default=None,
                   help="batch sizes to time, comma-separated (default: auto on CPU; "
                        "auto,8,32 on CUDA)")
    p.add_argument("--programs", type=int, default=None,
                   help="default 32 (8 on a CPU, see the module docstring)")
    p.add_argument("--images", type=int, default=None, help="default 8 (2 on a CPU)")
    p.add_argument("--image-size", default="640x480", help="input image size WxH")
    p.add_argument("--loc-edge", type=int, default=None,
                   help="Loc processor's shortest edge (default 224 on CPU, 800 on CUDA)")
    p.add_argument("--work", default=None, help="folder for the saved random checkpoints")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--profile", action="store_true",
                   help="also time each module's batched entry point on all the programs' "
                        "calls at once versus one call")
    args = p.parse_args(argv)

    import torch

    from visprog.api import VisProg
    from visprog.models import pick_device

    device = "cpu" if args.smoke else pick_device(None if args.device == "auto" else args.device)
    on_cuda = device.startswith("cuda")
    loc_edge = args.loc_edge or (800 if on_cuda else 224)
    if args.smoke:
        args.programs, args.images = args.programs or 4, args.images or 1
        args.image_size, args.sizes = "160x120", args.sizes or "auto,4"
    args.programs = args.programs or (32 if on_cuda else 8)
    args.images = args.images or (8 if on_cuda else 2)
    sizes = [s if s == "auto" else int(s) for s in
             (args.sizes or ("auto,8,32" if on_cuda else "auto")).split(",")]
    work = Path(args.work or Path(tempfile.gettempdir()) / "visprog_bench_models")
    t0 = time.perf_counter()
    preset = "tiny" if args.smoke else args.preset
    config = {} if args.smoke else full_size_config(args.preset, work, loc_edge)
    build_s = time.perf_counter() - t0

    w, h = (int(v) for v in args.image_size.lower().split("x"))
    images = make_images(args.images, (w, h))
    box_threshold = calibrate_loc(preset, config, images[0], device)
    config["Loc"] = {**config.get("Loc", {}), "box_threshold": box_threshold,
                     "text_threshold": 0.0}
    vp = VisProg(preset=preset, cache=False, plugins=False, device=device, config=config)
    counter = CallCounter()
    for name in ("Loc", "Vqa"):
        vp.register(counter.wrap(vp.registry.get(name)), replace=True)

    jobs = [(TEMPLATES[i % len(TEMPLATES)], images[(i // len(TEMPLATES)) % len(images)])
            for i in range(args.programs)]
    programs = [vp.parse(text) for text, _ in jobs]

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize()

    # warm-up: the first template loads both models and runs each of them once
    t0 = time.perf_counter()
    vp.execute(TEMPLATES[0], images[0])
    sync()
    warm_s = time.perf_counter() - t0

    def one_at_a_time():
        return [vp.execute(prog, img).value for prog, (_, img) in zip(programs, jobs)]

    failures: list[str] = []

    def batched(size):
        def run():
            results = vp.run_batch([{"program": prog, "image": img}
                                    for prog, (_, img) in zip(programs, jobs)], batch_size=size)
            failures.extend(f"batched ({size}): {r.error}" for r in results if not r.ok)
            return [r.value for r in results]
        return run

    def timed(fn):
        times, values = [], None
        for _ in range(args.reps):
            counter.reset()
            sync()
            t = time.perf_counter()
            values = fn()
            sync()
            times.append(time.perf_counter() - t)
        return times, values, dict(counter.items), dict(counter.invocations), dict(counter.seconds)

    loaded = {m["kind"]: str(m["dtype"]).replace("torch.", "") for m in vp.models.loaded()}
    models = (f"the tiny preset's" if args.smoke else
              ", ".join(f"{FULL_SIZE[args.preset][i]} (full size, random weights)"
                        for i in range(2)))
    print(f"device: {device} ({torch.cuda.get_device_name() if on_cuda else 'CPU'}, "
          f"torch threads {torch.get_num_threads()}); loaded: "
          f"{', '.join(f'{k} {v}' for k, v in loaded.items())}")
    print(f"preset {preset}; models: {models}; Loc shortest edge "
          f"{'(preset)' if args.smoke else loc_edge}, box threshold {box_threshold:.3f}; "
          f"built/loaded in {build_s:.1f} s; warm-up {warm_s:.1f} s")
    print(f"workload: {args.programs} programs over {args.images} images {w}x{h}, "
          f"{args.reps} repetition(s)")
    rows = []
    seq_t, seq_vals, seq_items, seq_inv, seq_sec = timed(one_at_a_time)
    base = statistics.median(seq_t)
    rows.append({"mode": "one-at-a-time", "seconds": base, "programs_per_s": args.programs / base,
                 "module_calls": seq_items, "model_invocations": seq_inv, "model_s": seq_sec,
                 "speedup": 1.0, "same_values": args.programs})
    for size in sizes:
        t, vals, items, inv, sec = timed(batched(size))
        med = statistics.median(t)
        same = sum(a == b for a, b in zip(seq_vals, vals))
        sizer = vp._sizers[size].sizes() if size == "auto" else {}
        rows.append({"mode": f"batched ({size}{' -> ' + str(sizer) if sizer else ''})",
                     "seconds": med, "programs_per_s": args.programs / med,
                     "module_calls": items, "model_invocations": inv, "model_s": sec,
                     "speedup": base / med, "same_values": same})
    print(f"\n{'mode':44s} {'s':>8s} {'prog/s':>8s} {'speedup':>8s}  module calls "
          f"(invocations, s in module)  same values")
    for r in rows:
        calls = ", ".join(f"{k} {v} ({r['model_invocations'].get(k, 0)}, {r['model_s'][k]:.2f} s)"
                          for k, v in sorted(r["module_calls"].items()))
        print(f"{r['mode']:44s} {r['seconds']:8.2f} {r['programs_per_s']:8.2f} "
              f"{r['speedup']:7.2f}x  {calls}  {r['same_values']}/{args.programs}")
    profile = None
    if args.profile:
        print(f"\nprofile: each module's batched entry point, {len(programs)} calls at once "
              "versus one")
        profile = profile_modules(vp, images, len(programs), sync)
    for failure in failures[:5]:
        print(f"FAILED {failure}", file=sys.stderr)
    differ = [r["mode"] for r in rows if r["same_values"] != args.programs]
    if differ:
        print(f"values differ from one-at-a-time in: {', '.join(differ)}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": device, "preset": preset, "loc_edge": loc_edge, "models": loaded,
            "box_threshold": box_threshold, "programs": args.programs, "rows": rows,
            "profile": profile, "failures": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
