"""Depth(image, object) -> Objects, and the depth-aware crops CropFrontOf, CropInFront,
CropInFrontOf, CropAhead and CropBehind.

A monocular depth model (Depth Anything V2 by default, any transformers
`AutoModelForDepthEstimation` checkpoint by config) gives a depth map of the image. visprog
turns it into a relative DISTANCE per pixel, 0 at the nearest part of the image and 1 at the
farthest (the model's output between its 1st and 99th percentiles, stretched to 0..1), so
numbers from one image compare, whatever the model's own scale.

- `Depth(image, object)`: the same objects, NEAREST FIRST, each with `depth` (its distance,
  0..1) among its extra fields, so `Crop(box=Depth(...))` crops around the nearest one
  ("the closest car"). An object's distance is the median over its mask; with a box only,
  the `box_quantile` quantile over the box (a box holds background too, and the object is
  usually the nearer part of it). The first region also carries `depth_map`, a small
  greyscale image of the map (near = bright), which the trace shows. No objects: empty
  Objects, and the model does not run.
- `CropFrontOf` (and its synonyms `CropInFront`, `CropInFrontOf`, `CropAhead`): the part of
  the image NEARER than the first object by more than `margin`; `CropBehind`: the part
  FARTHER by more than `margin`. The result is the bounding box of those pixels, with every
  pixel that is not in front of (behind) the object painted grey, so a Loc or Vqa that
  follows sees only what is in front (behind). When no pixel qualifies, a grey image of the
  image's size (there is nothing in front). No objects: a copy of the whole image, as every
  crop does.

The models' outputs differ in meaning: Depth Anything's relative checkpoints and DPT give
inverse depth (larger is nearer), metric checkpoints (Depth Anything metric, ZoeDepth, GLPN)
give depth. `output = "auto"` tells them apart by the checkpoint's config.

Each image's map is computed once and kept with the model (the last `map_cache` images), so
a program with Depth and CropFrontOf on one image runs the model once. Calls in a batch with
images of one size share a forward pass.

Settings (section `[Depth]`, shared by the crops; defaults in `Depth.presets` below):
    checkpoint: hub id, local path or `tiny:depth_anything`.
    output: "auto", "disparity" (larger = nearer) or "depth" (larger = farther).
    margin: distances within this of the object's count as level with it (0..1; crops).
    box_quantile: the quantile of a box's distances taken as the object's (0..1).
    fill: the grey level (0..255) painted over excluded pixels (crops).
    map_side: the longest side of the `depth_map` image in the trace (Depth).
    map_cache: how many images' maps are kept (0: none); not in the cache key.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from PIL import Image

from visprog.models import Done, ModelTool, SettingsError, model_inputs
from visprog.registry import Tool
from visprog.values import Objects

from .crop import check_objects_image
from visprog.models.images import rgb_image

OUTPUTS = ("auto", "disparity", "depth")


# -- loading ---------------------------------------------------------------------------------

class DepthMaps:
    """Stretched maps (0..1, the model's own direction) of the last images, by content.

    Kept in the model's bundle, so every tool on that model shares them and they go when
    the model is unloaded."""

    def __init__(self) -> None:
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(image: Image.Image) -> str:
        return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            found = self._maps.get(key)
            if found is not None:
                self._maps.move_to_end(key)
            return found

    def put(self, key: str, stretched: np.ndarray, keep: int) -> None:
        with self._lock:
            self._maps[key] = stretched
            self._maps.move_to_end(key)
            while len(self._maps) > max(0, keep):
                self._maps.popitem(last=False)

    def __len__(self) -> int:
        return len(self._maps)


def load_depth(path: str, device: str, dtype: Any) -> tuple[Any, Any, DepthMaps]:
    """A depth model, its image processor (the PIL one where torchvision is missing), and
    the store of its maps."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForDepthEstimation.from_pretrained(path, dtype=dtype).to(device)
    return model, processor, DepthMaps()


def is_disparity(model: Any, output: str) -> bool:
    """Whether larger model outputs mean nearer (see the module doc)."""
    if output != "auto":
        return output == "disparity"
    cfg = model.config
    if cfg.model_type == "depth_anything":
        return getattr(cfg, "depth_estimation_type", "relative") == "relative"
    return cfg.model_type == "dpt"


# -- the model on a batch of one size --------------------------------------------------------

def predict(model: Any, processor: Any, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """The model's raw maps of images of one size, each at the image's size (H x W)."""
    from types import SimpleNamespace

    inputs = processor(images=list(images), return_tensors="pt")
    out = model(**model_inputs(inputs, model))
    out = SimpleNamespace(predicted_depth=out.predicted_depth.float())
    results = processor.post_process_depth_estimation(
        out, target_sizes=[im.size[::-1] for im in images])
    return [r["predicted_depth"].cpu().numpy() for r in results]


def stretch(raw: np.ndarray) -> np.ndarray:
    """A map between its 1st and 99th percentiles, stretched to 0..1 (a flat map is 0.5
    everywhere: no pixel is nearer than another)."""
    raw = np.nan_to_num(np.asarray(raw, dtype=np.float64))
    lo, hi = np.percentile(raw, [1, 99])
    if not hi > lo:
        return np.full(raw.shape, 0.5, dtype=np.float32)
    return np.clip((raw - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_distance(raw: np.ndarray, disparity: bool) -> np.ndarray:
    """A model's map as distances, 0 near .. 1 far."""
    d = stretch(raw)
    return 1.0 - d if disparity else d


def object_distance(distance: np.ndarray, objects: Objects, i: int, box_quantile: float) -> float:
    """Region i's distance: the median over its mask, else the quantile over its box."""
    r = objects[i]
    values = distance[objects.region_mask(i)]
    if values.size == 0:  # a box thinner than a pixel: the pixel at its centre
        h, w = distance.shape
        x = min(max(int((r.box[0] + r.box[2]) / 2), 0), w - 1)
        y = min(max(int((r.box[1] + r.box[3]) / 2), 0), h - 1)
        return float(distance[y, x])
    return float(np.quantile(values, 0.5 if r.mask is not None else box_quantile))


def map_image(distance: np.ndarray, side: int) -> Image.Image:
    """The distance map as a small greyscale image, near = bright (for the trace)."""
    im = Image.fromarray(np.rint((1.0 - distance) * 255).astype(np.uint8), mode="L")
    im.thumbnail((side, side), Image.BILINEAR)
    return im


def region_crop(image: Image.Image, keep: np.ndarray, fill: int) -> Image.Image:
    """The bounding box of `keep`, with the pixels outside `keep` painted `fill` grey."""
    if not keep.any():
        return Image.new("RGB", image.size, (fill, fill, fill))
    ys, xs = np.nonzero(keep)
    y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pixels = np.asarray(image)[y1:y2, x1:x2].copy()
    pixels[~keep[y1:y2, x1:x2]] = fill
    return Image.fromarray(pixels, "RGB")


# -- tiny checkpoint -------------------------------------------------------------------------

def build_tiny_depth_anything(folder) -> None:
    """A Depth Anything (V2 architecture) of about 0.2M random parameters.

    Shape-relevant settings follow depth-anything/Depth-Anything-V2-Small-hf: the DINOv2
    backbone's patch size 14 and image size 518, relative (inverse) depth, and its image
    processor (DPTImageProcessor: 518 kept to the aspect ratio and a multiple of 14, bicubic,
    rescale 1/255, ImageNet mean/std, no padding). These are the values of transformers'
    DepthAnythingConfig defaults, documented there as the small checkpoint's, and of its
    published preprocessor_config.json; widths and depths are shrunk.
    """
    import torch
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation,
                              Dinov2Config, DPTImageProcessorPil)

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, image_size=518, patch_size=14,
                            reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = DepthAnythingConfig(backbone_config=backbone, patch_size=14, fusion_hidden_size=16,
                              head_hidden_size=8, neck_hidden_sizes=[8, 16, 32, 32],
                              reassemble_hidden_size=32, depth_estimation_type="relative")
    processor = DPTImageProcessorPil(
        do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
        ensure_multiple_of=14, resample=3, do_rescale=True,  # 3: bicubic
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225], do_pad=False)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


# -- the tools -------------------------------------------------------------------------------

class Depth(ModelTool):
    name = "Depth"
    tasks = ("gqa",)  # the planner's prompts that describe it
    params = {"image": "Image", "object": "Objects"}
    returns = "Objects"
    doc = ("orders the objects by distance from the camera, nearest first, each with its "
           "relative depth (0 nearest .. 1 farthest)")
    presets = {
        "default": {
            # Apache-2.0 (the Base and Large checkpoints are non-commercial)
            "checkpoint": "depth-anything/Depth-Anything-V2-Small-hf",
            "output": "auto", "margin": 0.05, "box_quantile": 0.25, "fill": 128,
            "map_side": 256, "map_cache": 8,
        },
        "tiny": {"checkpoint": "tiny:depth_anything"},
    }
    tiny_checkpoints = {"depth_anything": build_tiny_depth_anything}
    objects_param = "object"
    # the settings that change this tool's results (its cache key)
    result_keys: tuple[str, ...] = ("checkpoint", "output", "box_quantile", "map_side")

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        if s["output"] not in OUTPUTS:
            raise SettingsError(f"{self.name}: output must be one of {', '.join(OUTPUTS)}, "
                                f"got {s['output']!r}")
        for key in ("margin", "box_quantile"):
            if not 0.0 <= float(s[key]) <= 1.0:
                raise SettingsError(f"{self.name}: {key} must be within 0..1, got {s[key]}")
        if not 0 <= int(s["fill"]) <= 255:
            raise SettingsError(f"{self.name}: fill is a grey level 0..255, got {s['fill']}")
        # how many maps are kept changes speed, not results: not in the cache key (`forward`
        # reads it from all_settings); checked here
        int(s["map_cache"])
        typed = {"checkpoint": str(s["checkpoint"]), "output": str(s["output"]),
                 "margin": float(s["margin"]), "box_quantile": float(s["box_quantile"]),
                 "fill": int(s["fill"]), "map_side": int(s["map_side"])}
        return {k: typed[k] for k in self.result_keys}

    def preprocess(self, call: dict[str, Any]) -> Any:
        objs = call[self.objects_param]
        image = check_objects_image(rgb_image(call["image"]), objs, self.name)
        if not len(objs):
            return Done(self.without_objects(image, objs))
        return image, objs

    def without_objects(self, image: Image.Image, objs: Objects) -> Any:
        return objs

    def batch_key(self, item: tuple[Image.Image, Objects]) -> tuple[int, int]:
        # one forward pass per image size (the processor keeps the aspect ratio)
        return item[0].size

    def forward(self, items: list[tuple[Image.Image, Objects]]) -> list[np.ndarray]:
        """Each item's distance map: kept maps first, the model on the rest (one size)."""
        model, processor, maps = self.model("depth", self.settings["checkpoint"], load_depth)
        keys = [DepthMaps.key(im) for im, _ in items]
        found = {k: m for k in keys if (m := maps.get(k)) is not None}
        todo = {k: im for k, (im, _) in zip(keys, items) if k not in found}
        if todo:
            raw = predict(model, processor, list(todo.values()))
            for k, r in zip(todo, raw):
                found[k] = stretch(r)
                maps.put(k, found[k], max(0, int(self.all_settings["map_cache"])))
        disparity = is_disparity(model, self.settings["output"])
        return [1.0 - found[k] if disparity else found[k] for k in keys]

    def postprocess(self, item: tuple[Image.Image, Objects], distance: np.ndarray) -> Objects:
        _, objs = item
        q = self.settings["box_quantile"]
        ds = [object_distance(distance, objs, i, q) for i in range(len(objs))]
        order = sorted(range(len(objs)), key=lambda i: ds[i])  # stable: ties keep order
        regions = []
        for rank, i in enumerate(order):
            extra = {**objs[i].extra, "depth": round(ds[i], 4)}
            if rank == 0:
                extra["depth_map"] = map_image(distance, self.settings["map_side"])
            regions.append(replace(objs[i], extra=extra))
        return objs.with_regions(regions)


class CropFrontOf(Depth):
    section = "Depth"
    name = "CropFrontOf"
    params = {"image": "Image", "box": "Objects"}
    returns = "Image"
    doc = ("the part of the image nearer than the first object (by depth), the rest greyed "
           "out; the whole image when there is none")
    objects_param = "box"
    result_keys = ("checkpoint", "output", "box_quantile", "margin", "fill")
    nearer = True

    def without_objects(self, image: Image.Image, objs: Objects) -> Image.Image:
        return image.copy()  # as every crop does

    def postprocess(self, item: tuple[Image.Image, Objects], distance: np.ndarray
                    ) -> Image.Image:
        image, objs = item
        s = self.settings
        level = object_distance(distance, objs, 0, s["box_quantile"])
        keep = distance < level - s["margin"] if self.nearer else distance > level + s["margin"]
        return region_crop(image, keep, s["fill"])


class CropInFront(CropFrontOf):
    name = "CropInFront"


class CropInFrontOf(CropFrontOf):
    name = "CropInFrontOf"


class CropAhead(CropFrontOf):
    name = "CropAhead"


class CropBehind(CropFrontOf):
    name = "CropBehind"
    doc = ("the part of the image farther than the first object (by depth), the rest greyed "
           "out; the whole image when there is none")
    nearer = False


TOOLS = [Depth, CropFrontOf, CropInFront, CropInFrontOf, CropAhead, CropBehind]
FRONT_CROPS = ("CropFrontOf", "CropInFront", "CropInFrontOf", "CropAhead")


def build(settings: dict[str, Any] | None = None, ctx: Any = None) -> list[Tool]:
    """Depth and the depth-aware crops, all with one `[Depth]` section (they share the model
    and its maps)."""
    return [cls.build(settings, ctx) for cls in TOOLS]
