"""What the hosting tests share (tests/test_hosting.py with a Ray cluster,
tests/test_hosting_wire.py without Ray): the hosted modules' settings, a program, pictures.

Importing this needs no Ray."""
from __future__ import annotations

import numpy as np
from PIL import Image

HOSTED = ("Loc", "Vqa", "Classify")
HOST = {"host": "ray", "num_cpus": 0.25, "max_batch_size": 8, "batch_wait_s": 0.05,
        "timeout_s": 60, "retries": 2}

PROGRAM = """\
OBJ=Loc(image=IMAGE, object='dog')
N=Count(box=OBJ)
CROP=Crop(image=IMAGE, box=OBJ)
LABELED=Classify(image=IMAGE, object=OBJ, categories=['dog', 'cat'])
ANSWER=Vqa(image=CROP, question='what color is the dog?')
OUT=Eval(expr="'{ANSWER}' if {N} > 0 else 'none'")
FINAL=Result(var=OUT)
"""


def hosted(app: str = "visprog", modules=HOSTED, **extra) -> dict:
    """Config overrides that host `modules` on Ray Serve under the application prefix `app`."""
    return {m: {**HOST, "ray_app": app, **extra} for m in modules}


def picture(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
