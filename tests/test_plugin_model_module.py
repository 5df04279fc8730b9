"""A new model module is one file: written into a temporary package that advertises it
through the `visprog.tools` entry point, built on `visprog.models.ModelTool` with a tiny ViT
classifier built offline, it shows in `visprog tools`, the checker, the prompt of the
planning task it names (and not the others), `visprog config show`, a lone run, a batched
run (its forward gets several images at once) and the step cache, and its presets (tiny,
and a third one) reach `load_config` with nothing else edited."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from visprog.api import VisProg  # noqa: E402
from visprog.cli import main  # noqa: E402
from visprog.config import load_config, preset_names  # noqa: E402
from visprog.planning.prompts import TASKS, module_descriptions  # noqa: E402

PLUGIN = "vp_label_plugin"
PLUGIN_FILE = '''
"""ImageLabel(image) -> Text: one label for the whole image, from a ViT classifier."""
from visprog.models import ModelTool, hf_loader
from visprog.values import load_image

LABELS = ["cat", "dog", "car", "tree"]
load_vit = hf_loader("ViTForImageClassification", "AutoImageProcessor")


def build_tiny_vit(folder):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=16,
                    num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                    label2id={l: i for i, l in enumerate(LABELS)})
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)


class ImageLabel(ModelTool):
    name = "ImageLabel"
    params = {"image": "Image"}
    returns = "Text"
    doc = "one label for the whole image"
    tasks = ("gqa",)  # described in the planner's prompts of these tasks
    presets = {"default": {"checkpoint": "google/vit-base-patch16-224", "top": 1},
               "tiny": {"checkpoint": "tiny:plugin_vit"},
               "classic": {"checkpoint": "tiny:plugin_vit", "top": 2}}
    tiny_checkpoints = {"plugin_vit": build_tiny_vit}
    forward_sizes = []  # for the test: how many images each forward got

    def preprocess(self, call):
        return load_image(call["image"])

    def forward(self, images):
        type(self).forward_sizes.append(len(images))
        model, processor = self.model("plugin_vit", self.settings["checkpoint"], load_vit)
        inputs = self.model_inputs(processor(images=images, return_tensors="pt"), model)
        return model(**inputs).logits.argmax(-1).tolist()

    def postprocess(self, image, index):
        return LABELS[index]


TOOLS = [ImageLabel]
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The one file, and the entry point that names it, on sys.path."""
    (tmp_path / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_FILE))
    info = tmp_path / f"{PLUGIN}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vp-label-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[visprog.tools]\nimage_label = {PLUGIN}:ImageLabel\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop(PLUGIN, None)


def picture(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_the_module_is_listed_checked_and_described(plugin, capsys):
    assert main(["tools", "--preset", "tiny", "--no-cache"]) == 0
    listed = capsys.readouterr().out
    assert "ImageLabel(image: Image) -> Text" in listed and "one label for the whole image" in listed

    vp = VisProg(preset="tiny", cache=False)
    assert vp.check("L=ImageLabel(image=IMAGE)\nR=Result(var=L)") == []
    wrong = vp.check("L=ImageLabel(image='a photo')")
    assert wrong and "image" in str(wrong[0])
    assert "ImageLabel(image: Image) -> Text" in module_descriptions(vp.registry, TASKS["gqa"])
    for task in ("nlvr", "imgedit", "knowtag"):
        assert "ImageLabel" not in module_descriptions(vp.registry, TASKS[task]), task
    assert main(["config", "show", "--preset", "tiny"]) == 0
    shown = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert ["ImageLabel", "-", "tiny:plugin_vit"] in [row[:3] for row in shown]


def test_its_presets_reach_the_configuration(plugin):
    assert load_config("tiny")["ImageLabel"] == {"checkpoint": "tiny:plugin_vit", "top": 1}
    assert load_config("default")["ImageLabel"]["checkpoint"] == "google/vit-base-patch16-224"
    # a preset only this module declares is a preset: the others keep their defaults
    assert "classic" in preset_names()
    classic = load_config("classic")
    assert classic["ImageLabel"]["top"] == 2
    assert classic["Seg"] == load_config("default")["Seg"]  # Seg declares no classic
    assert classic["models"] == load_config("default")["models"]
    over = load_config("tiny", overrides={"ImageLabel.top": 3})
    assert over["ImageLabel"] == {"checkpoint": "tiny:plugin_vit", "top": 3}


def test_a_lone_run_a_batched_run_and_the_cache(plugin):
    vp = VisProg(preset="tiny", cache=True)
    tool = vp.registry.get("ImageLabel")
    assert tool.settings == {"checkpoint": "tiny:plugin_vit", "top": 1}
    cls = sys.modules[PLUGIN].ImageLabel
    labels = sys.modules[PLUGIN].LABELS
    cls.forward_sizes.clear()

    program = "L=ImageLabel(image=IMAGE)\nR=Result(var=L)"
    out = vp.execute(program, image=picture(0))
    assert out.value in labels and not out.trace["L"].cached
    assert cls.forward_sizes == [1]
    # the model was loaded through the VisProg's model manager, and the trace says so
    assert any(e.kind == "model_load" and e.model == "plugin_vit"
               for e in out.trace.events)

    again = vp.execute(program, image=picture(0))
    assert again.value == out.value and again.trace["L"].cached
    assert cls.forward_sizes == [1]  # cached: the model did not run

    images = [picture(s) for s in (1, 2, 3, 4)]
    results = vp.run_batch([{"program": program, "image": im} for im in images], batch_size=4)
    assert all(r.ok for r in results)
    assert max(cls.forward_sizes[1:]) > 1  # calls of several programs went through one forward
    alone = VisProg(preset="tiny", cache=False)
    assert [r.value for r in results] == [alone.execute(program, image=im).value for im in images]
