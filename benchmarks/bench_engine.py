"""Engine overhead and cache benefit, printed as figures.

1. Per-step overhead of parse + check + run (+ the trace records the run makes) on a 20-step
   program whose modules do nothing, with and without the step cache. Goal: < 50 us a step.
2. Cold versus warm runs of a GQA-style program whose model steps sleep (50 ms each): cold,
   warm in the same process, and warm from disk in a new VisProg instance.

Run: python benchmarks/bench_engine.py [--runs N] [--sleep SECONDS]
     python benchmarks/bench_engine.py --smoke      # a few runs: seconds (the tests)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from visprog.engine.cache import StepCache
from visprog.language.checker import check_or_raise
from visprog.engine.interpreter import Interpreter
from visprog.language.parser import _parse_text, parse
from visprog.registry import Registry, tool
from visprog.values import Objects

def random_image(w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8))


IMAGE = random_image(640, 480)
FOUND = Objects([(10, 10, 100, 100), (200, 50, 300, 200)], IMAGE.size,
                labels=["thing", "thing"], scores=[0.9, 0.8])


# -- no-op modules: the engine's own cost is all that is left ----------------------------------

@tool("NoopLoc", params={"image": "Image", "object": "Text"}, returns="Objects")
def noop_loc(image, object):
    return FOUND


@tool("NoopCount", params={"box": "Objects"}, returns="Number", draw_on=None)
def noop_count(box):
    return 2


@tool("NoopCrop", params={"image": "Image", "box": "Objects"}, returns="Image")
def noop_crop(image, box):
    return image


@tool("NoopAnswer", params={"image": "Image", "question": "Text"}, returns="Text",
      draw_on=None)
def noop_answer(image, question):
    return "yes"


def twenty_step_program(tag: str = "") -> str:
    """Five GQA-ish blocks of four steps: locate, count, crop, ask."""
    lines = [f"# {tag}"] if tag else []
    for i in range(5):
        lines += [f"OBJ{i}=NoopLoc(image=IMAGE, object='thing {i}')",
                  f"N{i}=NoopCount(box=OBJ{i})",
                  f"IMG{i}=NoopCrop(image=IMAGE, box=OBJ{i})",
                  f"ANS{i}=NoopAnswer(image=IMG{i}, question='is it red?')"]
    return "\n".join(lines) + "\n"


def median_us(fn: Callable[[], object], runs: int, blocks: int = 5) -> float:
    """The lowest of `blocks` medians (each over runs/blocks calls), in microseconds.

    On a shared machine other tenants slow whole stretches of a run (we saw +-30% between
    back-to-back runs on 2 shared cores); a block that ran undisturbed shows the code's own
    cost, the reason `timeit` also reports a minimum."""
    for _ in range(max(3, runs // 20)):  # warm up
        fn()
    per_block = max(1, runs // blocks)
    medians = []
    for _ in range(blocks):
        times = []
        for _ in range(per_block):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times))
    return min(medians) * 1e6


def bench_overhead(runs: int, size: tuple[int, int]) -> None:
    from visprog.values.codec import digest

    registry = Registry([noop_loc, noop_count, noop_crop, noop_answer])
    text = twenty_step_program()
    program = parse(text)
    steps = len(program)
    image = IMAGE if size == IMAGE.size else random_image(*size)
    inputs = {"IMAGE": image}
    types = {"IMAGE": "Image"}
    counter = iter(range(10**9))

    parse_cold = median_us(lambda: _parse_text.__wrapped__(f"# {next(counter)}\n" + text), runs)
    parse_hit = median_us(lambda: parse(text), runs)
    check = median_us(lambda: check_or_raise(program, registry, types), runs)

    def runner(cache_factory: Callable[[], object]) -> Callable[[], object]:
        interp = Interpreter(registry, cache_factory())
        return lambda: interp.run(program, inputs, check=False)

    def fresh_cache_each_run() -> Callable[[], object]:
        # every step misses and stores: the full key + put cost, memory only
        return lambda: Interpreter(registry, StepCache(disk_dir=None)).run(
            program, inputs, check=False)

    run_plain = median_us(runner(lambda: None), runs)
    run_hits = median_us(runner(lambda: StepCache(disk_dir=None)), runs)
    run_misses = median_us(fresh_cache_each_run(), runs)
    total_remembered = parse_hit + check + run_plain

    hash_image = median_us(lambda: digest(image), runs)
    print(f"\n1. Per-step overhead, {steps}-step program of no-op modules, "
          f"{size[0]}x{size[1]} input, {runs} runs (lowest median of 5 blocks)")
    print(f"   {'phase':44s} {'whole program':>14s} {'per step':>10s}")

    def row(name: str, us: float) -> None:
        print(f"   {name:44s} {us:11.1f} us {us / steps:7.2f} us")

    row("parse (new text)", parse_cold)
    row("parse (same text, remembered)", parse_hit)
    row("check", check)
    row("run + trace, no cache", run_plain)
    row("run + trace, cache on, all hits (memory)", run_hits)
    row("run + trace, cache on, all misses (memory)", run_misses)
    total_plain = parse_cold + check + run_plain
    total_hits = parse_cold + check + run_hits
    total_miss = parse_cold + check + run_misses
    print(f"   (content digest of the input image: {hash_image:.1f} us, once per run)")
    row("TOTAL parse+check+run, no cache", total_plain)
    row("TOTAL parse+check+run, cache hits", total_hits)
    row("TOTAL parse+check+run, cache misses", total_miss)
    row("TOTAL, same text again (parse remembered), no cache", total_remembered)
    # The goal is the engine's own cost (parse + check + run + trace). With the step cache on,
    # each run also hashes its input image and copies cached images out (so that no caller
    # can change what the cache holds): pixel work that grows with the image, shown above.
    per_step = total_plain / steps
    print(f"   goal < 50 us a step (parse + check + run + trace): "
          f"{'met' if per_step < 50 else 'MISSED'} ({per_step:.1f} us)")


# -- sleeping modules: what the cache saves ----------------------------------------------------

def sleepy_tools(seconds: float):
    @tool("SlowLoc", params={"image": "Image", "object": "Text"}, returns="Objects")
    def slow_loc(image, object):
        time.sleep(seconds)
        w, h = image.size
        return Objects([(w * 0.1, h * 0.1, w * 0.5, h * 0.6)], image.size,
                       labels=[object], scores=[0.9])

    @tool("SlowVqa", params={"image": "Image", "question": "Text"}, returns="Text",
          draw_on=None)
    def slow_vqa(image, question):
        time.sleep(seconds)
        return "red"

    return [slow_loc, slow_vqa]


GQA = """\
BOX0=SlowLoc(image=IMAGE, object='car')
IMAGE0=Crop(image=IMAGE, box=BOX0)
BOX1=SlowLoc(image=IMAGE0, object='door')
N=Count(box=BOX1)
IMAGE1=CropRightOf(image=IMAGE0, box=BOX1)
ANSWER0=SlowVqa(image=IMAGE1, question='What color is the car?')
ANSWER1=Eval(expr="{ANSWER0} if {N} > 0 else 'none'")
FINAL=Result(var=ANSWER1)
"""


def bench_cold_warm(sleep: float, runs: int) -> None:
    from visprog.api import VisProg

    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "photo.png"
        IMAGE.save(image_path)
        cache_dir = Path(tmp) / "cache"

        def engine() -> VisProg:
            vp = VisProg(preset="tiny", cache_dir=cache_dir, plugins=False)
            for t in sleepy_tools(sleep):
                vp.register(t)
            return vp

        def timed(vp: VisProg) -> tuple[float, int]:
            t = time.perf_counter()
            out = vp.execute(GQA, image=image_path)
            return time.perf_counter() - t, sum(r.cached for r in out.trace)

        first = engine()
        cold, cold_hits = timed(first)
        warm = [timed(first) for _ in range(runs)]
        from_disk = []
        for _ in range(max(3, runs // 4)):
            from_disk.append(timed(engine()))  # new instance: empty memory, same disk
        steps = len(parse(GQA))
        print(f"\n2. Cold vs warm, GQA-style {steps}-step program, model steps sleep "
              f"{sleep * 1000:.0f} ms (3 of them), image read from a PNG each run")
        print(f"   cold (empty cache)                      {cold * 1000:8.1f} ms "
              f"({cold_hits} cached steps)")
        print(f"   warm, same instance (memory)            "
              f"{statistics.median(t for t, _ in warm) * 1000:8.1f} ms "
              f"({warm[-1][1]} cached steps, median of {len(warm)})")
        print(f"   warm from disk, new VisProg instance    "
              f"{statistics.median(t for t, _ in from_disk) * 1000:8.1f} ms "
              f"({from_disk[-1][1]} cached steps, median of {len(from_disk)})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=500, help="runs per overhead figure")
    ap.add_argument("--sleep", type=float, default=0.05, help="seconds each model step sleeps")
    ap.add_argument("--smoke", action="store_true",
                    help="20 runs, 1 ms sleeps (checks that the benchmark runs; figures rough)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.sleep = 20, 0.001
    bench_overhead(args.runs, (64, 48))
    bench_overhead(args.runs, (640, 480))
    bench_cold_warm(args.sleep, max(5, args.runs // 50))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
