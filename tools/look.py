"""Look: what the planner wants to see next, in agent mode (issue 21).

`LOOK=Look(var=X)` gives X back unchanged, so a finished program runs again without any LLM
and gives the same answer. What the planner is shown is made by the planning loop
(`visprog.planning.loop`) from this step's value after the round: an image scaled to a
bound, Objects drawn with their boxes and labels over the image they were found in, a
Video as a few of its frames with their times, Tracks drawn on a few frames of their video
(with when each object is seen, as text), text, numbers and lists as text. Outside agent mode it is a no-op.

Not cached: it computes nothing, and caching it would store a copy of what it shows.
"""
from typing import Any

from visprog.registry import tool


@tool("Look", params={"var": "Any"}, returns="Any", draw_on=None, cacheable=False,
      tasks=("agent",))
def look(var: Any) -> Any:
    """Shows you the value of var after this round (an image, objects drawn on their image, a few frames of a video, tracks drawn on frames, or text); the value is unchanged."""
    return var


TOOLS = [look]
