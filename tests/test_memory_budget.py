"""The model memory budget (visprog/memory.py): sizes parsed, the LRU policy, and real tiny
models unloaded and reloaded through `VisProg`, measured by the manager's own accounting."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visprog.errors import ConfigError
from visprog.models.memory import BudgetedModelManager, MemoryBudget, make_manager, parse_budget
from visprog.models import ModelManager


@pytest.mark.parametrize("value, total, expected", [
    (None, None, None),
    ("", None, None),
    ("none", None, None),
    (0, None, None),
    ("6GB", None, 6 * 10**9),
    ("6 gb", None, 6 * 10**9),
    ("512MiB", None, 512 * 2**20),
    ("1.5g", None, 1_500_000_000),
    ("2KiB", None, 2048),
    (123456, None, 123456),
    ("123456", None, 123456),
    (0.5, 1000, 500),
    ("0.25", 1000, 250),
    (1, 1000, 1000),          # 1 is a fraction (all of it), not one byte
])
def test_parse_budget(value, total, expected):
    assert parse_budget(value, total_bytes=total) == expected


@pytest.mark.parametrize("value, total", [
    ("six gigs", None), ("6XB", None), (-1, None), ("-2GB", None), (True, None),
    (0.5, None),              # a fraction needs the device's memory
    ([1], None),
])
def test_parse_budget_rejects(value, total):
    with pytest.raises(ConfigError):
        parse_budget(value, total_bytes=total)


A, B, C = ("m", "a"), ("m", "b"), ("m", "c")


@pytest.mark.parametrize("touches, sizes, keep, incoming, limit, victims", [
    ([A, B, C], {A: 4, B: 4, C: 4}, C, 0, 8, [A]),           # least recently used goes first
    ([A, B, C, A], {A: 4, B: 4, C: 4}, A, 0, 8, [B]),        # A touched again: B is oldest
    ([A, B, C], {A: 4, B: 4, C: 4}, C, 0, 4, [A, B]),
    ([A, B, C], {A: 4, B: 4, C: 4}, None, 0, 12, []),        # fits
    ([A, B], {A: 4, B: 4}, None, 4, 8, [A]),                 # room for an incoming reload
    ([A], {A: 20}, A, 0, 8, []),                             # alone over budget: kept
    ([], {A: 4, B: 4}, None, 0, 4, [A]),                     # never touched: load order
])
def test_lru_victims(touches, sizes, keep, incoming, limit, victims):
    budget = MemoryBudget(limit)
    for key in touches:
        budget.touch(key)
    assert budget.victims(sizes, keep=keep, incoming=incoming) == victims


def test_make_manager_only_budgets_when_asked():
    assert type(make_manager({"device": "cpu"})) is ModelManager
    assert type(make_manager({"device": "cpu", "memory_budget": 0})) is ModelManager
    mm = make_manager({"device": "cpu", "memory_budget": "1MB"})
    assert isinstance(mm, BudgetedModelManager) and mm.budget.limit == 10**6
    with pytest.raises(ConfigError):
        make_manager({"device": "cpu", "memory_budget": "lots"})


# -- real tiny models --------------------------------------------------------------------------

pytest.importorskip("torch")
pytest.importorskip("transformers")


def picture(seed=0, size=(96, 72)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


VQA = "A=Vqa(image=IMAGE, question='what color is the car?')"
CLASSIFY = ("OBJ=Loc(image=IMAGE, object='LEFT')\n"
            "C=Classify(image=IMAGE, object=OBJ, categories=['dog', 'cat'])")


# BLIP and CLIP (the classic backends): two models of known kinds whose sizes differ
CLASSIC = {"Vqa": {"backend": "blip"}, "Classify": {"backend": "clip"}}


def sizes_of(models) -> dict[str, int]:
    return {e["kind"]: e["bytes"] for e in models.loaded()}


def test_budget_unloads_least_recently_used_and_reloads():
    from visprog.api import VisProg

    free = VisProg(preset="tiny", cache=False, config=CLASSIC)
    expected_vqa = free.execute(VQA, image=picture()).value
    expected_cls = free.execute(CLASSIFY, image=picture()).value
    sizes = sizes_of(free.models)
    blip, clip = sizes["blip_vqa"], sizes["clip"]
    assert blip > 0 and clip > 0

    # Room for the larger of the two, not both.
    budget = max(blip, clip) + min(blip, clip) // 2
    vp = VisProg(preset="tiny", cache=False, config={**CLASSIC, "models": {"memory_budget": budget}})
    mm = vp.models
    assert isinstance(mm, BudgetedModelManager) and mm.budget.limit == budget

    assert vp.execute(VQA, image=picture()).value == expected_vqa
    assert [e["kind"] for e in mm.loaded()] == ["blip_vqa"]
    cls_value = vp.execute(CLASSIFY, image=picture()).value
    assert cls_value.labels.tolist() == expected_cls.labels.tolist() and cls_value.boxes.tolist() == \
        expected_cls.boxes.tolist()
    assert [e["kind"] for e in mm.loaded()] == ["clip"]          # BLIP made room
    assert mm.loaded_bytes() <= budget
    # Reloaded on demand, same answer; CLIP goes before BLIP comes back.
    third = vp.execute(VQA, image=picture())
    assert third.value == expected_vqa
    # ... and the run's trace records what the manager did during it.
    assert [(e.kind, e.model, e.reason) for e in third.trace.events] == [
        ("model_unload", "clip", "memory_budget"), ("model_load", "blip_vqa", None)]
    assert [e["kind"] for e in mm.loaded()] == ["blip_vqa"]
    assert mm.loaded_bytes() <= budget

    events = [(e["event"], e["kind"], e.get("reason")) for e in mm.events]
    assert events == [("load", "blip_vqa", None), ("load", "clip", None),
                      ("unload", "blip_vqa", "memory_budget"),
                      ("unload", "clip", "memory_budget"), ("load", "blip_vqa", None)]
    loads = [e for e in mm.events if e["event"] == "load"]
    assert [e["bytes"] for e in loads] == [blip, clip, blip]


def test_budget_keeps_both_when_they_fit_and_a_model_alone_over_budget():
    from visprog.api import VisProg

    roomy = VisProg(preset="tiny", cache=False, config={**CLASSIC, "models": {"memory_budget": "1GB"}})
    roomy.execute(VQA, image=picture())
    roomy.execute(CLASSIFY, image=picture())
    assert sorted(sizes_of(roomy.models)) == ["blip_vqa", "clip"]
    assert not [e for e in roomy.models.events if e["event"] != "load"]

    tight = VisProg(preset="tiny", cache=False, config={**CLASSIC, "models": {"memory_budget": 1000}})
    out = tight.execute(VQA, image=picture())
    assert isinstance(out.value, str)  # it still runs: the one model it needs stays loaded
    assert [e["kind"] for e in tight.models.loaded()] == ["blip_vqa"]
    assert tight.models.events[-1]["event"] == "over_budget"
    # An explicit unload frees it and forgets it in the LRU order.
    assert tight.models.unload() == 1 and tight.models.loaded_bytes() == 0
