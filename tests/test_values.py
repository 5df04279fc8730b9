"""Values: `load_image` on every kind of input (good and bad), and `Objects`."""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from visprog.errors import ImageError
from visprog.values import Objects, Region, load_image, type_of


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT: what a decompression
    bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def two_tone(w: int = 40, h: int = 20) -> Image.Image:
    """Black with a white band on the left 10 columns: orientation is visible."""
    im = Image.new("RGB", (w, h), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, h))
    return im


# -- images that load -------------------------------------------------------------------------

def pal_with_transparency() -> bytes:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 0, 255])
    im.putpixel((3, 3), 1)
    return encode(im, transparency=0)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)


def sixteen_bit_png(value: int) -> bytes:
    arr = np.full((3, 4), value, dtype=np.uint16)
    return encode(Image.frombytes("I;16", (4, 3), arr.tobytes()))


LOAD_CASES = [
    # (id, source factory, expected size, expected pixel at (0, 0) or None for "don't care")
    ("png bytes", lambda: encode(Image.new("RGB", (5, 4), (10, 20, 30))), (5, 4), (10, 20, 30)),
    ("1x1", lambda: encode(Image.new("RGB", (1, 1), (5, 6, 7))), (1, 1), (5, 6, 7)),
    ("grey L", lambda: encode(Image.new("L", (3, 3), 77)), (3, 3), (77, 77, 77)),
    ("16-bit mid grey", lambda: sixteen_bit_png(32896), (4, 3), (128, 128, 128)),
    ("16-bit white", lambda: sixteen_bit_png(65535), (4, 3), (255, 255, 255)),
    ("16-bit black", lambda: sixteen_bit_png(0), (4, 3), (0, 0, 0)),
    ("CMYK jpeg", cmyk_jpeg, (8, 8), None),
    ("RGBA transparent over white", lambda: encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0))),
     (4, 4), (255, 255, 255)),
    ("RGBA opaque", lambda: encode(Image.new("RGBA", (4, 4), (255, 0, 0, 255))), (4, 4),
     (255, 0, 0)),
    ("LA transparent", lambda: encode(Image.new("LA", (4, 4), (0, 0))), (4, 4), (255, 255, 255)),
    ("P with transparency", pal_with_transparency, (4, 4), (255, 255, 255)),
    ("jpeg", lambda: encode(Image.new("RGB", (16, 16), (200, 100, 50)), "JPEG", quality=95),
     (16, 16), None),
    ("gif", lambda: encode(Image.new("P", (6, 6), 0), "GIF"), (6, 6), None),
    ("webp", lambda: encode(Image.new("RGB", (6, 6), (0, 0, 0)), "WEBP", lossless=True), (6, 6),
     (0, 0, 0)),
    ("PIL RGB", lambda: Image.new("RGB", (7, 3), (1, 2, 3)), (7, 3), (1, 2, 3)),
    ("PIL RGBA", lambda: Image.new("RGBA", (7, 3), (0, 0, 0, 0)), (7, 3), (255, 255, 255)),
    ("PIL I;16", lambda: Image.open(io.BytesIO(sixteen_bit_png(65535))), (4, 3), (255, 255, 255)),
    ("PIL CMYK", lambda: Image.new("CMYK", (2, 2), (0, 0, 0, 0)), (2, 2), (255, 255, 255)),
    ("numpy uint8 HxWx3", lambda: np.full((5, 6, 3), (9, 8, 7), np.uint8), (6, 5), (9, 8, 7)),
    ("numpy uint8 HxW", lambda: np.full((5, 6), 200, np.uint8), (6, 5), (200, 200, 200)),
    ("numpy HxWx1", lambda: np.full((5, 6, 1), 50, np.uint8), (6, 5), (50, 50, 50)),
    ("numpy RGBA", lambda: np.zeros((5, 6, 4), np.uint8), (6, 5), (255, 255, 255)),
    ("numpy float 0..1", lambda: np.full((5, 6, 3), 1.0), (6, 5), (255, 255, 255)),
    ("numpy float half", lambda: np.full((5, 6), 0.5, np.float32), (6, 5), (127, 127, 127)),
    ("numpy float 0..255", lambda: np.full((5, 6, 3), 128.0), (6, 5), (128, 128, 128)),
    ("numpy bool", lambda: np.eye(5, 6, dtype=bool), (6, 5), (255, 255, 255)),
    ("numpy uint16 HxW", lambda: np.full((5, 6), 65535, np.uint16), (6, 5), (255, 255, 255)),
    ("numpy uint16 HxW grey", lambda: np.full((5, 6), 32896, np.uint16), (6, 5), (128, 128, 128)),
    ("numpy uint16 HxWx3", lambda: np.full((5, 6, 3), 65535, np.uint16), (6, 5), (255, 255, 255)),
    ("numpy int64 clipped", lambda: np.full((5, 6), 300, np.int64), (6, 5), (255, 255, 255)),
    ("numpy non-contiguous", lambda: np.zeros((10, 12, 3), np.uint8)[::2, ::2], (6, 5), (0, 0, 0)),
]


@pytest.mark.parametrize("make,size,pixel", [c[1:] for c in LOAD_CASES],
                         ids=[c[0] for c in LOAD_CASES])
def test_load_image(make, size, pixel):
    im = load_image(make())
    assert im.mode == "RGB" and im.size == size
    if pixel is not None:
        assert im.getpixel((0, 0)) == pixel


def test_cmyk_colour_survives():
    r, g, b = load_image(cmyk_jpeg()).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # C=0 M=255 Y=255 K=0 is red


@pytest.mark.parametrize("orientation,size,white_at,black_at", [
    (1, (40, 20), (0, 0), (30, 10)),
    (3, (40, 20), (39, 19), (5, 5)),  # rotated 180: the band is on the right
    (6, (20, 40), (0, 0), (10, 30)),  # rotated 90 clockwise: the band is on top
    (8, (20, 40), (0, 39), (10, 5)),  # rotated 90 counter-clockwise: the band is at the bottom
])
def test_exif_orientation_is_applied(tmp_path, orientation, size, white_at, black_at):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    two_tone().save(path, "JPEG", quality=95, exif=exif.tobytes())
    for source in (path, path.read_bytes(), Image.open(path)):
        im = load_image(source)
        assert im.size == size
        assert min(im.getpixel(white_at)) > 200
        assert max(im.getpixel(black_at)) < 60


def test_paths_as_str_and_pathlike(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (3, 2), (1, 1, 1)).save(path)
    assert load_image(str(path)).size == load_image(path).size == (3, 2)


def test_the_callers_objects_are_not_changed():
    pil = Image.new("RGB", (4, 4), (1, 2, 3))
    arr = np.full((4, 4, 3), 7, np.uint8)
    pil_bytes, arr_copy = pil.tobytes(), arr.copy()
    a, b = load_image(pil), load_image(arr)
    assert a is not pil
    a.paste((0, 0, 0), (0, 0, 4, 4))
    b.paste((0, 0, 0), (0, 0, 4, 4))
    assert pil.tobytes() == pil_bytes and np.array_equal(arr, arr_copy)


# -- images that don't ------------------------------------------------------------------------

def truncated(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    return data[:len(data) // 2]


BAD_CASES = [
    # (id, source factory (gets tmp_path), message part)
    ("missing file", lambda d: d / "nope.png", "not found"),
    ("directory", lambda d: d, "directory"),
    ("text file", lambda d: _write(d / "a.png", b"hello, not an image"), "not an image"),
    ("empty file", lambda d: _write(d / "e.jpg", b""), "not an image"),
    ("empty bytes", lambda d: b"", "not an image"),
    ("truncated png", lambda d: _write(d / "t.png", truncated("PNG")), "could not read"),
    ("truncated jpeg", lambda d: _write(d / "t.jpg", truncated("JPEG")), "could not read"),
    ("png header only", lambda d: encode(Image.new("RGB", (8, 8)))[:30], "image"),
    ("unsupported type", lambda d: 42, "can't read an image from a int"),
    ("None", lambda d: None, "NoneType"),
    ("numpy 1-d", lambda d: np.zeros(5, np.uint8), "shape"),
    ("numpy 2 channels", lambda d: np.zeros((4, 4, 2), np.uint8), "shape"),
    ("numpy 4-d", lambda d: np.zeros((1, 4, 4, 3), np.uint8), "shape"),
    ("numpy empty", lambda d: np.zeros((0, 5, 3), np.uint8), "empty"),
]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_images_raise_image_error(tmp_path, make, message):
    with pytest.raises(ImageError, match=message):
        load_image(make(tmp_path))


def test_a_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    data = png_header_only(30000, 30000)
    path = _write(tmp_path / "bomb.png", data)
    for source in (data, path):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning either
            with pytest.raises(ImageError, match="30000x30000 = 900,000,000 pixels") as info:
                load_image(source)
        assert not isinstance(info.value, Image.DecompressionBombError)
        assert "max_pixels" in str(info.value)
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's own guard is back in place


@pytest.mark.parametrize("source", [
    lambda: encode(Image.new("RGB", (20, 10))),
    lambda: Image.new("RGB", (20, 10)),
    lambda: np.zeros((10, 20, 3), np.uint8),
])
def test_a_configured_pixel_limit(source):
    with pytest.raises(ImageError, match="200 pixels, over the limit of 199"):
        load_image(source(), max_pixels=199)
    assert load_image(source(), max_pixels=200).size == (20, 10)
    assert load_image(source(), max_pixels=None).size == (20, 10)


# -- type_of ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value,name", [
    (Image.new("RGB", (1, 1)), "Image"), (Objects.empty((2, 2)), "Objects"), (True, "Bool"),
    (3, "Number"), (2.5, "Number"), ("x", "Text"), (None, "None"), (["a", "b"], "TextList"),
    ([], "TextList"), ([1, 2], "Any"), ({"a": 1}, "Any"), (np.zeros(3), "Any"),
])
def test_type_of(value, name):
    assert type_of(value) == name


# -- Objects ----------------------------------------------------------------------------------

def three(masks: bool = False) -> Objects:
    m = np.zeros((10, 20), bool)
    m[2:4, 3:6] = True
    return Objects([(0, 0, 5, 5), (10, 2, 15, 8), (2, 2, 4, 4)], (20, 10),
                   labels=["a", "b", "c"], scores=[0.9, 0.8, 0.7],
                   masks=[m, None, None] if masks else None)


@pytest.mark.parametrize("box,clipped", [
    ((-5, -5, 5, 5), (0, 0, 5, 5)),
    ((15, 5, 30, 20), (15, 5, 20, 10)),
    ((10, 8, 2, 1), (2, 1, 10, 8)),  # corners given in the wrong order
    ((-10, -10, -1, -1), (0, 0, 0, 0)),  # wholly outside: zero area
    ((1, 2, 3, 4), (1, 2, 3, 4)),
])
def test_boxes_are_clipped_to_the_image(box, clipped):
    objs = Objects([box], (20, 10))
    assert objs[0].box == tuple(float(v) for v in clipped)


@pytest.mark.parametrize("box,error", [
    ((1, 2, 3), "4 numbers"),
    ((0, 0, float("nan"), 3), "non-finite"),
    ((0, 0, float("inf"), 3), "non-finite"),
])
def test_bad_boxes(box, error):
    with pytest.raises(ValueError, match=error):
        Objects([box], (20, 10))


@pytest.mark.parametrize("mask", [np.zeros((20, 10), bool), np.zeros((10,), bool),
                                  np.zeros((10, 20, 1), bool)])
def test_mask_shape_must_be_the_images(mask):
    with pytest.raises(ValueError, match="mask shape"):
        Objects.from_regions((Region(box=(0, 0, 1, 1), mask=mask),), (20, 10))


@pytest.mark.parametrize("mask", [np.ones((10, 20), np.uint8), np.full((10, 20), 0.9),
                                  np.ones((10, 20), bool)])
def test_masks_become_read_only_bool(mask):
    objs = Objects.from_regions((Region(box=(0, 0, 1, 1), mask=mask),), (20, 10))
    m = objs[0].mask
    assert m.dtype == bool and m.all() and not m.flags.writeable


@pytest.mark.parametrize("size", [(0, 5), (5, 0), (-1, 3)])
def test_image_size_must_be_positive(size):
    with pytest.raises(ValueError, match="positive"):
        Objects.empty(size)


def test_only_regions_build_objects_from_regions():
    with pytest.raises(TypeError, match="Region"):
        Objects.from_regions(((0, 0, 1, 1),), (5, 5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="from_regions"):  # regions given where boxes go
        Objects([Region(box=(0, 0, 1, 1))], (5, 5))


def test_from_boxes_lengths_must_agree():
    with pytest.raises(ValueError, match="same length"):
        Objects([(0, 0, 1, 1)], (5, 5), labels=["a", "b"])


@pytest.mark.parametrize("index,labels", [
    (slice(1, None), ["b", "c"]),
    (slice(None, None, -1), ["c", "b", "a"]),
    ([2, 0], ["c", "a"]),
    ([], []),
    (np.array([True, False, True]), ["a", "c"]),
    (np.array([1]), ["b"]),
    ([False, False, False], []),
])
def test_indexing_gives_objects_of_the_same_image(index, labels):
    sub = three()[index]
    assert isinstance(sub, Objects) and list(sub.labels) == labels and sub.image_size == (20, 10)


def test_int_indexing_gives_a_region():
    objs = three()
    assert objs[0].label == "a" and objs[-1].label == "c" and objs[np.int64(1)].label == "b"
    with pytest.raises(IndexError):
        objs[3]


def test_bool_index_of_the_wrong_length():
    with pytest.raises(IndexError, match="boolean index"):
        three()[np.array([True, False])]


def test_views():
    objs = three()
    assert objs.boxes.shape == (3, 4) and objs.boxes[1].tolist() == [10, 2, 15, 8]
    assert objs.labels.tolist() == ["a", "b", "c"] and objs.scores.tolist() == [0.9, 0.8, 0.7]
    assert Objects.empty((4, 4)).boxes.shape == (0, 4)
    assert len(objs) == 3 and [r.label for r in objs] == ["a", "b", "c"]
    assert objs[1].area == 30.0
    assert objs.to_list()[0] == {"box": [0.0, 0.0, 5.0, 5.0], "label": "a", "score": 0.9}
    assert "n=3" in repr(objs)


def test_region_mask_fills_the_box_when_there_is_no_mask():
    objs = Objects([(1.5, 2.2, 4.0, 5.0)], (8, 6))
    m = objs.region_mask(0)
    assert m.shape == (6, 8) and m.dtype == bool
    assert np.argwhere(m).min(0).tolist() == [2, 1] and np.argwhere(m).max(0).tolist() == [4, 3]
    assert m.sum() == 3 * 3  # rows 2..4, columns 1..3 (box edges rounded outwards)


def test_region_mask_prefers_the_mask():
    objs = three(masks=True)
    assert objs.region_mask(0).sum() == 6  # the mask, not the 5x5 box


def test_union_mask():
    objs = three(masks=True)
    union = objs.union_mask()
    # a's mask (6 px) + b's box (5x6 = 30) + c's box (2x2 = 4, of which 2 are in a's mask)
    assert union.shape == (10, 20) and union.dtype == bool and union.sum() == 6 + 30 + 4 - 2
    assert not Objects.empty((20, 10)).union_mask().any()
