"""Video values (SPEC 2): a `Video` is a clip's sampled frames with their times; `Tracks` are
objects followed through a clip, each with an id that stays the same from frame to frame.

    video.frames    tuple of RGB PIL images, all of one size (`video.size` = (W, H))
    video.times     (T,) float64 seconds from the clip's start, increasing
    video.end       where the clip ends (seconds): the last frame stands until then
    video.sampling  how the frames were chosen ({"fps": 2.0} or {"frames": 8}, "max_side"):
                    part of the value, so a clip sampled two ways has two cache keys

    tracks.ids      (K,) int64: one id per tracked object, as the tracker numbered it
    tracks.labels   (K,) object: what each object is (the text it was tracked by)
    tracks.times    (T,) the times of the clip's frames; `tracks.end` as the Video's
    tracks.boxes    (T, K, 4) float64 x1 y1 x2 y2 pixels; NaN where object k is not seen in
                    frame t (`tracks.seen` (T, K) bool says where it is)
    tracks.scores   (T, K) float64, NaN where not seen
    tracks.masks    None, or (T, K, H, W) bool (all False where not seen)

Both never change: every array is read-only and frames must not be drawn into (tools that
draw copy first). `len(video)` is its number of frames, `len(tracks)` its number of objects
(what `Count` counts). Indexing a Video with an int gives a frame (an Image), with a slice or
a list of ints a Video; indexing Tracks with an int, a slice, a list of ints or a boolean
mask over objects gives Tracks of those objects. `tracks.frame(t)` is what is seen in frame
t as `Objects` (each region's `extra["track_id"]` its id).

A frame stands for the time from its own time to the next frame's (the last one: to `end`);
how long an object is seen is the sum of those spans over the frames it is seen in.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from visprog.values.objects import Objects


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _times(times: Iterable[float], n: int, what: str) -> np.ndarray:
    t = np.asarray(list(times) if not isinstance(times, np.ndarray) else times, dtype=np.float64)
    if t.shape != (n,):
        raise ValueError(f"{what}: {n} frames need {n} times, got {t.size}")
    if n and (not np.isfinite(t).all() or (np.diff(t) < 0).any() or t[0] < 0):
        raise ValueError(f"{what}: frame times must be finite, at least 0 and increasing")
    return _frozen(t)


def _end(end: float | None, times: np.ndarray, sampling: Mapping[str, Any]) -> float:
    """Where a clip ends: as given, else the last time plus one frame's span (the sampling
    rate's, or the median gap between frames; 0 for a single frame at no known rate)."""
    if end is not None:
        end = float(end)
        if not math.isfinite(end) or (len(times) and end < times[-1]):
            raise ValueError(f"a clip's end ({end}) is before its last frame "
                             f"({times[-1] if len(times) else 0})")
        return end
    if not len(times):
        return 0.0
    fps = sampling.get("fps") if not sampling.get("frames") else None
    if fps:
        step = 1.0 / float(fps)
    elif len(times) > 1:
        step = float(np.median(np.diff(times)))
    else:
        step = 0.0
    return float(times[-1] + step)


def evenly_spread(times: Sequence[float], end: float, n: int) -> list[int]:
    """The frames (indices into `times`, increasing) on screen at the middle of each n-th
    of [times[0], end], each once: fewer than `n` where several middles fall in one frame."""
    times = list(times)
    start = float(times[0])
    picks: list[int] = []
    for k in range(n):
        i = max(0, bisect.bisect_right(times, start + (k + 0.5) * (end - start) / n) - 1)
        if not picks or picks[-1] != i:
            picks.append(i)
    return picks


def spans_of(times: np.ndarray, end: float) -> np.ndarray:
    """How long each frame stands for: up to the next frame's time, the last up to `end`."""
    if not len(times):
        return np.zeros(0)
    return np.diff(np.append(times, max(end, float(times[-1]))))


class Video(Sequence[Image.Image]):
    """A clip as frames with their times (see the module docstring).

    Args:
        frames: RGB PIL images of one size (other modes are converted).
        times: each frame's time in seconds from the clip's start, increasing.
        end: where the clip ends; default the last time plus one frame's span.
        sampling: how the frames were chosen (settings that are part of the value).
        source: where it came from (a file name), for messages; not part of its content.

    Raises:
        ValueError: no frames, frames of different sizes, times that don't fit.
    """

    __slots__ = ("frames", "times", "end", "sampling", "source", "_digest")

    def __init__(self, frames: Iterable[Image.Image], times: Iterable[float], *,
                 end: float | None = None, sampling: Mapping[str, Any] | None = None,
                 source: str = ""):
        frames = tuple(frames)
        if not frames:
            raise ValueError("a video has at least one frame")
        for i, f in enumerate(frames):
            if not isinstance(f, Image.Image):
                raise TypeError(f"frame {i} is {type(f).__name__}, not a PIL image")
        size = frames[0].size
        odd = next((i for i, f in enumerate(frames) if f.size != size), None)
        if odd is not None:
            raise ValueError(f"the frames of a video are one size: frame {odd} is "
                             f"{frames[odd].size[0]}x{frames[odd].size[1]}, frame 0 is "
                             f"{size[0]}x{size[1]}")
        frames = tuple(f if f.mode == "RGB" else f.convert("RGB") for f in frames)
        sampling = dict(sampling or {})
        t = _times(times, len(frames), "video")
        for name, value in (("frames", frames), ("times", t), ("end", _end(end, t, sampling)),
                            ("sampling", sampling), ("source", str(source)),
                            ("_digest", None)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Video never changes")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame."""
        return self.frames[0].size

    @property
    def duration(self) -> float:
        """Seconds from the clip's start to its end."""
        return self.end

    def spans(self) -> np.ndarray:
        """How long each frame stands for (see `spans_of`)."""
        return spans_of(self.times, self.end)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.frames[index]
        rows = np.arange(len(self))[index]
        if rows.ndim != 1 or not len(rows):
            raise IndexError("a Video of no frames can't be made; pick at least one")
        if (np.diff(rows) <= 0).any():
            raise IndexError("frames are picked in time order, each once")
        last = int(rows[-1])
        end = float(self.times[last + 1]) if last + 1 < len(self) else self.end
        return Video([self.frames[i] for i in rows], self.times[rows], end=end,
                     sampling=self.sampling, source=self.source)

    def index_at(self, time: float) -> int:
        """The frame on screen at `time` seconds: the last one whose time is at or before it
        (the first frame before the clip starts, the last one after it ends)."""
        i = bisect.bisect_right(self.times.tolist(), float(time)) - 1
        return min(max(i, 0), len(self) - 1)

    def between(self, start: float, end: float) -> "Video":
        """The frames on screen from `start` to `end` seconds (at least the one at `start`);
        their times stay the clip's."""
        start, end = float(start), float(end)
        if end < start:
            raise ValueError(f"a clip from {start:g} s to {end:g} s ends before it starts")
        first = self.index_at(start)
        last = max(first, self.index_at(end))
        clip = self[first:last + 1]
        return Video(clip.frames, clip.times, end=min(max(end, float(clip.times[-1])), clip.end),
                     sampling=self.sampling, source=self.source)

    def evenly(self, n: int) -> "Video":
        """`n` frames spread evenly over the clip (each the one on screen at the middle of
        its n-th of the clip); all of them when it has no more than `n`."""
        n = int(n)
        if n < 1:
            raise ValueError(f"pick at least 1 frame, not {n}")
        if n >= len(self):
            return self
        picks = evenly_spread(self.times.tolist(), self.end, n)
        if len(picks) < n:  # uneven times: fill with the frames nearest the gaps
            rest = [i for i in np.linspace(0, len(self) - 1, n).round().astype(int)
                    if i not in picks]
            picks = sorted(set(picks) | set(rest[:n - len(picks)]))
        return self[picks]

    def __repr__(self) -> str:
        w, h = self.size
        return (f"Video({len(self)} frames of {w}x{h}, {self.times[0]:.2f}-{self.end:.2f} s"
                f"{', ' + self.source if self.source else ''})")


class Tracks:
    """Objects followed through a clip (see the module docstring).

    Args:
        ids: K object ids (ints, distinct).
        labels: K labels (str).
        times: the T frame times of the clip; `end` where it ends.
        frame_size: (width, height) of the frames.
        boxes: (T, K, 4) boxes in pixels, NaN where an object is not seen.
        scores: (T, K), NaN where not seen; None: 1.0 wherever seen.
        masks: (T, K, H, W) bool or None.

    Raises:
        ValueError: shapes that don't agree, repeated ids.
    """

    __slots__ = ("ids", "labels", "times", "end", "frame_size", "boxes", "scores", "masks")

    def __init__(self, ids: Iterable[int], labels: Iterable[str], times: Iterable[float], *,
                 end: float | None = None, frame_size: tuple[int, int], boxes: Any,
                 scores: Any = None, masks: Any = None):
        ids_a = np.asarray(list(ids), dtype=np.int64).reshape(-1)
        k = len(ids_a)
        if len(set(ids_a.tolist())) != k:
            raise ValueError(f"track ids must be distinct, got {ids_a.tolist()}")
        labels_a = np.empty(k, dtype=object)
        labels_a[:] = [str(x) for x in labels] if k else []
        if len(labels_a) != k:
            raise ValueError(f"{k} tracks need {k} labels")
        t = _times(times, len(np.asarray(times).reshape(-1)), "tracks")
        w, h = (int(v) for v in frame_size)
        if w <= 0 or h <= 0:
            raise ValueError(f"frame size must be positive, got {w}x{h}")
        boxes_a = np.asarray(boxes, dtype=np.float64).reshape(len(t), k, 4)
        seen = ~np.isnan(boxes_a).any(axis=2)
        boxes_a = np.where(seen[..., None], boxes_a, np.nan)
        if scores is None:
            scores_a = np.where(seen, 1.0, np.nan)
        else:
            scores_a = np.asarray(scores, dtype=np.float64).reshape(len(t), k)
            scores_a = np.where(seen, scores_a, np.nan)
        masks_a = None
        if masks is not None:
            masks_a = np.asarray(masks, dtype=bool)
            if masks_a.shape != (len(t), k, h, w):
                raise ValueError(f"masks of {len(t)} frames x {k} tracks of {w}x{h} are "
                                 f"{(len(t), k, h, w)}, got {masks_a.shape}")
            masks_a = masks_a & seen[..., None, None]
        for name, value in (("ids", _frozen(ids_a)), ("labels", _frozen(labels_a)),
                            ("times", t), ("end", _end(end, t, {})), ("frame_size", (w, h)),
                            ("boxes", _frozen(boxes_a)), ("scores", _frozen(scores_a)),
                            ("masks", None if masks_a is None else _frozen(masks_a))):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Tracks never change")

    @classmethod
    def empty(cls, video: Video) -> "Tracks":
        return cls([], [], video.times, end=video.end, frame_size=video.size,
                   boxes=np.zeros((len(video), 0, 4)))

    @property
    def seen(self) -> np.ndarray:
        """(T, K) bool: whether object k is seen in frame t."""
        return ~np.isnan(self.boxes[..., 0])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: Any) -> "Tracks":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        cols = np.arange(len(self))[index]
        cols = np.atleast_1d(cols)
        return Tracks(self.ids[cols], self.labels[cols], self.times, end=self.end,
                      frame_size=self.frame_size, boxes=self.boxes[:, cols],
                      scores=self.scores[:, cols],
                      masks=None if self.masks is None else self.masks[:, cols])

    def index_at(self, time: float) -> int:
        """The frame on screen at `time` seconds (as `Video.index_at`).

        Raises:
            ValueError: tracks of no frames.
        """
        if not len(self.times):
            raise ValueError("these tracks have no frames")
        i = bisect.bisect_right(self.times.tolist(), float(time)) - 1
        return min(max(i, 0), len(self.times) - 1)

    def frame(self, t: int) -> Objects:
        """What is seen in frame `t`, as Objects (`extra["track_id"]`: each one's id)."""
        cols = np.flatnonzero(self.seen[t])
        return Objects(self.boxes[t, cols], self.frame_size, scores=self.scores[t, cols],
                       labels=self.labels[cols].tolist(),
                       masks=None if self.masks is None else self.masks[t, cols],
                       extra={"track_id": self.ids[cols].tolist()})

    # -- when things are seen -------------------------------------------------------------
    def spans(self) -> np.ndarray:
        return spans_of(self.times, self.end)

    def first_seen(self) -> float | None:
        """The time any of the objects is first seen, or None when none is."""
        rows = np.flatnonzero(self.seen.any(axis=1))
        return float(self.times[rows[0]]) if len(rows) else None

    def last_seen(self) -> float | None:
        """When the last of them leaves: the end of the last frame any is seen in, or None."""
        rows = np.flatnonzero(self.seen.any(axis=1))
        if not len(rows):
            return None
        return float(self.times[rows[-1]] + self.spans()[rows[-1]])

    def time_seen(self) -> float:
        """Seconds during which at least one of the objects is seen."""
        return float(self.spans()[self.seen.any(axis=1)].sum())

    def __repr__(self) -> str:
        labels = sorted(set(self.labels.tolist()))
        return (f"Tracks({len(self)} objects ({', '.join(labels)}) over {len(self.times)} "
                f"frames)")
