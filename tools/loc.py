"""Loc(image, object) -> Objects: open-vocabulary detection of `object`.

Backends: GroundingDINO (default) and OWLv2, both through transformers model classes.
`'TOP'`, `'BOTTOM'`, `'LEFT'`, `'RIGHT'` (exactly, upper case) return that half of the image
as one box without a model: a lower-case 'top' is still looked for as an object (a garment).

Settings (section `[Loc]`, see visprog/presets.toml):
    backend: "grounding_dino" or "owlv2".
    checkpoints: backend -> checkpoint (hub id, local path or `tiny:<name>`).
    checkpoint: optional; overrides `checkpoints[backend]`.
    box_threshold: minimum detection score.
    text_threshold: GroundingDINO's minimum token score (ignored by OWLv2).
    nms_iou: boxes overlapping a better one by more than this IoU are dropped.
    max_detections: keep at most this many, best first.

Every box is in the pixels of the image passed in, whatever its size or aspect ratio; each
region's label is the queried object name.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
from PIL import Image

from visprog.config import module_settings
from visprog.registry import Param, Tool, parse_types
from visprog.values import Objects

from .models import (manager_of, model_dtype, model_image, register_tiny, rgb_image,
                     tiny_bert_tokenizer, tiny_clip_tokenizer, to_model_inputs)

VERSION = "1"
BACKENDS = ("grounding_dino", "owlv2")
HALVES = ("TOP", "BOTTOM", "LEFT", "RIGHT")
# Words the tiny tokenizers know whole; anything else is spelled out in characters.
TINY_WORDS = ["a", "an", "the", "photo", "of", "red", "blue", "car", "dog", "cat", "person",
              "man", "woman", "face", "shirt", "table", "left", "right"]


# -- pure helpers ----------------------------------------------------------------------------

def half_box(name: str, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box of one half of an image of `size` = (W, H): 'TOP', 'BOTTOM', 'LEFT', 'RIGHT'."""
    w, h = size
    return {"TOP": (0.0, 0.0, w, h / 2), "BOTTOM": (0.0, h / 2, w, h),
            "LEFT": (0.0, 0.0, w / 2, h), "RIGHT": (w / 2, 0.0, w, h)}[name]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (n, 4) and b (m, 4), xyxy -> (n, m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Stops once `limit` boxes are kept: the loop is then bounded by the number of detections
    wanted, not by the hundreds of candidates a detector can propose."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    while order.size and (limit is None or len(keep) < limit):
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def clean_detections(boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int],
                     nms_iou: float, max_detections: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image, drop empty boxes (e.g. OWLv2's padding area), NMS, cap, best first."""
    w, h = size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h),
                      boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1)
    ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1) & np.isfinite(scores)
    boxes, scores = boxes[ok], scores[ok]
    keep = nms(boxes, scores, nms_iou, limit=max(0, int(max_detections)))
    return boxes[keep], scores[keep]


# -- GroundingDINO ---------------------------------------------------------------------------

def load_grounding_dino(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """GroundingDINO model and processor (PIL image processor; no torchvision needed)."""
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

    processor = GroundingDinoProcessor.from_pretrained(path)
    model = GroundingDinoForObjectDetection.from_pretrained(path, dtype=dtype).to(device)
    return model, processor


def grounding_prompt(text: str) -> str:
    """GroundingDINO wants lower-case phrases, each ended by ' .'."""
    return text.strip().lower().rstrip(".").strip() + " ."


def ground(bundle: tuple[Any, Any], images: Sequence[Image.Image], texts: Sequence[str],
           box_threshold: float, text_threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """One GroundingDINO batch: (boxes xyxy in each image's pixels, scores) per image."""
    import torch

    model, processor = bundle
    images = [model_image(im) for im in images]  # boxes stay in each image's own pixels
    inputs = processor(images=images, text=[grounding_prompt(t) for t in texts],
                       return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model(**to_model_inputs(inputs, model.device, model_dtype(model)))
    outputs = SimpleNamespace(logits=out.logits.float(), pred_boxes=out.pred_boxes.float())
    results = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"].to(out.logits.device), threshold=box_threshold,
        text_threshold=text_threshold, target_sizes=[im.size[::-1] for im in images])
    return [(r["boxes"].cpu().numpy(), r["scores"].cpu().numpy()) for r in results]


def build_tiny_grounding_dino(folder) -> None:
    """A GroundingDINO of about 0.5M random parameters, 256-pixel inputs."""
    import torch
    from transformers import (BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor, SwinConfig)

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer(TINY_WORDS)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(
            size={"shortest_edge": 224, "longest_edge": 384}),
        tokenizer=tok)
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                      out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    # decoder_layers=1 fails a tied-weights check in transformers 5: keep 2.
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=text, d_model=32,
                              encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                              decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                              num_queries=30, num_feature_levels=4, encoder_n_points=2,
                              decoder_n_points=2, max_text_len=256, use_timm_backbone=False)
    GroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


# -- OWLv2 -----------------------------------------------------------------------------------

OWL_TEXT_LEN = 16  # OWL's text encoder has 16 positions


def load_owlv2(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """OWLv2 model and processor (its PIL image processor needs scipy)."""
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    processor = Owlv2Processor.from_pretrained(path)
    model = Owlv2ForObjectDetection.from_pretrained(path, dtype=dtype).to(device)
    return model, processor


def owl_detect(bundle: tuple[Any, Any], images: Sequence[Image.Image], texts: Sequence[str],
               box_threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """One OWLv2 batch, one query per image: (boxes in each image's pixels, scores)."""
    import torch

    model, processor = bundle
    images = [model_image(im) for im in images]  # boxes stay in each image's own pixels
    queries = [[f"a photo of {t.strip()}"] for t in texts]
    inputs = processor(text=queries, images=images, return_tensors="pt",
                       padding="max_length", max_length=OWL_TEXT_LEN, truncation=True)
    with torch.inference_mode():
        out = model(**to_model_inputs(inputs, model.device, model_dtype(model)))
    outputs = SimpleNamespace(logits=out.logits.float(), pred_boxes=out.pred_boxes.float())
    # The processor pads each image to a square; its post-processing scales boxes back
    # by the longer side, so they land in the original image's pixels.
    results = processor.image_processor.post_process_object_detection(
        outputs, threshold=box_threshold, target_sizes=[im.size[::-1] for im in images])
    return [(r["boxes"].cpu().numpy(), r["scores"].cpu().numpy()) for r in results]


def build_tiny_owlv2(folder) -> None:
    """An OWLv2 of about 0.1M random parameters, 128-pixel inputs."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(TINY_WORDS)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    side = 128
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": side, "width": side}), tokenizer=tok)
    cfg = Owlv2Config(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=OWL_TEXT_LEN, eos_token_id=eot, pad_token_id=eot,
                         bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>")),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=side, patch_size=16),
        projection_dim=32)
    model = Owlv2ForObjectDetection(cfg)
    with torch.no_grad():  # random box-head weights saturate every box; start at the patch grid
        model.box_head.dense2.weight.zero_()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


register_tiny("grounding_dino", build_tiny_grounding_dino)
register_tiny("owlv2", build_tiny_owlv2)


# -- the tool --------------------------------------------------------------------------------

def loc_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The effective settings: the default preset's [Loc] under the given ones."""
    return module_settings("Loc", settings, BACKENDS)


def build(settings: dict[str, Any], ctx: Any) -> Tool:
    """The Loc tool with its section of the configuration (see the module docstring)."""
    s = loc_settings(settings)
    backend, checkpoint = s["backend"], s["checkpoint"]
    box_t, text_t = float(s["box_threshold"]), float(s["text_threshold"])
    nms_iou, max_det = float(s["nms_iou"]), int(s["max_detections"])

    def run_batch(calls: list[dict[str, Any]]) -> list[Objects]:
        images = [rgb_image(c["image"]) for c in calls]
        names = [str(c["object"]) for c in calls]
        for n in names:
            if not n.strip():
                raise ValueError("Loc needs an object to look for, got an empty string")
        results: list[Objects | None] = [None] * len(calls)
        todo = []
        for i, (im, n) in enumerate(zip(images, names)):
            if n.strip() in HALVES:
                results[i] = Objects.from_boxes([half_box(n.strip(), im.size)], im.size,
                                                labels=[n.strip()], scores=[1.0])
            else:
                todo.append(i)
        if todo:
            mm = manager_of(ctx)
            ims, texts = [images[i] for i in todo], [names[i] for i in todo]
            if backend == "grounding_dino":
                found = ground(mm.get("grounding_dino", checkpoint, load_grounding_dino),
                               ims, texts, box_t, text_t)
            else:
                found = owl_detect(mm.get("owlv2", checkpoint, load_owlv2), ims, texts, box_t)
            for i, (boxes, scores) in zip(todo, found):
                size = images[i].size
                boxes, scores = clean_detections(boxes, scores, size, nms_iou, max_det)
                label = names[i].strip()
                results[i] = Objects.from_boxes(boxes, size, labels=[label] * len(boxes),
                                                scores=scores.tolist())
        return results  # type: ignore[return-value]

    def loc(image, object):  # noqa: A002 - the catalogue's argument name
        return run_batch([{"image": image, "object": object}])[0]

    return Tool(
        name="Loc",
        params=(Param("image", parse_types("Image")), Param("object", parse_types("Text"))),
        returns=parse_types("Objects"), fn=loc,
        doc="open-vocabulary detection of `object`; 'TOP'/'BOTTOM'/'LEFT'/'RIGHT' give that half",
        version=VERSION, batch_fn=run_batch,
        settings={"backend": backend, "checkpoint": checkpoint, "box_threshold": box_t,
                  "text_threshold": text_t, "nms_iou": nms_iou, "max_detections": max_det})
