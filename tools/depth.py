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

Each image's map is computed once and kept (the last `map_cache` images), so a program with
Depth and CropFrontOf on one image runs the model once. Calls in a batch with images of one
size share a forward pass.

Settings (section `[Depth]`, shared by the crops):
    checkpoint: hub id, local path or `tiny:depth_anything`.
    output: "auto", "disparity" (larger = nearer) or "depth" (larger = farther).
    margin: distances within this of the object's count as level with it (0..1).
    box_quantile: the quantile of a box's distances taken as the object's (0..1).
    fill: the grey level (0..255) painted over excluded pixels.
    map_side: the longest side of the `depth_map` image in the trace.
    map_cache: how many images' maps are kept (0: none).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from PIL import Image

from visprog.config import module_settings
from visprog.errors import ConfigError
from visprog.registry import Param, Tool, parse_types
from visprog.values import Objects

from .crop import check_objects_image
from .loc import as_image
from .models import manager_of, model_dtype, register_tiny, to_model_inputs

VERSION = "1"
OUTPUTS = ("auto", "disparity", "depth")
FRONT_CROPS = ("CropFrontOf", "CropInFront", "CropInFrontOf", "CropAhead")
BEHIND_CROPS = ("CropBehind",)


# -- loading ---------------------------------------------------------------------------------

def load_depth(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """A depth model and its image processor (the PIL one where torchvision is missing)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForDepthEstimation.from_pretrained(path, dtype=dtype).to(device)
    return model, processor


def is_disparity(model: Any, output: str) -> bool:
    """Whether larger model outputs mean nearer (see the module doc)."""
    if output != "auto":
        return output == "disparity"
    cfg = model.config
    if cfg.model_type == "depth_anything":
        return getattr(cfg, "depth_estimation_type", "relative") == "relative"
    return cfg.model_type == "dpt"


# -- one batch: preprocess, forward, postprocess ---------------------------------------------

def preprocess(processor: Any, images: Sequence[Image.Image]) -> Any:
    return processor(images=list(images), return_tensors="pt")


def forward(model: Any, inputs: Any) -> Any:
    """The model call only."""
    import torch

    with torch.inference_mode():
        return model(**to_model_inputs(inputs, model.device, model_dtype(model)))


def postprocess(processor: Any, outputs: Any, sizes: Sequence[tuple[int, int]],
                disparity: bool) -> list[np.ndarray]:
    """Each image's distance map (H x W float32, 0 near .. 1 far)."""
    from types import SimpleNamespace

    outputs = SimpleNamespace(predicted_depth=outputs.predicted_depth.float())
    results = processor.post_process_depth_estimation(
        outputs, target_sizes=[(h, w) for w, h in sizes])
    return [to_distance(r["predicted_depth"].cpu().numpy(), disparity) for r in results]


def to_distance(raw: np.ndarray, disparity: bool) -> np.ndarray:
    """A model's map as distances 0..1 between its 1st and 99th percentiles (a flat map is
    0.5 everywhere: no pixel is nearer than another)."""
    raw = np.nan_to_num(np.asarray(raw, dtype=np.float64))
    lo, hi = np.percentile(raw, [1, 99])
    if not hi > lo:
        return np.full(raw.shape, 0.5, dtype=np.float32)
    d = np.clip((raw - lo) / (hi - lo), 0.0, 1.0)
    return (1.0 - d if disparity else d).astype(np.float32)


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


register_tiny("depth_anything", build_tiny_depth_anything)


# -- the tools -------------------------------------------------------------------------------

def depth_settings(settings: dict[str, Any]) -> dict[str, Any]:
    s = module_settings("Depth", settings)
    if s["output"] not in OUTPUTS:
        raise ConfigError(f"Depth: output must be one of {', '.join(OUTPUTS)}, got {s['output']!r}")
    for key in ("margin", "box_quantile"):
        if not 0.0 <= float(s[key]) <= 1.0:
            raise ConfigError(f"Depth: {key} must be within 0..1, got {s[key]}")
    if not 0 <= int(s["fill"]) <= 255:
        raise ConfigError(f"Depth: fill is a grey level 0..255, got {s['fill']}")
    return s


class DepthMaps:
    """Distance maps of images, computed in batches and kept for the last `keep` images."""

    def __init__(self, ctx: Any, checkpoint: str, output: str, keep: int):
        self.ctx, self.checkpoint, self.output, self.keep = ctx, checkpoint, output, keep
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(image: Image.Image) -> str:
        return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()

    def __call__(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        keys = [self.key(im) for im in images]
        with self._lock:
            found = {k: self._maps[k] for k in keys if k in self._maps}
        todo: dict[tuple[int, int], dict[str, Image.Image]] = {}
        for k, im in zip(keys, images):
            if k not in found:
                todo.setdefault(im.size, {})[k] = im  # one size, one tensor shape
        if todo:
            model, processor = manager_of(self.ctx).get("depth", self.checkpoint, load_depth)
            disparity = is_disparity(model, self.output)
            for size, group in todo.items():
                outputs = forward(model, preprocess(processor, list(group.values())))
                maps = postprocess(processor, outputs, [size] * len(group), disparity)
                found.update(zip(group, maps))
            with self._lock:
                for k in keys:
                    self._maps[k] = found[k]
                    self._maps.move_to_end(k)
                while len(self._maps) > self.keep:
                    self._maps.popitem(last=False)
        return [found[k] for k in keys]


def build(settings: dict[str, Any], ctx: Any) -> list[Tool]:
    """Depth and the depth-aware crops, with the `[Depth]` section (see the module doc)."""
    s = depth_settings(settings)
    checkpoint, output = str(s["checkpoint"]), str(s["output"])
    margin, quantile = float(s["margin"]), float(s["box_quantile"])
    fill, side = int(s["fill"]), int(s["map_side"])
    maps = DepthMaps(ctx, checkpoint, output, max(0, int(s["map_cache"])))
    shown = {"checkpoint": checkpoint, "output": output, "box_quantile": quantile}

    def checked(calls: list[dict[str, Any]], key: str, name: str) -> list[tuple[Image.Image, Objects]]:
        pairs = []
        for c in calls:
            objs = c[key]
            image = check_objects_image(as_image(c["image"]), objs, name)
            pairs.append((image, objs))
        return pairs

    def depth_batch(calls: list[dict[str, Any]]) -> list[Objects]:
        pairs = checked(calls, "object", "Depth")
        need = [im for im, objs in pairs if len(objs)]
        computed = iter(maps(need)) if need else iter(())
        out = []
        for image, objs in pairs:
            if not len(objs):
                out.append(objs)
                continue
            distance = next(computed)
            ds = [object_distance(distance, objs, i, quantile) for i in range(len(objs))]
            order = sorted(range(len(objs)), key=lambda i: ds[i])  # stable: ties keep order
            picture = map_image(distance, side)
            regions = []
            for rank, i in enumerate(order):
                extra = {**objs[i].extra, "depth": round(ds[i], 4)}
                if rank == 0:
                    extra["depth_map"] = picture
                regions.append(replace(objs[i], extra=extra))
            out.append(objs.with_regions(regions))
        return out

    def make_crop(name: str, nearer: bool) -> Tool:
        def crop_batch(calls: list[dict[str, Any]]) -> list[Image.Image]:
            pairs = checked(calls, "box", name)
            need = [im for im, objs in pairs if len(objs)]
            computed = iter(maps(need)) if need else iter(())
            out = []
            for image, objs in pairs:
                if not len(objs):
                    out.append(image.copy())
                    continue
                distance = next(computed)
                level = object_distance(distance, objs, 0, quantile)
                keep = distance < level - margin if nearer else distance > level + margin
                out.append(region_crop(image, keep, fill))
            return out

        def crop(image, box):
            return crop_batch([{"image": image, "box": box}])[0]

        where = "nearer than" if nearer else "farther than"
        return Tool(name=name, params=(Param("image", parse_types("Image")),
                                       Param("box", parse_types("Objects"))),
                    returns=parse_types("Image"), fn=crop,
                    doc=f"the part of the image {where} the first object (by depth), the rest "
                        "greyed out; the whole image when there is none",
                    version=VERSION, batch_fn=crop_batch,
                    settings={**shown, "margin": margin, "fill": fill})

    return [
        Tool(name="Depth", params=(Param("image", parse_types("Image")),
                                   Param("object", parse_types("Objects"))),
             returns=parse_types("Objects"), fn=lambda image, object: depth_batch(
                 [{"image": image, "object": object}])[0],
             doc="orders the objects by distance from the camera, nearest first, each with its "
                 "relative depth (0 nearest .. 1 farthest)",
             version=VERSION, batch_fn=depth_batch, settings={**shown, "map_side": side}),
        *(make_crop(n, True) for n in FRONT_CROPS),
        *(make_crop(n, False) for n in BEHIND_CROPS),
    ]
