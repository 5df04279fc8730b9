"""One execution core: `execute` item by item and `run_batch` of the same items give equal
values and equal traces (steps, outputs, events, cached flags), through the public API."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visprog.api import VisProg
from visprog.engine.cache import StepCache
from visprog.values import Objects, codec

PROGRAMS = [
    "OBJ=Loc(image=IMAGE, object='dog')\nN=Count(box=OBJ)\nA=Vqa(image=IMAGE, question='what color is the dog?')\n"
    "ANSWER=Eval(expr=\"'yes' if {N} > 0 else {A}\")\nRESULT=Result(var=ANSWER)",
    "OBJ=Loc(image=IMAGE, object='car')\nCROP=Crop(image=IMAGE, box=OBJ)\nA=Vqa(image=CROP, question='is it red?')\nB=A",
    "OBJ=Loc(image=IMAGE, object='dog')\nN=Count(box=OBJ)\nA=Vqa(image=IMAGE, question='how many dogs are there?')",
    "N=Eval(expr=\"1 // 0\")",  # fails: its error must be the same both ways
]


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))


def value_print(value):
    """Objects by rounded boxes and scores: a batched forward pass (padded inputs, other
    matmul shapes) differs from a lone one in the last float digits, not in what it found."""
    if isinstance(value, Objects):
        return [(tuple(round(float(c), 2) for c in r.box), r.label,
                 None if r.score is None else round(float(r.score), 3)) for r in value]
    return codec.digest(value)


def fingerprint(trace):
    steps = [(s.target, s.module, value_print(s.output) if s.ok else None, s.cached, s.error)
             for s in trace.steps]
    events = [(e.kind, getattr(e, "model", None), getattr(e, "checkpoint", None))
              for e in trace.events]
    return steps, events, trace.error


def one_by_one(vp, items):
    out = []
    for program, image in items:
        try:
            r = vp.execute(program, image=image)
            out.append((r.value, fingerprint(r.trace)))
        except Exception as e:  # a StepError keeps its trace
            out.append((type(e).__name__, fingerprint(e.trace)))
    return out


def batched(vp, items):
    results = vp.run_batch([{"program": p, "image": im} for p, im in items], batch_size=8)
    return [(r.value if r.ok else type(r.error).__name__, fingerprint(r.trace)) for r in results]


@pytest.mark.parametrize("shared_cache", [False, True])
def test_execute_item_by_item_equals_run_batch(shared_cache):
    # Repeated items share one call in a batch; with a cache, a lone rerun would read it
    # instead (cached=True), the one documented difference: so cached items are distinct.
    items = ([(p, picture(i)) for i, p in enumerate(PROGRAMS)] if shared_cache
             else [(p, picture(i % 2)) for i, p in enumerate(PROGRAMS * 2)])
    caches = (StepCache(memory=True), StepCache(memory=True)) if shared_cache else (False, False)
    # fresh engines, so each side loads its models once and records those loads
    lone = VisProg(preset="tiny", cache=caches[0], plugins=False)
    many = VisProg(preset="tiny", cache=caches[1], plugins=False)
    for _ in range(2 if shared_cache else 1):  # the second round reads the cache
        a, b = one_by_one(lone, items), batched(many, items)
        assert [v for v, _ in a] == [v for v, _ in b]
        assert [f for _, f in a] == [f for _, f in b]
    loads = [e for _, (_, events, _) in a for e in events if e[0] == "model_load"]
    if not shared_cache:
        assert {m for _, m, _ in loads} >= {"mm_grounding_dino", "vlm"}, loads
        assert len(loads) == len(set(loads)), "each model loads once, in one item's trace"
    else:  # second round: everything cached, nothing loaded
        assert all(s[3] for _, (steps, _, _) in a for s in steps if s[1] not in (None, "Eval")
                   and s[4] is None)
