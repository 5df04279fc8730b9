"""Objects: the regions of one image as parallel arrays, best first (like supervision's
`Detections`); `Region`: one region, as iteration and int indexing give it.

    objs.boxes     (N, 4) float64: x1, y1, x2, y2 in pixels, clipped to the image
    objs.scores    (N,) float64, always numbers. A region no model scored (Loc's 'LEFT' half,
                   a face of the cascade detector, a box a person gave) counts as certain:
                   1.0, with `has_score` False; its `Region.score` is None.
    objs.labels    (N,) object array of str or None
    objs.masks     None when no region has a mask, else (N, H, W) bool; a region without a
                   mask (`has_mask` False) has its box filled in there, as `region_mask` gives
    objs.extra     field name -> (N,) object array of per-region values (`class_score`,
                   `depth`, ...); None where a region lacks the field (its `Region.extra` then
                   leaves the name out)

Every array is read-only and an Objects never changes. Indexing with an int gives a
`Region`; with a slice, a list or array of ints, or a boolean mask of length N it gives a new
Objects of the same image, so `objs[objs.scores > 0.5]` or `objs[objs.labels == "cat"]`
filter. `Objects.from_regions` builds from `Region`s, `Objects.concat` joins several.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np


class _Absent:
    """The marker of a region that lacks an extra field (`ABSENT`)."""

    _instance: "_Absent | None" = None

    def __new__(cls) -> "_Absent":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


# In an `extra` column given to `Objects(...)`: this region has no such field.
ABSENT = _Absent()


@dataclass(frozen=True, eq=False)
class Region:
    """One region of an image: what iterating over Objects or `objs[i]` gives, and what
    `Objects.from_regions` takes. `score` None: no model scored it (Objects.scores holds
    1.0 there); `mask` None: it has none (its box stands for it)."""

    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    label: str | None = None
    score: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Region):
            return NotImplemented
        if (tuple(self.box), self.label, self.score) != (tuple(other.box), other.label,
                                                         other.score) \
                or not _same_value(dict(self.extra), dict(other.extra)):
            return False
        if self.mask is None or other.mask is None:
            return self.mask is None and other.mask is None
        return np.array_equal(self.mask, other.mask)

    __hash__ = None  # type: ignore[assignment]  # equal by content, and masks are arrays

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (masks are left out; see the trace writer for those)."""
        d: dict[str, Any] = {"box": [round(v, 2) for v in self.box]}
        if self.label is not None:
            d["label"] = self.label
        if self.score is not None:
            d["score"] = round(float(self.score), 4)
        d.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool))})
        return d


@dataclass(frozen=True, eq=False, init=False, repr=False)
class Objects(Sequence[Region]):
    """The regions of one image of size `image_size` = (width, height), best first.

    Args:
        boxes: N boxes (x1, y1, x2, y2) in pixels; clipped to the image, corners ordered.
        image_size: (width, height) of the image the regions belong to.
        scores: N model scores, None for a region no model scored; None: none was.
        labels: N labels (str or None); None: no labels.
        masks: an (N, H, W) array, or N masks of H x W each or None; None: no masks.
            Non-bool masks are thresholded (> 0 for ints, > 0.5 for floats).
        extra: per-region fields, name -> N values (`ABSENT` where a region lacks one).

    Raises:
        ValueError: a non-positive image size, a box that is not 4 finite numbers, lengths
            that differ from the number of boxes, a mask not of the image's H x W.
        TypeError: a label that is not a string or None, a score that is not a number.
    """

    boxes: np.ndarray
    image_size: tuple[int, int]
    scores: np.ndarray
    has_score: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    has_mask: np.ndarray
    extra: Mapping[str, np.ndarray]
    # name -> which regions have the field, only for fields some region lacks
    _present: Mapping[str, np.ndarray]

    def __init__(self, boxes: Any, image_size: tuple[int, int], *,
                 scores: Iterable[float | None] | None = None,
                 labels: Iterable[str | None] | None = None,
                 masks: Any = None,
                 extra: Mapping[str, Iterable[Any]] | None = None) -> None:
        w, h = _image_size(image_size)
        box_arr = _boxes(boxes, w, h)
        n = len(box_arr)
        score_arr, has_score = _scores(scores, n)
        mask_arr, has_mask = _masks(masks, box_arr, w, h)
        columns, present = {}, {}
        for name, values in (extra or {}).items():
            if not isinstance(name, str):
                raise TypeError(f"extra field names are strings, got {name!r:.40}")
            col, have = _column(values, n, f"extra field {name!r}")
            if have.any():
                columns[name] = col
                if not have.all():
                    present[name] = _frozen(have)
        self._set(box_arr, (w, h), score_arr, has_score, _labels(labels, n), mask_arr, has_mask,
                  columns, present)

    def _set(self, boxes: np.ndarray, image_size: tuple[int, int], scores: np.ndarray,
             has_score: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
             has_mask: np.ndarray, extra: dict[str, np.ndarray],
             present: dict[str, np.ndarray]) -> None:
        for name, value in (("boxes", boxes), ("image_size", image_size), ("scores", scores),
                            ("has_score", has_score), ("labels", labels), ("masks", masks),
                            ("has_mask", has_mask), ("extra", MappingProxyType(extra)),
                            ("_present", MappingProxyType(present))):
            object.__setattr__(self, name, value)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Objects":
        return cls(np.zeros((0, 4)), image_size)

    @classmethod
    def from_regions(cls, regions: Iterable[Region], image_size: tuple[int, int]) -> "Objects":
        """Objects of `image_size` holding `regions`, in their order."""
        regions = list(regions)
        for r in regions:
            if not isinstance(r, Region):
                raise TypeError(f"Objects are built from Region values, got {type(r).__name__}")
        names: dict[str, None] = {}
        for r in regions:
            names.update(dict.fromkeys(r.extra))
        return cls([r.box for r in regions], image_size,
                   scores=[r.score for r in regions], labels=[r.label for r in regions],
                   masks=[r.mask for r in regions] if any(r.mask is not None for r in regions)
                   else None,
                   extra={k: [r.extra.get(k, ABSENT) for r in regions] for k in names})

    def with_regions(self, regions: Iterable[Region]) -> "Objects":
        """Objects of the same image holding `regions`."""
        return Objects.from_regions(regions, self.image_size)

    @classmethod
    def concat(cls, parts: Iterable["Objects"],
               image_size: tuple[int, int] | None = None) -> "Objects":
        """The regions of `parts` one after another; all must be of one image, whose size
        `image_size` gives when `parts` may be empty.

        Raises:
            ValueError: parts of different image sizes, or no parts and no `image_size`.
        """
        parts = list(parts)
        for p in parts:
            if not isinstance(p, Objects):
                raise TypeError(f"concat joins Objects, got {type(p).__name__}")
        sizes = {p.image_size for p in parts} | ({_image_size(image_size)} if image_size else set())
        if len(sizes) != 1:
            raise ValueError("concat needs Objects of one image size, got "
                             + (", ".join(map(str, sorted(sizes))) or "no parts"))
        (size,) = sizes
        if len(parts) == 1:
            return parts[0]
        names: dict[str, None] = {}
        for p in parts:
            names.update(dict.fromkeys(p.extra))
        masked = any(p.masks is not None for p in parts)
        return cls(np.concatenate([p.boxes for p in parts] + [np.zeros((0, 4))]), size,
                   scores=[s for p in parts for s in p._score_list()],
                   labels=[l for p in parts for l in p.labels],
                   masks=[p.region_mask(i) if p.has_mask[i] else None
                          for p in parts for i in range(len(p))] if masked else None,
                   extra={k: [v if has else ABSENT for p in parts
                                 for v, has in zip(p.extra.get(k, [None] * len(p)),
                                                   p.has_extra(k))]
                          for k in names})

    def with_extra(self, /, **fields: Iterable[Any]) -> "Objects":
        """The same regions with the given extra fields (N values each) added or replaced."""
        n = len(self)
        extra, present = dict(self.extra), dict(self._present)
        for name, values in fields.items():
            col, have = _column(values, n, f"extra field {name!r}")
            extra.pop(name, None)
            present.pop(name, None)
            if have.any():
                extra[name] = col
                if not have.all():
                    present[name] = _frozen(have)
        out = object.__new__(Objects)
        out._set(self.boxes, self.image_size, self.scores, self.has_score, self.labels,
                 self.masks, self.has_mask, extra, present)
        return out

    # -- sequence protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.boxes)

    def __iter__(self) -> Iterator[Region]:
        return (self._region(i) for i in range(len(self)))

    def __getitem__(self, index: Any) -> Any:
        n = len(self)
        if isinstance(index, (bool, np.bool_)):
            raise IndexError("a single bool is not an index of Objects; use a boolean mask "
                             "of one value per region")
        if isinstance(index, (int, np.integer)):
            i = operator.index(index)
            if not -n <= i < n:
                raise IndexError(f"region {i} is out of range: there are {n}")
            return self._region(i % n)
        if isinstance(index, slice):
            return self._take(index)
        if isinstance(index, str):
            raise TypeError(f"Objects are indexed by position, not by a string ({index!r:.40}); "
                            f"read extra fields from .extra")
        idx = np.asarray(index)
        if idx.ndim != 1:
            raise IndexError(f"Objects take a 1-D index, got one of shape {idx.shape}")
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of length {len(idx)} for {n} "
                                 f"object{'s' if n != 1 else ''}")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.intp)
        elif idx.dtype.kind not in "iu":
            raise IndexError(f"Objects are indexed by an int, a slice, ints or a boolean mask, "
                             f"not {idx.dtype} values")
        elif not -n <= idx.min() <= idx.max() < n:
            raise IndexError(f"index out of range: there are {n} objects")
        return self._take(idx)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Objects):
            return NotImplemented
        if self.image_size != other.image_size or len(self) != len(other):
            return False
        same_masks = (self.masks is None and other.masks is None) or (
            self.masks is not None and other.masks is not None
            and np.array_equal(self.masks, other.masks))
        return (same_masks and np.array_equal(self.boxes, other.boxes)
                and np.array_equal(self.has_score, other.has_score)
                and np.array_equal(self.scores, other.scores, equal_nan=True)
                and list(self.labels) == list(other.labels)
                and np.array_equal(self.has_mask, other.has_mask)
                and self.extra.keys() == other.extra.keys()
                and all(np.array_equal(self._present.get(k, True), other._present.get(k, True))
                        and _same_value(list(self.extra[k]), list(other.extra[k]))
                        for k in self.extra))

    __hash__ = None  # type: ignore[assignment]  # equal by content

    def __repr__(self) -> str:
        return (f"Objects(n={len(self)}, image_size={self.image_size}, "
                f"labels={list(self.labels)})")

    # -- views --------------------------------------------------------------------------
    @property
    def areas(self) -> np.ndarray:
        """(N,) the boxes' areas in square pixels."""
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    def has_extra(self, name: str) -> np.ndarray:
        """(N,) bool: which regions have the extra field `name`."""
        if name not in self.extra:
            return np.zeros(len(self), dtype=bool)
        return self._present.get(name, np.ones(len(self), dtype=bool))

    def region_extra(self, i: int) -> dict[str, Any]:
        """Region i's extra fields (those it has)."""
        return {k: col[i] for k, col in self.extra.items()
                if k not in self._present or self._present[k][i]}

    def region_mask(self, i: int) -> np.ndarray:
        """The region's mask (read-only), or its box filled in when it has none."""
        if self.masks is not None:
            return self.masks[i]
        w, h = self.image_size
        m = np.zeros((h, w), dtype=bool)
        _fill_box(m, self.boxes[i])
        return m

    def union_mask(self) -> np.ndarray:
        """The pixels of any region: masks where there are, boxes elsewhere."""
        if self.masks is not None:
            return self.masks.any(axis=0)
        w, h = self.image_size
        out = np.zeros((h, w), dtype=bool)
        for box in self.boxes:
            _fill_box(out, box)
        return out

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self]

    # -- internals ----------------------------------------------------------------------
    def _region(self, i: int) -> Region:
        return Region(box=tuple(self.boxes[i].tolist()),
                      mask=self.masks[i] if self.has_mask[i] else None,
                      label=self.labels[i],
                      score=float(self.scores[i]) if self.has_score[i] else None,
                      extra=self.region_extra(i))

    def _score_list(self) -> list[float | None]:
        return [float(s) if has else None for s, has in zip(self.scores, self.has_score)]

    def _take(self, idx: slice | np.ndarray) -> "Objects":
        has_mask = _frozen(self.has_mask[idx])
        extra, present = {}, {}
        for name, col in self.extra.items() if len(has_mask) else ():
            have = self._present.get(name)
            have = None if have is None else have[idx]
            if have is not None and not have.any():
                continue  # no region left has the field
            extra[name] = _frozen(col[idx])
            if have is not None and not have.all():
                present[name] = _frozen(have)
        out = object.__new__(Objects)
        out._set(_frozen(self.boxes[idx]), self.image_size, _frozen(self.scores[idx]),
                 _frozen(self.has_score[idx]), _frozen(self.labels[idx]),
                 _frozen(self.masks[idx]) if self.masks is not None and has_mask.any() else None,
                 has_mask, extra, present)
        return out


# -- checking what comes in -------------------------------------------------------------

def _frozen(a: np.ndarray) -> np.ndarray:
    if a.flags.writeable:
        a.setflags(write=False)
    return a


def _image_size(size: Any) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"image_size is (width, height), got {size!r:.60}") from e
    if w <= 0 or h <= 0:
        raise ValueError(f"image_size must be positive (width, height), got {size}")
    return w, h


def _boxes(boxes: Any, w: int, h: int) -> np.ndarray:
    if isinstance(boxes, (list, tuple)) and any(isinstance(b, Region) for b in boxes):
        raise TypeError("Objects(...) takes boxes; build Objects from Region values with "
                        "Objects.from_regions(regions, image_size)")
    try:
        arr = np.array(boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"boxes are N rows of 4 numbers (x1, y1, x2, y2): {e}") from e
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes are N rows of 4 numbers (x1, y1, x2, y2), got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"box has a non-finite coordinate: {arr[bad][0].tolist()}")
    # clip into the image, then order each pair (written so -0.0 and ties keep what they were)
    upper = np.array([w, h, w, h], dtype=np.float64)
    arr = np.where(arr < 0.0, 0.0, arr)
    arr = np.where(arr > upper, upper, arr)
    for a, b in ((0, 2), (1, 3)):
        lo, hi = arr[:, a].copy(), arr[:, b].copy()
        swap = hi < lo
        arr[swap, a], arr[swap, b] = hi[swap], lo[swap]
    return _frozen(arr)


def _scores(scores: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    if scores is None:
        return _frozen(np.ones(n)), _frozen(np.zeros(n, dtype=bool))
    values = list(scores)
    if len(values) != n:
        raise ValueError(f"{len(values)} scores for {n} boxes: they must have the same length")
    has = np.array([v is not None for v in values], dtype=bool)
    out = np.ones(n)
    for i, v in enumerate(values):
        if v is not None:
            if isinstance(v, (str, bytes)) or not isinstance(v, (int, float, np.number)):
                raise TypeError(f"a score is a number or None, got {type(v).__name__}")
            out[i] = float(v)
    return _frozen(out), _frozen(has)


def _labels(labels: Any, n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    if labels is not None:
        values = list(labels)
        if len(values) != n:
            raise ValueError(f"{len(values)} labels for {n} boxes: they must have the same "
                             f"length")
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, str):
                raise TypeError(f"a label is a string or None, got {type(v).__name__}")
            out[i] = v
    return _frozen(out)


def _column(values: Any, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    items = list(values)
    if len(items) != n:
        raise ValueError(f"{what} has {len(items)} values for {n} boxes: they must have the "
                         f"same length")
    col = np.empty(n, dtype=object)
    have = np.ones(n, dtype=bool)
    for i, v in enumerate(items):
        if v is ABSENT:
            have[i] = False
        else:
            col[i] = v
    return _frozen(col), have


def _bool_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} is not the image's (H, W) = {shape}")
    if mask.dtype != bool:
        mask = mask > 0 if mask.dtype.kind in "iub" else mask > 0.5
    return mask


def _masks(masks: Any, boxes: np.ndarray, w: int, h: int) -> tuple[np.ndarray | None, np.ndarray]:
    n = len(boxes)
    if masks is None:
        return None, _frozen(np.zeros(n, dtype=bool))
    if isinstance(masks, np.ndarray):
        if masks.shape != (n, h, w):
            raise ValueError(f"masks of shape {masks.shape} for {n} regions of an image of "
                             f"(H, W) = {(h, w)}: expected {(n, h, w)}")
        stack = _bool_mask(masks, (n, h, w))
        if stack is masks and stack.flags.writeable:
            stack = stack.copy()  # ours, so no one can change it later
        return (_frozen(stack) if n else None), _frozen(np.ones(n, dtype=bool))
    items = list(masks)
    if len(items) != n:
        raise ValueError(f"{len(items)} masks for {n} boxes: they must have the same length")
    has = np.array([m is not None for m in items], dtype=bool)
    if not has.any():
        return None, _frozen(has)
    planes = []
    for box, m in zip(boxes, items):
        if m is None:
            m = np.zeros((h, w), dtype=bool)
            _fill_box(m, box)
        planes.append(_bool_mask(m, (h, w)))
    return _frozen(np.stack(planes)), _frozen(has)


def _fill_box(mask: np.ndarray, box: np.ndarray) -> None:
    # box edges rounded outwards: a region covers every pixel its box touches
    x1, y1, x2, y2 = box
    mask[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True


def _same_value(a: Any, b: Any) -> bool:
    """Equality that also holds for values holding arrays (extra fields may)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b
