"""Traces saved by an earlier visprog still load: the fixtures in tests/fixtures/trace_v1_*
were written once by the serialiser before the value codec was unified (see
tests/fixtures/make_trace_v1.py, which also rebuilds the expected values)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprog.traces.events import Event
from visprog.traces.json_io import ReprValue
from visprog.traces.records import Trace

load_trace = Trace.load_json
from visprog.values import Objects

FIXTURES = Path(__file__).parent / "fixtures"


def _maker():
    spec = importlib.util.spec_from_file_location("make_trace_v1", FIXTURES / "make_trace_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()


def _same_objects(a: Objects, b: Objects) -> None:
    assert isinstance(a, Objects) and a.image_size == b.image_size and len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.box == rb.box and ra.label == rb.label and ra.score == rb.score
        assert dict(ra.extra) == dict(rb.extra)
        assert (ra.mask is None) == (rb.mask is None)
        if ra.mask is not None:
            assert ra.mask.dtype == bool and np.array_equal(ra.mask, rb.mask)


def _pixels(im: Image.Image) -> tuple:
    return im.mode, im.size, im.tobytes()


@pytest.fixture(scope="module", params=["files", "inline"])
def loaded(request):
    return load_trace(FIXTURES / f"trace_v1_{request.param}" / "run.json")


def test_old_trace_program_steps_and_flags(loaded):
    assert loaded.program == MAKER.PROGRAM and loaded.ok and loaded.error is None
    assert [s.target for s in loaded] == ["OBJ0", "IMAGE0", "IMAGE1", "NUM0", "BOOL0", "LIST0",
                                          "ANSWER0", "FINAL"]
    assert [s.module for s in loaded] == ["Blobs", "Crop", "ColorPop", "Count", "Eval", "Names",
                                          "Eval", "Result"]
    assert [s.duration for s in loaded] == [0.001 * (i + 1) for i in range(8)]
    assert not any(s.cached for s in loaded)
    assert loaded["IMAGE0"].arg_vars == {"image": "IMAGE", "box": "OBJ0"}
    assert loaded["OBJ0"].draw_on == "image"


def test_old_trace_values(loaded):
    photo = MAKER.photo()
    image = loaded.inputs["IMAGE"]
    assert _pixels(image) == _pixels(photo)
    # one image object per stored image, as when it was saved
    assert loaded["OBJ0"].args["image"] is image and loaded["IMAGE1"].args["image"] is image
    _same_objects(loaded["OBJ0"].output, MAKER.blobs(*photo.size))
    assert loaded["IMAGE0"].args["box"] is not None
    _same_objects(loaded["IMAGE0"].args["box"], MAKER.blobs(*photo.size))
    crop, popped = loaded["IMAGE0"].output, loaded["IMAGE1"].output
    assert isinstance(crop, Image.Image) and crop.mode == "RGB"
    assert isinstance(popped, Image.Image) and popped.size == photo.size
    assert loaded["NUM0"].output == 3 and type(loaded["NUM0"].output) is int
    assert loaded["BOOL0"].output is True
    assert loaded["LIST0"].output == ["cat", "dog", "thing"]
    assert loaded["ANSWER0"].output == "yes" and loaded.result == "yes"
    assert loaded["FINAL"].args == {"var": "yes"}


def test_old_trace_events_and_meta(loaded):
    # kinds that were never typed, and a model_load of an older shape, stay as they were
    assert [e.to_dict() for e in loaded.events] == [
        {"kind": "plan", "attempt": 1, "ok": True, "text": MAKER.PROGRAM},
        {"kind": "model_load", "name": "fixture", "seconds": 0.25}]
    assert all(type(e) is Event for e in loaded.events)
    meta = loaded.meta
    assert meta["preset"] == "tiny" and meta["seed"] == 7 and meta["tags"] == ["a", "b"]
    assert meta["pair"] == (1, 2) and type(meta["pair"]) is tuple
    assert meta["inf"] == math.inf and math.isnan(meta["nan"])
    assert meta["keys"] == {1: "one", (2, 3): "pair"}
    assert meta["weird"] == {"$type": "not mine"}
    assert meta["arr"].dtype == np.int16 and meta["arr"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert isinstance(meta["opaque"], ReprValue) and str(meta["opaque"]) == "<opaque thing>"


def test_both_forms_hold_the_same_images():
    files = load_trace(FIXTURES / "trace_v1_files" / "run.json")
    inline = load_trace(FIXTURES / "trace_v1_inline" / "run.json")
    for a, b in zip(files, inline):
        for x, y in ((a.output, b.output), *((a.args[k], b.args[k]) for k in a.args)):
            if isinstance(x, Image.Image):
                assert _pixels(x) == _pixels(y)
            elif isinstance(x, Objects):
                _same_objects(x, y)
            else:
                assert x == y
