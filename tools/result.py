"""Result: marks the program's result (SPEC 1: the last Result step wins)."""
from visprog.registry import tool


@tool("Result", params={"var": "Any"}, returns="Any", draw_on=None, result=True)
def result(var):
    """Marks the program's result."""
    return var


TOOLS = [result]
