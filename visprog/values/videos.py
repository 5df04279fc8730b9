"""How inputs become Videos (SPEC 2): a video file, a folder of frames or a list of images ->
a `Video` of sampled frames, checked against the limits when it is bound.

Files are decoded with PyAV (the `video` extra: FFmpeg in a wheel), animated GIFs with
Pillow. Only real video containers are opened: the first bytes must be those of MP4/MOV,
Matroska/WebM, AVI, MPEG-PS/TS, FLV, Ogg, ASF or GIF. FFmpeg would otherwise also "play"
a text file (its tty demuxer) or follow a playlist or concat list to other files.

Sampling (`VideoSettings`, the `[video]` table of the configuration; see `VIDEO_DEFAULTS`):
- `fps`: keep about this many frames per second of the clip (a frame is kept when it is
  the first at or after each 1/fps step); a clip with fewer frames keeps them all.
- `frames`: instead, this many frames spread evenly over the clip: the frame on screen at
  the middle of each n-th of it (VideoAgent-style question answering).
- `max_side`: frames larger than this are scaled down (aspect ratio kept); 0 / None: as
  they are.
A folder of frames or a list of images is a clip at `fps` frames per second (their file
names sorted with numbers in numeric order); with `frames` set, that many of them, evenly.

Limits (None or "none": no limit), checked before anything is decoded where the file's
header tells, and again while decoding: `max_frames` sampled frames, `max_duration` seconds
of clip, `max_frame_pixels` pixels per frame. The error says what is wrong and which setting
allows more.
"""
from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from PIL import Image, ImageSequence, UnidentifiedImageError

from visprog.errors import ImageError, VideoError
from visprog.values.images import load_image
from visprog.values.video import Video, evenly_spread

VIDEO_DEFAULTS: dict[str, Any] = {
    "fps": 2.0,            # frames kept per second of clip
    "frames": None,        # or: this many, spread evenly (overrides fps)
    "max_side": None,      # scale larger frames down to this long side
    "max_frames": 256,     # at most this many sampled frames
    "max_duration": 600.0,  # seconds
    "max_frame_pixels": 3840 * 2160,  # 4K UHD
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# The container formats PyAV may open (FFmpeg's demuxer names).
CONTAINERS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                        "mpeg", "mpegts", "flv", "ogg", "asf", "gif"})
_EPS = 1e-6


def _signature(head: bytes) -> str | None:
    """The kind of video file its first bytes say it is ("gif", "av") or None."""
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip",
                                        b"pnot"):
        return "av"  # MP4 / MOV boxes
    if head[:4] in (b"\x1a\x45\xdf\xa3", b"FLV\x01", b"OggS", b"\x00\x00\x01\xba",
                    b"\x00\x00\x01\xb3", b"\x30\x26\xb2\x75") \
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "av"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "av"  # MPEG-TS packets of 188 bytes
    return None


def _limit(value: Any, key: str, kind: type, minimum: float) -> Any:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"[video] {key} must be a number or \"none\", got {value!r}")
    if kind is int and float(value) != int(value):
        raise ValueError(f"[video] {key} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"[video] {key} must be at least {minimum:g}, got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class VideoSettings:
    """How videos are sampled and what they may be (see the module docstring)."""

    fps: float = VIDEO_DEFAULTS["fps"]
    frames: int | None = VIDEO_DEFAULTS["frames"]
    max_side: int | None = VIDEO_DEFAULTS["max_side"]
    max_frames: int | None = VIDEO_DEFAULTS["max_frames"]
    max_duration: float | None = VIDEO_DEFAULTS["max_duration"]
    max_frame_pixels: int | None = VIDEO_DEFAULTS["max_frame_pixels"]

    @classmethod
    def make(cls, settings: Mapping[str, Any] | "VideoSettings" | None = None,
             **overrides: Any) -> "VideoSettings":
        """Settings from a mapping (the `[video]` table) with `overrides` over it; a key
        left out keeps its default, 0 turns `frames` and `max_side` off.

        Raises:
            ValueError: an unknown key or a bad value, naming it.
        """
        if isinstance(settings, VideoSettings):
            settings = {f.name: getattr(settings, f.name) for f in fields(cls)}
        merged = {**VIDEO_DEFAULTS, **dict(settings or {}),
                  **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(merged) - set(VIDEO_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown [video] setting{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)}; known: {', '.join(VIDEO_DEFAULTS)}")
        fps = _limit(merged["fps"], "fps", float, 1e-3)
        if fps is None:
            raise ValueError("[video] fps must be a number of frames per second")
        frames = _limit(merged["frames"] or None, "frames", int, 1)
        max_side = _limit(merged["max_side"] or None, "max_side", int, 8)
        max_frames = _limit(merged["max_frames"], "max_frames", int, 1)
        if frames is not None and max_frames is not None and frames > max_frames:
            raise ValueError(f"[video] frames = {frames} is over max_frames = {max_frames}; "
                             "sample fewer frames or raise max_frames")
        return cls(fps, frames, max_side, max_frames,
                   _limit(merged["max_duration"], "max_duration", float, 1e-3),
                   _limit(merged["max_frame_pixels"], "max_frame_pixels", int, 64))

    def sampling(self) -> dict[str, Any]:
        """What decides which frames a clip gives: part of the Video (and its cache key)."""
        out: dict[str, Any] = {"frames": self.frames} if self.frames else {"fps": self.fps}
        if self.max_side:
            out["max_side"] = self.max_side
        return out

    def check(self, video: Video, name: str = "video") -> None:
        """A Video given as it is must keep to the limits, as a decoded one does.

        Raises:
            VideoError: naming the limit and the setting that allows more.
        """
        self._check_pixels(*video.size, name)
        self._check_duration(video.end, name)
        self._check_count(len(video), name)

    # -- the checks, each naming its setting ---------------------------------------------
    def _check_pixels(self, w: int, h: int, name: str) -> None:
        if w <= 0 or h <= 0:
            raise VideoError(f"{name} has frames of {w}x{h} pixels")
        if self.max_frame_pixels is not None and w * h > self.max_frame_pixels:
            raise VideoError(f"{name} has frames of {w}x{h} = {w * h:,} pixels, over the limit "
                             f"of {self.max_frame_pixels:,} per frame; scale it down or raise "
                             "the [video] setting max_frame_pixels")

    def _check_duration(self, seconds: float, name: str) -> None:
        if self.max_duration is not None and seconds > self.max_duration + _EPS:
            raise VideoError(f"{name} is {seconds:.1f} s long, over the limit of "
                             f"{self.max_duration:g} s; cut it shorter or raise the [video] "
                             "setting max_duration")

    def _check_count(self, n: int, name: str, *, expected: bool = False) -> None:
        if self.max_frames is not None and n > self.max_frames:
            how = f"sampling {self.fps:g} frames a second " if not self.frames else ""
            raise VideoError(f"{name}: {how}gives {'about ' if expected else ''}{n} frames, over "
                             f"the limit of {self.max_frames}; lower the [video] setting fps, "
                             "sample a fixed number (frames = N) or raise max_frames")


def load_video(source: Any, settings: VideoSettings | Mapping[str, Any] | None = None, *,
               image_limits: Mapping[str, Any] | None = None) -> Video:
    """Read a video file (a path or bytes), a folder of frames, a list of images (paths, PIL
    images or arrays) or a `Video` as a Video sampled and checked by `settings`.

    Args:
        source: what to read.
        settings: `VideoSettings` or a `[video]` mapping; default `VIDEO_DEFAULTS`.
        image_limits: `load_image`'s limits for the images of a folder or list (their
            pixels are also checked against `max_frame_pixels`).

    Raises:
        VideoError: not found, not a video (or an unsupported format), damaged or
            truncated, no frames, frames of different sizes, or over a limit.
    """
    s = settings if isinstance(settings, VideoSettings) else _settings(settings)
    if isinstance(source, Video):
        s.check(source, source.source or "video")
        return source
    if isinstance(source, (bytes, bytearray)):
        return _read_file(lambda: io.BytesIO(bytes(source)), bytes(source[:512]), "<bytes>", s)
    if isinstance(source, str) and "://" in source[:16]:
        raise VideoError(f"can't read a video from an address: {source}; download it and give "
                         "the file's path")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise VideoError(f"video file not found: {path}")
        if path.is_dir():
            return _read_images(_frame_files(path), s, path.name or str(path), image_limits)
        try:
            with open(path, "rb") as f:
                head = f.read(512)
        except OSError as e:
            raise VideoError(f"could not read video file {path}: {e}") from e
        return _read_file(lambda: open(path, "rb"), head, path.name, s)
    if isinstance(source, (list, tuple)):
        return _read_images(list(source), s, "the list of frames", image_limits)
    raise VideoError(f"can't read a video from a {type(source).__name__}; give a video file's "
                     "path, a folder of frames or a list of images")


def _settings(mapping: Mapping[str, Any] | None) -> VideoSettings:
    try:
        return VideoSettings.make(mapping)
    except ValueError as e:
        raise VideoError(str(e)) from e


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _frame_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural_key(p.name))
    if not files:
        raise VideoError(f"the folder {folder} holds no frames (image files: "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _read_images(items: list[Any], s: VideoSettings, name: str,
                 image_limits: Mapping[str, Any] | None) -> Video:
    if not items:
        raise VideoError(f"{name} holds no frames")
    times = [i / s.fps for i in range(len(items))]
    end = len(items) / s.fps
    s._check_duration(end, name)
    picks = list(range(len(items)))
    if s.frames:
        picks = evenly_spread(times, end, s.frames)
    s._check_count(len(picks), name)
    limits = dict(image_limits or {})
    if s.max_frame_pixels is not None:
        limits["max_pixels"] = min(limits.get("max_pixels") or s.max_frame_pixels,
                                   s.max_frame_pixels)
    frames = []
    for i in picks:
        try:
            im = load_image(items[i], **limits)
        except ImageError as e:
            raise VideoError(f"{name}, frame {i}: {e}") from e
        frames.append(_bounded(im, s.max_side))
    try:
        return Video(frames, [times[i] for i in picks], end=end, sampling=s.sampling(),
                     source=name)
    except ValueError as e:
        raise VideoError(f"{name}: {e}") from e


def _bounded(im: Image.Image, max_side: int | None) -> Image.Image:
    if not max_side or max(im.size) <= max_side:
        return im
    scale = max_side / max(im.size)
    return im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                     Image.Resampling.BILINEAR)


class _Sampler:
    """Chooses frames from a stream of (time, frame) in time order (see the module
    docstring); `frame` is anything `to_image` turns into a PIL image, called only for the
    frames kept."""

    def __init__(self, s: VideoSettings, duration: float | None, name: str,
                 to_image: Callable[[Any], Image.Image]):
        self.s, self.name, self.to_image = s, name, to_image
        self.kept: list[tuple[float, Image.Image]] = []
        self.next = 0.0
        self.prev: tuple[float, Any] | None = None
        self.prev_kept = False
        self.targets: list[float] = []
        if s.frames:
            if duration is None:
                raise VideoError(f"{name}: its length is unknown, so {s.frames} frames can't "
                                 "be spread over it; sample by fps instead")
            self.targets = [(k + 0.5) * duration / s.frames for k in range(s.frames)]
        self.last_time = 0.0

    def offer(self, t: float, frame: Any) -> None:
        self.s._check_duration(t, self.name)
        self.last_time = t
        if self.s.frames:
            while self.targets and self.prev is not None and t > self.targets[0] + _EPS:
                self._keep_prev()
                self.targets.pop(0)
            self.prev, self.prev_kept = (t, frame), False
            return
        if t + _EPS >= self.next:
            self._keep(t, frame)
            step = 1.0 / self.s.fps
            self.next = (math.floor(t / step + _EPS) + 1) * step

    def _keep_prev(self) -> None:
        if self.prev is not None and not self.prev_kept:
            self._keep(*self.prev)
            self.prev_kept = True

    def _keep(self, t: float, frame: Any) -> None:
        self.kept.append((t, _bounded(self.to_image(frame), self.s.max_side)))
        self.s._check_count(len(self.kept), self.name)

    def finish(self) -> list[tuple[float, Image.Image]]:
        if self.s.frames and self.targets:
            self._keep_prev()
        return self.kept


def _read_file(opener: Callable[[], Any], head: bytes, name: str, s: VideoSettings) -> Video:
    kind = _signature(head)
    if kind is None:
        raise VideoError(f"not a video file (or an unsupported format): {name}; visprog reads "
                         "MP4, MOV, WebM/MKV, AVI, MPEG, FLV, Ogg, ASF and animated GIF")
    times_frames, end = _read_gif(opener, name, s) if kind == "gif" else \
        _read_av(opener, name, s)
    if not times_frames:
        raise VideoError(f"{name} holds no frames")
    size = times_frames[0][1].size
    frames = [im if im.size == size else im.resize(size, Image.Resampling.BILINEAR)
              for _, im in times_frames]  # a stream may change size midway
    times = [t for t, _ in times_frames]
    return Video(frames, times, end=max(end, times[-1]), sampling=s.sampling(), source=name)


def _read_gif(opener: Callable[[], Any], name: str, s: VideoSettings
              ) -> tuple[list[tuple[float, Image.Image]], float]:
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit is checked from the header, next
    try:
        with opener() as fp:
            try:
                im = Image.open(fp)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise VideoError(f"could not read {name}: {e}") from e
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            s._check_pixels(*im.size, name)
            try:
                delays = [max(f.info.get("duration", 100) or 0, 0) for f in
                          ImageSequence.Iterator(im)]
                # browsers show frames of under 20 ms for 100 ms; so do we
                delays = [d if d >= 20 else 100 for d in delays]
                duration = sum(delays) / 1000.0
                s._check_duration(duration, name)
                if s.frames is None:
                    s._check_count(min(len(delays), math.ceil(duration * s.fps)), name,
                                   expected=True)
                sampler = _Sampler(s, duration, name, lambda f: f.convert("RGB"))
                t = 0.0
                for frame, delay in zip(ImageSequence.Iterator(im), delays):
                    sampler.offer(t, frame)
                    t += delay / 1000.0
                return sampler.finish(), duration
            except VideoError:
                raise
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise VideoError(f"could not decode {name} (damaged or truncated?): {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _read_av(opener: Callable[[], Any], name: str, s: VideoSettings
             ) -> tuple[list[tuple[float, Image.Image]], float]:
    try:
        import av
    except ImportError as e:
        raise VideoError("reading video files needs PyAV: pip install 'visprog[video]'") from e
    with opener() as fp:
        try:
            container = av.open(fp, mode="r", metadata_errors="ignore")
        except (av.FFmpegError, OSError, EOFError, ValueError) as e:
            raise VideoError(f"could not read {name} (not a video, damaged or truncated): "
                             f"{e}") from e
        with container:
            formats = set(container.format.name.split(","))
            if not formats & CONTAINERS:
                raise VideoError(f"not a video file (or an unsupported format): {name} "
                                 f"({container.format.name})")
            if not container.streams.video:
                raise VideoError(f"{name} holds no frames (it has no video stream)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            w, h = stream.codec_context.width, stream.codec_context.height
            if w and h:
                s._check_pixels(w, h, name)
            duration = _duration(container, stream)
            if duration is not None:
                s._check_duration(duration, name)
                if s.frames is None:
                    expected = math.ceil(duration * s.fps - _EPS)
                    if stream.frames:
                        expected = min(expected, stream.frames)
                    s._check_count(expected, name, expected=True)
            if s.frames and duration is None:
                duration = _demuxed_duration(opener, name)

            def to_image(frame: Any) -> Image.Image:
                return frame.to_image()

            sampler = _Sampler(s, duration, name, to_image)
            decoded, origin, last = 0, None, -1.0
            rate = float(stream.average_rate) if stream.average_rate else None
            try:
                for frame in container.decode(stream):
                    s._check_pixels(frame.width, frame.height, name)
                    t = frame.time
                    if t is None:
                        t = decoded / rate if rate else float(decoded)
                    origin = t if origin is None else origin
                    t -= origin
                    if t <= last:  # a damaged stream may repeat or go back in time
                        continue
                    last = t
                    decoded += 1
                    sampler.offer(t, frame)
            except VideoError:
                raise
            except (av.FFmpegError, OSError, EOFError, ValueError) as e:
                raise VideoError(f"could not decode {name} after {decoded} frames (damaged or "
                                 f"truncated?): {e}") from e
            if stream.frames and decoded < stream.frames - 2:
                raise VideoError(f"{name} is truncated or damaged: its header counts "
                                 f"{stream.frames} frames, {decoded} decode")
            if decoded == 0:
                raise VideoError(f"{name} holds no frames")
            step = 1.0 / rate if rate else 0.0
            end = duration if duration is not None else last + step
            return sampler.finish(), max(end, last)


def _duration(container: Any, stream: Any) -> float | None:
    """The clip's length in seconds from the headers, or None when they don't say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # av.time_base
    return None


def _demuxed_duration(opener: Callable[[], Any], name: str) -> float | None:
    """The clip's length from its packets (no decoding), for headers that don't say."""
    import av

    with opener() as fp, av.open(fp, mode="r", metadata_errors="ignore") as c:
        stream = c.streams.video[0]
        first, last = None, None
        for packet in c.demux(stream):
            if packet.pts is None or packet.time_base is None:
                continue
            t = float(packet.pts * packet.time_base)
            first = t if first is None else min(first, t)
            end = t + float((packet.duration or 0) * packet.time_base)
            last = end if last is None else max(last, end)
        return None if first is None else last - first
