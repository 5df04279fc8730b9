"""SAM 3 (transformers `Sam3Model`), text-prompted concept segmentation, shared by Select and
Loc: a noun phrase gives every instance's mask, box and score in one forward, batched over
(image, phrase) rows.

Why our own image preprocessing: transformers' `Sam3ImageProcessor` cannot even be imported
without torchvision (its module imports `torchvision.ops` and the class is a torchvision
backend), and `Sam3Processor.from_pretrained` loads it. So the loader reads the checkpoint's
published image-processor settings (`preprocessor_config.json`, or the `image_processor`
table of `processor_config.json`: size, resample, rescale factor, mean and std) and
`preprocess_images` applies it with torch the way the torchvision backend does: a resize to
exactly `size` (no aspect ratio kept, no padding) with antialiasing on the uint8 image,
then `(x * rescale - mean) / std`. The tokenizer is the checkpoint's CLIP BPE tokenizer,
padded to the text encoder's length (32) as `Sam3Processor` does; longer phrases are
truncated there and the caller notes it in the trace.

Box prompts reach `torchvision.ops.roi_align` inside the model, so only text prompts are used.

This file starts with `_`: it exposes no TOOLS and is not discovered as a tool.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

# Sam3ImageProcessor's class defaults (transformers image_processing_sam3.py), used where a
# checkpoint's preprocessor_config.json leaves a key out.
SAM3_DEFAULTS = {"size": {"height": 1008, "width": 1008}, "resample": 2,  # PIL BILINEAR
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
TEXT_LEN = 32  # Sam3Processor pads (and we truncate) every phrase to 32 tokens
_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PILImageResampling -> torch mode


@dataclass(frozen=True)
class Sam3Preprocess:
    """The image preprocessing a SAM 3 checkpoint publishes."""

    height: int
    width: int
    resample: int
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Sam3Preprocess":
        c = {**SAM3_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
        size = c["size"]
        if "height" not in size or "width" not in size:
            raise ValueError(f"SAM 3: expected size {{height, width}}, got {size}")
        if int(c["resample"]) not in _MODES:
            raise ValueError(f"SAM 3: resample {c['resample']} is not supported")
        return cls(int(size["height"]), int(size["width"]), int(c["resample"]),
                   float(c["rescale_factor"]) if c["do_rescale"] else None,
                   tuple(map(float, c["image_mean"])) if c["do_normalize"] else None,
                   tuple(map(float, c["image_std"])) if c["do_normalize"] else None)


def preprocess_images(images: Sequence[Image.Image], prep: Sam3Preprocess) -> Any:
    """RGB PIL images -> pixel_values (B, 3, height, width), float32."""
    import torch
    import torch.nn.functional as F

    mode = _MODES[prep.resample]
    out = []
    for im in images:
        x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
        x = x.permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
        if x.shape[-2:] != (prep.height, prep.width):
            if mode == "nearest":
                x = F.interpolate(x, size=(prep.height, prep.width), mode=mode)
            else:
                # torch's uint8 antialiased kernel is the one torchvision's resize calls on CPU;
                # elsewhere torchvision resizes in float and rounds back to uint8, as here
                try:
                    x = F.interpolate(x, size=(prep.height, prep.width), mode=mode,
                                      align_corners=False, antialias=True)
                except RuntimeError:
                    x = F.interpolate(x.float(), size=(prep.height, prep.width), mode=mode,
                                      align_corners=False, antialias=True)
                    x = x.round().clamp(0, 255).to(torch.uint8)
        x = x.float()
        if prep.rescale_factor is not None:
            x = x * prep.rescale_factor
        if prep.mean is not None:
            mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
            std = torch.tensor(prep.std).view(1, 3, 1, 1)
            x = (x - mean) / std
        out.append(x)
    return torch.cat(out) if out else torch.zeros(0, 3, prep.height, prep.width)


def _read_json(path: str, name: str) -> dict[str, Any]:
    local = Path(path) / name
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    from transformers.utils import cached_file  # a hub id: the hub's cache (or a download)

    found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(found).read_text(encoding="utf-8")) if found else {}


def load_sam3(path: str, device: str, dtype: Any) -> dict[str, Any]:
    """A model-manager loader: the model, its tokenizer and its preprocessing settings."""
    from transformers import AutoTokenizer, Sam3Model

    # older checkpoints publish preprocessor_config.json; transformers 5 writes the image
    # processor's settings inside processor_config.json
    cfg = _read_json(path, "preprocessor_config.json") or \
        _read_json(path, "processor_config.json").get("image_processor", {})
    prep = Sam3Preprocess.from_config(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Sam3Model.from_pretrained(path, dtype=dtype).to(device)
    text_len = min(TEXT_LEN, int(getattr(model.config.text_config, "max_position_embeddings",
                                         TEXT_LEN)))
    return {"model": model, "tokenizer": tokenizer, "prep": prep, "text_len": text_len}


def phrase(text: str) -> str:
    """SAM 3 is prompted with a short lower-case noun phrase."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


def too_long(bundle: dict[str, Any], texts: Sequence[str]) -> list[bool]:
    """Whether each phrase has more tokens (with start and end) than the text encoder takes."""
    ids = bundle["tokenizer"]([phrase(t) for t in texts], verbose=False)["input_ids"]
    return [len(i) > bundle["text_len"] for i in ids]


@dataclass
class Found:
    """SAM 3's instances for one (image, phrase), best first: boxes (n, 4) xyxy in the
    image's pixels, scores (n,), masks (n, H, W) bool or None."""

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None


def detect(bundle: dict[str, Any], images: Sequence[Image.Image], texts: Sequence[str], *,
           threshold: float, mask_threshold: float = 0.5, limit: int = 100,
           masks: bool = True) -> list[Found]:
    """One SAM 3 forward over rows of (image, phrase)."""
    import torch
    import torch.nn.functional as F

    from visprog.models import model_inputs

    model, tok = bundle["model"], bundle["tokenizer"]
    text = tok([phrase(t) for t in texts], padding="max_length", max_length=bundle["text_len"],
               truncation=True, return_tensors="pt")
    inputs = model_inputs({"pixel_values": preprocess_images(images, bundle["prep"]),
                           "input_ids": text["input_ids"],
                           "attention_mask": text["attention_mask"]}, model)
    out = model(**inputs)
    out = {k: v.detach() for k, v in out.items() if hasattr(v, "detach")}
    scores = out["pred_logits"].float().sigmoid()
    if out.get("presence_logits") is not None:  # "is the concept in the image at all"
        scores = scores * out["presence_logits"].float().sigmoid()
    results = []
    for i, im in enumerate(images):
        w, h = im.size
        s = scores[i]
        keep = torch.nonzero(s > threshold).flatten()
        keep = keep[torch.argsort(-s[keep], stable=True)][:max(0, int(limit))]
        boxes = (out["pred_boxes"][i, keep].float()
                 * torch.tensor([w, h, w, h], dtype=torch.float32, device=s.device))
        m = None
        if masks:
            if len(keep):
                logits = out["pred_masks"][i, keep].float()[None]  # (1, n, 288, 288)
                m = (F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0]
                     .sigmoid() > mask_threshold).cpu().numpy()
            else:
                m = np.zeros((0, h, w), dtype=bool)
        results.append(Found(boxes.cpu().numpy().astype(np.float64),
                             s[keep].cpu().numpy().astype(np.float64), m))
    return results


# -- tiny:sam3 --------------------------------------------------------------------------------

TINY_WORDS = ["a", "an", "the", "photo", "of", "red", "blue", "green", "car", "dog", "cat",
              "person", "man", "woman", "face", "shirt", "table", "left", "right", "with"]


def build_tiny_sam3(folder) -> None:
    """A random SAM 3 of about 0.4M parameters with the real checkpoint's input shapes.

    Shape-relevant settings copied from the published ones: image size 1008, patch 14,
    window 24 (transformers Sam3ViTConfig defaults, as in facebook/sam3's config.json);
    preprocessing 1008x1008 bilinear, rescale 1/255, mean = std = 0.5 (Sam3ImageProcessor,
    facebook/sam3 preprocessor_config.json); a CLIP BPE tokenizer with <|startoftext|> and
    <|endoftext|>, texts padded to 32 tokens (Sam3Processor: padding="max_length",
    max_length=32). Everything else is shrunk.
    """
    import torch
    from transformers import Sam3Config, Sam3Model, Sam3ViTConfig, Sam3VisionConfig

    from visprog.models import tiny_clip_tokenizer

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(TINY_WORDS)
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = TEXT_LEN
    e = 32  # mask_decoder hidden size: GroupNorm(8) needs a multiple of 8
    cfg = Sam3Config(
        # a plain dict for backbone_config raises KeyError (it has no model_type)
        vision_config=Sam3VisionConfig(
            backbone_config=Sam3ViTConfig(hidden_size=e, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=2,
                                          image_size=1008, patch_size=14, window_size=24,
                                          global_attn_indexes=[1]),
            fpn_hidden_size=e),
        text_config=dict(vocab_size=len(tok), hidden_size=e, intermediate_size=64,
                         projection_dim=e, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=TEXT_LEN, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        geometry_encoder_config=dict(hidden_size=e, num_layers=1, num_attention_heads=2,
                                     intermediate_size=64),
        detr_encoder_config=dict(hidden_size=e, num_layers=1, num_attention_heads=2,
                                 intermediate_size=64),
        detr_decoder_config=dict(hidden_size=e, num_layers=1, num_queries=20,
                                 num_attention_heads=2, intermediate_size=64),
        mask_decoder_config=dict(hidden_size=e, num_attention_heads=2))
    Sam3Model(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Sam3ImageProcessor", **SAM3_DEFAULTS}, indent=1))
