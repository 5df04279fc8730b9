"""Count: how many objects (SPEC 4): the regions of Objects, or the objects followed through a
video (Tracks: each id once, however many frames it is seen in)."""
from visprog.registry import tool
from visprog.values import Objects, Tracks


@tool("Count", params={"box": "Objects|Tracks"}, returns="Number", draw_on=None, tasks=("gqa", "video"))
def count(box: Objects | Tracks) -> int:
    """The number of objects."""
    if not isinstance(box, (Objects, Tracks)):
        raise TypeError(f"Count: expected Objects or Tracks, got {type(box).__name__}")
    return len(box)


TOOLS = [count]
