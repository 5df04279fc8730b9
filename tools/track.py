"""Track(video, object) -> Tracks: every `object` (a noun phrase, or a list of them) followed
through the video, each with an id that stays the same from frame to frame; on SAM 3's video
model (tools/_sam3_video.py: detection and a memory tracker, pruned as it goes so a long
clip takes no more memory than a short one).

Ids are 1, 2, ... in the order the objects first appear (objects that appear in the same
frame: in the tracker's order), the same whether a call runs alone or together with others.
Each track's label is the phrase that found it, as written. Boxes are in the frames'
pixels; a track's box and mask are missing (`tracks.seen` False) in frames it is not seen in.

Batching: calls on the same video (several programs asking about one clip, or one call with
several phrases) share one tracking session, which runs the video model once per frame for
all their phrases (detection per phrase, tracking per object); calls on different videos
run one session each. The session's cap on objects is `max_objects` per phrase.

Settings (section `[Track]`; defaults and the tiny preset in `Track.presets` below):
    checkpoint: hub id, local path or `tiny:<name>` (the real one: facebook/sam3).
    max_objects: at most this many objects per phrase (None: the checkpoint's cap).
    detection_threshold: the detector's score for an instance to count (None: the
        checkpoint's, 0.5 published).
    new_object_threshold: the score a detection needs to start a new track (None: the
        checkpoint's, 0.7 published).
    masks: keep each object's mask per frame (False: boxes and scores only; less memory).
"""
from __future__ import annotations

from typing import Any, Hashable

import numpy as np

from visprog.models import ModelTool, SettingsError
from visprog.values import Tracks, Video, codec

from . import _sam3, _sam3_video
from ._notes import note


def _phrases(value: Any) -> tuple[str, ...]:
    texts = [value] if isinstance(value, str) else list(value)
    out = tuple(dict.fromkeys(str(t).strip() for t in texts if str(t).strip()))
    if not out:
        raise ValueError("Track needs an object to follow, e.g. object='car'")
    return out


def build_tracks(video: Video, results: list[_sam3_video.FrameResult],
                 wanted: tuple[str, ...], masks: bool) -> Tracks:
    """The Tracks of the objects the `wanted` phrases found (ids renumbered from 1 in the
    order they first appear), from the session's per-frame results."""
    prompt_of = {p: _sam3.phrase(p) for p in wanted}
    label_of = {v: k for k, v in reversed(prompt_of.items())}  # first wording wins
    order: dict[int, str] = {}  # tracker id -> phrase, in order of first appearance
    for r in results:
        for obj, prompt in zip(r.ids, r.prompts):
            if prompt in label_of and obj not in order:
                order[obj] = prompt
    cols = {obj: k for k, obj in enumerate(order)}
    t, k = len(results), len(order)
    w, h = video.size
    boxes = np.full((t, k, 4), np.nan)
    scores = np.full((t, k), np.nan)
    mask_arr = np.zeros((t, k, h, w), dtype=bool) if masks else None
    for i, r in enumerate(results):
        for j, obj in enumerate(r.ids):
            if obj in cols:
                boxes[i, cols[obj]] = r.boxes[j]
                scores[i, cols[obj]] = r.scores[j]
                if mask_arr is not None and r.masks is not None:
                    mask_arr[i, cols[obj]] = r.masks[j]
    return Tracks(range(1, k + 1), [label_of[order[obj]] for obj in order], video.times,
                  end=video.end, frame_size=video.size, boxes=boxes, scores=scores,
                  masks=mask_arr)


class Track(ModelTool):
    name = "Track"
    tasks = ("video",)  # the planner's prompts that describe it
    params = {"video": "Video", "object": "Text|TextList"}
    returns = "Tracks"
    doc = ("follows every `object` (a phrase, or a list) through the video; each keeps one id "
           "in every frame")
    draw_on = "video"
    presets = {
        "default": {"checkpoint": "facebook/sam3", "max_objects": None,
                    "detection_threshold": None, "new_object_threshold": None, "masks": True},
        "tiny": {"checkpoint": "tiny:sam3_video"},
    }
    tiny_checkpoints = {"sam3_video": _sam3_video.build_tiny_sam3_video}

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        def number(key: str, kind: type) -> Any:
            v = s.get(key)
            if v is None or (isinstance(v, str) and v.lower() == "none"):
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SettingsError(f"Track: {key} must be a number or none, got {v!r}")
            return kind(v)

        return {"checkpoint": str(s["checkpoint"]), "max_objects": number("max_objects", int),
                "detection_threshold": number("detection_threshold", float),
                "new_object_threshold": number("new_object_threshold", float),
                "masks": bool(s.get("masks", True))}

    def preprocess(self, call: dict[str, Any]) -> tuple[Video, tuple[str, ...]]:
        video = call["video"]
        if not isinstance(video, Video):
            raise TypeError(f"Track: video must be a Video, got {type(video).__name__}")
        return video, _phrases(call["object"])

    def batch_key(self, item: tuple[Video, tuple[str, ...]]) -> Hashable:
        return codec.digest(item[0])  # one session per clip, for all its calls' phrases

    def forward(self, items: list[tuple[Video, tuple[str, ...]]]) -> list[Tracks]:
        s = self.settings
        bundle = self.model("sam3_video", s["checkpoint"], _sam3_video.load_sam3_video)
        video = items[0][0]
        phrases = list(dict.fromkeys(_sam3.phrase(p) for _, wanted in items for p in wanted))
        cut = [p for p, long in zip(phrases, _sam3.too_long(bundle, phrases)) if long]
        for p in cut:
            note(self.ctx, self.name, f"object {p[:60]!r}... cut to SAM 3's "
                 f"{bundle['text_len']} text tokens", query=p)
        results = _sam3_video.track(
            bundle, video.frames, phrases, masks=s["masks"], max_objects=s["max_objects"],
            detection_threshold=s["detection_threshold"],
            new_object_threshold=s["new_object_threshold"])
        return [build_tracks(video, results, wanted, s["masks"]) for _, wanted in items]


TOOLS = [Track]
