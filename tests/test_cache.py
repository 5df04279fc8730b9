"""The step cache: codec round trips, digests, keys, memory LRU, disk store and its failures."""
from __future__ import annotations

import errno
import math
import multiprocessing
import os
import pickle
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from visprog.values import codec
from visprog.engine.cache import (MISS, CacheWarning, DiskCache, MemoryCache, StepCache,
                           default_cache_dir, step_key)
from visprog.values import Objects, Region


def rgb(w: int = 8, h: int = 6, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def objects_with_masks() -> Objects:
    m1 = np.zeros((6, 8), bool)
    m1[1:3, 2:7] = True
    m2 = np.ones((6, 8), bool)
    m2[5, 7] = False  # the last bit of the packed mask matters
    return Objects.from_regions((
        Region(box=(0.1, 0.2, 3.3333333333333335, 5.999999), mask=m1, label="cat", score=0.87654321,
               extra={"class_score": 0.5, "source": "täg", "n": 3, "ok": True, "none": None}),
        Region(box=(1 / 3, 0, 8, 6), mask=m2, label=None, score=None),
        Region(box=(2, 2, 4, 4), label="dog"),
    ), (8, 6))


def assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, Image.Image):
        assert (a.mode, a.size) == (b.mode, b.size)
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, Objects):
        assert a.image_size == b.image_size and len(a) == len(b)
        for ra, rb in zip(a, b):
            assert ra.box == rb.box  # exact floats
            assert ra.label == rb.label and ra.score == rb.score
            assert dict(ra.extra) == dict(rb.extra)
            assert (ra.mask is None) == (rb.mask is None)
            if ra.mask is not None:
                assert rb.mask.dtype == bool and np.array_equal(ra.mask, rb.mask)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


ROUND_TRIPS = {
    "rgb image": rgb(),
    "1x1 image": rgb(1, 1),
    "rgba image": rgb().convert("RGBA"),
    "gray image": rgb().convert("L"),
    "objects with masks": objects_with_masks(),
    "empty objects": Objects.empty((640, 480)),
    "objects from boxes": Objects([[0, 0, 10.5, 20.25], [-5, -5, 1e9, 3]], (100, 50),
                                  labels=["a", "b"], scores=[0.1, 1.0]),
    "str": "a red car",
    "empty str": "",
    "unicode str": "café 🐱 \u00e9\u0301 \"quotes\" {braces} \n\t\x00",
    "lone surrogate": "\ud800",
    "int": 3,
    "big int": -(10**40),
    "float": 0.1 + 0.2,
    "negative zero": -0.0,
    "inf": float("inf"),
    "nan": float("nan"),
    "tiny float": 5e-324,
    "true": True,
    "false": False,
    "none": None,
    "text list": ["cat", "dog", "ünïcode"],
    "text tuple": ("a", "b"),
    "empty list": [],
    "nested list": [1, [2.5, ["x", None, True]], (3, (4,))],
    "list with image and objects": [rgb(seed=3), objects_with_masks()],
}


@pytest.mark.parametrize("raw", [False, True], ids=["png", "raw"])
@pytest.mark.parametrize("value", list(ROUND_TRIPS.values()), ids=list(ROUND_TRIPS))
def test_codec_round_trip(value, raw):
    data = codec.encode(value, raw_images=raw)
    assert isinstance(data, bytes)
    assert_same(value, codec.decode(data))
    assert codec.digest(codec.decode(data)) == codec.digest(value)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (640, 480)])
def test_raw_images_keep_every_pixel(mode, size):
    im = Image.frombytes("RGB", size, np.random.default_rng(1).integers(
        0, 256, size[0] * size[1] * 3, np.uint8).tobytes()).convert(mode)
    raw = codec.encode(im, raw_images=True)
    back = codec.decode(raw)
    assert (back.mode, back.size, back.tobytes()) == (mode, size, im.tobytes())
    assert b'"format":"raw"' in raw and b'"format"' not in codec.encode(im)


@pytest.mark.parametrize("edit", [
    lambda d: d[:-1],  # a pixel short (the blob length no longer adds up either)
    lambda d: d.replace(b'"size":[8,6]', b'"size":[6,8]').replace(b'"mode":"RGB"', b'"mode":"L"'),
    lambda d: d.replace(b'"size":[8,6]', b'"size":[8,5]'),
    lambda d: d.replace(b'"size":[8,6]', b'"size":[0,6]'),
    lambda d: d.replace(b'"mode":"RGB"', b'"mode":"CMYK"'),
    lambda d: d.replace(b'"mode":"RGB"', b'"mode":"XYZ"'),
], ids=["truncated", "other mode", "wrong size", "zero size", "cmyk", "unknown mode"])
def test_decode_rejects_bad_raw_images(edit):
    with pytest.raises(ValueError):
        codec.decode(edit(codec.encode(rgb(), raw_images=True)))


@pytest.mark.parametrize("value", [object(), {1: "int key"}, np.zeros(3), b"bytes",
                                   Image.new("CMYK", (2, 2)), [1, object()], {"a", "b"}],
                         ids=["object", "int-keyed dict", "ndarray", "bytes", "cmyk", "nested",
                              "set"])
def test_codec_refuses_what_it_cant_store(value):
    with pytest.raises(TypeError):
        codec.encode(value)


@pytest.mark.parametrize("data", [b"", b"VPC1", b"XXXX\x00\x00\x00\x00", b"VPC1\xff\xff\xff\xff{}",
                                  b"VPC1\x02\x00\x00\x00{}", b'VPC1\x0b\x00\x00\x00{"v":1,"b":}',
                                  codec.encode([1, 2])[:-1], codec.encode("x") + b"junk"])
def test_decode_rejects_malformed_bytes(data):
    with pytest.raises(ValueError):
        codec.decode(data)


def test_decode_rejects_a_png_that_disagrees_with_its_header():
    data = codec.encode(rgb())
    bad = data.replace(b'"size":[8,6]', b'"size":[6,8]')
    with pytest.raises(ValueError):
        codec.decode(bad)


def test_codec_is_not_pickle():
    data = codec.encode(objects_with_masks())
    assert data.startswith(codec.MAGIC)
    with pytest.raises(Exception):
        pickle.loads(data)


# -- digest -------------------------------------------------------------------------------

def test_digest_is_by_pixels_not_identity():
    a = rgb(seed=1)
    b = Image.fromarray(np.asarray(a).copy())
    assert a is not b and codec.digest(a) == codec.digest(b)
    c = a.copy()
    c.putpixel((3, 2), tuple((v + 1) % 256 for v in c.getpixel((3, 2))))
    assert codec.digest(c) != codec.digest(a)
    # same bytes, other mode or size: different
    assert codec.digest(Image.new("L", (4, 3))) != codec.digest(Image.new("L", (3, 4)))


@pytest.mark.parametrize("a, b", [
    (1, True), (1, "1"), (1, 1.0), (0, False), (0, None), ("", None), (0.0, -0.0),
    (["ab"], ["a", "b"]), ([["a"], "b"], ["a", ["b"]]), ([], None), ("a", ["a"]),
])
def test_digest_distinguishes_types_and_structure(a, b):
    assert codec.digest(a) != codec.digest(b)


def test_digest_of_objects_sees_every_field():
    base = objects_with_masks()
    d = codec.digest(base)
    assert codec.digest(objects_with_masks()) == d
    r0 = base[0]
    flipped = r0.mask.copy()
    flipped[0, 0] = True
    variants = [
        base.with_regions([Region(box=(0.1, 0.2, 3.3333333333333335, 5.9999991), mask=r0.mask,
                                  label=r0.label, score=r0.score, extra=r0.extra), *base[1:]]),
        base.with_regions([Region(r0.box, flipped, r0.label, r0.score, r0.extra), *base[1:]]),
        base.with_regions([Region(r0.box, r0.mask, "dog", r0.score, r0.extra), *base[1:]]),
        base.with_regions([Region(r0.box, r0.mask, r0.label, 0.5, r0.extra), *base[1:]]),
        base.with_regions([Region(r0.box, r0.mask, r0.label, r0.score, {}), *base[1:]]),
        base[:2],
        base[[1, 0, 2]],
        Objects.from_regions(base[2:], (9, 6)),
    ]
    digests = {codec.digest(v) for v in variants}
    assert d not in digests and len(digests) == len(variants)
    assert codec.digest(Objects.empty((8, 6))) != codec.digest(Objects.empty((6, 8)))


def test_digest_list_and_tuple_agree_and_unknown_types_raise():
    assert codec.digest(["a", "b"]) == codec.digest(("a", "b"))
    with pytest.raises(TypeError):
        codec.digest(object())


def test_digest_of_a_big_image_is_fast():
    big = Image.new("RGB", (2000, 1500), (10, 20, 30))
    t = time.perf_counter()
    codec.digest(big)
    assert time.perf_counter() - t < 2.0  # ~20 ms on a quiet machine; generous for CI


# -- keys ---------------------------------------------------------------------------------

def test_step_keys_are_stable():
    """Keys name entries on disk across versions of visprog: a change of the key scheme must
    be deliberate (bump `_KEY_SCHEME`), never a side effect of making keys faster."""
    args = {"image": "x", "object": "cat", "threshold": 0.3,
            "box": Objects([(1, 2, 3, 4)], (10, 10))}
    assert step_key("Loc", "1", {}, args) == \
        "4937777d7344a5b109dd29d6a158948be68b7da20abe01d798b13698a99b23b2"
    assert step_key("Loc", "1", {"model": "m", "dtype": "fp16"}, args) == \
        "88583caa02076775adcb0d527ffb440e86db17bdd720c6141d6fdb4888e5c9cb"


def test_step_key_depends_on_everything_it_should():
    im = rgb()
    base = step_key("Loc", "1", {"threshold": 0.3}, {"image": im, "object": "cat"})
    same = [
        step_key("LOC", "1", {"threshold": 0.3}, {"object": "cat", "image": im.copy()}),
        step_key("loc", "1", {"threshold": 0.3}, {"Image": im, "OBJECT": "cat"}),
    ]
    assert all(k == base for k in same)
    different = [
        step_key("Loc", "2", {"threshold": 0.3}, {"image": im, "object": "cat"}),
        step_key("Loc", "1", {"threshold": 0.31}, {"image": im, "object": "cat"}),
        step_key("Loc", "1", {"threshold": 0.3, "model": "owl"}, {"image": im, "object": "cat"}),
        step_key("Loc", "1", {}, {"image": im, "object": "cat"}),
        step_key("Loc", "1", {"threshold": 0.3}, {"image": rgb(seed=9), "object": "cat"}),
        step_key("Loc", "1", {"threshold": 0.3}, {"image": im, "object": "dog"}),
        step_key("Loc", "1", {"threshold": 0.3}, {"image": im}),
        step_key("Seg", "1", {"threshold": 0.3}, {"image": im, "object": "cat"}),
        # the same argument values under swapped names
        step_key("Loc", "1", {"threshold": 0.3}, {"image": "cat", "object": im}),
    ]
    assert base not in different and len(set(different)) == len(different)
    precomputed = {"image": codec.digest(im)}
    assert step_key("Loc", "1", {"threshold": 0.3}, {"image": None, "object": "cat"},
                    digests=precomputed) == base
    assert len(base) == 64 and int(base, 16) >= 0


@pytest.mark.parametrize("settings, args, error", [
    ({"fn": object()}, {}, TypeError),
    ({}, {"x": object()}, TypeError),
    ({}, {"x": 1, "X": 2}, ValueError),
])
def test_step_key_bad_input(settings, args, error):
    with pytest.raises(error):
        step_key("T", "1", settings, args)


# -- memory -------------------------------------------------------------------------------

def test_memory_lru_evicts_least_recently_used():
    m = MemoryCache(max_items=2)
    m.put("a", 1)
    m.put("b", 2)
    assert m.get("a") == 1  # a is now more recent than b
    m.put("c", 3)
    assert m.get("b") is MISS and m.get("a") == 1 and m.get("c") == 3
    assert len(m) == 2
    m.put("n", None)
    assert m.get("n") is None and m.get("zzz") is MISS
    with pytest.raises(ValueError):
        MemoryCache(0)


def test_memory_values_do_not_alias_the_cache():
    m = MemoryCache()
    im = rgb()
    pixels = im.tobytes()
    m.put("k", [im, objects_with_masks()])
    im.paste((0, 0, 0), (0, 0, 8, 6))  # the producer changes its own image afterwards
    got = m.get("k")
    assert got[0].tobytes() == pixels
    got[0].paste((255, 255, 255), (0, 0, 8, 6))  # a consumer changes what it got
    got[1][0].extra["class_score"] = -1
    got.append("junk")
    again = m.get("k")
    assert again[0].tobytes() == pixels and len(again) == 2
    assert again[1][0].extra["class_score"] == 0.5
    with pytest.raises(ValueError):
        again[1][0].mask[0, 0] = True  # masks are read-only, so sharing them is safe


# -- disk ---------------------------------------------------------------------------------

KEY = "ab" + "0" * 62
KEY2 = "cd" + "1" * 62


def key(i: int) -> str:
    return f"{i:064x}"


def test_disk_persists_across_instances(tmp_path):
    value = [rgb(), objects_with_masks(), "answer", 3.5]
    assert DiskCache(tmp_path).put(KEY, value)
    other = DiskCache(tmp_path)
    assert_same(value, other.get(KEY))
    assert other.get(KEY2) is MISS
    assert (tmp_path / "ab").is_dir() and len(list((tmp_path / "ab").iterdir())) == 1
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("bad_key", ["", "../../etc/passwd", "ABCDEF0123456789", "k" * 64, "ab/cd" * 8])
def test_disk_refuses_keys_that_are_not_digests(tmp_path, bad_key):
    with pytest.raises(ValueError):
        DiskCache(tmp_path).get(bad_key)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))


def flip_header_checksum(path):
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))


def empty_file(path):
    path.write_bytes(b"")


def garbage(path):
    path.write_bytes(pickle.dumps({"not": "ours"}))


@pytest.mark.parametrize("corrupt", [truncate, flip_byte, flip_header_checksum, empty_file, garbage])
def test_corrupt_entry_is_a_miss_with_a_warning_then_recomputed(tmp_path, corrupt):
    cache = StepCache(memory=False, disk_dir=tmp_path)
    cache.put(KEY, [rgb(), "x"])
    path = cache.disk.path_for(KEY)
    corrupt(path)
    with pytest.warns(CacheWarning, match="corrupt|undecodable"):
        assert cache.get(KEY) is MISS
    assert not path.exists()  # deleted, so the next run doesn't trip on it again
    assert cache.stats.errors == 1 and cache.stats.misses == 1
    cache.put(KEY, [rgb(), "x"])  # the recompute path: the step runs and stores again
    assert_same([rgb(), "x"], cache.get(KEY))


def test_entry_of_another_format_version_is_a_quiet_miss(tmp_path):
    disk = DiskCache(tmp_path)
    disk.put(KEY, "v")
    path = disk.path_for(KEY)
    data = bytearray(path.read_bytes())
    data[4] += 1  # format version field
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert disk.get(KEY) is MISS


def test_size_bound_evicts_least_recently_used(tmp_path):
    blob = "x" * 10_000
    disk = DiskCache(tmp_path, max_bytes=42_000)  # entries are ~10.1 kB
    for i in range(4):
        assert disk.put(key(i), blob + str(i))
        t = 1_000_000 + i * 10  # distinct, ordered mtimes without sleeping
        os.utime(disk.path_for(key(i)), (t, t))
    assert disk.get(key(0)) == blob + "0"  # a read makes 0 the most recently used
    assert disk.put(key(4), blob + "4")  # over the bound: evict 1, 2 (oldest) down to 90%
    present = [i for i in range(5) if disk.get(key(i)) is not MISS]
    assert present == [0, 3, 4]
    assert disk.size() <= 42_000 * 0.9
    # a value bigger than the whole store is not written at all
    assert not disk.put(key(9), "y" * 50_000)
    assert disk.get(key(9)) is MISS


def test_clear_removes_only_entries(tmp_path):
    cache = StepCache(disk_dir=tmp_path)
    cache.put(KEY, 1)
    (tmp_path / "README").write_text("someone else's file")
    cache.clear()
    assert cache.get(KEY) is MISS
    assert (tmp_path / "README").exists() and not (tmp_path / "ab").exists()


def _hammer(directory: str, worker: int, rounds: int) -> None:
    disk = DiskCache(directory, max_bytes=10_000_000)
    for r in range(rounds):
        for i in range(8):
            disk.put(key(i), [f"value {i}", rgb(seed=i)])
            got = disk.get(key((i + worker) % 8))
            if got is not MISS:
                assert got[0] == f"value {(i + worker) % 8}"


def test_two_processes_writing_the_same_keys(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    disk = DiskCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no entry may be corrupt
        for i in range(8):
            assert_same([f"value {i}", rgb(seed=i)], disk.get(key(i)))
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


# -- an unusable store never fails the run ------------------------------------------------

def test_path_under_a_regular_file_warns_once_and_carries_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = StepCache(disk_dir=blocker / "sub")
    with pytest.warns(CacheWarning, match="can't write") as record:
        cache.put(KEY, "a")
        cache.put(KEY2, "b")
    assert len([w for w in record if issubclass(w.category, CacheWarning)]) == 1
    assert cache.get(KEY) == "a" and cache.get(KEY2) == "b"  # memory still works
    assert cache.stats.writes == 0 and cache.stats.errors == 1
    assert StepCache(memory=False, disk_dir=blocker / "sub").get(KEY) is MISS


def test_full_disk_warns_and_reads_still_work(tmp_path, monkeypatch):
    cache = StepCache(disk_dir=tmp_path)
    cache.put(KEY, "stored before the disk filled up")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.warns(CacheWarning, match="disk is full"):
        cache.put(KEY2, "new")
    assert cache.get(KEY2) == "new"  # from memory
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))  # temp cleaned up
    fresh = StepCache(disk_dir=tmp_path)
    assert fresh.get(KEY) == "stored before the disk filled up"
    assert fresh.get(KEY2) is MISS


# -- the layered cache --------------------------------------------------------------------

def test_step_cache_layers_and_stats(tmp_path):
    first = StepCache(disk_dir=tmp_path)
    assert first.get(KEY) is MISS
    first.put(KEY, objects_with_masks())
    assert_same(objects_with_masks(), first.get(KEY))
    assert first.stats.memory_hits == 1 and first.stats.writes == 1 and first.stats.misses == 1

    second = StepCache(disk_dir=tmp_path)  # a later run: memory is empty, disk is not
    assert_same(objects_with_masks(), second.get(KEY))
    assert_same(objects_with_masks(), second.get(KEY))
    s = second.stats
    assert (s.disk_hits, s.memory_hits, s.hits, s.misses) == (1, 1, 2, 0)


def test_unencodable_values_stay_in_memory(tmp_path):
    cache = StepCache(disk_dir=tmp_path)
    odd = {1: object()}
    cache.put(KEY, odd)
    assert cache.get(KEY) == odd
    assert cache.stats.memory_only == 1 and cache.stats.writes == 0
    assert StepCache(disk_dir=tmp_path).get(KEY) is MISS


def test_disabled_cache_never_hits(tmp_path):
    cache = StepCache(disk_dir=tmp_path, enabled=False)
    cache.put(KEY, 1)
    assert cache.get(KEY) is MISS
    assert not any(tmp_path.iterdir())


def test_disk_values_returned_are_fresh(tmp_path):
    StepCache(disk_dir=tmp_path).put(KEY, rgb())
    cache = StepCache(disk_dir=tmp_path)
    got = cache.get(KEY)
    got.paste((0, 0, 0), (0, 0, 8, 6))
    assert cache.get(KEY).tobytes() == rgb().tobytes()


def test_nothing_is_unpickled(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cache must never unpickle")

    for name in ("loads", "load", "dumps", "dump"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    StepCache(disk_dir=tmp_path).put(KEY, [rgb(), objects_with_masks(), "t", 1, None])
    assert_same([rgb(), objects_with_masks(), "t", 1, None], StepCache(disk_dir=tmp_path).get(KEY))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    assert StepCache(disk_dir=True).disk.directory == tmp_path / "here"
    monkeypatch.delenv("VISPROG_CACHE_DIR")
    d = default_cache_dir()
    assert d.parts[-2:] == ("visprog", "steps")
