"""Classify(image, object, categories) -> Objects: CLIP over object crops.

Each object's crop (its box, enlarged a little for context) is scored against
`prompt.format(category)` for every category; the scores are a softmax over the categories.
Categories and objects are then paired one to one, best pair first, so each category keeps
the object it fits best (SPEC: "keeping the best object per category") and no object gets
two labels. With more categories than objects some categories get none; objects that no
category claims are dropped. The result is best first; each region's `label` is its
category and `extra["class_score"]` the softmax score (its detection score is kept).

Settings (section `[Classify]`):
    checkpoint: CLIP checkpoint (hub id, local path or `tiny:clip`).
    prompt: text template with one `{}` for the category.
    crop_context: fraction of the box's size added on each side of a crop.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from PIL import Image

from visprog.config import module_settings
from visprog.registry import Param, Tool, parse_types
from visprog.values import Objects

from .loc import TINY_WORDS
from .models import (manager_of, model_dtype, model_image, register_tiny, rgb_image,
                     tiny_clip_tokenizer, to_model_inputs)

VERSION = "1"


def crop_region(image: Image.Image, box: Sequence[float], context: float = 0.0) -> Image.Image:
    """The box's crop, enlarged by `context` x its size on each side, at least 1x1 pixel."""
    w, h = image.size
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * context, (y2 - y1) * context
    left, top = int(max(0, np.floor(x1 - dx))), int(max(0, np.floor(y1 - dy)))
    right, bottom = int(min(w, np.ceil(x2 + dx))), int(min(h, np.ceil(y2 + dy)))
    right, bottom = max(right, min(w, left + 1)), max(bottom, min(h, top + 1))
    left, top = min(left, right - 1), min(top, bottom - 1)
    return image.crop((left, top, right, bottom))


def load_clip(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """CLIP model and processor."""
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(path)
    model = CLIPModel.from_pretrained(path, dtype=dtype).to(device)
    return model, processor


def clip_logits(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                texts: Sequence[str]) -> np.ndarray:
    """CLIP's scaled image-text similarities, (len(images), len(texts)), in one forward."""
    import torch

    model, processor = bundle
    max_len = getattr(model.config.text_config, "max_position_embeddings", 77)
    inputs = processor(text=list(texts), images=[model_image(im) for im in images],
                       return_tensors="pt",
                       padding=True, truncation=True, max_length=max_len)
    with torch.inference_mode():
        out = model(**to_model_inputs(inputs, model.device, model_dtype(model)))
    return out.logits_per_image.float().cpu().numpy()


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def assign_one_to_one(scores: np.ndarray) -> list[tuple[int, int]]:
    """Greedy pairing of rows (objects) and columns (categories), best score first."""
    pairs: list[tuple[int, int]] = []
    used_r: set[int] = set()
    used_c: set[int] = set()
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        r, c = np.unravel_index(int(flat), scores.shape)
        if r not in used_r and c not in used_c:
            pairs.append((int(r), int(c)))
            used_r.add(int(r))
            used_c.add(int(c))
            if len(used_r) == scores.shape[0] or len(used_c) == scores.shape[1]:
                break
    return pairs


def build_tiny_clip(folder) -> None:
    """A CLIP of about 0.1M random parameters, 64-pixel inputs."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(TINY_WORDS)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 64},
                                              crop_size={"height": 64, "width": 64}),
        tokenizer=tok)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         eos_token_id=eot, pad_token_id=eot,
                         bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>")),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=64, patch_size=16),
        projection_dim=32)
    CLIPModel(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


register_tiny("clip", build_tiny_clip)


def classify_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return module_settings("Classify", settings)


def build(settings: dict[str, Any], ctx: Any) -> Tool:
    """The Classify tool with its section of the configuration (see the module docstring)."""
    s = classify_settings(settings)
    checkpoint, prompt, context = s["checkpoint"], str(s["prompt"]), float(s["crop_context"])
    if "{}" not in prompt:
        prompt += " {}"

    def run_batch(calls: list[dict[str, Any]]) -> list[Objects]:
        images = [rgb_image(c["image"]) for c in calls]
        objs: list[Objects] = [c["object"] for c in calls]
        cats = [[str(x).strip() for x in ([c["categories"]] if isinstance(c["categories"], str)
                                          else c["categories"] or [])] for c in calls]
        for o, im in zip(objs, images):
            if not isinstance(o, Objects):
                raise TypeError(f"Classify: object must be Objects, got {type(o).__name__}")
            if o.image_size != im.size:
                raise ValueError(f"Classify: the objects belong to an image of size "
                                 f"{o.image_size}, not {im.size}")
        work = [i for i in range(len(calls)) if len(objs[i]) and any(cats[i])]
        results = [Objects.empty(im.size) for im in images]
        if not work:
            return results
        # All crops and all prompts of the batch go through CLIP in one forward.
        crops, owner = [], []
        for i in work:
            for r in objs[i]:
                crops.append(crop_region(images[i], r.box, context))
                owner.append(i)
        texts = sorted({prompt.format(c) for i in work for c in cats[i] if c})
        logits = clip_logits(manager_of(ctx).get("clip", checkpoint, load_clip), crops, texts)
        col = {t: j for j, t in enumerate(texts)}
        owner_arr = np.array(owner)
        for i in work:
            names = list(dict.fromkeys(c for c in cats[i] if c))
            sub = logits[owner_arr == i][:, [col[prompt.format(c)] for c in names]]
            probs = softmax(sub, axis=1)
            picked = sorted(assign_one_to_one(probs), key=lambda rc: -probs[rc])
            regions = [replace(objs[i][r], label=names[c],
                               extra={**objs[i][r].extra, "class_score": float(probs[r, c])})
                       for r, c in picked]
            results[i] = objs[i].with_regions(regions)
        return results

    def classify(image, object, categories):  # noqa: A002 - the catalogue's argument name
        return run_batch([{"image": image, "object": object, "categories": categories}])[0]

    return Tool(
        name="Classify",
        params=(Param("image", parse_types("Image")), Param("object", parse_types("Objects")),
                Param("categories", parse_types("TextList"))),
        returns=parse_types("Objects"), fn=classify,
        doc="labels each object with one of `categories`, keeping the best object per category",
        version=VERSION, batch_fn=run_batch,
        settings={"checkpoint": checkpoint, "prompt": prompt, "crop_context": context})
