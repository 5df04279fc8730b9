"""Binding a run's inputs: the one place where images and videos given by a caller (a path,
bytes, an array, a PIL image, a clip) become the values a program reads, under one set of
limits, whichever entry the run came through (Python, CLI, batch, evaluation, the demo)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image

from visprog.errors import VideoError
from visprog.values.images import load_image
from visprog.values.types import MAX_NESTING, nesting_depth
from visprog.values.video import Video
from visprog.values.videos import VideoSettings, load_video


@dataclass
class InputReader:
    """Reads inputs under the limits of one engine.

    Attributes:
        image_limits: `load_image`'s keyword limits (max_pixels, min_side, max_aspect).
        video_settings: how videos are sampled and what they may be (`VideoSettings`).
    """

    image_limits: dict[str, Any] = field(default_factory=dict)
    video_settings: VideoSettings | None = None

    def bind(self, image: Any = None, *, left: Any = None, right: Any = None,
             video: Any = None, inputs: Mapping[str, Any] | None = None,
             read: dict[Any, Any] | None = None) -> dict[str, Any]:
        """The input variables of a run: IMAGE, LEFT, RIGHT read as images, VIDEO decoded
        and sampled (a `Video` given is checked as it is), other `inputs` bound as given
        (images and Videos among them read the same way). `read` maps paths already read
        to their value, so an input shared by many items is read (and hashed) once.

        Raises:
            ImageError: an image can't be read or is outside the limits (a `VideoError`, one
                kind of ImageError, for a video).
            ValueError: a value nests lists deeper than `MAX_NESTING`.
        """
        bound: dict[str, Any] = {}
        for name, value in (("IMAGE", image), ("LEFT", left), ("RIGHT", right)):
            if value is not None:
                bound[name] = self.image(value, read)
        if video is not None:
            bound["VIDEO"] = self.video(video, read)
        for name, value in (inputs or {}).items():
            if isinstance(value, Video):
                value = self.video(value, read)
            elif isinstance(value, Image.Image) or type(value).__module__ == "numpy":
                value = self.image(value, read)
            elif nesting_depth(value) > MAX_NESTING:
                raise ValueError(f"input {name!r} nests lists more than {MAX_NESTING} deep")
            bound[name] = value
        return bound

    def image(self, value: Any, read: dict[Any, Any] | None = None) -> Any:
        """One image, read once per path when `read` is given."""
        return self._once(os.fspath(value) if _is_path(value) else None, read,
                          lambda: load_image(value, **self.image_limits))

    def video(self, value: Any, read: dict[Any, Any] | None = None) -> Video:
        """One video, sampled by this reader's settings, read once per path when `read` is
        given."""
        return self._once(("video", os.fspath(value)) if _is_path(value) else None, read,
                          lambda: load_video(value, self.video_settings,
                                             image_limits=self.image_limits))

    def load_video(self, source: Any, **sampling: Any) -> Video:
        """A video read with sampling settings of its own (`fps=8`, `frames=16`,
        `max_side=512`, or a limit) over this reader's.

        Raises:
            VideoError: it can't be read, is outside the limits, or a setting is wrong.
        """
        try:
            settings = VideoSettings.make(self.video_settings, **sampling)
        except ValueError as e:
            raise VideoError(str(e)) from e
        return load_video(source, settings, image_limits=self.image_limits)

    @staticmethod
    def _once(key: Any, read: dict[Any, Any] | None, load: Any) -> Any:
        if read is None or key is None:
            return load()
        if key not in read:
            read[key] = load()
        return read[key]


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))
