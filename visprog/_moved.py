"""Old import paths of the flat layout (0.1), kept for one release.

`import visprog.parser` still works and gives `visprog.language.parser`, with a
DeprecationWarning that names the new path. One finder serves every old name, so no stub
files sit beside the sub-packages.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

OLD_PATHS = {
    "visprog.answers": "visprog.evaluation.answers",
    "visprog.batch": "visprog.engine.batch",
    "visprog.cache": "visprog.engine.cache",
    "visprog.checker": "visprog.language.checker",
    "visprog.codec": "visprog.values.codec",
    "visprog.datasets": "visprog.evaluation.datasets",
    "visprog.draw": "visprog.traces.draw",
    "visprog.evaluate": "visprog.evaluation.harness",
    "visprog.expr": "visprog.language.expr",
    "visprog.fastparse": "visprog.language.fastparse",
    "visprog.interpreter": "visprog.engine.interpreter",
    "visprog.llm": "visprog.planning.llm",
    "visprog.llm_grammar": "visprog.planning.llm_grammar",
    "visprog.llm_local": "visprog.planning.llm_local",
    "visprog.memory": "visprog.models.memory",
    "visprog.parser": "visprog.language.parser",
    "visprog.planner": "visprog.planning.planner",
    "visprog.program": "visprog.language.program",
    "visprog.program_cache": "visprog.planning.program_cache",
    "visprog.prompts": "visprog.planning.prompts",
    "visprog.serve": "visprog.hosting.serve",
    "visprog.trace": "visprog.traces.records",
    "visprog.trace_html": "visprog.traces.html",
    "visprog.trace_json": "visprog.traces.json_io",
    "visprog.tools.models": "visprog.models",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in OLD_PATHS:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module):
        old = module.__name__
        warnings.warn(f"{old} moved to {OLD_PATHS[old]}; the old path goes away in the next "
                      "release", DeprecationWarning, stacklevel=2)
        # the import system returns whatever sys.modules holds once this returns
        sys.modules[old] = importlib.import_module(OLD_PATHS[old])


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
