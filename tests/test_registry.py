"""Registry: declarations, lenient lookup, replacement, signatures and entry-point plugins."""
from __future__ import annotations

import sys
import textwrap

import pytest

from visprog.errors import ToolDeclarationError, UnknownToolError
from visprog.registry import Param, Registry, Tool, normalize_name, parse_types, tool


def make(name: str = "CropLeftOf", returns: str = "Image") -> Tool:
    @tool(name, params={"image": "Image", "box": "Objects"}, returns=returns)
    def fn(image, box):
        """Crops left of the box.

        More text that is not part of the one-line doc.
        """
        return image

    return fn


# -- declarations -------------------------------------------------------------------------------

def test_decorator_builds_a_tool_from_the_function():
    @tool("Loc", params={"image": "Image", "object": "Text", "threshold": "Number"},
          returns="Objects", version="3", settings={"ckpt": "x"}, cacheable=False, draw_on="image")
    def loc(image, object, threshold=0.25):
        """Finds objects."""

    assert isinstance(loc, Tool) and loc.name == "Loc" and loc.doc == "Finds objects."
    assert [(p.name, p.type_str, p.required) for p in loc.params] == [
        ("image", "Image", True), ("object", "Text", True), ("threshold", "Number", False)]
    assert loc.param("THRESHOLD").default == 0.25 and loc.param("nope") is None
    assert loc.returns == frozenset({"Objects"})
    assert (loc.version, dict(loc.settings), loc.cacheable) == ("3", {"ckpt": "x"}, False)


def test_doc_is_the_first_line_or_given():
    assert make().doc == "Crops left of the box."

    @tool("X", params={}, returns="Number", doc="Given doc.")
    def x():
        """Ignored."""
    assert x.doc == "Given doc."


def test_a_tool_is_called_by_keyword():
    @tool("Add", params={"a": "Number", "b": "Number"}, returns="Number")
    def add(a, b=1):
        return a + b
    assert add(a=2, b=3) == 5


@pytest.mark.parametrize("spec,expected", [
    ("Text", {"Text"}), ("Text|None", {"Text", "None"}), (" Image | Objects ", {"Image", "Objects"}),
    (["Bool", "Number"], {"Bool", "Number"}),
])
def test_parse_types(spec, expected):
    assert parse_types(spec) == frozenset(expected)


@pytest.mark.parametrize("spec", ["Txt", "Text|Strng", "", "image", []])
def test_unknown_types_are_refused(spec):
    with pytest.raises(ToolDeclarationError, match="unknown type"):
        parse_types(spec)


def _fn(image):
    return image


DECLARATION_ERRORS = [
    # (id, factory, message part)
    ("unknown param type", lambda: tool("T", params={"image": "Picture"}, returns="Image")(_fn),
     "unknown type"),
    ("unknown return type", lambda: tool("T", params={"image": "Image"}, returns="Img")(_fn),
     "unknown type"),
    ("fn lacks a declared param", lambda: tool("T", params={"image": "Image", "box": "Objects"},
                                               returns="Image")(_fn), "['box']"),
    ("name with a space", lambda: tool("Bad Name", params={"image": "Image"}, returns="Image")(_fn),
     "not an identifier"),
    ("name with a dash", lambda: tool("Crop-Left", params={"image": "Image"}, returns="Image")(_fn),
     "not an identifier"),
    ("empty name", lambda: tool("", params={"image": "Image"}, returns="Image")(_fn),
     "not an identifier"),
    ("repeated arg (case)", lambda: Tool("T", (Param("a", frozenset({"Text"})),
                                               Param("A", frozenset({"Text"}))),
                                         frozenset({"Text"}), lambda **kw: 1), "repeated"),
    ("bad arg name", lambda: Tool("T", (Param("1a", frozenset({"Text"})),), frozenset({"Text"}),
                                  lambda **kw: 1), "bad or repeated argument"),
    ("fn not callable", lambda: Tool("T", (), frozenset({"Text"}), "not a function"),
     "not callable"),
    ("refs without variables=", lambda: tool("T", params={"expr": "Text"}, returns="Text",
                                             refs={"expr": lambda s: []})(lambda expr: expr),
     "variables"),
]


@pytest.mark.parametrize("factory,message", [c[1:] for c in DECLARATION_ERRORS],
                         ids=[c[0] for c in DECLARATION_ERRORS])
def test_declaration_errors(factory, message):
    with pytest.raises(ToolDeclarationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        factory()


def test_kwargs_functions_and_uninspectable_callables_are_accepted():
    t = tool("T", params={"image": "Image"}, returns="Image")(lambda **kw: kw["image"])
    assert t(image=1) == 1
    Tool("Len", (Param("obj", frozenset({"Any"})),), frozenset({"Number"}), len)  # a builtin


@pytest.mark.parametrize("t,expected", [
    (make(), "CropLeftOf(image: Image, box: Objects) -> Image"),
    (tool("Loc", params={"image": "Image", "object": "Text", "k": "Number|None"},
          returns="Objects")(lambda image, object, k=None: None),
     "Loc(image: Image, object: Text, k: None|Number = None) -> Objects"),
    (tool("Eval", params={"expr": "Text"}, returns="Bool|Number|Text")(lambda expr: 1),
     "Eval(expr: Text) -> Bool|Number|Text"),
    (tool("Now", params={}, returns="Text")(lambda: "x"), "Now() -> Text"),
])
def test_signature(t, expected):
    assert t.signature() == expected


# -- the registry -------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["CropLeftOf", "CROP_LEFTOF", "cropleftof",
                                      "Crop_Left_Of", "CROPLEFTOF", "_crop_left_of_"])
def test_lenient_lookup(spelling):
    reg = Registry([make()])
    assert reg.get(spelling).name == "CropLeftOf"
    assert reg.find(spelling) is reg.get(spelling)
    assert spelling in reg


def test_normalize_name():
    assert normalize_name("CROP_RIGHTOF") == normalize_name("CropRightOf") == "croprightof"


def test_unknown_names():
    reg = Registry([make(), make("Count", returns="Number")])
    assert reg.find("CropLeft") is None and "CropLeft" not in reg and 3 not in reg
    with pytest.raises(UnknownToolError) as info:
        reg.get("CropLeft")
    assert info.value.suggestion == "CropLeftOf"
    assert str(info.value) == "unknown module 'CropLeft'; did you mean 'CropLeftOf'?"
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownToolError) as info:
        reg.get("Zebra")
    assert info.value.suggestion is None and str(info.value) == "unknown module 'Zebra'"
    assert reg.suggest("cout") == "Count" and reg.suggest("CROP_LFTOF") == "CropLeftOf"


def test_duplicate_registration_and_replace():
    first, second = make(), make("crop_left_of")
    reg = Registry([first])
    with pytest.raises(ToolDeclarationError, match="'CropLeftOf' is already registered"):
        reg.register(second)
    assert reg.get("CropLeftOf") is first
    assert reg.register(second, replace=True) is second
    assert reg.get("CropLeftOf") is second and len(reg) == 1
    assert reg.names() == ["crop_left_of"] and list(reg) == [second]


def test_only_tools_can_be_registered():
    with pytest.raises(ToolDeclarationError, match="Tool objects"):
        Registry().register(lambda image: image)  # type: ignore[arg-type]


# -- entry-point plugins ----------------------------------------------------------------------

PLUGIN_MODULE = '''
from visprog.registry import tool

@tool("{prefix}Shout", params={{"text": "Text"}}, returns="Text")
def shout(text):
    """Upper-cases text."""
    return text.upper()

@tool("{prefix}Whisper", params={{"text": "Text"}}, returns="Text")
def whisper(text):
    return text.lower()

TOOLS = [shout, whisper]

def build(config):
    @tool("{prefix}Repeat", params={{"text": "Text"}}, returns="Text",
          settings={{"times": config.get("{prefix}Repeat", {{}}).get("times", 2)}})
    def repeat(text):
        return text * 2
    return repeat
'''


def install_plugin(root, dist: str, module: str, entry_points: str, source: str) -> None:
    """A distribution's metadata on sys.path, as pip would leave it, plus its module."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    (root / f"{module}.py").write_text(source)


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("vp_test_plugin")]:
        del sys.modules[name]


def test_entry_point_plugins_are_registered(plugin_root):
    install_plugin(plugin_root, "vp_test_plugin_dist", "vp_test_plugin_a", """
        [visprog.tools]
        shout = vp_test_plugin_a:shout
        many = vp_test_plugin_a:TOOLS
        built = vp_test_plugin_a:build
        """, PLUGIN_MODULE.format(prefix="Vpt"))
    reg = Registry([make()])
    added = reg.load_entry_points(config={"VptRepeat": {"times": 3}})
    assert sorted(added) == ["VptRepeat", "VptShout", "VptShout", "VptWhisper"]
    assert reg.get("vpt_shout")(text="hi") == "HI"
    assert reg.get("VPTWHISPER")(text="Hi") == "hi"
    assert reg.get("VptRepeat").settings == {"times": 3}  # built with the caller's config
    assert "CropLeftOf" in reg


def test_a_broken_plugin_only_warns(plugin_root):
    install_plugin(plugin_root, "vp_test_plugin_good", "vp_test_plugin_good", """
        [visprog.tools]
        good = vp_test_plugin_good:TOOLS
        """, PLUGIN_MODULE.format(prefix="Good"))
    install_plugin(plugin_root, "vp_test_plugin_bad", "vp_test_plugin_bad", """
        [visprog.tools]
        crashes = vp_test_plugin_crash:TOOLS
        missing = vp_test_plugin_bad:nothing_here
        nomodule = vp_test_plugin_nonexistent:TOOLS
        notatool = vp_test_plugin_bad:NOT_A_TOOL
        factoryfails = vp_test_plugin_bad:broken
        """, "NOT_A_TOOL = [1, 2]\n\ndef broken(config):\n    raise RuntimeError('no GPU')\n")
    (plugin_root / "vp_test_plugin_crash.py").write_text("raise RuntimeError('import failed')\n")
    reg = Registry()
    with pytest.warns(UserWarning, match="skipping tool plugin") as record:
        added = reg.load_entry_points()
    assert sorted(added) == ["GoodShout", "GoodWhisper"]
    messages = " ".join(str(w.message) for w in record)
    for name, why in [("crashes", "import failed"), ("missing", "nothing_here"),
                      ("nomodule", "vp_test_plugin_nonexistent"),
                      ("notatool", "can only register Tool objects"), ("factoryfails", "no GPU")]:
        assert f"{name!r}" in messages and why in messages
    assert len(reg) == 2


def test_no_plugins_no_change():
    reg = Registry([make()])
    assert reg.load_entry_points(group="visprog.tools.no_such_group") == []
    assert len(reg) == 1


def test_a_typo_is_matched_to_the_name_it_starts_with():
    from visprog.registry import closest_name

    names = ["Loc", "LocText", "Count", "CropLeftOf", "Select"]
    # 'Locate' shares more letters with LocText, but it begins with Loc
    assert closest_name("Locate", names) == "Loc"
    assert closest_name("loc_txt", names) == "LocText"
    assert closest_name("Cuont", names) == "Count"
    assert closest_name("Banana", names) is None


def test_unknown_module_and_query_method_suggest_loc_for_locate(tmp_path):
    from PIL import Image
    from visprog import VisProg

    vp = VisProg(preset="tiny", cache=False)
    [d] = vp.check("A=Locate(image=IMAGE, object='x')")
    assert "'Loc'" in d.hint
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(AttributeError, match="did you mean 'loc'"):
        vp.image(tmp_path / "a.png").locate("x")
    with pytest.raises(AttributeError, match="did you mean 'loc'"):
        vp.fn.locate
