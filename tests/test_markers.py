"""Test markers mean what they say: each marker pyproject.toml declares is used by some test,
and no test uses one it doesn't declare (pytest's --strict-markers, set in addopts, refuses
those at collection; this also covers files that are skipped before collection ends)."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}


def declared() -> dict[str, str]:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options.get("addopts", "")
    return dict(m.split(":", 1) for m in options["markers"])


def used() -> dict[str, set[str]]:
    """marker -> the test files that use it (`pytest.mark.NAME` anywhere in the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "mark" and isinstance(node.value.value, ast.Name)
                    and node.value.value.id == "pytest"):
                found.setdefault(node.attr, set()).add(path.name)
    return found


def test_every_declared_marker_is_used():
    marks = used()
    unused = sorted(set(declared()) - set(marks))
    assert not unused, f"markers declared in pyproject.toml that no test uses: {unused}"


def test_every_used_marker_is_declared():
    unknown = {m: sorted(files) for m, files in used().items()
               if m not in BUILTIN and m not in declared()}
    assert not unknown, f"markers used but not declared in pyproject.toml: {unknown}"


def test_slow_runs_by_default_and_says_how_to_leave_it_out():
    """`slow` is not skipped by default (CI runs `python -m pytest` and must run the Ray and
    browser tests); its description and the README say how to leave it out."""
    assert "-m \"not slow\"" in declared()["slow"]
    assert "-m \"not slow\"" in (ROOT / "README.md").read_text()


def test_deprecations_of_visprogs_own_code_are_errors():
    """The suite's warning filters (pyproject.toml): a DeprecationWarning attributed to
    visprog's code (a deprecated call in it, or one of its own deprecations reached from a
    test) fails the test; one inside a third-party library does not."""
    import warnings

    import pytest

    for module in ("visprog.api", "visprog.tools.loc", "demos.app", "test_api"):
        with pytest.raises(DeprecationWarning, match="old"):
            warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module=module)
    warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="transformers.utils")
