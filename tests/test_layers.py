"""The package's shape, enforced: no import circles inside visprog/, layers import downwards
only, and nothing in visprog/ imports tools/ except the place that assembles the default
registry. Read from the source with ast (lazy imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "visprog"

# Lower rank = lower layer. A module may import its own sub-package and lower ranks only.
RANKS = {
    "errors": 0,
    "values": 1,
    "registry": 2,
    "language": 3, "models": 3, "traces": 3,
    "engine": 4,
    "planning": 5, "evaluation": 5,
    "hosting": 6,
    "config": 7,  # the assembly
    "query": 7,  # composed queries build program text; VisProg runs them
    "api": 8,
    "cli": 9,
    "__init__": 10,  # the package's public face re-exports from everywhere
}
# The one place that assembles the default registry from tools/.
ASSEMBLES_TOOLS = {"visprog.config"}  # presets, the tools, the plug-ins, hosting's catalog


def module_name(path: Path) -> str:
    parts = ("visprog",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    """Absolute names of the visprog/tools modules a file imports (anywhere in it)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from visprog.values import codec` imports a module
                sub = f"{mod}.{a.name}"
                found.add(sub if (PKG / Path(*sub.split(".")[1:])).with_suffix(".py").exists()
                          or (PKG / Path(*sub.split(".")[1:]) / "__init__.py").exists() else mod)
    return {m for m in found if m == "visprog" or m.startswith(("visprog.", "tools"))}


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
GRAPH = {name: {m for m in imports_of(p) if m in MODULES or m.startswith("visprog.tools")}
         for name, p in MODULES.items()}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_layer_has_a_rank():
    assert {layer(n) for n in MODULES} <= set(RANKS), "give new sub-packages a rank above"


def test_layers_import_downwards_only():
    upward = []
    for name, deps in GRAPH.items():
        for dep in deps:
            if dep.startswith("visprog.tools") or dep == "visprog":
                continue
            a, b = layer(name), layer(dep)
            if a != b and RANKS[b] >= RANKS[a]:
                upward.append(f"{MODULES[name].relative_to(ROOT)} imports "
                              f"{MODULES[dep].relative_to(ROOT)} ({a} -> {b})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_only_the_assembly_imports_tools():
    offenders = [f"{MODULES[n].relative_to(ROOT)} imports {d}" for n, deps in GRAPH.items()
                 for d in deps if d.startswith("visprog.tools") and n not in ASSEMBLES_TOOLS]
    assert not offenders, "\n".join(offenders)


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circles():
    # a package's __init__ re-exporting its own modules is not a circle of files
    graph = {n: {d for d in deps if not (n.endswith(d) or MODULES[n].name == "__init__.py"
                                          and d.startswith(n + "."))}
             for n, deps in GRAPH.items()}
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(
        str(MODULES[c].relative_to(ROOT)) for c in circle)


def test_the_circle_finder_finds_circles():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_tools_import_only_the_public_protocol():
    allowed = ("visprog.registry", "visprog.values", "visprog.models", "visprog.errors",
               "visprog.language.expr", "visprog.traces.draw")
    bad = []
    for path in sorted((ROOT / "tools").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            mods = []
            if isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for m in mods:
                if m.startswith("visprog") and not m.startswith(allowed + ("visprog.tools",)):
                    bad.append(f"tools/{path.name} imports {m}")
                if m.startswith("visprog.tools"):
                    bad.append(f"tools/{path.name} imports {m}: use a relative import")
    assert not bad, "\n".join(bad)
