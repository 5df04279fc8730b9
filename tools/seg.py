"""Seg: panoptic segmentation (SPEC 4) with Mask2Former (default) or MaskFormer.

Every segment becomes one region with its mask (the image's H x W), its COCO panoptic label
from the checkpoint's `id2label` and the box around its mask, best score first.

How it works:
- the processor resizes the image (shortest edge, size divisible by 32) and the model predicts
  one mask and class per query; `post_process_panoptic_segmentation` turns them into a map of
  segment ids at the requested size.
- that map is made at the original size, so masks are in original pixels. For very large
  images it is made at most `mask_max_side` pixels long and scaled up with nearest-neighbour,
  because the post-processing holds one float mask per kept query at that size.
- panoptic labels such as `sky-other-merged` are shortened to `sky` (`clean_labels`); the
  checkpoint's own name stays in `region.extra["raw_label"]`.
- batches: images of the same size run as one model batch. The post-processing maps the
  model's whole (padded) input onto each target size, so images of different sizes padded
  into one batch would get shifted masks; they run as separate batches instead.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from PIL import Image

from visprog.models import (Backend, ModelTool, hf_loader, model_image, model_inputs,
                            pick_checkpoint, rgb_image)
from visprog.values import Objects, Region

# backend -> transformers model class
MODEL_CLASSES = {"mask2former": "Mask2FormerForUniversalSegmentation",
                 "maskformer": "MaskFormerForInstanceSegmentation"}


def clean_label(name: str) -> str:
    """'sky-other-merged' -> 'sky', 'wall-brick' -> 'wall brick', 'person' -> 'person'."""
    name = re.sub(r"-(merged|other|stuff)\b", "", name)
    return name.replace("-", " ").replace("_", " ").strip()


def load_segmenter(backend: str):
    """A manager loader for `backend`: (path, device, dtype) -> (model, processor).
    AutoImageProcessor picks the PIL processor when torchvision is missing."""
    return hf_loader(MODEL_CLASSES[backend], "AutoImageProcessor")


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The box (x1, y1, x2, y2) around a mask's on pixels, in pixel-edge coordinates."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _post_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(height, width) to post-process at: the image's, scaled down past `max_side`."""
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return (max(1, round(h * scale)), max(1, round(w * scale)))


def _regions(result: dict[str, Any], size: tuple[int, int], id2label: dict[int, str],
             clean: bool, shown: tuple[int, int] | None = None) -> Objects:
    """Objects from one image's post-processed panoptic result. `shown` is the size of the
    image the model saw, when it was padded (`model_image`): the padding is cut off."""
    w, h = size
    sw, sh = shown or size
    seg = result["segmentation"].cpu().numpy().astype(np.int32)
    if seg.shape != (sh, sw):  # made smaller for a large image: scale the id map up
        seg = np.asarray(Image.fromarray(seg, mode="I").resize((sw, sh), Image.NEAREST))
    seg = seg[:h, :w]
    regions = []
    for info in result["segments_info"]:
        mask = seg == info["id"]
        if not mask.any():
            continue
        raw = id2label.get(int(info["label_id"]), str(info["label_id"]))
        regions.append(Region(box=mask_box(mask), mask=mask,
                              label=clean_label(raw) if clean else raw,
                              score=float(info["score"]),
                              extra={"raw_label": raw, "label_id": int(info["label_id"])}))
    regions.sort(key=lambda r: -(r.score or 0.0))
    return Objects.from_regions(regions, (w, h))


def segment(images: list[Image.Image], bundle: tuple[Any, Any], s: dict[str, Any]
            ) -> list[Objects]:
    """Panoptic segmentation of images of one size, as one model batch."""
    model, processor = bundle
    shown = [model_image(im) for im in images]
    inputs = processor(images=shown, return_tensors="pt")
    out = model(**model_inputs(inputs, model))
    # post-processing in float32: fp16 sigmoid/interpolation loses small masks
    out.class_queries_logits = out.class_queries_logits.float()
    out.masks_queries_logits = out.masks_queries_logits.float()
    results = processor.post_process_panoptic_segmentation(
        out, threshold=s["threshold"], mask_threshold=s["mask_threshold"],
        overlap_mask_area_threshold=s["overlap_mask_area_threshold"],
        label_ids_to_fuse=set(),
        target_sizes=[_post_size(im.size, s["mask_max_side"]) for im in shown])
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return [_regions(r, im.size, id2label, s["clean_labels"], sh.size)
            for r, im, sh in zip(results, images, shown)]


# -- tiny offline checkpoint ------------------------------------------------------------------

TINY_LABELS = ["person", "car", "dog", "sky-other-merged", "grass-merged", "wall-brick"]


def _tiny_swin():
    from transformers import SwinConfig

    return SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                      out_features=["stage1", "stage2", "stage3", "stage4"])


def _tiny_labels() -> dict[str, Any]:
    id2label = dict(enumerate(TINY_LABELS))
    return {"num_labels": len(id2label), "id2label": id2label,
            "label2id": {v: k for k, v in id2label.items()},
            # a wide init: with the usual 0.02 every random mask is ~0.5 everywhere and the
            # panoptic post-processing keeps no segment, so no code path past it would run
            "init_std": 1.0}


def build_tiny_mask2former(folder) -> None:
    """A small random Mask2Former (tiny Swin backbone) with a few COCO panoptic names."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import (
        Mask2FormerImageProcessorPil)

    torch.manual_seed(0)
    cfg = Mask2FormerConfig(
        backbone_config=_tiny_swin(), use_timm_backbone=False, use_pretrained_backbone=False,
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
        num_queries=10, **_tiny_labels())
    Mask2FormerForUniversalSegmentation(cfg).eval().save_pretrained(folder)
    # a small working size keeps the tiny model fast
    Mask2FormerImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 256}
                                 ).save_pretrained(folder)


def build_tiny_maskformer(folder) -> None:
    """A small random MaskFormer (tiny Swin backbone, 1+1 layer DETR decoder)."""
    import torch
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation
    from transformers.models.maskformer.image_processing_pil_maskformer import (
        MaskFormerImageProcessorPil)

    torch.manual_seed(0)
    decoder = dict(model_type="detr", d_model=32, encoder_layers=1, decoder_layers=1,
                   encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                   decoder_ffn_dim=64, num_queries=10)
    cfg = MaskFormerConfig(backbone_config=_tiny_swin(), decoder_config=decoder,
                           fpn_feature_size=32, mask_feature_size=32, **_tiny_labels())
    MaskFormerForInstanceSegmentation(cfg).eval().save_pretrained(folder)
    MaskFormerImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 256}
                                ).save_pretrained(folder)


# -- the backends ----------------------------------------------------------------------------

class Segmenter(Backend):
    """Mask2Former or MaskFormer: the same processor and post-processing, another model
    class (`MODEL_CLASSES[backend]`)."""

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        checkpoint = pick_checkpoint(s)
        return {**{k: v for k, v in s.items() if k != "checkpoints"}, "checkpoint": checkpoint}

    def forward(self, tool: ModelTool, images: list[Image.Image]) -> list[Objects]:
        s = self.settings
        bundle = tool.model(s["backend"], s["checkpoint"], load_segmenter(s["backend"]))
        return segment(images, bundle, s)


# -- the tool --------------------------------------------------------------------------------

class Seg(ModelTool):
    name = "Seg"
    tasks = ("imgedit",)  # the planner's prompts that describe it
    params = {"image": "Image"}
    returns = "Objects"
    doc = "Panoptic segmentation: every thing and stuff region, with masks and labels."
    backends = {name: Segmenter for name in MODEL_CLASSES}
    presets = {
        "default": {
            "backend": "mask2former",
            "checkpoints": {"mask2former": "facebook/mask2former-swin-tiny-coco-panoptic",
                            "maskformer": "facebook/maskformer-swin-tiny-coco"},
            "threshold": 0.5,                    # a query's class score must reach this
            "mask_threshold": 0.5,               # a mask pixel is on when its probability is this
            "overlap_mask_area_threshold": 0.8,  # drop segments mostly covered by better ones
            "clean_labels": True,
            "mask_max_side": 2048,
        },
        "tiny": {
            "checkpoints": {"mask2former": "tiny:mask2former", "maskformer": "tiny:maskformer"},
            "threshold": 0.0,  # random weights: keep every segment so every code path runs
            "overlap_mask_area_threshold": 0.0,
        },
    }
    tiny_checkpoints = {"mask2former": (build_tiny_mask2former, "2"),
                        "maskformer": build_tiny_maskformer}

    def preprocess(self, call: dict[str, Any]) -> Image.Image:
        return rgb_image(call["image"])

    def batch_key(self, image: Image.Image) -> tuple[int, int]:
        # one model batch per image size (see the module docstring)
        return image.size


TOOLS = [Seg]
