"""Classify(image, object, categories) -> Objects: SigLIP2 (default) or CLIP over object crops.

Each object's crop (its box, enlarged a little for context) is scored against
`prompt.format(category)` for every category. CLIP's scores are a softmax over the
categories; SigLIP2 was trained with a sigmoid per image-text pair, so its scores are those
sigmoids (each in [0, 1], not summing to 1). SigLIP2's NaFlex processor keeps each crop's
aspect ratio (up to `max_num_patches` patches of 16 pixels), so thin crops are not squashed.
Categories and objects are then paired one to one, best pair first, so each category keeps
the object it fits best (SPEC: "keeping the best object per category") and no object gets
two labels. With more categories than objects some categories get none; objects that no
category claims are dropped. The result is best first; each region's `label` is its
category and `extra["class_score"]` the softmax score (its detection score is kept).

Settings (section `[Classify]`; defaults and the other presets in `Classify.presets`):
    backend: "siglip2" (default) or "clip" (the `classic` preset).
    checkpoints: backend -> checkpoint (hub id, local path or `tiny:<name>`).
    checkpoint: optional; overrides `checkpoints[backend]`.
    prompt: text template with one `{}` for the category; `prompts[backend]` when unset
        (each model's training captions: CLIP "a photo of {}", SigLIP "this is a photo of {}.").
    crop_context: fraction of the box's size added on each side of a crop.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from PIL import Image

from visprog.models import (Backend, Done, ModelTool, hf_loader, model_images, model_inputs,
                            pick_checkpoint, rgb_image, tiny_clip_tokenizer,
                            tiny_siglip2_tokenizer)
from visprog.values import Objects

from .loc import TINY_WORDS


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


load_clip = hf_loader("CLIPModel", "CLIPProcessor")


def clip_logits(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                texts: Sequence[str]) -> np.ndarray:
    """CLIP's scaled image-text similarities, (len(images), len(texts)), in one forward."""
    model, processor = bundle
    max_len = getattr(model.config.text_config, "max_position_embeddings", 77)
    inputs = processor(text=list(texts), images=model_images(images), return_tensors="pt",
                       padding=True, truncation=True, max_length=max_len)
    out = model(**model_inputs(inputs, model))
    return out.logits_per_image.float().cpu().numpy()


load_siglip2 = hf_loader("Siglip2Model", "Siglip2Processor")


def siglip2_logits(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                   texts: Sequence[str]) -> np.ndarray:
    """SigLIP2's image-text logits (scale and bias applied), (len(images), len(texts)), in one
    forward; the text is padded to the model's length as in training."""
    model, processor = bundle
    max_len = getattr(model.config.text_config, "max_position_embeddings", 64)
    inputs = processor(text=list(texts), images=list(images), return_tensors="pt",
                       padding="max_length", truncation=True, max_length=max_len)
    out = model(**model_inputs(inputs, model))
    return out.logits_per_image.float().cpu().numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


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
    """A CLIP of about 0.1M random parameters with openai/clip-vit-base-patch32's inputs:
    its preprocessor_config.json (shortest edge 224, bicubic, centre crop 224, OpenAI
    mean/std: CLIPImageProcessor's defaults), config.json (vision image_size 224,
    patch_size 32; text max_position_embeddings 77) and tokenizer_config.json
    (model_max_length 77, padding on the right)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(TINY_WORDS)
    tok.model_max_length, tok.padding_side = 77, "right"
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         eos_token_id=eot, pad_token_id=eot,
                         bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>")),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=224, patch_size=32),
        projection_dim=32)
    CLIPModel(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


def build_tiny_siglip2(folder) -> None:
    """A SigLIP2 NaFlex model of about 0.1M random parameters."""
    import torch
    from transformers import (Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model,
                              Siglip2Processor, Siglip2TextConfig, Siglip2VisionConfig)

    torch.manual_seed(0)
    # google/siglip2-base-patch16-naflex tokenizer_config.json: model_max_length 64, padding
    # on the right (the Gemma class defaults to the left): the text model pools the LAST
    # position, which the real layout makes a pad token
    tok = tiny_siglip2_tokenizer(TINY_WORDS + ["this", "is"], model_max_length=64,
                                 padding_side="right")
    # google/siglip2-base-patch16-naflex preprocessor_config.json: patch_size=16,
    # max_num_patches=256, image_mean=image_std=[0.5]*3, resample bilinear (the PIL
    # processor's defaults); the text is padded to 64 tokens (text max_position_embeddings).
    processor = Siglip2Processor(
        image_processor=Siglip2ImageProcessorPil(patch_size=16, max_num_patches=256,
                                                 image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tok)
    cfg = Siglip2Config(
        text_config=Siglip2TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                                      bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id),
        # config.json vision_config: patch_size=16, num_patches=256 (a 16x16 position grid,
        # resized to each crop's patch grid)
        vision_config=Siglip2VisionConfig(hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2,
                                          patch_size=16, num_patches=256))
    Siglip2Model(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


class Clip(Backend):
    """CLIP (the `classic` preset): scores are a softmax over the categories."""

    kind, loader, model_logits = "clip", staticmethod(load_clip), staticmethod(clip_logits)

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        prompt = str(s.get("prompt") or s["prompts"][s["backend"]])
        if "{}" not in prompt:
            prompt += " {}"
        # CLIP's settings keep the keys (and cache keys) of before SigLIP2
        return {"checkpoint": pick_checkpoint(s), "prompt": prompt,
                "crop_context": float(s["crop_context"])}

    def logits(self, tool: ModelTool, crops: list[Image.Image], texts: list[str]
               ) -> np.ndarray:
        """The (crops, texts) logits, in one forward."""
        return self.model_logits(tool.model(self.kind, self.settings["checkpoint"],
                                            self.loader), crops, texts)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, axis=1)


class Siglip2(Clip):
    """SigLIP2 (the default): trained with a sigmoid per image-text pair, so its scores are
    those sigmoids (each in [0, 1], not summing to 1)."""

    kind, loader = "siglip2", staticmethod(load_siglip2)
    model_logits = staticmethod(siglip2_logits)

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {"backend": s["backend"], **super().configure(s)}

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)


class Classify(ModelTool):
    name = "Classify"
    tasks = ("knowtag",)  # the planner's prompts that describe it
    params = {"image": "Image", "object": "Objects", "categories": "TextList"}
    returns = "Objects"
    doc = "labels each object with one of `categories`, keeping the best object per category"
    backends = {"siglip2": Siglip2, "clip": Clip}
    presets = {
        "default": {"backend": "siglip2", "prompt": "", "crop_context": 0.1,
                    "checkpoints": {"siglip2": "google/siglip2-base-patch16-naflex",
                                    "clip": "openai/clip-vit-base-patch32"},
                    "prompts": {"siglip2": "this is a photo of {}.", "clip": "a photo of {}"}},
        # today's defaults, unchanged
        "classic": {"backend": "clip"},
        "tiny": {"checkpoints": {"siglip2": "tiny:siglip2", "clip": "tiny:clip"}},
    }
    tiny_checkpoints = {"clip": (build_tiny_clip, "2"), "siglip2": (build_tiny_siglip2, "3")}

    def preprocess(self, call: dict[str, Any]) -> Any:
        image, objs, cats = rgb_image(call["image"]), call["object"], call["categories"]
        names = [str(x).strip() for x in ([cats] if isinstance(cats, str) else cats or [])]
        if not isinstance(objs, Objects):
            raise TypeError(f"Classify: object must be Objects, got {type(objs).__name__}")
        if objs.image_size != image.size:
            raise ValueError(f"Classify: the objects belong to an image of size "
                             f"{objs.image_size}, not {image.size}")
        names = list(dict.fromkeys(c for c in names if c))
        if not len(objs) or not names:
            return Done(Objects.empty(image.size))
        return image, objs, names

    def forward(self, items: list[tuple[Image.Image, Objects, list[str]]]) -> list[np.ndarray]:
        # All crops and all prompts of the batch go through the model in one forward.
        prompt, context = self.settings["prompt"], self.settings["crop_context"]
        crops, owner = [], []
        for i, (image, objs, _) in enumerate(items):
            crops += [crop_region(image, r.box, context) for r in objs]
            owner += [i] * len(objs)
        texts = sorted({prompt.format(c) for _, _, names in items for c in names})
        logits = self.backend.logits(self, crops, texts)
        col, owner_arr = {t: j for j, t in enumerate(texts)}, np.array(owner)
        return [logits[owner_arr == i][:, [col[prompt.format(c)] for c in names]]
                for i, (_, _, names) in enumerate(items)]

    def postprocess(self, item: tuple[Image.Image, Objects, list[str]],
                    logits: np.ndarray) -> Objects:
        _, objs, names = item
        probs = self.backend.scores(logits)
        picked = sorted(assign_one_to_one(probs), key=lambda rc: -probs[rc])
        return objs.with_regions([
            replace(objs[r], label=names[c],
                    extra={**objs[r].extra, "class_score": float(probs[r, c])})
            for r, c in picked])


TOOLS = [Classify]
