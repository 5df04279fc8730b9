"""Which dtype each model loads in (visprog/models/dtypes.py, issue 19 item 3).

The decision is a pure function of the module's `dtype` setting, the checkpoint's published
type and the device's capabilities, tested here for every case with the capabilities given
(CI has no GPU). The load path is tested on CPU with tiny checkpoints saved in bfloat16 and
float16: the manager reads the published type from the checkpoint and the model comes out in
the type decided, with a module's setting and with the capabilities of a GPU given, and
`load_plan` (what `visprog config show` prints) says beforehand what will load.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from visprog.models import ModelManager, resolve_checkpoint  # noqa: E402
from visprog.models.dtypes import (CPU, DeviceCaps, DtypeError,  # noqa: E402
                                   check_dtype_setting, choose_dtype, device_caps,
                                   published_dtype, read_published_dtype)
from visprog.config import find_modules  # noqa: E402
from visprog.models import ToolContext  # noqa: E402

build_module = find_modules(plugins=False).build

ASTRONAUT = Path(__file__).resolve().parent.parent / "examples" / "astronaut.jpg"

H100 = DeviceCaps("cuda", bf16=True, fp16=True, name="cuda (H100, compute 9.0)")
T4 = DeviceCaps("cuda", bf16=False, fp16=True, name="cuda (T4, compute 7.5)")
MPS = DeviceCaps("mps", bf16=False, fp16=True, name="mps")

BF, FP16, FP32 = "bfloat16", "float16", "float32"


# -- the decision --------------------------------------------------------------------------------

@pytest.mark.parametrize("caps, published, half, want", [
    # CPU and MPS: "auto" is float32 whatever the checkpoint was published in
    (CPU, BF, True, FP32), (CPU, FP16, True, FP32), (CPU, FP32, True, FP32),
    (CPU, None, True, FP32),
    (MPS, BF, True, FP32), (MPS, FP16, True, FP32),
    # a GPU with bfloat16: the published half type; float32 ones in bf16 (half) or not
    (H100, BF, True, BF), (H100, FP16, True, FP16), (H100, FP32, True, BF), (H100, None, True, BF),
    (H100, BF, False, BF), (H100, FP16, False, FP16), (H100, FP32, False, FP32),
    (H100, None, False, FP32),
    # a GPU without bfloat16: float16 where half precision is allowed
    (T4, BF, True, FP16), (T4, FP16, True, FP16), (T4, FP32, True, FP16),
    (T4, BF, False, FP32), (T4, FP16, False, FP16), (T4, FP32, False, FP32),
])
def test_auto_takes_the_published_type_where_the_device_supports_it(caps, published, half, want):
    assert choose_dtype("auto", published, caps, half=half) == want


@pytest.mark.parametrize("caps", [CPU, MPS, H100, T4])
@pytest.mark.parametrize("published", [BF, FP16, FP32, None])
def test_an_explicit_dtype_wins_where_the_device_has_it(caps, published):
    assert choose_dtype("fp32", published, caps) == FP32
    assert choose_dtype("fp16", published, caps, half=False) == FP16  # MPS, CPU, GPUs have it
    if caps.bf16:
        assert choose_dtype("bf16", published, caps) == BF
    else:
        with pytest.raises(DtypeError, match="no bfloat16.*'fp16'"):
            choose_dtype("bf16", published, caps)


@pytest.mark.parametrize("bad", ["float32", "bf17", "", 16, True, ["auto"]])
def test_bad_settings_are_refused_by_name(bad):
    with pytest.raises(DtypeError, match="auto, bf16, fp16, fp32"):
        check_dtype_setting(bad, "Loc")
    with pytest.raises(DtypeError):
        choose_dtype(bad, None, H100)
    assert check_dtype_setting(None) == "auto" and check_dtype_setting(" BF16 ") == "bf16"


@pytest.mark.parametrize("config, want", [
    ({"dtype": "bfloat16"}, BF), ({"torch_dtype": "float16"}, FP16),  # transformers 5 / 4
    ({"torch_dtype": "torch.float16"}, FP16), ({"dtype": "float32"}, FP32),
    ({"text_config": {"dtype": "bfloat16"}}, BF),  # a VLM that says it only for its text side
    ({"dtype": "int8"}, None), ({"dtype": 3}, None), ({}, None), ({"text_config": None}, None),
])
def test_the_published_type_is_read_from_the_config(config, want):
    assert published_dtype(config) == want


def test_device_caps_detected():
    assert device_caps("cpu").kind == "cpu"
    assert device_caps("mps") == MPS
    if not torch.cuda.is_available():  # a CUDA device that can't be asked has no bf16
        caps = device_caps("cuda:0")
        assert caps.kind == "cuda" and not caps.bf16 and caps.fp16


# -- the load path, on CPU, with checkpoints saved in bfloat16 and float16 ------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny CLIP checkpoint saved again in bfloat16 and in float16 (its processor too)."""
    from transformers import CLIPModel

    src = resolve_checkpoint("tiny:clip")
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16),
                        ("fp32", torch.float32)):
        folder = tmp_path_factory.mktemp(f"clip-{name}")
        shutil.copytree(src, folder, dirs_exist_ok=True)
        CLIPModel.from_pretrained(src, dtype=torch.float32).to(dtype).save_pretrained(folder)
        out[name] = str(folder)
    return out


def classify(checkpoint, mm, **settings):
    return build_module("Classify", {"Classify": {"backend": "clip", "checkpoint": checkpoint,
                                                  **settings}}, ToolContext(mm))


def run(tool):
    from visprog.values import Objects

    image = Image.open(ASTRONAUT).convert("RGB")
    out = tool(image=image, object=Objects([(0, 0, 200, 200)], image.size),
               categories=["a cat", "a dog"])
    assert len(out) == 1 and out[0].label in ("a cat", "a dog")
    return out


def loaded_dtype(mm):
    (entry,) = mm.loaded()
    return entry["dtype"]


@pytest.mark.parametrize("saved_as", ["bf16", "fp16"])
def test_a_half_checkpoint_loads_in_float32_on_cpu(saved, saved_as):
    # transformers 5 keeps a checkpoint's own dtype when from_pretrained gets none: the
    # manager always names one, so CPU runs float32 as "auto" says
    assert read_published_dtype(saved[saved_as]) == {"bf16": BF, "fp16": FP16}[saved_as]
    mm = ModelManager(device="cpu")
    tool = classify(saved[saved_as], mm)
    run(tool)
    assert loaded_dtype(mm) == FP32
    model, _ = mm.get("clip", saved[saved_as], None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("caps, saved_as, half, setting, want", [
    (H100, "bf16", True, "auto", BF), (H100, "fp16", True, "auto", FP16),
    (H100, "fp32", True, "auto", BF), (H100, "fp32", False, "auto", FP32),
    (T4, "bf16", True, "auto", FP16), (T4, "bf16", False, "auto", FP32),
    (H100, "bf16", True, "fp32", FP32), (H100, "fp32", True, "fp16", FP16),
    (CPU, "fp32", True, "bf16", BF),  # asked for explicitly, CPU runs it
])
def test_the_decision_reaches_the_loaded_model(saved, caps, saved_as, half, setting, want):
    # the capabilities of a GPU given, the model loads (on CPU) in the type decided for it;
    # load_plan (what `visprog config show` prints) said so before anything loaded
    mm = ModelManager(device="cpu", half=half, caps=caps)
    tool = classify(saved[saved_as], mm, dtype=setting)
    plan = find_modules(plugins=False).classes["Classify"](
        {"backend": "clip", "checkpoint": saved[saved_as], "dtype": setting},
        ToolContext(mm)).load_plan()
    assert plan == {"device": "cpu", "dtype": want} and mm.loaded() == []
    run(tool)
    assert loaded_dtype(mm) == want
    model, _ = mm.get("clip", saved[saved_as], None)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, want)}


def test_the_dtype_setting_is_not_part_of_the_cache_key(saved):
    mm = ModelManager(device="cpu")
    assert classify(saved["fp32"], mm, dtype="bf16").settings == \
        classify(saved["fp32"], mm).settings
    with pytest.raises(DtypeError, match="Classify: dtype must be"):
        classify(saved["fp32"], mm, dtype="half")


def test_an_explicit_dtype_the_device_lacks_fails_the_load_clearly(saved):
    mm = ModelManager(device="cpu", caps=T4)
    with pytest.raises(DtypeError, match="T4.*no bfloat16"):
        run(classify(saved["fp32"], mm, dtype="bf16"))
    assert mm.loaded() == []


def test_a_shared_model_keeps_its_first_dtype_and_says_so(saved):
    mm = ModelManager(device="cpu")
    run(classify(saved["fp32"], mm))
    with pytest.warns(RuntimeWarning, match="already loaded in float32; dtype 'bf16'"):
        run(classify(saved["fp32"], mm, dtype="bf16"))
    assert loaded_dtype(mm) == FP32


def test_a_hub_checkpoint_reads_its_type_from_the_local_cache_only(tmp_path, monkeypatch):
    # Qwen3-VL is published in bfloat16: with its config in the Hugging Face cache, an
    # H100 loads it in bf16 and a T4 in fp16; not in the cache, it counts as float32
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = "Qwen/Qwen3-VL-2B-Instruct"
    snap = tmp_path / "models--Qwen--Qwen3-VL-2B-Instruct" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    (snap / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "dtype": "bfloat16",
                                                  "text_config": {"dtype": "bfloat16"}}))
    assert read_published_dtype(repo) == BF
    assert ModelManager(device="cpu", caps=H100).dtype_for(repo) == BF
    assert ModelManager(device="cpu", caps=T4).dtype_for(repo) == FP16
    assert ModelManager(device="cpu", caps=H100, half=False).dtype_for(repo) == BF
    assert ModelManager(device="cpu").dtype_for(repo) == FP32
    assert read_published_dtype("org/not-cached") is None
    assert ModelManager(device="cpu", caps=H100, half=False).dtype_for("org/not-cached") == FP32


def test_config_show_prints_each_modules_dtype_and_no_global_half(capsys):
    from visprog.cli import main

    assert main(["config", "show", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "half" not in out.splitlines()[0]
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:]}
    assert rows["Vqa"][-2:] == ["cpu", FP32] and rows["FaceDet"][-1] == "-"


def test_a_module_runs_in_bf16_and_its_outputs_stay_usable():
    # what a GPU in bfloat16 runs, on CPU: the postprocessing reads bf16 tensors (numpy has
    # no bfloat16) and gives the same kind of values
    from visprog.api import VisProg

    vp = VisProg(preset="tiny", cache=False,
                 config={m: {"dtype": "bf16"} for m in ("Loc", "Select", "Classify")})
    out = vp.execute("A=Loc(image=IMAGE, object='TOP')\n"
                     "B=Select(image=IMAGE, object=A, query='face')\n"
                     "C=Classify(image=IMAGE, object=A, categories=['man', 'woman'])",
                     image=Image.open(ASTRONAUT))
    assert {e["dtype"] for e in vp.models.loaded()} == {BF}
    assert out.trace["C"].output[0].label in ("man", "woman")
    assert np.isfinite([r.score for r in out.trace["C"].output]).all()
