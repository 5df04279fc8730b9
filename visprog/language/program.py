"""The parsed form of a program: frozen dataclasses, no Lark trees past the parser."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

# Names a step can't assign to: the language's literals.
RESERVED_NAMES = frozenset({"True", "False", "None"})


@dataclass(frozen=True)
class Var:
    """A reference to a variable in an argument value."""

    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Arg:
    """`name=value`. `value` is a `Var`, a str/int/float/bool/None, or a tuple of those."""

    name: str
    value: Any
    line: int
    column: int


@dataclass(frozen=True)
class Step:
    """One line: `TARGET=Module(args)`, or `TARGET=VAR` (an alias, `module` is None)."""

    target: str
    module: str | None
    args: tuple[Arg, ...]
    line: int
    column: int
    source: str
    alias_of: str | None = None
    module_column: int = 0

    def arg(self, name: str) -> Arg | None:
        key = name.lower()
        return next((a for a in self.args if a.name.lower() == key), None)


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]
    source: str

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> Step:
        return self.steps[i]


def var_refs(value: Any) -> list[Var]:
    """The variables an argument value reads, lists included (the parser refuses lists
    nested deeper than `values.MAX_NESTING`, so the recursion is bounded)."""
    if isinstance(value, Var):
        return [value]
    if isinstance(value, tuple):
        return [v for item in value for v in var_refs(item)]
    return []
