"""The tool protocol: how a module declares itself (`Tool`, `Param`, `@tool`), and the
`Registry` that finds tools by lenient name. The checker, the engine and the planner know
tools only through these declarations."""
from visprog.registry.protocol import (ENTRY_POINT_GROUP, REQUIRED, Param, Plugin, Registry,
                                       Tool, closest_name, normalize_name, read_plugins, tool)
from visprog.values.types import parse_types

__all__ = ["ENTRY_POINT_GROUP", "REQUIRED", "Param", "Plugin", "Registry", "Tool",
           "closest_name", "normalize_name", "read_plugins", "tool", "parse_types"]
