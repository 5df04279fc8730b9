"""Ocr and LocText (tools/ocr.py) with the real PP-OCR models that ship in rapidocr-onnxruntime.

Text is rendered onto photos with Pillow (several fonts, sizes and small rotations) and must
be read back exactly: these are real readings, nothing is faked.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("rapidocr_onnxruntime")
skdata = pytest.importorskip("skimage.data")

from visprog import VisProg  # noqa: E402
from visprog.config import load_config  # noqa: E402
from visprog.errors import ConfigError  # noqa: E402
from visprog.models import ModelLoadError, ModelManager  # noqa: E402
from visprog.models import ToolContext  # noqa: E402
from visprog.tools import ocr as ocr_mod  # noqa: E402
from visprog.values import Objects  # noqa: E402

FONT_DIR = Path("/usr/share/fonts/truetype")
FONTS = {  # None: the font that ships inside Pillow (always there)
    "pillow": None,
    "dejavu-sans": FONT_DIR / "dejavu/DejaVuSans.ttf",
    "liberation-serif-bold": FONT_DIR / "liberation/LiberationSerif-Bold.ttf",
    "dejavu-serif": FONT_DIR / "dejavu/DejaVuSerif.ttf",
}


def font(name: str, size: int):
    path = FONTS[name]
    if path is None:
        return ImageFont.load_default(size=size)
    if not path.exists():
        pytest.skip(f"font {path} is not installed")
    return ImageFont.truetype(str(path), size)


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def paste_text(image: Image.Image, text: str, fnt, at: tuple[int, int], angle: float = 0.0,
               backing: bool = True) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """`text` drawn on a (translucent white) label, rotated by `angle` degrees, pasted onto
    a copy of `image` at `at`; returns the image and the label's box."""
    stroke = 0 if backing else 3
    l, t, r, b = fnt.getbbox(text, stroke_width=stroke)
    pad = max(4, (b - t) // 3)
    tile = Image.new("RGBA", (r - l + 2 * pad, b - t + 2 * pad),
                     (255, 255, 255, 230) if backing else (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((pad - l, pad - t), text, font=fnt, fill=(0, 0, 0, 255) if backing
                              else (255, 255, 255, 255), stroke_width=stroke,
                              stroke_fill=(0, 0, 0, 255))
    tile = tile.rotate(angle, expand=True, resample=Image.BICUBIC)
    out = image.copy()
    out.paste(tile, at, tile)
    return out, (at[0], at[1], at[0] + tile.width, at[1] + tile.height)


@pytest.fixture(scope="module")
def tools():
    mm = ModelManager(device="cpu")
    built = {t.name: t for t in ocr_mod.build(load_config("tiny")["Ocr"], ToolContext(models=mm))}
    built["_mm"] = mm
    return built


# -- real readings --------------------------------------------------------------------------

READINGS = [  # photo, font, size, angle, text
    ("astronaut", "pillow", 40, 3, "EXIT 12"),
    ("astronaut", "pillow", 56, -4, "Main Street"),
    ("astronaut", "dejavu-sans", 28, -4, "STOP"),
    ("astronaut", "dejavu-sans", 56, 3, "Coffee $3.50"),
    ("astronaut", "liberation-serif-bold", 40, -4, "EXIT 12"),
    ("coffee", "liberation-serif-bold", 56, 0, "Coffee $3.50"),
    ("coffee", "dejavu-sans", 40, 0, "42"),
    ("coffee", "pillow", 56, -4, "Main Street"),
    ("coffee", "dejavu-serif", 48, 2, "Platform 9"),
]


@pytest.mark.parametrize("photo_name, font_name, size, angle, text", READINGS,
                         ids=[f"{p}-{f}-{s}px-{a}deg" for p, f, s, a, _ in READINGS])
def test_ocr_reads_text_rendered_on_photos_exactly(tools, photo_name, font_name, size, angle, text):
    image, _ = paste_text(photo(photo_name), text, font(font_name, size), (40, 60), angle)
    assert tools["Ocr"](image=image) == text


def test_text_without_a_label_behind_it(tools):
    # white letters with a black outline straight on the photo, as on a poster or a caption
    image, _ = paste_text(photo("astronaut"), "OPEN", font("dejavu-sans", 64), (150, 380),
                          backing=False)
    assert tools["Ocr"](image=image) == "OPEN"


def test_lines_come_in_reading_order_and_loctext_finds_each(tools):
    image = photo("coffee")
    fnt = font("pillow", 44)
    image, top = paste_text(image, "NORTH EXIT", fnt, (40, 30))
    image, bottom = paste_text(image, "Trains to York", fnt, (40, 250))
    assert tools["Ocr"](image=image) == "NORTH EXIT Trains to York"
    found = tools["LocText"](image=image)
    assert isinstance(found, Objects) and found.image_size == image.size
    assert found.labels.tolist() == ["NORTH EXIT", "Trains to York"]
    for region, label_box in zip(found, [top, bottom]):
        x1, y1, x2, y2 = region.box
        assert label_box[0] <= x1 < x2 <= label_box[2] and label_box[1] <= y1 < y2 <= label_box[3]
        assert 0.5 <= region.score <= 1.0
    only = tools["LocText"](image=image, text="york")  # any case, part of a line
    assert only.labels.tolist() == ["Trains to York"]
    assert tools["LocText"](image=image, text="northexit").labels.tolist() == ["NORTH EXIT"]  # spaces ignored
    assert len(tools["LocText"](image=image, text="Paris")) == 0


def test_upside_down_text_is_read_with_the_angle_classifier(tools):
    image, _ = paste_text(photo("coffee"), "EXIT 12", font("pillow", 56), (60, 100), 180)
    assert tools["Ocr"](image=image) == "EXIT 12"


# -- no text ----------------------------------------------------------------------------------

@pytest.mark.parametrize("image", [
    photo("coffee"),
    Image.new("RGB", (300, 200), "white"),
    Image.new("RGB", (1, 1), "black"),
], ids=["photo", "blank", "one-pixel"])
def test_an_image_without_text_gives_empty_results_not_errors(tools, image):
    assert tools["Ocr"](image=image) == ""
    empty = tools["LocText"](image=image)
    assert isinstance(empty, Objects) and len(empty) == 0 and empty.image_size == image.size


# -- batching, loading, settings --------------------------------------------------------------

def test_batch_gives_each_call_its_own_reading_and_loads_once(tools):
    fnt = font("pillow", 48)
    images = [paste_text(photo("astronaut"), t, fnt, (30, 40))[0] for t in ("STOP", "EXIT 12")]
    images.append(photo("coffee"))
    got = tools["Ocr"].batch_fn([{"image": im} for im in images])
    assert got == ["STOP", "EXIT 12", ""]
    loads = [e for e in tools["_mm"].events if e["event"] == "load"]
    assert len(loads) == 1 and loads[0]["kind"].startswith("rapidocr")
    tools["LocText"](image=images[0])  # the same engine serves LocText
    assert len([e for e in tools["_mm"].events if e["event"] == "load"]) == 1
    assert tools["Ocr"].batch_fn([]) == []


def test_a_folder_of_pp_ocr_models_loads_and_reads(tmp_path):
    import rapidocr_onnxruntime

    shipped = Path(rapidocr_onnxruntime.__file__).parent / "models"
    for src, dst in (("ch_PP-OCRv4_det_infer.onnx", "det.onnx"),
                     ("ch_PP-OCRv4_rec_infer.onnx", "rec.onnx"),
                     ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "cls.onnx")):
        shutil.copy(shipped / src, tmp_path / dst)
    mm = ModelManager(device="cpu")
    ocr = ocr_mod.build({"checkpoint": str(tmp_path)}, ToolContext(models=mm))[0]
    image, _ = paste_text(photo("coffee"), "Gate 7", font("pillow", 56), (40, 60))
    assert ocr(image=image) == "Gate 7"
    assert mm.loaded()[0]["checkpoint"] == str(tmp_path)


def test_a_folder_without_models_is_a_clear_load_error(tmp_path):
    ocr = ocr_mod.build({"checkpoint": str(tmp_path)}, ToolContext(models=ModelManager("cpu")))[0]
    with pytest.raises(ModelLoadError, match="det\\*.onnx and rec\\*.onnx"):
        ocr(image=Image.new("RGB", (50, 50)))
    missing = ocr_mod.build({"checkpoint": str(tmp_path / "nope")},
                            ToolContext(models=ModelManager("cpu")))[0]
    with pytest.raises(ModelLoadError, match="no such folder"):
        missing(image=Image.new("RGB", (50, 50)))


def test_min_score_filters_and_is_checked():
    with pytest.raises(ConfigError, match="min_score"):
        ocr_mod.build({"min_score": 1.5}, ToolContext())
    readings = [([[0, 0], [50, 0], [50, 20], [0, 20]], "SURE", 0.95),
                ([[0, 40], [50, 40], [50, 60], [0, 60]], "UNSURE", 0.3)]
    assert [t for _, t, _ in ocr_mod.lines_from(readings, (100, 100), 0.5, 1.0)] == ["SURE"]


def test_declarations_and_settings_in_the_cache_key():
    tiny = {t.name: t for t in ocr_mod.build(load_config("tiny")["Ocr"], ToolContext())}
    assert tiny["Ocr"].signature() == "Ocr(image: Image) -> Text"
    assert tiny["LocText"].signature() == "LocText(image: Image, text: None|Text = None) -> Objects"
    other = ocr_mod.build({"min_score": 0.8}, ToolContext())[0]
    assert other.settings != tiny["Ocr"].settings and callable(other.batch_fn)


# -- in programs ----------------------------------------------------------------------------

def test_programs_read_signs_and_compare_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path))
    image = photo("astronaut")
    image, _ = paste_text(image, "STOP", font("pillow", 48), (30, 30))
    image, _ = paste_text(image, "42", font("dejavu-sans", 48), (380, 400))
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    out = vp.execute("""
TOP=Loc(image=IMAGE, object='TOP')
UPPER=Crop(image=IMAGE, box=TOP)
SIGN=Ocr(image=UPPER)
NUMBERS=LocText(image=IMAGE, text='42')
SPEED=Ocr(image=IMAGE)
FAST=Eval(expr="{SIGN} == 'STOP' and {NUMBERS} == 1")
FINAL=Result(var=FAST)
""", image=image)
    assert out.value is True
    assert out.trace["SIGN"].output == "STOP"
    assert out.trace["SPEED"].output == "STOP 42"
    html = out.trace.to_html()
    assert "STOP" in html and "42" in html
