"""Agent mode's own cost, beyond the model calls (issue 21).

1. **Engine overhead per round**: a 5-round agent run (locate a region, look at it, crop,
   look, count...; the last round writes Result) on a 640x480 image, with an in-process
   LLM client that answers at once from a script and takes images, so each round builds
   its observation with an image (Objects drawn, or a crop scaled into the Look bounds).
   Per round: the whole run's time minus the time inside the client's `chat`, divided by
   the rounds. It covers writing the chat, cleaning, parsing and checking each round
   against the program so far, running the new steps (Region, Crop, Count, Look, Eval:
   modules that cost next to nothing, so what is measured is the loop and the engine), and
   making the observation. Goal: under 5 ms per round.
2. **The HTML trace of that 5-round run**: its size in bytes and the time to render it
   (`Trace.to_html`, images embedded). Goal: under 1 s.

    python benchmarks/bench_agent.py            # prints the figures as JSON
    python benchmarks/bench_agent.py --reps 50

The figures are the median over `--reps` runs (after one warm-up run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROUNDS = [
    "TABLE=Region(image=IMAGE, box=[100, 400, 900, 950])\nLOOK1=Look(var=TABLE)",
    "VIEW=Crop(image=IMAGE, box=TABLE)\nLOOK2=Look(var=VIEW)",
    "CUP=Region(image=VIEW, box=[200, 100, 450, 600])\nN=Count(box=CUP)\nLOOK3=Look(var=CUP)",
    'TWICE=Eval(expr="{N} * 2")\nLOOK4=Look(var=TWICE)',
    "FINAL=Result(var=N)",
]


class InstantLLM:
    """Answers each chat at once with the next round of the script; counts its time."""

    takes_images = True

    def __init__(self) -> None:
        self.turn = 0
        self.seconds = 0.0

    def describe(self) -> dict:
        return {"backend": "bench", "model": "instant"}

    def chat(self, messages, **sampling):
        from visprog.planning.chat import LLMReply

        started = time.perf_counter()
        text = ROUNDS[self.turn % len(ROUNDS)]
        self.turn += 1
        reply = LLMReply(text=text, texts=[text], usage={"total_tokens": 1})
        self.seconds += time.perf_counter() - started
        return reply


def picture():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))


def one_run(vp, llm, image):
    llm.turn, llm.seconds = 0, 0.0
    started = time.perf_counter()
    out = vp.run(image, "How many cups are on the table?", mode="agent", repair=False)
    total = time.perf_counter() - started
    return out, total, llm.seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=20, help="runs to take the median of")
    p.add_argument("--smoke", action="store_true", help="2 runs: check that it works")
    args = p.parse_args(argv)
    if args.smoke:
        args.reps = 2

    from visprog.api import VisProg
    from visprog.traces.events import AgentRun

    llm = InstantLLM()
    # The step cache is off (every step really runs), the plan cache is not used in
    # agent mode.
    vp = VisProg(preset="tiny", llm=llm, cache=False, plugins=False)
    image = picture()
    out, _, _ = one_run(vp, llm, image)  # warm-up: imports, prompt examples, fonts
    end = out.trace.find(AgentRun)[0]
    assert end.rounds == len(ROUNDS) and end.stop == "result", end
    per_round, runs, renders, sizes = [], [], [], []
    for _ in range(args.reps):
        out, total, in_llm = one_run(vp, llm, image)
        runs.append(total)
        per_round.append((total - in_llm) / len(ROUNDS))
        started = time.perf_counter()
        page = out.trace.to_html()
        renders.append(time.perf_counter() - started)
        sizes.append(len(page.encode("utf-8")))
    end = out.trace.find(AgentRun)[0]
    figures = {
        "rounds": end.rounds,
        "steps": end.steps,
        "images_shown": end.images,
        "run_ms": round(statistics.median(runs) * 1000, 2),
        "overhead_per_round_ms": round(statistics.median(per_round) * 1000, 3),
        "overhead_goal_ms": 5,
        "html_bytes": int(statistics.median(sizes)),
        "html_render_ms": round(statistics.median(renders) * 1000, 2),
        "html_goal_ms": 1000,
        "reps": args.reps,
    }
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
