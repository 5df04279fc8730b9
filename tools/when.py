"""When tracked objects are seen (SPEC 4): FirstSeen, LastSeen, SeenFor, ObjectsAt.

Each reads the Tracks that `Track` gives (every object it followed through the clip, with
an id that stays the same from frame to frame); several objects count together ("when is a
dog first seen" is the earliest time any dog is). A frame stands for the time from its own
time to the next frame's (the last one: to the clip's end), so with frames sampled at 2 per
second times are known to half a second.

- `FirstSeen(tracks)` -> Number: the time (seconds from the clip's start) at which the first
  of them appears.
- `LastSeen(tracks)` -> Number: the time at which the last of them leaves: the end of the
  last frame any is seen in (the clip's end when one is still there).
- `SeenFor(tracks)` -> Number: for how many seconds at least one of them is seen.
- `ObjectsAt(tracks, time)` -> Objects: those seen in the frame on screen at `time`, as
  regions of that frame (labels, scores, masks; `extra["track_id"]` their ids), to use with
  that frame's image (`FrameAt(video=..., time=...)`): Crop, Vqa on a crop, ColorPop...

How many distinct objects were seen is `Count(box=TRACKS)` (each id once). FirstSeen and
LastSeen of tracks in which nothing is seen fail with a message saying so: count them first.
"""
from __future__ import annotations

import math

from visprog.registry import tool
from visprog.values import Objects, Tracks


def _tracks(tracks: Tracks, name: str) -> Tracks:
    if not isinstance(tracks, Tracks):
        raise TypeError(f"{name}: expected Tracks (what Track gives), got "
                        f"{type(tracks).__name__}")
    return tracks


def _nothing_seen(name: str, tracks: Tracks) -> ValueError:
    what = ", ".join(sorted(set(tracks.labels.tolist()))) or "nothing"
    return ValueError(f"{name}: no tracked object ({what}) is seen in the video; check "
                      f"with Count(box=...) > 0 first")


@tool("FirstSeen", params={"tracks": "Tracks"}, returns="Number", draw_on=None,
      tasks=("video",))
def first_seen(tracks: Tracks) -> float:
    """When the first of the tracked objects appears (seconds from the start)."""
    t = _tracks(tracks, "FirstSeen").first_seen()
    if t is None:
        raise _nothing_seen("FirstSeen", tracks)
    return t


@tool("LastSeen", params={"tracks": "Tracks"}, returns="Number", draw_on=None,
      tasks=("video",))
def last_seen(tracks: Tracks) -> float:
    """When the last of the tracked objects leaves (seconds from the start)."""
    t = _tracks(tracks, "LastSeen").last_seen()
    if t is None:
        raise _nothing_seen("LastSeen", tracks)
    return t


@tool("SeenFor", params={"tracks": "Tracks"}, returns="Number", draw_on=None,
      tasks=("video",))
def seen_for(tracks: Tracks) -> float:
    """For how many seconds at least one of the tracked objects is seen."""
    return _tracks(tracks, "SeenFor").time_seen()


@tool("ObjectsAt", params={"tracks": "Tracks", "time": "Number"}, returns="Objects",
      draw_on=None, tasks=("video",))
def objects_at(tracks: Tracks, time: float) -> Objects:
    """The tracked objects seen at `time` seconds, as regions of that frame."""
    tracks = _tracks(tracks, "ObjectsAt")
    if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
        raise ValueError(f"ObjectsAt: time is a number of seconds, got {time!r}")
    return tracks.frame(tracks.index_at(time))


TOOLS = [first_seen, last_seen, seen_for, objects_at]
