"""One assembly (visprog/config.py `assemble`): VisProg, `visprog config show`, a Ray Serve
replica and a Ray worker of a distributed evaluation all build through it; the plug-ins are
read once per assembly; `config show` prints what runs, List's LLM included; what a module
loads is said by the module (`ModelTool.describe_model`), not by the API."""
from __future__ import annotations

import functools
import inspect
import pickle

import pytest

import visprog.config as config_mod
from visprog.api import VisProg, describe_config
from visprog.cli import main
from visprog.config import Recipe, assemble, assemble_replica, find_modules
from visprog.hosting.client import client_of

from hosting_helpers import hosted

pytestmark = pytest.mark.usefixtures("no_llm_env")


@pytest.fixture
def assemblies(monkeypatch):
    """The recipes every assembly of the test was made from, in order."""
    made = []
    real = config_mod._assemble

    def counting(recipe, *args, **kwargs):
        made.append(recipe)
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(config_mod, "_assemble", counting)
    return made


def test_every_entry_builds_through_the_one_assembly(assemblies):
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    assert len(assemblies) == 1 and vp.assembly.recipe is assemblies[0]
    describe_config("tiny")
    assert len(assemblies) == 2 and assemblies[1].preset == "tiny"
    VisProg.from_recipe(vp.assembly.recipe)  # a Ray worker
    assert len(assemblies) == 3 and assemblies[2] is vp.assembly.recipe
    assemble_replica(vp.config, "Vqa")  # a Ray Serve replica
    assert len(assemblies) == 4 and assemblies[3].config == vp.config


def test_the_plugins_are_read_once_per_assembly(monkeypatch):
    import visprog.registry.protocol as protocol

    reads = []
    real = protocol.entry_points

    def counting(*args, **kwargs):
        reads.append(kwargs.get("group"))
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "entry_points", counting)
    VisProg(preset="tiny", cache=False)
    assert reads == ["visprog.tools"]
    VisProg(preset="tiny", cache=False, plugins=False)
    assert reads == ["visprog.tools"]  # plugins=False: none read


def test_config_show_prints_what_runs_lists_llm_included(capsys):
    """With nothing configured, Vqa's local VLM plans and answers List: the description
    says so, for List and for the planner, and every row's settings are those of the tool
    VisProg builds from the same arguments."""
    vp = VisProg(preset="tiny", cache=False)
    info = describe_config("tiny")
    rows = {r["module"]: r for r in info["modules"]}
    assert set(rows) == set(find_modules().classes)
    for name, row in rows.items():
        assert row["settings"] == dict(vp.registry.get(name).settings), name
    vlm = config_mod.vqa_vlm_checkpoint(vp.config)
    assert rows["List"]["settings"]["llm"] == vp.llm.describe()
    assert rows["List"]["checkpoint"] == vlm
    assert info["llm"] == vp.llm.describe() and info["llm_error"] is None
    assert main(["config", "show", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"planner LLM: local {vlm}" in out
    assert any(ln.split()[:1] == ["List"] and vlm in ln for ln in out.splitlines())


def test_config_show_says_why_there_is_no_llm(capsys):
    cfg = {"llm": {"backend": "openai", "model": "m"}}  # no API key
    info = describe_config("tiny", cfg)
    assert info["llm"] is None and "OPENAI_API_KEY" in info["llm_error"]
    assert {r["module"]: r for r in info["modules"]}["List"]["checkpoint"] == "-"


@pytest.mark.parametrize("backend, loads", [
    ("cascade", "scikit-image LBP frontal-face cascade"),
    ("yunet", "tiny:yunet"),
])
def test_what_a_module_loads_is_said_by_the_module(backend, loads):
    info = describe_config("tiny", {"FaceDet": {"backend": backend}})
    assert {r["module"]: r for r in info["modules"]}["FaceDet"]["checkpoint"] == loads
    import visprog.api

    assert "yunet" not in inspect.getsource(visprog.api)  # the API knows no module's keys


def test_a_recipe_assembles_the_same_engine_elsewhere():
    vp = VisProg(preset="tiny", config={"Loc": {"box_threshold": 0.2}}, cache=False,
                 device="cpu", max_pixels=10_000, min_side=4, plugins=False)
    recipe = pickle.loads(pickle.dumps(vp.assembly.recipe))  # what a Ray task receives
    assert isinstance(recipe, Recipe) and recipe.config == vp.config
    again = pickle.loads(pickle.dumps(functools.partial(VisProg.from_recipe, recipe)))()
    assert again.preset == "tiny" and again.config == vp.config
    assert again.image_limits == vp.image_limits == {"max_pixels": 10_000, "min_side": 4,
                                                     "max_aspect": vp.image_limits["max_aspect"]}
    assert again.models.device == "cpu" and again.cache is None
    assert [(t.name, dict(t.settings)) for t in again.registry] == \
        [(t.name, dict(t.settings)) for t in vp.registry]


def test_a_replica_assembles_its_module_in_process():
    cfg = VisProg(preset="tiny", cache=False, plugins=False,
                  config=hosted(modules=("Vqa",))).config
    client_side = assemble("tiny", cfg, cache=False, plugins=False)
    assert client_of(client_side.registry.get("Vqa")) is not None  # the client calls out
    replica = assemble_replica(cfg, "vqa")
    assert replica.registry.names() == ["Vqa"] and replica.hosts == {}
    served = replica.registry.get("Vqa")
    assert client_of(served) is None  # the replica runs it
    assert served.settings == client_side.registry.get("Vqa").settings
    assert replica.llm is None and replica.cache is None
    assert replica.models is not client_side.models


def test_tools_package_only_finds_files():
    import visprog.tools as tools

    public = {n for n, v in vars(tools).items() if not n.startswith("_") and callable(v)
              and getattr(v, "__module__", None) == tools.__name__}
    assert public == {"tool_files"}
