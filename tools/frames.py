"""Choosing frames of a video (SPEC 4): Frames, FrameAt, Clip.

- `Frames(video, n)` -> Video: `n` frames spread evenly over the clip (the frame on screen
  at the middle of each n-th of it), the way video question answering looks at a few frames;
  all of them when the clip has no more than `n`.
- `FrameAt(video, time)` -> Image: the frame on screen at `time` seconds from the clip's
  start (the last frame at or before it; the first before the clip starts, the last after it
  ends). Every image module then applies to it.
- `Clip(video, start, end)` -> Video: the frames on screen from `start` to `end` seconds
  (at least one); their times stay the clip's, so a time found in a Clip is a time in the
  video.

Times are the sampled frames' own (see `visprog.values.videos` for how a file is sampled);
these modules only choose among them, they never decode the file again.
"""
from __future__ import annotations

import math

from PIL import Image

from visprog.registry import tool
from visprog.values import Video


def _video(video: Video, name: str) -> Video:
    if not isinstance(video, Video):
        raise TypeError(f"{name}: expected a Video, got {type(video).__name__}")
    return video


def _seconds(value: float, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise ValueError(f"{name}: {what} is a number of seconds, got {value!r}")
    return float(value)


@tool("Frames", params={"video": "Video", "n": "Number"}, returns="Video", draw_on=None,
      tasks=("video",))
def frames(video: Video, n: float = 8) -> Video:
    """n frames spread evenly over the video."""
    video = _video(video, "Frames")
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n < 1:
        raise ValueError(f"Frames: n is a whole number of frames, at least 1; got {n!r}")
    return video.evenly(int(n))


@tool("FrameAt", params={"video": "Video", "time": "Number"}, returns="Image", draw_on=None,
      tasks=("video",))
def frame_at(video: Video, time: float) -> Image.Image:
    """The frame on screen at `time` seconds (an Image: every image module applies to it)."""
    video = _video(video, "FrameAt")
    # a copy: the video's frames are shared by every step that reads the video
    return video.frames[video.index_at(_seconds(time, "FrameAt", "time"))].copy()


@tool("Clip", params={"video": "Video", "start": "Number", "end": "Number"}, returns="Video",
      draw_on=None, tasks=("video",))
def clip(video: Video, start: float, end: float) -> Video:
    """The part of the video from `start` to `end` seconds."""
    video = _video(video, "Clip")
    start, end = _seconds(start, "Clip", "start"), _seconds(end, "Clip", "end")
    if end < start:
        raise ValueError(f"Clip: end ({end:g} s) is before start ({start:g} s)")
    return video.between(start, end)


TOOLS = [frames, frame_at, clip]
