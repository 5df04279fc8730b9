"""Today's models (issue 15, part): SAM 3 in Select and Loc, MM-GroundingDINO, the presets
(`default` = today's models, `classic` = the old defaults, `tiny` mirrors default's backends),
`visprog config show`, FaceDet's automatic YuNet/cascade choice.

The models are tiny random ones built offline from configs with the real checkpoints' input
settings, saved and loaded back through the same loaders as real checkpoints; their outputs
are random, so the tests check contracts (pixels, masks, batching, empty results, notes)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from visprog.api import VisProg, describe_config  # noqa: E402
from visprog.cli import main  # noqa: E402
from visprog.config import find_modules, load_config, preset_names  # noqa: E402
from visprog.models import ModelManager, ToolContext, resolve_checkpoint  # noqa: E402
from visprog.tools import _sam3, facedet  # noqa: E402
from visprog.tools import loc as loc_mod  # noqa: E402
from visprog.tools import select_objects as sel_mod  # noqa: E402
from visprog.traces.events import ModelNote  # noqa: E402
from visprog.values import Objects  # noqa: E402

TINY = load_config("tiny")
ASTRONAUT = Path(__file__).parents[1] / "examples" / "astronaut.jpg"


@pytest.fixture(scope="module")
def ctx():
    return ToolContext(models=ModelManager(device="cpu"))


def noise(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def thirds(size):
    w, h = size
    return Objects([(0, 0, w / 3, h), (w / 3, 0, 2 * w / 3, h), (2 * w / 3, 0, w, h)],
                   size, labels=["dog", "cat", "dog"])


def select(ctx, **over):
    return sel_mod.Select.build({**TINY["Select"], **over}, ctx)


# -- SAM 3's preprocessing, ours ---------------------------------------------------------------

def test_sam3_preprocessing_follows_the_published_settings_exactly():
    prep = _sam3.Sam3Preprocess.from_config({})  # the processor's class defaults
    assert (prep.height, prep.width, prep.resample) == (1008, 1008, 2)
    assert prep.rescale_factor == pytest.approx(1 / 255) and prep.mean == prep.std == (0.5,) * 3
    # at the model's size there is no resampling: exactly (x / 255 - 0.5) / 0.5
    im = noise((1008, 1008), 3)
    x = _sam3.preprocess_images([im], prep)
    want = (np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    assert x.shape == (1, 3, 1008, 1008) and np.allclose(x[0].numpy(), want, atol=1e-6)
    # a checkpoint's own settings are read, not assumed
    other = _sam3.Sam3Preprocess.from_config({"size": {"height": 504, "width": 504},
                                              "image_mean": [0.1, 0.2, 0.3]})
    assert _sam3.preprocess_images([im], other).shape == (1, 3, 504, 504)
    assert other.mean == (0.1, 0.2, 0.3)
    with pytest.raises(ValueError, match="size"):
        _sam3.Sam3Preprocess.from_config({"size": {"shortest_edge": 1008}})


def test_sam3_resize_matches_transformers_pil_backend_within_two_levels():
    """An independent implementation of the same settings: transformers' PIL image backend
    (resize 1008x1008 bilinear, rescale, normalise); ours resizes with torch's antialiased
    kernel, as torchvision does. They agree to two grey levels, a quarter of one on average."""
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import PILImageResampling

    class PilSam3(PilBackend):
        resample = PILImageResampling.BILINEAR
        image_mean = image_std = [0.5, 0.5, 0.5]
        size = {"height": 1008, "width": 1008}
        do_resize = do_rescale = do_normalize = do_convert_rgb = True

    photo = Image.open(ASTRONAUT).convert("RGB")
    flat = Image.new("RGB", (640, 480), (200, 30, 90))
    for im in (photo, flat):
        ref = PilSam3()(images=im, return_tensors="pt")["pixel_values"]
        ours = _sam3.preprocess_images([im], _sam3.Sam3Preprocess.from_config({}))
        assert ours.shape == ref.shape == (1, 3, 1008, 1008)
        level = 2 / 255  # one grey level after (x / 255 - 0.5) / 0.5
        diff = (ours - ref).abs() / level
        # PIL's and torch's fixed-point bilinear round differently here and there
        assert diff.max().item() <= 2 + 1e-4 and diff.mean().item() < 0.25


def test_sam3_preprocessing_matches_the_librarys_processor_where_torchvision_exists():
    pytest.importorskip("torchvision")  # e.g. on the GPU machine
    from transformers import Sam3ImageProcessor

    photo = Image.open(ASTRONAUT).convert("RGB")
    for im in (photo, photo.resize((333, 517))):
        ref = Sam3ImageProcessor()(images=im, return_tensors="pt")["pixel_values"]
        ours = _sam3.preprocess_images([im], _sam3.Sam3Preprocess.from_config({}))
        assert (ours - ref).abs().max().item() <= 2 / 255 + 1e-6


def test_tiny_checkpoints_copy_the_real_input_settings():
    sam3 = Path(resolve_checkpoint("tiny:sam3"))
    cfg = json.loads((sam3 / "config.json").read_text())
    vit = cfg["vision_config"]["backbone_config"]
    assert (vit["image_size"], vit["patch_size"]) == (1008, 14)
    assert cfg["text_config"]["max_position_embeddings"] == 32
    prep = json.loads((sam3 / "preprocessor_config.json").read_text())
    assert prep["size"] == {"height": 1008, "width": 1008} and prep["image_mean"] == [0.5] * 3
    gd = Path(resolve_checkpoint("tiny:mm_grounding_dino"))
    gd_prep = json.loads((gd / "processor_config.json").read_text())["image_processor"]
    assert gd_prep["size"] == {"shortest_edge": 800, "longest_edge": 1333}
    assert json.loads((gd / "config.json").read_text())["model_type"] == "mm-grounding-dino"


# -- Select with SAM 3 -------------------------------------------------------------------------

def test_select_sam3_with_no_candidates_gives_the_instances_found(ctx):
    size = (320, 200)
    out = select(ctx)(image=noise(size), object=Objects.empty(size), query="dog, red car")
    assert len(out) > 0 and set(out.labels) == {"dog", "red car"}
    for r in out:
        assert r.mask is not None and r.mask.shape == (200, 320)
        assert 0 <= r.score <= 1 and r.extra["sam3_score"] == r.score
    assert out.has_score.all()  # every region scored by the model


def test_select_sam3_finding_nothing_is_empty_not_an_error(ctx):
    # scores are sigmoid products: none reaches 1, so SAM 3 finds nothing
    tool = select(ctx, sam3_threshold=1.0)
    size = (160, 120)
    for cands in (Objects.empty(size), thirds(size)):
        out = tool(image=noise(size), object=cands, query="purple giraffe")
        assert isinstance(out, Objects) and len(out) == 0 and out.image_size == size


def test_a_very_long_query_is_cut_with_a_note_in_the_trace():
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    long_query = " ".join(["the red car with a blue dog"] * 12)
    out = vp.execute(f"O=Loc(image=IMAGE, object='TOP')\n"
                     f"S=Select(image=IMAGE, object=O, query='{long_query}')", image=noise((120, 90)))
    notes = out.trace.find(ModelNote)
    assert len(notes) == 1 and notes[0].module == "Select"
    assert "32 text tokens" in notes[0].message and notes[0].data["query"] == long_query
    assert isinstance(out.value, Objects)
    short = vp.execute("O=Loc(image=IMAGE, object='TOP')\n"
                       "S=Select(image=IMAGE, object=O, query='red car')", image=noise((120, 90)))
    assert not short.trace.find(ModelNote)


def test_sam3_batch_of_mixed_sizes_equals_one_by_one(ctx):
    tool = select(ctx)
    calls = [{"image": noise(s, i), "object": c, "query": q, "category": None}
             for i, (s, c, q) in enumerate([((200, 150), thirds((200, 150)), "dog"),
                                            ((97, 31), Objects.empty((97, 31)), "cat, dog"),
                                            ((300, 900), thirds((300, 900)), "red car")])]
    calls_by_size = {tool.batch_fn.__self__.batch_key(tool.batch_fn.__self__.preprocess(
        {**c})) for c in calls}
    assert calls_by_size == {None}  # SAM 3 batches any sizes together
    for call, got in zip(calls, tool.batch_fn(calls)):
        one = tool(**call)
        assert got.labels.tolist() == one.labels.tolist()
        assert np.allclose(got.boxes, one.boxes, atol=1e-2)
        for a, b in zip(got, one):
            assert (a.mask != b.mask).mean() < 0.01


def test_loc_and_select_share_one_sam3():
    fresh = ToolContext(models=ModelManager(device="cpu"))
    size = (160, 120)
    found = loc_mod.Loc.build({**TINY["Loc"], "backend": "sam3"}, fresh)(image=noise(size),
                                                                    object="dog")
    assert len(found) > 0 and all(r.mask is None for r in found)
    select(fresh)(image=noise(size), object=found, query="dog")
    assert [m["kind"] for m in fresh.models.loaded()] == ["sam3"]


def test_loc_default_is_mm_grounding_dino():
    fresh = ToolContext(models=ModelManager(device="cpu"))
    tool = loc_mod.Loc.build(TINY["Loc"], fresh)
    assert tool.settings["backend"] == "mm_grounding_dino"
    out = tool(image=noise((640, 480)), object="cat")
    assert out.image_size == (640, 480) and set(out.labels) <= {"cat"}
    assert [m["kind"] for m in fresh.models.loaded()] == ["mm_grounding_dino"]


# -- presets --------------------------------------------------------------------------------------

def test_the_presets_and_their_backends():
    assert {"default", "classic", "tiny"} <= set(preset_names())
    default, classic = load_config("default"), load_config("classic")
    assert (default["Select"]["backend"], default["Loc"]["backend"]) == ("sam3", "mm_grounding_dino")
    assert default["Replace"]["backend"] == "sdxl" and default["FaceDet"]["backend"] == "auto"
    assert (classic["Select"]["backend"], classic["Loc"]["backend"]) == ("sam", "grounding_dino")
    assert classic["Replace"]["backend"] == "sd" and classic["FaceDet"]["backend"] == "cascade"
    assert classic["Vqa"]["backend"] == "blip"
    assert classic["Classify"]["backend"] == "clip"
    assert classic["Classify"]["checkpoints"]["clip"] == "openai/clip-vit-base-patch32"


def test_tiny_mirrors_defaults_backends_and_uses_only_tiny_checkpoints():
    for name, cls in find_modules().classes.items():
        # a module without a tiny preset (Ocr: its real models ship in a package) runs as is
        default, tiny = cls.preset("default"), cls.preset("tiny") or cls.preset("default")
        assert tiny.get("backend") == default.get("backend"), name
        used = cls(tiny).settings
        cks = [used["checkpoint"]] if used.get("checkpoint") else \
            list(used.get("checkpoints", {}).values())
        if "tiny" in cls.presets:  # else its real models ship in a package (Ocr)
            assert all(c.startswith("tiny:") for c in cks), (name, cks)


def test_config_show_prints_every_module(capsys, tmp_path):
    assert main(["config", "show", "--preset", "classic"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:]
             if not ln.startswith("planner LLM:")}
    assert set(lines) == set(find_modules().classes)
    assert lines["Loc"][1:3] == ["grounding_dino", "IDEA-Research/grounding-dino-tiny"]
    assert lines["Loc"][3:] == ["cpu", "float32"]  # [models] device auto: no GPU here
    user = tmp_path / "my.toml"
    user.write_text('[Loc]\nbackend = "owlv2"\n[models]\ndevice = "cpu"\n')
    assert main(["config", "show", "--preset", "tiny", "--config", str(user), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = {r["module"]: r for r in info["modules"]}
    assert rows["Loc"]["backend"] == "owlv2" and rows["Loc"]["checkpoint"] == "tiny:owlv2"
    assert rows["Select"]["checkpoint"] == "sam3=tiny:sam3"
    assert rows["FaceDet"]["dtype"] == "-" and info["preset"] == "tiny"
    assert main(["config", "show", "--preset", "nope"]) == 2  # a usage error (issue 20 item 13)
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_describe_config_loads_no_model():
    info = describe_config("tiny", {"models": {"device": "cpu"}})
    assert {r["module"] for r in info["modules"]} == set(find_modules().classes)
    assert all(r["host"] == "local" for r in info["modules"])


# -- FaceDet: YuNet where its file is, else the cascade ------------------------------------------

def test_facedet_auto_falls_back_to_the_cascade_offline_with_a_notice(ctx, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    facedet._AUTO.clear()
    with caplog.at_level(logging.WARNING, logger="visprog"):
        tool = facedet.FaceDet.build({"backend": "auto"}, ctx)
    assert tool.settings == facedet.FaceDet.build({"backend": "cascade"}, ctx).settings
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]  # one line
    assert "cascade" in caplog.records[0].getMessage()
    vp = VisProg(preset="default", config={"FaceDet": {"backend": "auto"}}, cache=False,
                 plugins=False)
    out = vp.execute("F=FaceDet(image=IMAGE)", image=Image.open(ASTRONAUT))
    assert len(out.value) >= 1  # the real cascade finds the astronaut's face
    notes = out.trace.find(ModelNote)
    assert len(notes) == 1 and "cascade" in notes[0].message


def test_facedet_auto_takes_yunet_when_its_file_is_in_the_cache(ctx, tmp_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    facedet._AUTO.clear()
    target = tmp_cache / "models" / facedet.YUNET_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(resolve_checkpoint("tiny:yunet")) / "yunet.onnx", target)
    tool = facedet.FaceDet.build({"backend": "auto", "score_threshold": 0.5}, ctx)
    assert tool.settings["backend"] == "yunet" and tool.settings["model"] == ""
    out = tool(image=noise((96, 64)))
    assert isinstance(out, Objects) and out.image_size == (96, 64)
