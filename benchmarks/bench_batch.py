"""Batched versus one-at-a-time throughput: 32 GQA-style programs over 8 images.

The models are the full-size architectures, built from their default transformers configs
with random weights (nothing is downloaded): BLIP VQA (`BlipConfig()`: ViT-B/16 at 384 px,
BERT-base text) for Vqa and GroundingDINO-tiny (`GroundingDinoConfig()`: Swin-T, BERT-base,
900 queries) for Loc. They are saved once to a work folder and loaded by the real Loc and Vqa
tools, exactly as a local checkpoint would be. Their answers are meaningless; their cost is
real. Loc's box threshold is calibrated so that about 8 boxes pass per image, as with trained
weights (random weights pass hundreds, and the tool's NMS would then dominate the timing).

Each image gets four programs (a count, a crop-then-ask, a plain question, a
left-of-a-person question). Two of them ask the same Vqa question of the whole image and two
locate the same object, as questions about one image do, so the batched run makes fewer
model calls: the count of module calls is printed for both.

    python benchmarks/bench_batch.py                      # CPU: one repetition, small Loc input
    python benchmarks/bench_batch.py --device cuda --reps 3 --sizes auto,8,32

On a CPU the defaults are cut down, because a full-size call takes several seconds there
(10-40 s per call measured on the shared 2-core machine): 8 programs over 2 images (the same
four templates, so the same sharing) and a Loc input of 224 px shortest edge (800 on CUDA,
the checkpoint's own); the architectures are unchanged. `--programs 32 --images 8` runs the
full workload anywhere.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
WORDS = ["what", "color", "is", "the", "car", "it", "daytime", "to", "left", "of", "person",
         "?", "a", "red", "blue", "yes", "no", "."]


def build_checkpoints(work: Path, loc_edge: int) -> tuple[Path, Path]:
    """Save full-size random BLIP VQA and GroundingDINO-tiny (default configs) once."""
    import torch
    from transformers import (BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil,
                              BlipProcessor, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor)

    from visprog.models import tiny_bert_tokenizer

    blip, gdino = work / "blip_vqa_full", work / f"gdino_tiny_full_{loc_edge}"
    if not (blip / "config.json").exists():
        torch.manual_seed(0)
        tok = tiny_bert_tokenizer(WORDS, extra_special=["[DEC]"])
        tok.add_special_tokens({"bos_token": "[DEC]"})
        BlipForQuestionAnswering(BlipConfig()).save_pretrained(blip)
        BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tok).save_pretrained(blip)
    if not (gdino / "config.json").exists():
        torch.manual_seed(0)
        GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(gdino)
        GroundingDinoProcessor(
            image_processor=GroundingDinoImageProcessorPil(
                size={"shortest_edge": loc_edge, "longest_edge": loc_edge * 1333 // 800}),
            tokenizer=tiny_bert_tokenizer(WORDS)).save_pretrained(gdino)
    return blip, gdino


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
            x, y = rng.integers(0, size[0] - 80), rng.integers(size[1] // 3, size[1] - 60)
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


def calibrate_loc(vp, gdino: Path, image, keep: int = 8) -> float:
    """Set Loc's box threshold so that about `keep` boxes pass, as with trained weights.

    Random weights score most of the 900 queries alike, so at a trained model's threshold
    hundreds of boxes pass and the tool's non-maximum suppression (linear in the boxes kept)
    would dominate the timing; a trained detector passes a handful."""
    import torch

    from visprog.models import ToolContext
    from visprog.tools.loc import build, grounding_prompt, load_grounding_dino
    from visprog.models import model_dtype, to_model_inputs

    model, processor = vp.models.get("grounding_dino", str(gdino), load_grounding_dino)
    inputs = processor(images=[image], text=[grounding_prompt("car")], return_tensors="pt")
    with torch.inference_mode():
        out = model(**to_model_inputs(inputs, model.device, model_dtype(model)))
    best = out.logits.float().sigmoid().amax(-1).flatten().sort(descending=True).values
    threshold = float(best[min(keep, len(best) - 1)])
    vp.register(build({"checkpoint": str(gdino), "box_threshold": threshold,
                       "text_threshold": 0.0}, ToolContext(vp.models, None)), replace=True)
    return threshold


def profile_models(vp, blip: Path, gdino: Path, images: list, n: int, sync) -> None:
    """Where a batch's time goes: the processor (CPU) versus the model, at batch 1 and n."""
    import torch

    from visprog.tools.loc import load_grounding_dino
    from visprog.models import model_dtype, to_model_inputs
    from visprog.tools.vqa import load_blip

    mm = vp.models
    cases = [("Loc", mm.get("grounding_dino", str(gdino), load_grounding_dino), "car ."),
             ("Vqa", mm.get("blip_vqa", str(blip), load_blip), "what color is the car?")]
    print("\nprofile (s): processor | model, per batch")
    for name, (model, processor), text in cases:
        for b in (1, n):
            imgs = [images[i % len(images)] for i in range(b)]
            t = time.perf_counter()
            inputs = processor(images=imgs, text=[text] * b, return_tensors="pt", padding=True)
            prep = time.perf_counter() - t
            inputs = to_model_inputs(inputs, model.device, model_dtype(model))
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                if name == "Vqa":
                    model.generate(**inputs, max_new_tokens=10)
                else:
                    model(**inputs)
            sync()
            print(f"  {name} batch {b:3d}: {prep:.3f} | {time.perf_counter() - t:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
                   help="also time the processors (CPU) apart from the models, per batch")
    args = p.parse_args(argv)

    import torch

    from visprog.api import VisProg
    from visprog.models import pick_device

    device = pick_device(None if args.device == "auto" else args.device)
    on_cuda = device.startswith("cuda")
    loc_edge = args.loc_edge or (800 if on_cuda else 224)
    args.programs = args.programs or (32 if on_cuda else 8)
    args.images = args.images or (8 if on_cuda else 2)
    sizes = [s if s == "auto" else int(s) for s in
             (args.sizes or ("auto,8,32" if on_cuda else "auto")).split(",")]
    work = Path(args.work or Path(tempfile.gettempdir()) / "visprog_bench_models")
    t0 = time.perf_counter()
    blip, gdino = build_checkpoints(work, loc_edge)
    build_s = time.perf_counter() - t0

    vp = VisProg(preset="default", cache=False, plugins=False, device=device,
                 config={"Vqa": {"checkpoint": str(blip)},
                         "Loc": {"checkpoint": str(gdino), "box_threshold": 0.2,
                                 "text_threshold": 0.0}})
    w, h = (int(v) for v in args.image_size.lower().split("x"))
    images = make_images(args.images, (w, h))
    box_threshold = calibrate_loc(vp, gdino, images[0])
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

    def batched(size):
        def run():
            results = vp.run_batch([{"program": prog, "image": img}
                                    for prog, (_, img) in zip(programs, jobs)], batch_size=size)
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"batched run failed: {bad[0]}")
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

    print(f"device: {device} ({torch.cuda.get_device_name() if on_cuda else 'CPU'}, "
          f"torch threads {torch.get_num_threads()}); dtype: {vp.models.dtype() or 'float32'}")
    print(f"models: BLIP VQA {blip.name}, GroundingDINO-tiny {gdino.name} (Loc shortest edge "
          f"{loc_edge}, box threshold {box_threshold:.3f}); built/loaded in {build_s:.1f} s; "
          f"warm-up {warm_s:.1f} s")
    print(f"workload: {args.programs} programs over {args.images} images {w}x{h}, "
          f"{args.reps} repetition(s)")
    rows = []
    seq_t, seq_vals, seq_items, seq_inv, seq_sec = timed(one_at_a_time)
    base = statistics.median(seq_t)
    rows.append({"mode": "one-at-a-time", "seconds": base, "programs_per_s": args.programs / base,
                 "module_calls": seq_items, "model_invocations": seq_inv, "model_s": seq_sec,
                 "speedup": 1.0,
                 "same_values": args.programs})
    for size in sizes:
        t, vals, items, inv, sec = timed(batched(size))
        med = statistics.median(t)
        same = sum(a == b for a, b in zip(seq_vals, vals))
        sizer = vp._sizers[size].sizes() if size == "auto" else {}
        rows.append({"mode": f"batched ({size}{' -> ' + str(sizer) if sizer else ''})",
                     "seconds": med, "programs_per_s": args.programs / med,
                     "module_calls": items, "model_invocations": inv, "model_s": sec,
                     "speedup": base / med,
                     "same_values": same})
    print(f"\n{'mode':44s} {'s':>8s} {'prog/s':>8s} {'speedup':>8s}  module calls (invocations, s in module)"
          f"  same values")
    for r in rows:
        calls = ", ".join(f"{k} {v} ({r['model_invocations'].get(k, 0)}, {r['model_s'][k]:.2f} s)"
                          for k, v in sorted(r["module_calls"].items()))
        print(f"{r['mode']:44s} {r['seconds']:8.2f} {r['programs_per_s']:8.2f} "
              f"{r['speedup']:7.2f}x  {calls}  {r['same_values']}/{args.programs}")
    if args.profile:
        profile_models(vp, blip, gdino, images, len(programs), sync)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "loc_edge": loc_edge,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
