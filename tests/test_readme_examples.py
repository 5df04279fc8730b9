"""The README's Python examples run as written (with every warning an error, so an example
that uses a deprecated API fails here before a user copies it)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_adding_a_module_example_runs(tmp_path):
    from visprog import VisProg
    from PIL import Image

    code = _python_block_after("## Adding a module")
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (100, 100, 100)).save(photo)
    vp = VisProg(preset="tiny", cache=False)
    code = code.replace('image="photo.jpg"', f'image={str(photo)!r}')
    code = code.replace('vp.execute(', 'out = vp.execute(')
    scope = {"vp": vp}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, str(README), "exec"), scope)
    assert abs(scope["out"].value - 100) < 1e-6


def test_the_video_example_runs(tmp_path):
    """With the tiny models (random: what they find means nothing) on a synthetic clip."""
    import pytest

    pytest.importorskip("av")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from video_clips import square_frames, write_clip
    from visprog import VisProg

    clip = write_clip(tmp_path / "street.mp4", square_frames(16))
    code = _python_block_after("### Video").replace('"street.mp4"', repr(str(clip)))
    vp = VisProg(preset="tiny", cache=False)
    scope = {"vp": vp, "program": "T=Track(video=VIDEO, object='car')\nN=Count(box=T)"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, str(README), "exec"), scope)
    out = scope["out"]
    assert out.trace["N"].output == len(out.trace["CARS"].output)
    assert len(scope["clip"]) == 16 and isinstance(out.value, str)
