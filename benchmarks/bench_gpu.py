"""The `default` preset on one GPU, full size with random weights: module latency, end-to-end
throughput, seconds per question, peak GPU memory, and the VLM in bf16 versus fp16.

The six model modules of the default preset (Loc: MM-GroundingDINO, Select: SAM 3, Vqa:
Qwen3-VL-2B, Classify: SigLIP2, Depth: Depth Anything V2 Small, Replace: SDXL inpainting)
run their published architectures with random weights, built by benchmarks/bench_models.py
and saved once into `--work` (nothing is downloaded: a GPU machine here has no model hub
either); the other settings are the preset's. Answers are meaningless, costs are real. Loc's
box threshold is calibrated so it keeps about 8 boxes an image, as trained weights do.

    python benchmarks/bench_gpu.py                          # the GPU: build once, measure
    python benchmarks/bench_gpu.py --work /data/bench       # keep the checkpoints (~17 GB)
    python benchmarks/bench_gpu.py --build-only --work ...  # only build them (CPU, minutes)
    python benchmarks/bench_gpu.py --skip replace-latency --replace-steps 10
    python benchmarks/bench_gpu.py --preset tiny --smoke    # CPU, tiny models: the tests

Printed, and written as JSON (`--json`, plus one `JSON {...}` line at the end):

1. latency of each module's batched entry point at batch 1 and batch 8 (seconds per call,
   median of `--reps`, each call on fresh images), and the speedup per call;
2. end-to-end: a mixed set of `--programs` (32) programs over 8 images, one at a time, with
   `batch_size="auto"` (its first run, which measures, and a second that uses what it
   learned), and with each fixed size of `--sizes`: programs/s, the best fixed size, auto
   as a share of it, and p50/p95 seconds per question (from the start of its run to its
   answer);
3. peak GPU memory of the whole default set (every module loaded and run), and what each
   model holds;
4. the VLM (Vqa) in bf16 versus fp16 (its `dtype` setting, visprog.models.dtypes): load,
   latency at batch 1 and 8, and how many answers agree.

Goals on one GPU (issue 19): batched >= 4x one-at-a-time for SAM 3 and the VLM; auto within
10% of the best fixed size. The device is CUDA (the first GPU) unless `--device` says
otherwise; without a GPU the script stops and says so, except with `--smoke` or
`--device cpu`. Each section is written to the JSON as soon as it is done, so a run cut
short keeps what it measured; `--skip` leaves sections out. On an H100 expect about 3
minutes to build the checkpoints the first time and 6-8 minutes of measuring.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

# module -> its bench in bench_models.BENCHES (the default preset's backend of each)
MODULES = {"Loc": "Loc[mm_grounding_dino]", "Select": "Select[sam3]", "Vqa": "Vqa",
           "Classify": "Classify", "Depth": "Depth", "Replace": "Replace"}
SECTIONS = ("latency", "end-to-end", "memory", "vlm-dtype")

# A mixed set: each of the six modules, alone and together, as GQA-style and editing
# questions use them.
TEMPLATES = [
    "BOX=Loc(image=IMAGE, object='car')\nN=Count(box=BOX)\n"
    "FINAL=Eval(expr=\"'yes' if {N} > 0 else 'no'\")",
    "BOX=Loc(image=IMAGE, object='car')\nCROP=Crop(image=IMAGE, box=BOX)\n"
    "ANSWER=Vqa(image=CROP, question='what color is the car?')\nFINAL=Result(var=ANSWER)",
    "ANSWER=Vqa(image=IMAGE, question='is it daytime?')\nFINAL=Result(var=ANSWER)",
    "BOX=Loc(image=IMAGE, object='person')\nLEFT=CropLeftOf(image=IMAGE, box=BOX)\n"
    "ANSWER=Vqa(image=LEFT, question='what is to the left of the person?')\n"
    "FINAL=Result(var=ANSWER)",
    "BOX=Loc(image=IMAGE, object='car')\nRED=Select(image=IMAGE, object=BOX, query='red car')\n"
    "N=Count(box=RED)\nFINAL=Eval(expr=\"'yes' if {N} > 0 else 'no'\")",
    "BOX=Loc(image=IMAGE, object='car')\n"
    "KIND=Classify(image=IMAGE, object=BOX, categories=['car', 'bus', 'truck'])\n"
    "N=Count(box=KIND)\nFINAL=Result(var=N)",
    "BOX=Loc(image=IMAGE, object='person')\nNEAR=Depth(image=IMAGE, object=BOX)\n"
    "N=Count(box=NEAR)\nFINAL=Result(var=N)",
    "BOX=Loc(image=IMAGE, object='car')\n"
    "EDITED=Replace(image=IMAGE, object=BOX, prompt='a blue sports car')\nFINAL=Result(var=EDITED)",
]


# -- the models --------------------------------------------------------------------------------

def full_size_config(work: Path, loc_edge: int = 800) -> dict[str, dict[str, Any]]:
    """Config overrides pointing each module at its full-size random checkpoint, built into
    `work` the first time (in child processes, side by side: their memory is given back)."""
    from bench_models import BENCHES, ensure_saved

    jobs = {}
    for module, name in MODULES.items():
        options = {"loc_edge": loc_edge} if module == "Loc" else {}
        folder = work / name.replace("[", "_").replace("]", "")
        jobs[module] = (name, folder, options)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=3) as pool:  # three at a time: ~15 GB of RAM at most
        done = {m: pool.submit(ensure_saved, name, folder, 3600, **options)
                for m, (name, folder, options) in jobs.items()}
        saved = {m: f.result() for m, f in done.items()}
    print(f"checkpoints in {work} ({time.perf_counter() - t0:.0f} s to build or find)",
          flush=True)
    config = {}
    for module, (name, _, _) in jobs.items():
        bench = BENCHES[name]
        backend = {"backend": bench.settings["backend"]} if "backend" in bench.settings else {}
        config[module] = {**backend, **bench.checkpoints(saved[module])}
    return config


# -- calls on fresh images ----------------------------------------------------------------------

class Images:
    """A new 640x480 street-like image at each call (Depth keeps maps by image content)."""

    def __init__(self, size: tuple[int, int]):
        from bench_batch import make_images

        self.size = size
        self.pool = make_images(16, size)
        self.n = 0

    def __call__(self):
        import numpy as np
        from PIL import Image

        base = np.asarray(self.pool[self.n % len(self.pool)]).copy()
        base[0, 0] = (self.n * 7919 % 256, self.n // 256 % 256, 0)  # other content, same look
        self.n += 1
        return Image.fromarray(base)


def module_calls(images: Images) -> dict[str, Callable[[], dict[str, Any]]]:
    from bench_models import candidates

    size = images.size
    return {
        "Loc": lambda: {"image": images(), "object": "car"},
        "Select": lambda: {"image": images(), "object": candidates(size), "query": "red car"},
        "Vqa": lambda: {"image": images(), "question": "what color is the car?"},
        "Classify": lambda: {"image": images(), "object": candidates(size, n=8),
                             "categories": ["car", "bus", "truck", "person"]},
        "Depth": lambda: {"image": images(), "object": candidates(size)},
        "Replace": lambda: {"image": images(), "object": candidates(size, n=4)[:1],
                            "prompt": "a blue sports car"},
    }


# -- measuring ---------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the nearest ranks."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Timer:
    """Wall-clock seconds of a call, the GPU's queued work included (synchronised)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t, out


def latency(vp: Any, timer: Timer, calls: dict, modules: list[str], reps: int,
            batch: int, warm: bool = True) -> dict[str, Any]:
    """Seconds per call of each module's batched entry point at batch 1 and `batch` (after
    an untimed call of that shape when `warm`: a GPU picks its kernels per shape)."""
    out = {}
    print(f"\n1. module latency, seconds per call (median of {reps}; batch {batch}: one call of "
          f"its batched entry point on {batch} fresh images)", flush=True)
    print(f"   {'module':<10}{'batch 1':>10}{f'batch {batch}':>10}{'speedup':>9}   first call",
          flush=True)
    for module in modules:
        fn, make = vp.registry.get(module).batch_fn, calls[module]
        first, _ = timer.timed(lambda: fn([make()]))  # loads the model
        row = {"first_call_s": first}
        for size in (1, batch):
            if warm:
                timer.timed(lambda: fn([make() for _ in range(size)]))
            times = [timer.timed(lambda: fn([make() for _ in range(size)]))[0] / size
                     for _ in range(reps)]
            row[f"batch_{size}_s_per_call"] = statistics.median(times)
        row["speedup"] = row["batch_1_s_per_call"] / row[f"batch_{batch}_s_per_call"]
        out[module] = row
        print(f"   {module:<10}{row['batch_1_s_per_call']:>10.3f}"
              f"{row[f'batch_{batch}_s_per_call']:>10.3f}{row['speedup']:>8.2f}x   "
              f"{first:.2f} s", flush=True)
    return out


def end_to_end(vp: Any, timer: Timer, items: list[dict], sizes: list[int]) -> dict[str, Any]:
    """Programs/s of the items one at a time, with auto batch sizes and with fixed ones, and
    seconds per question (from the start of a run to that item's answer)."""
    n = len(items)
    rows: dict[str, Any] = {}

    def one_at_a_time():
        done, values, start = [], [], time.perf_counter()
        for it in items:
            values.append(vp.execute(it["program"], image=it["image"]).value)
            done.append(time.perf_counter() - start)
        return done, values

    def batched(size):
        def run():
            start, done = time.perf_counter(), {}
            results = vp.run_batch(items, batch_size=size,
                                   on_item=lambda r: done.setdefault(r.id, time.perf_counter()
                                                                     - start))
            bad = [r for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"{len(bad)} programs failed with batch size {size}: "
                                   f"{bad[0].error}")
            return [done[r.id] for r in results], [r.value for r in results]
        return run

    print(f"\n2. end-to-end: {n} mixed programs ({len(TEMPLATES)} kinds) over "
          f"{len({id(it['image']) for it in items})} images", flush=True)
    print(f"   {'mode':<34}{'s':>8}{'prog/s':>8}{'p50 s':>8}{'p95 s':>8}  same values  sizes",
          flush=True)
    baseline = None
    modes = [("one at a time", one_at_a_time), ("auto (first run: measuring)", batched("auto")),
             ("auto (second run)", batched("auto"))]
    modes += [(f"fixed {s}", batched(s)) for s in sizes]
    for label, fn in modes:
        seconds, (answered, values) = timer.timed(fn)
        baseline = values if baseline is None else baseline
        same = sum(_same(a, b) for a, b in zip(baseline, values))
        learned = vp._sizers["auto"].sizes() if label.startswith("auto") else {}
        rows[label] = {"seconds": seconds, "programs_per_s": n / seconds,
                       "p50_s_per_question": percentile(answered, 50),
                       "p95_s_per_question": percentile(answered, 95),
                       "same_values": same, "auto_sizes": learned}
        r = rows[label]
        print(f"   {label:<34}{seconds:>8.2f}{r['programs_per_s']:>8.2f}"
              f"{r['p50_s_per_question']:>8.2f}{r['p95_s_per_question']:>8.2f}  {same:>4}/{n}"
              f"       {learned or ''}", flush=True)
    fixed = {k: v for k, v in rows.items() if k.startswith("fixed")}
    summary: dict[str, Any] = {"modes": rows}
    if fixed:
        best = max(fixed, key=lambda k: fixed[k]["programs_per_s"])
        best_rate = fixed[best]["programs_per_s"]
        summary.update({
            "best_fixed": best, "best_fixed_programs_per_s": best_rate,
            "auto_share_of_best_first_run": rows["auto (first run: measuring)"]["programs_per_s"]
            / best_rate,
            "auto_share_of_best": rows["auto (second run)"]["programs_per_s"] / best_rate,
            "best_batched_vs_one_at_a_time": best_rate / rows["one at a time"]["programs_per_s"]})
        print(f"   best fixed: {best}, {best_rate:.2f} programs/s = "
              f"{summary['best_batched_vs_one_at_a_time']:.2f}x one at a time; auto "
              f"{summary['auto_share_of_best']:.0%} of it (first run "
              f"{summary['auto_share_of_best_first_run']:.0%}; goal >= 90%)", flush=True)
    return summary


def _same(a: Any, b: Any) -> bool:
    from visprog.values.codec import digest

    try:
        return digest(a) == digest(b)
    except TypeError:
        return a == b


def memory(vp: Any, timer: Timer) -> dict[str, Any]:
    """Peak GPU memory since the start (every module loaded and run), and the models held."""
    loaded = [{"kind": m["kind"], "dtype": str(m["dtype"]).replace("torch.", ""),
               "mb": round(m.get("bytes", 0) / 2**20)} for m in vp.models.loaded()]
    unloads = [e for e in vp.models.events if e.get("event") == "unload"]
    out: dict[str, Any] = {"models": loaded, "models_mb": sum(m["mb"] for m in loaded),
                           "unloads": len(unloads)}
    torch = timer.torch
    if timer.cuda:
        out.update({"peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20),
                    "peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20),
                    "allocated_now_mb": round(torch.cuda.memory_allocated() / 2**20),
                    "device_total_mb": round(torch.cuda.get_device_properties(0).total_memory
                                             / 2**20)})
    print("\n3. memory of the default set: " + ", ".join(
        f"{m['kind']} {m['dtype']} {m['mb']} MB" for m in loaded), flush=True)
    if timer.cuda:
        print(f"   peak GPU memory allocated {out['peak_allocated_mb']} MB (reserved "
              f"{out['peak_reserved_mb']} MB) of {out['device_total_mb']} MB; models "
              f"{out['models_mb']} MB; {len(unloads)} unloads by the memory budget", flush=True)
    else:
        print(f"   (no GPU: models {out['models_mb']} MB in RAM)", flush=True)
    return out


def vlm_dtypes(vp: Any, timer: Timer, calls: dict, reps: int, batch: int, device: str,
               config: dict[str, Any]) -> dict[str, Any]:
    """Vqa's model loaded in bf16 and in fp16 (each in an engine of its own), the same
    calls through each: load seconds, seconds per call at batch 1 and `batch`, answers that
    agree."""
    import importlib.util

    from visprog.api import VisProg

    if importlib.util.find_spec("visprog.models.dtypes") is None:
        note = ("this visprog has no per-module dtype setting (visprog/models/dtypes.py, "
                "issue 19 item 3): bf16 versus fp16 not measured")
        print(f"\n4. VLM dtype: {note}", flush=True)
        return {"skipped": note}
    vp.models.unload()  # room for two more copies
    if timer.cuda:
        timer.torch.cuda.empty_cache()
    make = calls["Vqa"]
    questions = [make() for _ in range(batch)]
    out: dict[str, Any] = {}
    answers = {}
    print(f"\n4. the VLM in bf16 versus fp16 (Vqa, {batch} questions; seconds per call, "
          f"median of {reps})", flush=True)
    for dtype in ("bf16", "fp16"):
        # an engine of its own: a model manager loads each checkpoint once, in one dtype
        engine = VisProg(preset=vp.preset, cache=False, plugins=False, device=device,
                         config={**config, "Vqa": {**config.get("Vqa", {}), "dtype": dtype}})
        tool = engine.registry.get("Vqa")
        load, _ = timer.timed(lambda: tool.batch_fn(questions[:1]))
        row = {"first_call_s": load,
               "loaded_as": [str(m["dtype"]).replace("torch.", "")
                             for m in engine.models.loaded()]}
        for size in (1, batch):
            times = [timer.timed(lambda: tool.batch_fn(questions[:size]))[0] / size
                     for _ in range(reps)]
            row[f"batch_{size}_s_per_call"] = statistics.median(times)
        answers[dtype] = tool.batch_fn(questions)
        row["answers"] = answers[dtype]
        out[dtype] = row
        print(f"   {dtype}: loaded as {', '.join(row['loaded_as'])}; batch 1 "
              f"{row['batch_1_s_per_call']:.3f} s, batch {batch} "
              f"{row[f'batch_{batch}_s_per_call']:.3f} s per call; first call {load:.2f} s",
              flush=True)
        engine.models.unload()
        if timer.cuda:
            timer.torch.cuda.empty_cache()
    out["answers_agree"] = sum(a == b for a, b in zip(answers["bf16"], answers["fp16"]))
    out["fp16_vs_bf16_batch_1"] = out["fp16"]["batch_1_s_per_call"] / out["bf16"]["batch_1_s_per_call"]
    print(f"   answers agreeing: {out['answers_agree']}/{batch} (random weights: a near tie "
          f"can go either way); fp16 takes {out['fp16_vs_bf16_batch_1']:.2f}x bf16's time at "
          f"batch 1", flush=True)
    return out


# -- the command -------------------------------------------------------------------------------

def pick(device_arg: str, smoke: bool) -> str:
    """The device: CUDA unless told; refuses to go on without one unless asked for the CPU."""
    import torch

    if smoke:
        return "cpu" if device_arg == "auto" else device_arg
    if device_arg == "auto":
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False, "
                             f"torch {torch.__version__}); run it on a GPU machine, or use "
                             "--smoke (tiny models) or --device cpu (the full measurements on "
                             "this CPU: hours)")
        return "cuda"
    if device_arg.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench_gpu: --device {device_arg}, but torch sees no CUDA GPU")
    return device_arg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="default",
                   help="default (full-size random checkpoints) or tiny (its tiny models)")
    p.add_argument("--smoke", action="store_true",
                   help="a few programs and one repetition, on the CPU unless --device says "
                        "(checks that the benchmark runs; with --preset tiny: seconds)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else stop), cuda, cuda:1, cpu")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "visprog_bench_gpu"),
                   help="folder for the full-size checkpoints (about 17 GB; kept for reruns)")
    p.add_argument("--programs", type=int, default=None, help="end-to-end programs (32)")
    p.add_argument("--images", type=int, default=None, help="end-to-end images (8)")
    p.add_argument("--sizes", default=None, help="fixed batch sizes to try (4,8,16,32)")
    p.add_argument("--batch", type=int, default=None, help="the batch of section 1 (8)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per figure (3)")
    p.add_argument("--replace-steps", type=int, default=None,
                   help="Replace's denoising steps (default: the preset's, 30)")
    p.add_argument("--skip", default="", help=f"sections to leave out: {', '.join(SECTIONS)}, "
                                              "or <module>-latency (e.g. replace-latency)")
    p.add_argument("--build-only", action="store_true",
                   help="build the full-size checkpoints into --work and stop (a first, "
                        "separate step; no GPU needed)")
    p.add_argument("--json", help="write the figures here (after each section)")
    args = p.parse_args(argv)
    smoke = args.smoke
    programs = args.programs or (8 if smoke else 32)
    sizes = [int(s) for s in (args.sizes or ("4" if smoke else "4,8,16,32")).split(",")]
    batch = args.batch or (2 if smoke else 8)
    reps = args.reps or (1 if smoke else 3)
    skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS) - {f"{m.lower()}-latency" for m in MODULES}
    if unknown:
        p.error(f"--skip: unknown {sorted(unknown)}; sections are {', '.join(SECTIONS)}")

    if args.build_only:
        full_size_config(Path(args.work))
        return 0
    device = pick(args.device, smoke)
    import torch

    from bench_batch import calibrate_loc, make_images

    from visprog.api import VisProg

    timer = Timer(device)
    figures: dict[str, Any] = {"device": device, "preset": args.preset, "smoke": smoke,
                               "torch": torch.__version__}
    if timer.cuda:
        props = torch.cuda.get_device_properties(torch.device(device))
        figures["gpu"] = {"name": props.name, "memory_mb": round(props.total_memory / 2**20),
                          "compute": f"{props.major}.{props.minor}"}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str))

    if args.preset == "tiny":
        config: dict[str, Any] = {}
    elif args.preset == "default":
        config = full_size_config(Path(args.work))
    else:
        p.error(f"--preset is default or tiny, not {args.preset!r}")
    if args.replace_steps:
        config.setdefault("Replace", {})["steps"] = args.replace_steps
    size = (160, 120) if smoke else (640, 480)
    images = Images(size)
    t0 = time.perf_counter()
    threshold = calibrate_loc(args.preset, config, images(), device)
    config["Loc"] = {**config.get("Loc", {}), "box_threshold": threshold, "text_threshold": 0.0}
    figures["loc_box_threshold"] = threshold
    calibrated = time.perf_counter() - t0
    if timer.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    vp = VisProg(preset=args.preset, cache=False, plugins=False, device=device, config=config)
    print(f"device {device} ({figures.get('gpu', {}).get('name', 'CPU')}), preset "
          f"{args.preset}{' (full size, random weights)' if args.preset == 'default' else ''}"
          f"; Loc threshold {threshold:.3f} (calibrated in {calibrated:.1f} s); Replace steps "
          f"{vp.registry.get('Replace').settings['steps']}", flush=True)
    calls = module_calls(images)
    if "latency" not in skip:
        modules = [m for m in MODULES if f"{m.lower()}-latency" not in skip]
        figures["latency"] = latency(vp, timer, calls, modules, reps, batch, warm=not smoke)
        save()
    if "end-to-end" not in skip:
        scenes = make_images(args.images or (2 if smoke else 8), size)
        items = [{"program": TEMPLATES[i % len(TEMPLATES)], "id": i,
                  "image": scenes[(i // len(TEMPLATES) + i) % len(scenes)]}
                 for i in range(programs)]
        figures["end_to_end"] = end_to_end(vp, timer, items, sizes)
        save()
    if "memory" not in skip:
        figures["memory"] = memory(vp, timer)
        save()
    if "vlm-dtype" not in skip:
        figures["vlm_dtype"] = vlm_dtypes(vp, timer, calls, reps, batch, device, config)
        save()
    print("JSON " + json.dumps(figures, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
