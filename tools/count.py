"""Count: how many objects (SPEC 4)."""
from visprog.registry import tool
from visprog.values import Objects


@tool("Count", params={"box": "Objects"}, returns="Number", draw_on=None, tasks=("gqa",))
def count(box: Objects) -> int:
    """The number of objects."""
    if not isinstance(box, Objects):
        raise TypeError(f"Count: expected Objects, got {type(box).__name__}")
    return len(box)


TOOLS = [count]
