"""Agent mode's budgets, and what the planner is shown of a Look step.

The rounds themselves are the planning loop's (`visprog.planning.loop`: `PlanningLoop.agent`
and its per-item `Track`); this file holds what they are bounded by (`AgentSettings`), the
error when nothing ran (`AgentError`), and how a Look step's value becomes what the planner
reads and sees (`look_at`): an image scaled into the Look bounds, Objects drawn on the image
they were found in with their boxes also listed in Region's 0-1000 coordinates, a Video as a
few of its frames (each with its time), Tracks drawn on a few frames of the video they were
tracked in (with when each object is seen, as text), anything else as its typed short text.

A Look at a video shows several frames, and each counts against the images budget like an
image: the planner sees at most `look_frames` frames a Look, and no more than the budget
has room for (as video agents look at a few frames a question, chosen as they go).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from visprog.errors import AgentError, VisProgError
from visprog.traces.records import Trace
from visprog.values.text import show


@dataclass
class AgentSettings:
    """Agent mode's budgets and what the planner is shown.

    Attributes:
        rounds: rounds the planner may write (a run that has not written Result by then
            ends with the last value its program computed).
        steps: steps the program may have (a round that would pass it is not run).
        images: images the planner may be sent (a round whose Looks would pass it ends the
            run before they are sent); each frame of a video shown counts as one.
        look_max_pixels, look_min_pixels: an image shown is scaled (aspect kept) into this
            range of pixels: big ones down, bounding its tokens; small ones (a crop) up.
            The frames one Look shows of a video share the upper bound.
        look_frames: frames a Look at a Video or Tracks shows, spread evenly (fewer when
            the images budget has no room for them).
    The planning deadline (the planner's `deadline_s`) bounds the whole run: writing and
    running every round.
    """

    rounds: int = 6
    steps: int = 40
    images: int = 8
    look_max_pixels: int = 1024 * 1024
    look_min_pixels: int = 256 * 256
    look_frames: int = 4

    KEYS = {"rounds": "agent_rounds", "steps": "agent_steps", "images": "agent_images",
            "look_max_pixels": "look_max_pixels", "look_min_pixels": "look_min_pixels",
            "look_frames": "look_frames"}

    @classmethod
    def make(cls, value: Any = None, config: Mapping[str, Any] | None = None) -> "AgentSettings":
        """From the config's [planner] keys (agent_rounds, agent_steps, agent_images,
        look_max_pixels, look_min_pixels, look_frames), then `value` (a mapping of the
        attribute names, or `AgentSettings`) over them.

        Raises:
            ValueError: an unknown key, a budget under 1, pixels under 1 or out of order.
        """
        if isinstance(value, AgentSettings):
            return value
        cfg = dict(config or {})
        out = cls()
        for name, key in cls.KEYS.items():
            if key in cfg:
                setattr(out, name, _whole(cfg[key], key))
        if value is not None:
            if not isinstance(value, Mapping):
                raise ValueError(f"agent settings are a mapping or AgentSettings; got {value!r}")
            extra = set(value) - set(cls.KEYS)
            if extra:
                raise ValueError(f"unknown agent setting{'s' if len(extra) != 1 else ''} "
                                 f"{', '.join(sorted(extra))}; use {', '.join(cls.KEYS)}")
            for name in cls.KEYS:
                if name in value:
                    setattr(out, name, _whole(value[name], name))
        for name in ("rounds", "steps", "look_max_pixels", "look_min_pixels",
                     "look_frames"):
            if getattr(out, name) < 1:
                raise ValueError(f"agent {name} must be at least 1, got {getattr(out, name)}")
        if out.images < 0:
            raise ValueError(f"agent images must be >= 0, got {out.images}")
        if out.look_min_pixels > out.look_max_pixels:
            raise ValueError(f"look_min_pixels ({out.look_min_pixels}) is more than "
                             f"look_max_pixels ({out.look_max_pixels})")
        return out


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


IMAGE_TOKEN_SIDE = 32  # Qwen3-VL: one image token per 32x32 pixels (16-pixel patches, merged 2x2)
MAX_LOOK_REGIONS = 30  # regions listed in a Look of Objects; the rest are counted
MAX_LOOK_TEXT = 1500   # characters of a Look of text


def image_tokens(im: Any) -> int:
    """An image's tokens, estimated as Qwen3-VL counts them."""
    w, h = im.size
    return math.ceil(w / IMAGE_TOKEN_SIDE) * math.ceil(h / IMAGE_TOKEN_SIDE)


def fit_pixels(im: Any, min_pixels: int, max_pixels: int) -> Any:
    """`im` scaled (aspect kept) into [min_pixels, max_pixels] pixels, as RGB."""
    from PIL import Image

    w, h = im.size
    scale = 1.0
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
    elif w * h < min_pixels:
        scale = math.sqrt(min_pixels / (w * h))
    im = im.convert("RGB") if im.mode != "RGB" else im
    if scale == 1.0:
        return im
    whole = math.floor if scale < 1 else math.ceil  # stay inside the range
    size = (max(1, whole(w * scale)), max(1, whole(h * scale)))
    return im.resize(size, Image.Resampling.BICUBIC)


def relative_box(box: Sequence[float], size: tuple[int, int]) -> list[int]:
    """A pixel box as [x0, y0, x1, y1] from 0 to 1000 (what Region takes)."""
    w, h = size
    x0, y0, x1, y1 = box
    return [round(x0 * 1000 / w), round(y0 * 1000 / h), round(x1 * 1000 / w),
            round(y1 * 1000 / h)]


@dataclass
class LookView:
    """What one Look step shows the planner.

    Attributes:
        text: what it reads (standing alone, for a model that takes no images); each image
            is marked by an `{image}` placeholder, numbered in order by the caller.
        images: the images to send (none: text only).
        frames: the times (seconds) of the video frames among them, for a Look at a Video
            or Tracks (their frames' times are the input video's: Clip and Frames keep
            them).
    """

    text: str
    images: list[Any] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)


def look_at(trace: Trace, index: int, settings: AgentSettings, images: bool,
            room: int | None = None) -> LookView:
    """What the Look step `index` shows (`LookView`): its text and the images to send. An image is scaled to the
    settings' bounds; Objects are drawn on the image they were found in, their boxes also
    listed in 0-1000 coordinates; a Video shows a few of its frames with their times;
    Tracks are drawn on a few frames of their video, when each is seen listed as text;
    anything else is its typed short text. `room`: how many more images the budget allows
    (a video shows no more frames than that, and at least one)."""
    from PIL import Image

    from visprog.traces.draw import draw_objects
    from visprog.values import Objects, Tracks, Video

    rec = trace.steps[index]
    var = rec.arg_vars.get("var") or "the value"
    value = rec.output
    if isinstance(value, Image.Image):
        w, h = value.size
        shown = [fit_pixels(value, settings.look_min_pixels, settings.look_max_pixels)] \
            if images else []
        where = " ({image})" if images else NOT_SENT
        return LookView(f"Look at {var}: an image of {w}x{h} pixels{where}.", shown)
    if isinstance(value, Objects):
        over = _found_in(trace, index, var)
        if over is None:  # regions of one frame of tracks (ObjectsAt): over that frame
            over = _tracked_frame(trace, index, var, value)
        w, h = value.image_size
        n = len(value)
        head = f"Look at {var}: {n} region{'s' if n != 1 else ''} of a {w}x{h} image"
        shown = []
        if images:
            canvas = over if isinstance(over, Image.Image) and over.size == (w, h) else \
                Image.new("RGB", (w, h), (235, 235, 235))
            shown = [draw_objects(fit_pixels(canvas, settings.look_min_pixels,
                                             settings.look_max_pixels), value)]
            head += " (drawn in {image})"
        lines = [head + (", boxes from 0 to 1000:" if n else ".")]
        for r in value[:MAX_LOOK_REGIONS]:
            score = "" if r.score is None else f" score {float(r.score):.2f}"
            lines.append(f"  {r.label or 'object'} {relative_box(r.box, (w, h))}{score}")
        if n > MAX_LOOK_REGIONS:
            lines.append(f"  ... {n - MAX_LOOK_REGIONS} more")
        return LookView("\n".join(lines), shown)
    if isinstance(value, Video):
        return _look_at_video(var, value, settings, images, room)
    if isinstance(value, Tracks):
        over = _found_in(trace, index, var)
        return _look_at_tracks(var, value, over if isinstance(over, Video) else None,
                               settings, images, room)
    return LookView(f"Look at {var}: {show(value, typed=True, limit=MAX_LOOK_TEXT)}")


NOT_SENT = " (not shown: images are not sent to this model)"


def _seconds(t: float) -> str:
    return f"{t:.2f} s"


def _frame_count(settings: AgentSettings, room: int | None, available: int) -> int:
    """How many frames a Look at a video shows: `look_frames`, no more than the budget's
    room (but one, so that a Look past the budget ends the run as an image would) and the
    frames there are."""
    k = settings.look_frames if room is None else min(settings.look_frames, max(room, 1))
    return max(1, min(k, available))


def _frame_bound(settings: AgentSettings, k: int) -> int:
    """The pixels of each of `k` frames shown at once: together they keep to the bound of
    one image, but none under the lower bound."""
    return max(settings.look_min_pixels, settings.look_max_pixels // max(k, 1))


def _budget_note(settings: AgentSettings, k: int, room: int | None) -> str:
    if room is not None and k < settings.look_frames and k == room:
        return f"; the images budget has room for {k}"
    return ""


def _look_at_video(var: str, video: Any, settings: AgentSettings, images: bool,
                   room: int | None) -> LookView:
    from visprog.traces.video import strip_rows

    w, h = video.size
    head = (f"Look at {var}: a video of {len(video)} frame{'s' if len(video) != 1 else ''} "
            f"of {w}x{h}, {_seconds(float(video.times[0]))} to {_seconds(video.end)}")
    if not images:
        return LookView(head + NOT_SENT + ".")
    k = _frame_count(settings, room, len(video))
    rows = strip_rows(len(video), k)
    bound = _frame_bound(settings, len(rows))
    shown = [fit_pixels(video.frames[t], settings.look_min_pixels, bound) for t in rows]
    at = ", ".join(f"{_seconds(float(video.times[t]))} ({{image}})" for t in rows)
    return LookView(f"{head}; {len(rows)} frame{'s' if len(rows) != 1 else ''} shown"
                    f"{_budget_note(settings, len(rows), room)}: {at}.", shown,
                    [float(video.times[t]) for t in rows])


def _look_at_tracks(var: str, tracks: Any, video: Any, settings: AgentSettings, images: bool,
                    room: int | None) -> LookView:
    import numpy as np
    from PIL import Image

    from visprog.traces.video import draw_tracks, strip_rows

    w, h = tracks.frame_size
    n, frames = len(tracks), len(tracks.times)
    head = (f"Look at {var}: {n} tracked object{'s' if n != 1 else ''} over {frames} "
            f"frame{'s' if frames != 1 else ''} of {w}x{h}")
    seen = tracks.seen
    spans = tracks.spans()
    lines = []
    for j in range(min(n, MAX_LOOK_REGIONS)):
        rows = np.flatnonzero(seen[:, j])
        name = f"  #{tracks.ids[j]} {tracks.labels[j]}"
        if not len(rows):
            lines.append(f"{name}: never seen")
            continue
        first, last = int(rows[0]), int(rows[-1])
        lines.append(
            f"{name}: seen {_seconds(float(tracks.times[first]))} to "
            f"{_seconds(float(tracks.times[last] + spans[last]))} "
            f"({_seconds(float(spans[rows].sum()))} in all); at "
            f"{_seconds(float(tracks.times[first]))} "
            f"{relative_box(tracks.boxes[first, j], (w, h))}"
            + (f", at {_seconds(float(tracks.times[last]))} "
               f"{relative_box(tracks.boxes[last, j], (w, h))}" if last != first else ""))
    if n > MAX_LOOK_REGIONS:
        lines.append(f"  ... {n - MAX_LOOK_REGIONS} more")
    if not images:
        return LookView("\n".join([head + NOT_SENT + (", boxes from 0 to 1000:" if n else ".")]
                                   + lines))
    # the frames where something is seen (all frames when nothing is), spread evenly
    pool = np.flatnonzero(seen.any(axis=1)) if seen.any() else np.arange(frames)
    k = _frame_count(settings, room, len(pool))
    rows = [int(pool[i]) for i in strip_rows(len(pool), k)]
    bound = _frame_bound(settings, len(rows))
    fits = video is not None and len(video) == frames and video.size == (w, h)
    shown = []
    for t in rows:
        base = video.frames[t] if fits else Image.new("RGB", (w, h), (235, 235, 235))
        shown.append(draw_tracks(fit_pixels(base, settings.look_min_pixels, bound), tracks, t))
    at = ", ".join(f"{_seconds(float(tracks.times[t]))} ({{image}})" for t in rows)
    head += (f", drawn on {len(rows)} frame{'s' if len(rows) != 1 else ''}"
             f"{_budget_note(settings, len(rows), room)}: {at}")
    return LookView("\n".join([head + ("; boxes from 0 to 1000:" if n else ".")] + lines),
                    shown, [float(tracks.times[t]) for t in rows])


def _found_in(trace: Trace, index: int, var: str) -> Any:
    """What the value of `var` (as step `index` reads it) is drawn over: the image its
    Objects were found in, or the video its Tracks were tracked in (the background of the
    step that made them), following pass-through steps (a Look of a Look, an alias, a
    Result) back; None when no step made them (an input)."""
    while var:  # each pass goes to an earlier step, so it ends
        source = next((r for r in reversed(trace.steps[:index]) if r.target == var
                       and r.error is None), None)
        if source is None:
            return None
        over = _background(source)
        if over is not None:
            return over
        index, var = source.index, source.arg_vars.get("var", "")
    return None


def _tracked_frame(trace: Trace, index: int, var: str, objects: Any) -> Any:
    """The frame of a video that `objects` are one frame of, when a step made them from
    Tracks (ObjectsAt): the frame whose tracked boxes they are, of the video those Tracks
    were tracked in; None otherwise."""
    import numpy as np

    from visprog.values import Tracks, Video

    source = next((r for r in reversed(trace.steps[:index]) if r.target == var
                   and r.error is None), None)
    if source is None or not len(objects):
        return None
    for name, tracks in source.args.items():
        if not isinstance(tracks, Tracks) or tuple(tracks.frame_size) != objects.image_size:
            continue
        video = _found_in(trace, source.index, source.arg_vars.get(name, ""))
        if not isinstance(video, Video) or len(video) != len(tracks.times):
            continue
        boxes = np.asarray(objects.boxes, dtype=np.float64)
        for t in range(len(tracks.times)):
            cols = np.flatnonzero(tracks.seen[t])
            if len(cols) == len(boxes) and np.allclose(tracks.boxes[t, cols], boxes):
                return video.frames[t]
    return None


def _background(step: Any) -> Any:
    """A step's video argument (its `draw_on` one first), else the image its Objects are
    drawn over (`traces.draw.background`)."""
    from visprog.traces.draw import background
    from visprog.values import Video

    if step.draw_on and isinstance(step.args.get(step.draw_on), Video):
        return step.args[step.draw_on]
    video = next((v for v in step.args.values() if isinstance(v, Video)), None)
    return video if video is not None else background(step)
