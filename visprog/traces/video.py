"""Videos and Tracks in a trace page: a strip of a few sampled frames, each with its time,
and the tracks drawn on them with one colour per id in every frame (track 3 is the same
colour wherever it is seen), so following an object along the strip is following a colour.

A page stays small however long the clip: at most `STRIP_FRAMES` frames, each a thumbnail
of `STRIP_SIDE` pixels. A Video passed to a step as an argument is shown in one line (it is
drawn where it was bound or made).
"""
from __future__ import annotations

import html
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from visprog.traces.draw import MASK_ALPHA, _font, _text_color, color_for, thumbnail
from visprog.values.text import show
from visprog.values.video import Tracks, Video

STRIP_FRAMES = 8   # frames shown of a video or tracks, spread evenly
STRIP_SIDE = 160   # longest side of each frame in the strip

VIDEO_CSS = (".strip{display:flex;flex-wrap:wrap;gap:.3em}.strip figure{margin:0}"
        ".strip figcaption{font-size:.75em;color:#666;text-align:center}")


def strip_rows(n: int, k: int = STRIP_FRAMES) -> list[int]:
    """At most `k` frame numbers of `n`, spread evenly, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def track_color(track_id: int) -> tuple[int, int, int]:
    """The colour of a track id, the same in every frame."""
    return color_for(int(track_id) - 1)


def draw_tracks(frame: Image.Image, tracks: Tracks, t: int) -> Image.Image:
    """Frame `t` of the tracks over a copy of `frame` (any size: boxes and masks scale):
    each seen object's mask tinted, its box outlined and tagged `#id label`, in its id's
    colour."""
    out = frame.convert("RGB")
    w, h = out.size
    fw, fh = tracks.frame_size
    sx, sy = w / fw, h / fh
    cols = np.flatnonzero(tracks.seen[t])
    if tracks.masks is not None and len(cols):
        arr = np.asarray(out, dtype=np.float32).copy()
        for k in cols:
            m = tracks.masks[t, k]
            if (fw, fh) != (w, h):
                m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
                    (w, h), Image.NEAREST)) > 0
            if m.any():
                color = np.array(track_color(tracks.ids[k]), np.float32)
                arr[m] = (1 - MASK_ALPHA) * arr[m] + MASK_ALPHA * color
        out = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    font = _font(max(9, min(24, round(min(w, h) / 12))))
    for k in cols:
        x1, y1, x2, y2 = tracks.boxes[t, k] * [sx, sy, sx, sy]
        color = track_color(tracks.ids[k])
        left, top = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
        draw.rectangle([left, top, min(max(x2 - 1, left), w - 1), min(max(y2 - 1, top), h - 1)],
                       outline=color, width=max(1, round(min(w, h) / 100)))
        text = f"#{tracks.ids[k]} {tracks.labels[k]}"
        tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
        bx, by = int(min(max(left, 0), max(w - (tr - tl) - 2, 0))), int(max(top - (tb - tt) - 2, 0))
        draw.rectangle([bx, by, bx + tr - tl + 2, by + tb - tt + 2], fill=color)
        draw.text((bx + 1 - tl, by + 1 - tt), text, fill=_text_color(color), font=font)
    return out


def _figure(img: Callable[[Image.Image, str], str], im: Image.Image, caption: str) -> str:
    return f"<figure>{img(im, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def video_html(img: Callable[[Image.Image, str], str], video: Video) -> str:
    """A strip of the video's frames (at most STRIP_FRAMES), each with its time."""
    rows = strip_rows(len(video))
    figs = "".join(_figure(img, thumbnail(video.frames[i], STRIP_SIDE), f"{video.times[i]:.2f} s")
                   for i in rows)
    more = f", {len(rows)} shown" if len(rows) < len(video) else ""
    return (f'<div class="strip">{figs}</div>'
            f'<div class="muted">{html.escape(show(video))}{more}</div>')


def tracks_html(img: Callable[[Image.Image, str], str], tracks: Tracks,
                video: Video | None) -> str:
    """A strip of frames with the tracks drawn (over the video's frames when it is given and
    matches, else over grey), the frames where something is seen first; then each track's
    id, label and when it is seen."""
    seen_rows = np.flatnonzero(tracks.seen.any(axis=1))
    pool = seen_rows if len(seen_rows) else np.arange(len(tracks.times))
    rows = [int(pool[i]) for i in strip_rows(len(pool))]
    fits = video is not None and len(video) == len(tracks.times) \
        and video.size == tuple(tracks.frame_size)
    figs = []
    for t in rows:
        base = video.frames[t] if fits else Image.new("RGB", tracks.frame_size, (235, 235, 235))
        drawn = draw_tracks(thumbnail(base, STRIP_SIDE), tracks, t)
        figs.append(_figure(img, drawn, f"{tracks.times[t]:.2f} s"))
    spans = tracks.spans()
    items = []
    for k in range(len(tracks)):
        seen = np.flatnonzero(tracks.seen[:, k])
        when = (f"{tracks.times[seen[0]]:.2f}-{tracks.times[seen[-1]] + spans[seen[-1]]:.2f} s, "
                f"{spans[seen].sum():.2f} s seen") if len(seen) else "never seen"
        c = "#%02x%02x%02x" % track_color(tracks.ids[k])
        items.append(f'<span class="swatch" style="background:{c}"></span>#{tracks.ids[k]} '
                     f'{html.escape(str(tracks.labels[k]))}: {when}')
    listed = "<br>".join(items[:50]) + (f"<br>... {len(items) - 50} more" if len(items) > 50
                                         else "")
    return (f'<div class="strip">{"".join(figs)}</div>'
            f'<div class="muted">{html.escape(show(tracks))}</div><div>{listed}</div>')
