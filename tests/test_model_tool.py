"""The model-tool base (visprog/models/model_tool.py) and how tools/ is assembled from it.

The base is tested with a small real torch module loaded through the model manager (a
Linear layer saved and loaded from a folder); the built-in modules' own behaviour is covered
by their test files. The declarations of every built-in tool are compared with those the
code gave before the base existed (tests/fixtures/tool_declarations.json), so no step-cache
key changed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from visprog.config import load_config  # noqa: E402
from visprog.errors import ConfigError, ToolDeclarationError  # noqa: E402
from visprog.config import find_modules  # noqa: E402
from visprog.models import (Backend, Done, ModelManager, ModelTool, SettingsError,  # noqa: E402
                            ToolContext, is_model_tool, merge_settings, resolve_checkpoint)

FIXTURE = Path(__file__).parent / "fixtures" / "tool_declarations.json"


# -- a small module on the base ---------------------------------------------------------------

def build_tiny_doubler(folder: Path) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.zero_()
    torch.save(layer.state_dict(), folder / "weights.pt")


def load_doubler(path: str, device: str, dtype) -> torch.nn.Module:
    layer = torch.nn.Linear(1, 1)
    layer.load_state_dict(torch.load(Path(path) / "weights.pt"))
    return layer.to(device)


class Plain(Backend):
    """A backend that keeps every setting and leaves `forward` to its module."""


class Double(ModelTool):
    """Twice a number, by a Linear layer; negative numbers skip the model; numbers group by
    sign of their offset so batch_key is seen."""

    name = "Double"
    params = {"x": "Number", "offset": "Number"}
    defaults = {"offset": 0}
    returns = "Number"
    doc = "twice x, plus offset"
    version = "3"
    backends = {"linear": Plain, "other": Plain}
    presets = {"default": {"backend": "linear", "checkpoint": "tiny:unit_doubler",
                           "nested": {"a": 1, "b": 2}},
               "tiny": {"nested": {"b": 3}}}
    tiny_checkpoints = {"unit_doubler": build_tiny_doubler}

    def __init__(self, settings=None, ctx=None):
        super().__init__(settings, ctx)
        self.groups: list[list[float]] = []
        self.inference: list[bool] = []

    def preprocess(self, call):
        if not isinstance(call["x"], (int, float)):
            raise TypeError(f"Double: x must be a number, got {type(call['x']).__name__}")
        if call["x"] < 0:
            return Done(-1)
        return float(call["x"]), call["offset"]

    def batch_key(self, item):
        return item[1] > 0

    def forward(self, items):
        self.groups.append([x for x, _ in items])
        self.inference.append(torch.is_inference_mode_enabled())
        layer = self.model("doubler", self.settings["checkpoint"], load_doubler)
        xs = torch.tensor([[x] for x, _ in items])
        return layer(xs.to(layer.weight.device, layer.weight.dtype))[:, 0].tolist()

    def postprocess(self, item, y):
        return round(y) + item[1]


@pytest.fixture
def ctx():
    return ToolContext(models=ModelManager(device="cpu"))


def test_the_declaration_becomes_a_plain_tool(ctx):
    tool = Double.build({}, ctx)
    assert tool.name == "Double" and tool.version == "3" and tool.doc == "twice x, plus offset"
    assert tool.signature() == "Double(x: Number, offset: Number = 0) -> Number"
    assert tool.settings == {"backend": "linear", "checkpoint": "tiny:unit_doubler",
                             "nested": {"a": 1, "b": 2}}
    assert tool.cacheable and callable(tool.batch_fn)
    assert ctx.models.loaded() == []  # building loads nothing
    assert Path(resolve_checkpoint("tiny:unit_doubler"), "weights.pt").is_file()


def test_presets_merge_key_by_key():
    assert Double.preset("tiny") == {"backend": "linear", "checkpoint": "tiny:unit_doubler",
                                     "nested": {"a": 1, "b": 3}}
    assert Double.preset("classic") is None
    assert Double({"nested": {"a": 5}}).settings["nested"] == {"a": 5, "b": 2}
    assert Double.presets["default"]["nested"] == {"a": 1, "b": 2}  # never changed in place
    assert merge_settings({"t": {"x": 1}}, {"t": {"y": 2}, "z": 3}) == {"t": {"x": 1, "y": 2},
                                                                      "z": 3}


def test_batches_group_by_key_skip_done_calls_and_keep_order(ctx):
    d = Double({}, ctx)
    tool = d.as_tool()
    calls = [{"x": 1}, {"x": -5}, {"x": 2, "offset": 1}, {"x": 3}, {"x": 4, "offset": 10}]
    assert tool.batch_fn(calls) == [2, -1, 5, 6, 18]
    assert d.groups == [[1.0, 3.0], [2.0, 4.0]]  # one forward per key, the Done call in none
    assert d.inference == [True, True]  # forward runs under torch.inference_mode
    assert [m["kind"] for m in ctx.models.loaded()] == ["doubler"]
    assert tool(x=7) == 14 and d.groups[-1] == [7.0]  # the single call is a batch of one
    assert tool.batch_fn([]) == []


def test_a_call_that_needs_no_model_loads_none(ctx):
    tool = Double.build({}, ctx)
    assert tool(x=-3) == -1 and ctx.models.loaded() == []


@pytest.mark.parametrize("call, error, match", [
    ({"x": "two"}, TypeError, "Double: x must be Number"),
    ({"x": 1, "scale": 2}, TypeError, r"Double: unexpected arguments \['scale'\]"),
    ({"offset": 1}, TypeError, r"Double: missing arguments \['x'\]"),
])
def test_bad_calls_fail_before_any_model_runs(ctx, call, error, match):
    d = Double({}, ctx)
    with pytest.raises(error, match=match):
        d.run_batch([{"x": 1}, call])
    assert d.groups == [] and ctx.models.loaded() == []


def test_settings_errors_are_config_errors_and_value_errors():
    with pytest.raises(SettingsError, match="Double: unknown backend 'gpu'; choose one of "
                                            "linear, other") as e:
        Double({"backend": "gpu"})
    assert isinstance(e.value, ConfigError) and isinstance(e.value, ValueError)


def test_forward_must_give_one_output_per_item(ctx):
    class Short(Double):
        name = "Short"

        def forward(self, items):
            return super().forward(items)[:-1]

    with pytest.raises(RuntimeError, match="Short: forward gave 1 output for 2 items"):
        Short({}, ctx).run_batch([{"x": 1}, {"x": 2}])


# -- backends: small classes picked by name ----------------------------------------------------

class Times(Backend):
    """Multiplies by its own `factor`; the module's other backend's keys stay out of its
    settings (so out of the cache key)."""

    uses_torch = False

    def configure(self, s):
        if s["factor"] <= 0:
            raise SettingsError("Scale: factor must be positive")
        return {"backend": s["backend"], "factor": s["factor"]}

    def forward(self, tool, items):
        return [c["x"] * self.settings["factor"] for c in items]


class Plus(Backend):
    def configure(self, s):
        return {"backend": s["backend"], "offset": s["offset"]}

    def forward(self, tool, items):
        self.inference = torch.is_inference_mode_enabled()
        return [c["x"] + self.settings["offset"] for c in items]


class Scale(ModelTool):
    name, params, returns = "Scale", {"x": "Number"}, "Number"
    backends = {"times": Times, "plus": Plus}
    presets = {"default": {"backend": "times", "factor": 3, "offset": 1}}


def test_a_backend_is_picked_by_name_and_gives_the_settings_and_the_forward():
    times, plus = Scale(), Scale({"backend": "plus"})
    assert isinstance(times.backend, Times) and isinstance(plus.backend, Plus)
    assert times.settings == {"backend": "times", "factor": 3}  # the cache key: its own keys
    assert plus.settings == {"backend": "plus", "offset": 1}
    assert times.as_tool().settings == times.settings
    assert times.run(x=2) == 6 and plus.run(x=2) == 3
    assert plus.backend.inference  # a torch backend runs under inference_mode...
    assert not times.backend.uses_torch  # ...and this one does not need it
    assert times.all_settings["offset"] == 1  # every setting, for what changes no result
    with pytest.raises(SettingsError, match="unknown backend 'minus'; choose one of times, "
                                            "plus"):
        Scale({"backend": "minus"})
    with pytest.raises(SettingsError, match="factor must be positive"):
        Scale({"factor": 0})


def test_backends_must_be_a_table_of_classes():
    with pytest.raises(ToolDeclarationError, match="`backends` maps each backend's name"):
        type("Old", (ModelTool,), {"name": "Old", "params": {"x": "Number"},
                                    "returns": "Number", "backends": ("a", "b")})


def _every_backend():
    from visprog.config import find_modules

    return [(name, b) for name, cls in find_modules(plugins=False).classes.items()
            for b in cls.backends]


@pytest.mark.parametrize("name, backend", _every_backend())
def test_building_a_backend_changes_nothing_but_the_new_tool(name, backend, monkeypatch):
    """Every built-in backend builds from the tiny preset; building it leaves the module's
    class, its declared presets and the other tools as they were (configure has no side
    effects), and building it again gives the same settings."""
    import copy

    from visprog.config import find_modules

    monkeypatch.setenv("VISPROG_VQA_MODEL", "served-vlm")
    monkeypatch.setenv("VISPROG_VQA_API_KEY", "k")
    cls = find_modules(plugins=False).classes[name]
    before = {k: copy.deepcopy(v) for k, v in vars(cls).items() if not k.startswith("__")
              and not callable(v) and not isinstance(v, (classmethod, staticmethod, property))}
    settings = {**load_config("tiny")[name], "backend": backend}
    other = cls(load_config("tiny")[name])
    other_settings = copy.deepcopy(other.settings)
    tool = cls(settings)
    assert isinstance(tool.backend, Backend) and tool.settings is tool.backend.settings
    assert cls(settings).settings == tool.settings
    json.dumps(dict(tool.settings))  # part of the cache key: must serialise
    after = {k: v for k, v in vars(cls).items() if k in before}
    assert after == before
    assert other.settings == other_settings and other.backend is not tool.backend
    assert "uses_torch" not in vars(tool) and "_endpoint" not in vars(tool)


@pytest.mark.parametrize("body, match", [
    ({"params": {"x": "Number"}, "returns": "Number"}, "declare `name`"),
    ({"name": "N", "params": {"x": "Number"}, "returns": "Number", "presets": {"tiny": {}}},
     "presets need a 'default'"),
    ({"name": "N", "params": {"x": "Number"}, "returns": "Number", "defaults": {"y": 1}},
     r"defaults for undeclared arguments \['y'\]"),
])
def test_bad_declarations_are_refused_when_the_class_is_made(body, match):
    with pytest.raises(ToolDeclarationError, match=match):
        type("Bad", (ModelTool,), dict(body))


def test_a_bad_type_string_is_refused_when_the_tool_is_made():
    class Typo(ModelTool):
        name, params, returns = "Typo", {"x": "Numbr"}, "Number"

    with pytest.raises(ToolDeclarationError):
        Typo.build({})


# -- tools/ assembled from the declarations ---------------------------------------------------

class DescribedLLM:
    """A client that only says which model it is (the List tool's settings record it)."""

    def describe(self):
        return {"backend": "x", "model": "m"}


# The backends of the tiny preset before today's models became the defaults
TINY_CLASSIC = {"Loc": {"backend": "grounding_dino"}, "Select": {"backend": "sam"},
                "Replace": {"backend": "sd"}, "FaceDet": {"backend": "cascade"},
                "Vqa": {"backend": "blip"}, "Classify": {"backend": "clip"}}


@pytest.mark.parametrize("case", ["default/nollm", "default/llm", "tiny/nollm", "tiny/llm"])
def test_every_tool_declares_what_it_did_before_the_base(case):
    """The `classic` preset is the old `default`, declaration for declaration (same step-cache
    keys); `tiny` with the old backends is the old `tiny`."""
    preset, llm = case.split("/")
    want = json.loads(FIXTURE.read_text())[case]
    mm = ModelManager(device="cpu")
    cfg = load_config("classic") if preset == "default" else load_config("tiny", overrides=TINY_CLASSIC)
    tools = find_modules(plugins=False).tools(cfg, ToolContext(mm, DescribedLLM() if llm == "llm"
                                                                else None))
    got = {t.name: {"version": t.version, "settings": json.loads(json.dumps(dict(t.settings))),
                    "cacheable": t.cacheable, "sig": t.signature(), "doc": t.doc,
                    "draw_on": t.draw_on, "batch": t.batch_fn is not None} for t in tools}
    # Changed on purpose since the fixture: modules added later (Look and Region: agent
    # mode; the video modules), and the depth crops, which became depth-aware
    # (tools/depth.py) with other settings, so other cache keys.
    added, changed = {"Ocr", "LocText", "Depth", "Look", "Region"}, {
        "CropFrontOf", "CropInFront", "CropInFrontOf", "CropAhead", "CropBehind"}
    added |= {"Track", "Frames", "FrameAt", "Clip", "FirstSeen", "LastSeen", "SeenFor",
              "ObjectsAt", "VideoQa"}  # video (issue 22)
    widened = {"Count"}  # also counts Tracks: a wider signature, the same cache keys
    assert set(got) == set(want) | added
    assert {n: d for n, d in got.items() if n not in added | changed | widened} == \
        {n: d for n, d in want.items() if n not in changed | widened}
    for name in changed:  # same signature, new settings
        assert got[name]["sig"] == want[name]["sig"] and got[name]["settings"] != want[name]["settings"]
    assert got["Count"]["sig"] == "Count(box: Objects|Tracks) -> Number"
    assert {k: v for k, v in got["Count"].items() if k != "sig"} == \
        {k: v for k, v in want["Count"].items() if k != "sig"}
    assert mm.loaded() == []


def test_every_tool_file_entry_is_a_plain_tool_or_a_model_module():
    """The modules are what the files of tools/ declare: no list names them. Each `TOOLS`
    entry is a plain tool or a model module, never both, and each name is found once."""
    from visprog.registry import Tool
    from visprog.tools import tool_files

    modules = find_modules(plugins=False)
    entries = [t for mod in tool_files().values() for t in mod.TOOLS]
    assert entries and all(isinstance(t, Tool) or is_model_tool(t) for t in entries)
    assert set(modules.classes.values()) == {t for t in entries if is_model_tool(t)}
    assert modules.plain == [t for t in entries if isinstance(t, Tool)]
    names = [t.name for t in entries]
    assert len(names) == len(set(names))


def test_building_a_model_module_by_name():
    modules = find_modules(plugins=False)
    cfg = load_config("tiny")
    mm = ModelManager(device="cpu")
    for name, cls in modules.classes.items():
        built = modules.build(name.lower(), cfg, ToolContext(mm))  # found leniently
        assert built.name == name and built.settings == cls.build(cfg[name], ToolContext(mm)).settings
    plain = modules.plain[0].name
    with pytest.raises(ConfigError, match=f"no model module named '{plain}'"):
        modules.build(plain, cfg)
    assert mm.loaded() == []


DEPTH_CROPS = ("CropFrontOf", "CropInFront", "CropInFrontOf", "CropAhead", "CropBehind")


def test_tools_of_one_file_share_its_first_modules_section():
    modules = find_modules(plugins=False)
    assert modules.shared_sections() == {"LocText": "Ocr", **{c: "Depth" for c in DEPTH_CROPS}}
    assert "LocText" not in modules.preset_settings("tiny")
    assert "Ocr" in modules.preset_settings("tiny")
    cfg = load_config("tiny", overrides={"Depth": {"margin": 0.2}, "CropBehind": {"fill": 10}})
    assert modules.with_shared_sections(cfg) == cfg  # applying it again changes nothing
    for crop in DEPTH_CROPS:
        assert cfg[crop]["checkpoint"] == "tiny:depth_anything" and cfg[crop]["margin"] == 0.2
    assert cfg["CropBehind"]["fill"] == 10 and cfg["CropFrontOf"]["fill"] == 128
    tools = {t.name: t for t in modules.tools(cfg)}
    assert tools["CropAhead"].settings["margin"] == 0.2
    assert tools["CropBehind"].settings["fill"] == 10 and tools["CropFrontOf"].settings["fill"] == 128
    # a hand-made config (not through load_config) is shared the same way
    tools = {t.name: t for t in modules.tools({"Ocr": {"min_score": 0.7}})}
    assert tools["LocText"].settings["min_score"] == tools["Ocr"].settings["min_score"] == 0.7
    assert modules.build("loctext", {"Ocr": {"merge_gap": 2.0}}).settings["merge_gap"] == 2.0


def test_hosting_keys_of_a_shared_section_host_each_of_its_tools():
    from visprog.config import assemble_replica, module_catalog
    from visprog.hosting.client import split_config

    catalog = module_catalog()
    assert {"Ocr", "LocText", "Depth", *DEPTH_CROPS} <= catalog.model_modules
    cfg = load_config("tiny", overrides={"Ocr": {"host": "ray", "ray_address": "head:6379",
                                                  "min_score": 0.6}})
    tools_config, hosts = split_config(cfg, catalog.model_modules, catalog.plain_modules)
    assert set(hosts) == {"Ocr", "LocText"} and hosts["LocText"].ray_address == "head:6379"
    assert "host" not in tools_config["LocText"]
    # a replica builds the tool from its own section as the client does
    mm = ModelManager(device="cpu")
    local = {t.name: t for t in find_modules(plugins=False).tools(tools_config, ToolContext(mm))}
    remote = assemble_replica(cfg, "LocText").registry.get("LocText")
    assert remote.settings == local["LocText"].settings and remote.settings["min_score"] == 0.6


def test_module_settings_live_only_in_the_tools_files():
    text = (Path(__file__).parents[1] / "visprog" / "presets.toml").read_text()
    tables = [ln.strip() for ln in text.splitlines() if ln.startswith("[")]
    assert tables == ["[default.models]", "[tiny.models]"]
    assert load_config("tiny")["Replace"]["checkpoints"]["sdxl"] == "tiny:sdxl_inpaint"
