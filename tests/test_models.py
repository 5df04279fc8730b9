"""Model manager, checkpoint resolution, load errors and configuration presets.

The manager's own contracts (load once, share, list, unload, thread safety) are checked with
a cheap real torch module as the loaded model; loading real architectures through the tools'
loaders is covered by test_loc_select.py and test_classify_vqa.py.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from visprog.config import load_config, preset_names  # noqa: E402
from visprog.errors import ConfigError, VisProgError  # noqa: E402
from visprog.models import manager as models  # noqa: E402
from visprog.models import (ModelLoadError, ModelManager, load_error,  # noqa: E402
                                  register_tiny, resolve_checkpoint)


def linear_loader(calls: list):
    """A loader that records its calls and returns a small real module (in train mode)."""

    def load(path, device, dtype):
        calls.append((path, device, dtype))
        time.sleep(0.01)  # widen the race window for the threading test
        return torch.nn.Linear(4, 3).train(), "processor"

    return load


# -- resolve_checkpoint / register_tiny -----------------------------------------------------

def test_tiny_checkpoint_is_built_once_atomically(tmp_cache, monkeypatch):
    monkeypatch.delenv("VISPROG_TINY_DIR")  # the default place: <cache>/tiny
    built = []

    def builder(folder: Path):
        built.append(folder)
        (folder / "weights.txt").write_text("w")

    register_tiny("unit_test_model", builder)
    path = Path(resolve_checkpoint("tiny:unit_test_model"))
    assert path == tmp_cache / "tiny" / "unit_test_model"
    assert (path / "weights.txt").read_text() == "w"
    assert built[0] != path  # built elsewhere, then renamed into place
    assert resolve_checkpoint("tiny:unit_test_model") == str(path)
    assert len(built) == 1
    # no temporary or moved-away folders are left beside it (only its cross-process lock)
    assert sorted(p.name for p in path.parent.iterdir()
                  if not p.name.endswith(".lock")) == ["unit_test_model"]


def test_tiny_builder_version_change_rebuilds(tmp_cache, monkeypatch):
    monkeypatch.delenv("VISPROG_TINY_DIR")
    register_tiny("unit_versioned", lambda f: (f / "v").write_text("1"), version="1")
    p = Path(resolve_checkpoint("tiny:unit_versioned"))
    register_tiny("unit_versioned", lambda f: (f / "v").write_text("2"), version="2")
    assert Path(resolve_checkpoint("tiny:unit_versioned")) == p
    assert (p / "v").read_text() == "2"


def test_tiny_dir_env_overrides_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISPROG_TINY_DIR", str(tmp_path / "shared"))
    register_tiny("unit_shared", lambda f: (f / "x").write_text("x"))
    assert resolve_checkpoint("tiny:unit_shared") == str(tmp_path / "shared" / "unit_shared")


def test_failed_tiny_build_leaves_nothing(tmp_cache):
    def broken(folder: Path):
        (folder / "half").write_text("partial")
        raise RuntimeError("boom")

    register_tiny("unit_broken", broken)
    with pytest.raises(ModelLoadError, match="tiny:unit_broken.*boom"):
        resolve_checkpoint("tiny:unit_broken")
    tiny = tmp_cache / "tiny"
    assert not tiny.exists() or [p for p in tiny.iterdir() if not p.name.endswith(".lock")] == []


def test_unknown_tiny_name_lists_known():
    with pytest.raises(ModelLoadError) as e:
        resolve_checkpoint("tiny:no_such_thing")
    assert "tiny:no_such_thing" in str(e.value)
    assert "tiny:clip" in str(e.value)  # found by importing the model tool modules


@pytest.mark.parametrize("ck", ["IDEA-Research/grounding-dino-tiny", "/models/clip", "./here", "gpt2"])
def test_non_tiny_checkpoints_pass_through(ck):
    assert resolve_checkpoint(ck) == ck


@pytest.mark.parametrize("ck, hint", [
    ("org/model", "huggingface-cli download org/model"),
    ("/no/such/folder", "local path"),
    ("tiny:x", "tiny models"),
])
def test_load_error_names_checkpoint_and_fix(ck, hint):
    err = load_error(ck, OSError("nope"))
    assert isinstance(err, VisProgError) and err.checkpoint == ck
    assert repr(ck) in str(err) and hint in str(err) and "nope" in str(err)


# -- ModelManager ---------------------------------------------------------------------------

def test_manager_loads_once_and_lists():
    calls: list = []
    mm = ModelManager(device="cpu")
    a = mm.get("lin", "/", linear_loader(calls))  # an existing local path
    b = mm.get("lin", "/", linear_loader(calls))
    assert a is b and len(calls) == 1
    # float32 named, never None: transformers 5 would keep a checkpoint's own type
    assert calls[0] == ("/", "cpu", torch.float32)
    assert not a[0].training  # put in eval mode
    (info,) = mm.loaded()
    assert info["kind"] == "lin" and info["checkpoint"] == "/" and info["device"] == "cpu"
    assert info["dtype"] == "float32" and info["bytes"] == (4 * 3 + 3) * 4
    assert info["load_seconds"] >= 0
    assert [e["event"] for e in mm.events] == ["load"]


def test_manager_different_kinds_are_different_models():
    calls: list = []
    mm = ModelManager(device="cpu")
    mm.get("a", "/", linear_loader(calls))
    mm.get("b", "/", linear_loader(calls))
    assert len(calls) == 2 and len(mm.loaded()) == 2


def test_manager_is_thread_safe():
    calls: list = []
    mm = ModelManager(device="cpu")
    got = []
    threads = [threading.Thread(target=lambda: got.append(mm.get("lin", "/", linear_loader(calls))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(g is got[0] for g in got)


def test_unload_by_kind_and_all():
    calls: list = []
    mm = ModelManager(device="cpu")
    mm.get("a", "/", linear_loader(calls))
    mm.get("b", "/", linear_loader(calls))
    assert mm.unload(kind="a") == 1
    assert [m["kind"] for m in mm.loaded()] == ["b"]
    assert mm.unload() == 1 and mm.loaded() == []
    assert [e["event"] for e in mm.events] == ["load", "load", "unload", "unload"]
    mm.get("a", "/", linear_loader(calls))  # loads again after unloading
    assert len(calls) == 3


def test_loader_failure_becomes_model_load_error():
    def bad(path, device, dtype):
        raise OSError("corrupt weights")

    mm = ModelManager(device="cpu")
    with pytest.raises(ModelLoadError, match="corrupt weights"):
        mm.get("x", "/", bad)
    assert mm.loaded() == []


def test_missing_local_path_is_model_load_error(tmp_path):
    missing = str(tmp_path / "no-model-here")
    mm = ModelManager(device="cpu")
    with pytest.raises(ModelLoadError) as e:
        mm.get("x", missing, linear_loader([]))
    assert missing in str(e.value) and e.value.checkpoint == missing


def test_hub_id_offline_is_model_load_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    from visprog.tools.classify import load_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    ck = "visprog-tests/no-such-checkpoint"
    with pytest.raises(ModelLoadError) as e:
        ModelManager(device="cpu").get("clip", ck, load_clip)
    assert ck in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    assert f"huggingface-cli download {ck}" in str(e.value)


@pytest.mark.parametrize("device, half, expect_half", [
    ("cpu", None, False), ("cpu", True, False), ("cuda", None, True), ("cuda", True, True),
    ("cuda:1", None, True), ("cuda", False, False), ("mps", True, False),
])
def test_dtype_choice(device, half, expect_half):
    mm = ModelManager(device=device, half=half)
    assert mm.device == device
    assert (mm.dtype() == torch.float16) is expect_half
    assert mm.dtype(half=False) is None


def test_auto_device_and_default_manager():
    assert ModelManager().device in ("cuda", "mps", "cpu")
    assert ModelManager(device="auto").device == ModelManager().device
    assert models.default_manager() is models.default_manager()
    assert models.manager_of(None) is models.default_manager()


# -- configuration --------------------------------------------------------------------------

MODULES = ["Loc", "Select", "Classify", "Vqa", "FaceDet", "Seg", "Replace", "List"]


@pytest.mark.parametrize("preset", ["default", "tiny"])
def test_presets_cover_every_model_module(preset):
    cfg = load_config(preset)
    assert set(MODULES) | {"models"} <= set(cfg)
    assert {"device", "half"} <= set(cfg["models"])


def test_tiny_preset_uses_only_tiny_checkpoints():
    def checkpoints(section):
        for k, v in section.items():
            if isinstance(v, dict):
                yield from checkpoints(v)
            elif "checkpoint" in k or isinstance(v, str) and ("/" in v or v.startswith("tiny:")):
                yield v

    cfg = load_config("tiny")
    found = [c for name in MODULES for c in checkpoints(cfg[name])]
    assert found and all(c.startswith("tiny:") for c in found)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as e:
        load_config("huge")
    assert "'huge'" in str(e.value)
    for name in preset_names():
        assert name in str(e.value)


def test_user_file_overrides_one_key(tmp_path):
    f = tmp_path / "my.toml"
    f.write_text('[Loc]\nbox_threshold = 0.9\n[Vqa.checkpoints]\nblip = "/models/blip"\n'
                 '[MyPlugin]\nx = 1\n')
    base = load_config("default")
    cfg = load_config("default", f)
    assert cfg["Loc"]["box_threshold"] == 0.9
    assert {k: v for k, v in cfg["Loc"].items() if k != "box_threshold"} == \
        {k: v for k, v in base["Loc"].items() if k != "box_threshold"}
    assert cfg["Vqa"]["checkpoints"] == {**base["Vqa"]["checkpoints"], "blip": "/models/blip"}
    assert cfg["Select"] == base["Select"] and cfg["MyPlugin"] == {"x": 1}


def test_overrides_tables_and_dotted_keys_win_over_file(tmp_path):
    f = tmp_path / "my.toml"
    f.write_text('[Loc]\nbox_threshold = 0.9\nnms_iou = 0.1\n')
    cfg = load_config("tiny", f, overrides={"Loc.box_threshold": 0.2, "Vqa": {"backend": "vilt"},
                                            "Select.checkpoints.sam": "/sam"})
    assert cfg["Loc"]["box_threshold"] == 0.2 and cfg["Loc"]["nms_iou"] == 0.1
    assert cfg["Vqa"]["backend"] == "vilt" and cfg["Vqa"]["checkpoints"]["vilt"] == "tiny:vilt"
    assert cfg["Select"]["checkpoints"]["sam"] == "/sam"
    assert cfg["Select"]["checkpoints"]["clip"] == "tiny:clip"


def test_load_config_returns_fresh_copies():
    a = load_config("default")
    a["Loc"]["checkpoints"]["owlv2"] = "changed"
    assert load_config("default")["Loc"]["checkpoints"]["owlv2"] != "changed"


@pytest.mark.parametrize("content, match", [
    ("[Loc\nx=1", "not valid TOML"),
    ("Loc = 3\n", r"\[Loc\] must be a table"),
])
def test_bad_user_files(tmp_path, content, match):
    f = tmp_path / "bad.toml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_config("default", f)


def test_missing_user_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("default", tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="dotted key"):
        load_config("default", overrides={"Loc": 0.3})


# -- the model tools' declarations ----------------------------------------------------------

@pytest.mark.parametrize("name", ["Loc", "Select", "Classify", "Vqa"])
def test_model_tools_declare_settings_version_and_batch(name):
    import json

    from visprog.config import find_modules
    from visprog.models import ToolContext

    cls = find_modules(plugins=False).classes[name]
    mm = ModelManager(device="cpu")
    tiny = cls.build(load_config("tiny")[name], ToolContext(models=mm))
    default = cls.build(load_config("default")[name], ToolContext(models=mm))
    assert tiny.name == default.name == name and tiny.version and callable(tiny.batch_fn)
    json.dumps(dict(tiny.settings))  # part of the cache key: must serialise
    assert tiny.settings != default.settings  # another checkpoint, another cache key
    assert mm.loaded() == []  # building a tool loads nothing


# -- tiny tokenizers (one BPE builder) ----------------------------------------------------------

def _vocab_digest(tok) -> str:
    import hashlib
    import json

    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def test_tiny_bpe_spells_each_form_whole_and_ranks_merges_in_order():
    from visprog.models import tiny_bpe

    vocab, merges = tiny_bpe([["Ġ", "c", "o"], ["c", "o"], ["c", "o", "w"]],
                             alphabet=["Ġ", "c", "o", "w"], specials=["<s>"])
    assert list(vocab) == ["Ġ", "c", "o", "w", "Ġc", "Ġco", "co", "cow", "<s>"]
    assert list(vocab.values()) == list(range(len(vocab)))
    # ('Ġ','c') ranks before ('c','o'): ' co' stays one token; a merge is listed once
    assert merges == [("Ġ", "c"), ("Ġc", "o"), ("c", "o"), ("co", "w")]


def test_the_tiny_bpe_tokenizers_keep_their_words_whole_and_their_vocabularies():
    """CLIP's, SigLIP2's and the byte-level (Qwen-VL) tokenizers are built by one builder;
    their vocabularies are pinned, so the tiny checkpoints built with them stay the same."""
    pytest.importorskip("transformers")
    from visprog.models import tiny_clip_tokenizer, tiny_siglip2_tokenizer
    from visprog.tools import _vlm, loc

    clip = tiny_clip_tokenizer(loc.TINY_WORDS)
    assert clip.tokenize("a photo of a red dog") == ["a</w>", "photo</w>", "of</w>", "a</w>",
                                                     "red</w>", "dog</w>"]
    assert clip.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # unknown: spelt out
    siglip = tiny_siglip2_tokenizer(loc.TINY_WORDS + ["this", "is"])
    assert siglip.tokenize("this is a photo of cat.") == ["this", "▁is", "▁a", "▁photo",
                                                          "▁of", "▁cat", "."]
    qwen = _vlm.qwen_tokenizer()
    assert qwen.tokenize("what color is the car?") == ["what", "Ġcolor", "Ġis", "Ġthe", "Ġcar",
                                                       "?"]
    assert qwen.tokenize("<|image_pad|>Zebra") == ["<|image_pad|>", "Z", "e", "b", "r", "a"]
    assert {name: _vocab_digest(t) for name, t in [("clip", clip), ("siglip2", siglip),
                                                   ("qwen", qwen)]} == {
        "clip": "33237e2d4f57549f", "siglip2": "75b80bb4c2b776cc", "qwen": "0f080675d868dcbf"}
