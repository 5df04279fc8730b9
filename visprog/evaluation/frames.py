"""Which frames of an item's video a run looked at: the figure video question answering
reports per question (VideoAgent looks at about 8 frames a question).

A frame of the input video (VIDEO) counts once, however many steps read it. It is looked at
when

- a step reads it as pixels: a module given a Video reads its frames (all of them, or,
  for a module whose settings say how many `frames` it takes, as VideoQa's do, that many
  spread evenly, `Video.evenly`), a module given an Image that is one of the frames
  (FrameAt's) reads that frame. Steps that only choose frames (their value is a Video, or
  an Image that is one of the frames: Frames, Clip, FrameAt) read none; nor do steps that
  read Tracks (Count, FirstSeen, ObjectsAt...): they read what Track found;
- it is shown to the planner (agent mode): the frames a Look at a Video or Tracks showed
  (kept in each `Round` event by time), and a frame a Look at an Image showed, in rounds
  whose images were sent.

A Video is matched to the input's frames by time (Clip and Frames keep the video's times),
an Image by its pixels (only against frames of its size).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from visprog.traces.events import Round
from visprog.traces.records import Trace
from visprog.values import Video

LOOK = "Look"  # the step that shows a value to the planner (counted through its rounds)


def frames_looked_at(trace: Trace | None, registry: Any = None) -> int | None:
    """How many distinct frames of the trace's VIDEO the run looked at (see the module
    docstring); None when it has no VIDEO input. `registry` gives the modules' settings
    (how many frames a module reads of a video); without it a module reads them all."""
    video = trace.inputs.get("VIDEO") if trace is not None else None
    if not isinstance(video, Video):
        return None
    frames = _Frames(video)
    seen: set[int] = set()
    shown_rounds = {i for r in trace.find(Round) if r.images for i in r.steps}
    for r in trace.find(Round):
        seen |= frames.at_times(r.frames)
    for rec in trace.steps:
        if rec.error is not None or rec.module is None:
            continue
        if rec.module == LOOK:
            if rec.index in shown_rounds and isinstance(rec.output, Image.Image):
                seen |= frames.of_image(rec.output)
            continue
        if isinstance(rec.output, Video) or (isinstance(rec.output, Image.Image)
                                             and frames.of_image(rec.output)):
            continue  # it chose frames; the steps that read them look at them
        take = _frames_setting(registry, rec.module)
        for value in rec.args.values():
            if isinstance(value, Video):
                seen |= frames.at_times((value.evenly(take) if take else value).times)
            elif isinstance(value, Image.Image):
                seen |= frames.of_image(value)
    return len(seen)


def _frames_setting(registry: Any, module: str) -> int | None:
    tool = registry.find(module) if registry is not None else None
    take = (tool.settings or {}).get("frames") if tool is not None else None
    return take if isinstance(take, int) and not isinstance(take, bool) and take > 0 else None


class _Frames:
    """The input video's frames, found by time or by pixels."""

    def __init__(self, video: Video):
        self.video = video
        self.by_time = {round(float(t), 6): i for i, t in enumerate(video.times)}
        self._digests: dict[str, int] | None = None

    def at_times(self, times: Any) -> set[int]:
        found = (self.by_time.get(round(float(t), 6)) for t in np.asarray(times).reshape(-1))
        return {i for i in found if i is not None}

    def of_image(self, image: Image.Image) -> set[int]:
        if image.size != self.video.size:
            return set()
        if self._digests is None:  # only once an image of the frames' size turns up
            self._digests = {}
            for i, frame in enumerate(self.video.frames):
                self._digests.setdefault(_digest(frame), i)
        found = self._digests.get(_digest(image))
        return set() if found is None else {found}


def _digest(image: Image.Image) -> str:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest()
