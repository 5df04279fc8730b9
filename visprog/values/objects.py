"""Objects: an immutable, ordered list of `Region`s of one image (best first).

Boxes are clipped to the image on construction; masks are checked to be the image's H x W.
Filtered like supervision's Detections: indexing returns the same type.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

@dataclass(frozen=True, eq=False)
class Region:
    """One detected or segmented region of an image."""

    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    label: str | None = None
    score: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (masks are left out; see the trace writer for those)."""
        d: dict[str, Any] = {"box": [round(v, 2) for v in self.box]}
        if self.label is not None:
            d["label"] = self.label
        if self.score is not None:
            d["score"] = round(float(self.score), 4)
        d.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool))})
        return d


def _clip_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers (x1, y1, x2, y2), got {len(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        raise ValueError(f"box has a non-finite coordinate: {box}")
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return (x1, y1, x2, y2)


@dataclass(frozen=True, eq=False)
class Objects(Sequence[Region]):
    """Regions of one image of size `image_size` = (width, height), best first.

    Indexing with an int gives a `Region`; with a slice, a list of ints or a boolean array it
    gives a new `Objects` of the same image, like supervision's Detections.
    """

    regions: tuple[Region, ...]
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        w, h = (int(v) for v in self.image_size)
        if w <= 0 or h <= 0:
            raise ValueError(f"image_size must be positive (width, height), got {self.image_size}")
        object.__setattr__(self, "image_size", (w, h))
        fixed = []
        for r in self.regions:
            if not isinstance(r, Region):
                raise TypeError(f"Objects holds Region values, got {type(r).__name__}")
            mask = r.mask
            if mask is not None:
                mask = np.asarray(mask)
                if mask.shape != (h, w):
                    raise ValueError(f"mask shape {mask.shape} is not the image's (H, W) = {(h, w)}")
                if mask.dtype != bool:
                    mask = mask > 0 if mask.dtype.kind in "iub" else mask > 0.5
                mask.setflags(write=False)
            box = _clip_box(r.box, w, h)
            fixed.append(replace(r, box=box, mask=mask) if (box != r.box or mask is not r.mask) else r)
        object.__setattr__(self, "regions", tuple(fixed))

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Objects":
        return cls((), image_size)

    @classmethod
    def from_boxes(cls, boxes: Iterable[Sequence[float]], image_size: tuple[int, int], *,
                   labels: Iterable[str | None] | None = None,
                   scores: Iterable[float | None] | None = None,
                   masks: Iterable[np.ndarray | None] | None = None) -> "Objects":
        boxes = [tuple(float(v) for v in b) for b in boxes]
        n = len(boxes)
        labels = list(labels) if labels is not None else [None] * n
        scores = list(scores) if scores is not None else [None] * n
        masks = list(masks) if masks is not None else [None] * n
        if not (len(labels) == len(scores) == len(masks) == n):
            raise ValueError("boxes, labels, scores and masks must have the same length")
        regions = tuple(Region(box=b, mask=m, label=l, score=None if s is None else float(s))
                        for b, l, s, m in zip(boxes, labels, scores, masks))
        return cls(regions, image_size)

    # -- sequence protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, (int, np.integer)):
            return self.regions[int(index)]
        if isinstance(index, slice):
            return Objects(self.regions[index], self.image_size)
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} "
                                 f"object{'s' if len(self) != 1 else ''}")
            idx = np.flatnonzero(idx)
        return Objects(tuple(self.regions[int(i)] for i in idx), self.image_size)

    def __repr__(self) -> str:
        labels = [r.label for r in self.regions]
        return f"Objects(n={len(self)}, image_size={self.image_size}, labels={labels})"

    # -- views --------------------------------------------------------------------------
    @property
    def boxes(self) -> np.ndarray:
        return np.array([r.box for r in self.regions], dtype=np.float64).reshape(-1, 4)

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.regions]

    @property
    def scores(self) -> list[float | None]:
        return [r.score for r in self.regions]

    def region_mask(self, i: int) -> np.ndarray:
        """The region's mask, or its box filled in when it has none."""
        r = self.regions[i]
        if r.mask is not None:
            return r.mask
        w, h = self.image_size
        m = np.zeros((h, w), dtype=bool)
        x1, y1, x2, y2 = r.box
        m[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
        return m

    def union_mask(self) -> np.ndarray:
        w, h = self.image_size
        out = np.zeros((h, w), dtype=bool)
        for i in range(len(self)):
            out |= self.region_mask(i)
        return out

    def with_regions(self, regions: Iterable[Region]) -> "Objects":
        return Objects(tuple(regions), self.image_size)

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.regions]
