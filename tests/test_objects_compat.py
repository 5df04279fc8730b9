"""Objects stored and hashed before they held parallel arrays still read and hash the same:
the fixtures in tests/fixtures/objects_v1 were written once by the record-list form
(tests/fixtures/make_objects_v1.py, which also rebuilds the expected values), and the
traces in tests/fixtures/trace_v1_* by an older serialiser still."""
from __future__ import annotations

import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from visprog.engine.cache import DiskCache
from visprog.traces.records import Trace
from visprog.values import Objects, codec

FIXTURES = Path(__file__).parent / "fixtures"
OLD = FIXTURES / "objects_v1"


def _maker():
    spec = importlib.util.spec_from_file_location("make_objects_v1",
                                                  FIXTURES / "make_objects_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()
EXPECTED = json.loads((OLD / "expected.json").read_text())


@pytest.fixture
def old_cache(tmp_path) -> DiskCache:
    # a copy: DiskCache deletes entries it cannot read, and touches those it can
    shutil.copytree(OLD / "cache", tmp_path / "cache")
    return DiskCache(tmp_path / "cache")


def _header(data: bytes) -> dict:
    (n,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8:8 + n])


def test_the_fixture_entries_are_in_the_old_form():
    for key in (MAKER.MASKED_KEY, MAKER.MIXED_KEY):
        data = DiskCache(OLD / "cache").path_for(key).read_bytes()
        assert b'"regions":' in data and b'"boxes":' not in data


def test_an_old_cache_entry_with_masks_and_no_scores_reads(old_cache):
    got = old_cache.get(MAKER.MASKED_KEY)
    assert isinstance(got, Objects) and got == MAKER.masked_unscored()
    # no model scored these: the array says 1.0 and the regions say None, as before
    assert got.scores.tolist() == [1.0, 1.0, 1.0] and not got.has_score.any()
    assert [r.score for r in got] == [None, None, None]
    assert got.has_mask.tolist() == [True, True, False] and not got[1].mask.any()
    assert got[2].mask is None and got.masks[2].sum() == 2  # the box (0.5..2 x 0.25..1)
    assert got[0].extra == {"source": "fixture", "rank": 1} and got[1].extra == {}
    assert got[2].extra == {"rank": 2, "note": None, "landmarks": ((1.0, 2.0), (3.5, 4.25))}
    assert got.has_extra("source").tolist() == [True, False, False]


def test_an_old_cache_entry_of_several_objects_reads(old_cache):
    mixed, boxes, empty = old_cache.get(MAKER.MIXED_KEY)
    assert mixed == MAKER.mixed() and boxes == MAKER.boxes_only() and empty == MAKER.empty()
    assert mixed.has_score.tolist() == [True, False, True] and mixed.scores[2] == 0.25
    assert boxes.boxes.tolist()[1] == [0.0, 400.0, 640.0, 480.0]  # clipped, as it was


def test_old_entries_write_back_in_the_new_form_and_read_equal(old_cache):
    for key in (MAKER.MASKED_KEY, MAKER.MIXED_KEY):
        value = old_cache.get(key)
        data = codec.encode(value)
        assert b'"regions":' not in data and b'"boxes":' in data
        assert codec.decode(data) == value and codec.digest(codec.decode(data)) == \
            codec.digest(value)


@pytest.mark.parametrize("name", sorted(EXPECTED["digests"]))
def test_objects_digest_as_before(name):
    """The content digest, and so every step-cache key with Objects among its arguments, is
    the one the record-list form computed."""
    value = MAKER.values()[name]
    assert codec.digest(value) == EXPECTED["digests"][name]
    # ... however the value was made: read back, re-encoded, filtered to itself, joined
    assert codec.digest(codec.decode(codec.encode(value))) == EXPECTED["digests"][name]
    assert codec.digest(value[np.ones(len(value), bool)]) == EXPECTED["digests"][name]
    assert codec.digest(Objects.concat([value[:1], value[1:]])) == EXPECTED["digests"][name]


def test_old_cache_entries_digest_as_before(old_cache):
    assert codec.digest(old_cache.get(MAKER.MASKED_KEY)) == EXPECTED["digests"]["masked_unscored"]


@pytest.mark.parametrize("preset", ["classic", "default"])
def test_step_keys_of_the_presets_are_unchanged(preset):
    assert MAKER.step_keys(preset) == EXPECTED["step_keys"][preset]


@pytest.mark.parametrize("form", ["files", "inline"])
def test_old_traces_load_objects_as_arrays(form):
    loaded = Trace.load_json(FIXTURES / f"trace_v1_{form}" / "run.json")
    objs = loaded["OBJ0"].output
    assert isinstance(objs, Objects) and len(objs) == 3 and objs.image_size == (24, 16)
    assert objs.labels.tolist() == ["cat", "dog", None]
    assert objs.scores.tolist() == [0.875, 0.5, 1.0] and objs.has_score.tolist() == [True, True,
                                                                                     False]
    assert objs.has_mask.tolist() == [True, True, False] and objs.masks.shape == (3, 16, 24)
    assert objs.has_extra("rank").tolist() == [True, False, False]
    assert objs[objs.scores > 0.6].labels.tolist() == ["cat", None]
