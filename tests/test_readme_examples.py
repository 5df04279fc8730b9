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
