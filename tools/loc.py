"""Loc(image, object) -> Objects: open-vocabulary detection of `object`.

Backends, all through transformers model classes: MM-GroundingDINO (default;
`MMGroundingDinoForObjectDetection`, GroundingDINO's architecture retrained by OpenMMLab, with
GroundingDINO's processor), SAM 3's detections (boxes and scores of its text-prompted
concept segmentation, tools/_sam3.py), GroundingDINO (the `classic` preset) and OWLv2.
`'TOP'`, `'BOTTOM'`, `'LEFT'`, `'RIGHT'` (exactly, upper case) return that half of the image
as one box without a model: a lower-case 'top' is still looked for as an object (a garment).

Settings (section `[Loc]`; defaults and the tiny preset in `Loc.presets` below):
    backend: "mm_grounding_dino", "sam3", "grounding_dino" or "owlv2".
    checkpoints: backend -> checkpoint (hub id, local path or `tiny:<name>`).
    checkpoint: optional; overrides `checkpoints[backend]`.
    box_threshold: minimum detection score.
    text_threshold: the GroundingDINOs' minimum token score (ignored by OWLv2 and SAM 3).
    sam3_threshold: SAM 3's minimum instance score (used by "sam3" instead of box_threshold).
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

from visprog.models import (Backend, Done, ModelTool, hf_loader, model_images, model_inputs,
                            pick_checkpoint, rgb_image, tiny_bert_tokenizer, tiny_clip_tokenizer)
from visprog.values import Objects

from . import _sam3
from ._notes import note

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

# the PIL image processor: no torchvision needed
load_grounding_dino = hf_loader("GroundingDinoForObjectDetection", "GroundingDinoProcessor")


def grounding_prompt(text: str) -> str:
    """GroundingDINO wants lower-case phrases, each ended by ' .'."""
    return text.strip().lower().rstrip(".").strip() + " ."


def ground(bundle: tuple[Any, Any], images: Sequence[Image.Image], texts: Sequence[str],
           box_threshold: float, text_threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """One GroundingDINO batch: (boxes xyxy in each image's pixels, scores) per image."""
    model, processor = bundle
    images = model_images(images)  # thin strips padded: boxes stay in each image's own pixels
    inputs = processor(images=images, text=[grounding_prompt(t) for t in texts],
                       return_tensors="pt", padding=True)
    out = model(**model_inputs(inputs, model))
    outputs = SimpleNamespace(logits=out.logits.float(), pred_boxes=out.pred_boxes.float())
    results = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"].to(out.logits.device), threshold=box_threshold,
        text_threshold=text_threshold, target_sizes=[im.size[::-1] for im in images])
    return [(r["boxes"].cpu().numpy(), r["scores"].cpu().numpy()) for r in results]


def tiny_grounding_parts(tok: Any) -> dict[str, Any]:
    """The shrunk backbone, text encoder and transformer sizes both tiny GroundingDINO
    builders use (about 0.5M parameters)."""
    from transformers import BertConfig, SwinConfig

    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                      out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    # decoder_layers=1 fails a tied-weights check in transformers 5: keep 2.
    return dict(backbone_config=swin, text_config=text, d_model=32, encoder_layers=1,
                decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=30, num_feature_levels=4,
                encoder_n_points=2, decoder_n_points=2, max_text_len=256)


def build_tiny_grounding_dino(folder) -> None:
    """A GroundingDINO of about 0.5M random parameters with IDEA-Research/grounding-dino-tiny's
    inputs: preprocessor_config.json (shortest edge 800, longest 1333, ImageNet mean/std,
    padded: GroundingDinoImageProcessor's defaults), config.json (max_text_len 256) and
    tokenizer_config.json (BERT uncased, model_max_length 512, padding on the right)."""
    import torch
    from transformers import (GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor)

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer(TINY_WORDS)
    tok.model_max_length, tok.padding_side = 512, "right"
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(),
                                       tokenizer=tok)
    cfg = GroundingDinoConfig(**tiny_grounding_parts(tok), use_timm_backbone=False)
    GroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


# -- MM-GroundingDINO -------------------------------------------------------------------------

# no processor of its own: the checkpoints use GroundingDINO's (BERT tokenizer, PIL images)
load_mm_grounding_dino = hf_loader("MMGroundingDinoForObjectDetection", "GroundingDinoProcessor")


def build_tiny_mm_grounding_dino(folder) -> None:
    """A random MM-GroundingDINO of about 0.5M parameters with the real checkpoints' inputs.

    Copied from the published settings (openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det
    preprocessor_config.json and config.json): images resized to shortest edge 800, longest
    1333, ImageNet mean/std, rescale 1/255; a BERT (uncased WordPiece) tokenizer
    (tokenizer_config.json: model_max_length 512, padding on the right); text length 256
    (max_text_len); a Swin backbone with 4 feature levels. Widths and depths are shrunk.
    """
    import torch
    from transformers import (GroundingDinoImageProcessorPil, GroundingDinoProcessor,
                              MMGroundingDinoConfig, MMGroundingDinoForObjectDetection)

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer(TINY_WORDS)
    tok.model_max_length, tok.padding_side = 512, "right"
    # GroundingDinoImageProcessor's defaults are the checkpoints' settings
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(),
                                       tokenizer=tok)
    cfg = MMGroundingDinoConfig(**tiny_grounding_parts(tok))
    MMGroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


# -- OWLv2 -----------------------------------------------------------------------------------

OWL_TEXT_LEN = 16  # OWL's text encoder has 16 positions


# its PIL image processor needs scipy
load_owlv2 = hf_loader("Owlv2ForObjectDetection", "Owlv2Processor")


def owl_detect(bundle: tuple[Any, Any], images: Sequence[Image.Image], texts: Sequence[str],
               box_threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """One OWLv2 batch, one query per image: (boxes in each image's pixels, scores)."""
    model, processor = bundle
    images = model_images(images)  # thin strips padded: boxes stay in each image's own pixels
    queries = [[f"a photo of {t.strip()}"] for t in texts]
    inputs = processor(text=queries, images=images, return_tensors="pt",
                       padding="max_length", max_length=OWL_TEXT_LEN, truncation=True)
    out = model(**model_inputs(inputs, model))
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


# -- the backends ----------------------------------------------------------------------------

class Detector(Backend):
    """What Loc's backends share: their settings, and one model batch per image size (a
    padded batch gives other boxes than a lone call)."""

    one_batch_per_size = True

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {"backend": s["backend"], "checkpoint": pick_checkpoint(s),
                "box_threshold": float(s["box_threshold"]),
                "text_threshold": float(s["text_threshold"]), "nms_iou": float(s["nms_iou"]),
                "max_detections": int(s["max_detections"])}


class GroundingDino(Detector):
    """GroundingDINO (the `classic` preset)."""

    kind, loader = "grounding_dino", staticmethod(load_grounding_dino)

    def forward(self, tool: ModelTool, items: list[tuple[Image.Image, str]]) -> list[Any]:
        s = self.settings
        return ground(tool.model(self.kind, s["checkpoint"], self.loader),
                      [im for im, _ in items], [t for _, t in items], s["box_threshold"],
                      s["text_threshold"])


class MMGroundingDino(GroundingDino):
    """MM-GroundingDINO (the default): GroundingDINO's architecture and processor."""

    kind, loader = "mm_grounding_dino", staticmethod(load_mm_grounding_dino)


class Owlv2(Detector):
    """OWLv2: one query per image, each image padded to a square."""

    def forward(self, tool: ModelTool, items: list[tuple[Image.Image, str]]) -> list[Any]:
        s = self.settings
        return owl_detect(tool.model("owlv2", s["checkpoint"], load_owlv2),
                          [im for im, _ in items], [t for _, t in items], s["box_threshold"])


class Sam3(Detector):
    """SAM 3's detections: boxes and scores of its text-prompted concept segmentation."""

    one_batch_per_size = False  # SAM 3 resizes every image to one size

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        # its own score threshold; the others' keys stay as they were
        return {**super().configure(s), "sam3_threshold": float(s["sam3_threshold"])}

    def forward(self, tool: ModelTool, items: list[tuple[Image.Image, str]]) -> list[Any]:
        images, texts = [im for im, _ in items], [t for _, t in items]
        bundle = tool.model("sam3", self.settings["checkpoint"], _sam3.load_sam3)
        for q, cut in zip(texts, _sam3.too_long(bundle, texts)):
            if cut:
                note(tool.ctx, tool.name, f"object {q[:60]!r}... cut to SAM 3's "
                     f"{bundle['text_len']} text tokens", query=q)
        found = _sam3.detect(bundle, images, texts, threshold=self.settings["sam3_threshold"],
                             masks=False)
        return [(f.boxes, f.scores) for f in found]


# -- the tool --------------------------------------------------------------------------------

class Loc(ModelTool):
    name = "Loc"
    tasks = ("gqa", "knowtag", "video")  # the planner's prompts that describe it
    params = {"image": "Image", "object": "Text"}
    returns = "Objects"
    doc = "open-vocabulary detection of `object`; 'TOP'/'BOTTOM'/'LEFT'/'RIGHT' give that half"
    backends = {"mm_grounding_dino": MMGroundingDino, "sam3": Sam3,
                "grounding_dino": GroundingDino, "owlv2": Owlv2}
    presets = {
        "default": {"backend": "mm_grounding_dino", "box_threshold": 0.35,
                    "text_threshold": 0.25, "sam3_threshold": 0.5, "nms_iou": 0.5,
                    "max_detections": 20,
                    "checkpoints": {
                        "mm_grounding_dino":
                            "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
                        "sam3": "facebook/sam3",
                        "grounding_dino": "IDEA-Research/grounding-dino-tiny",
                        "owlv2": "google/owlv2-base-patch16-ensemble"}},
        # today's (before MM-GroundingDINO) defaults, unchanged: same settings and cache keys
        "classic": {"backend": "grounding_dino"},
        "tiny": {"box_threshold": 0.05, "text_threshold": 0.0, "sam3_threshold": 0.0,
                 "checkpoints": {"mm_grounding_dino": "tiny:mm_grounding_dino",
                                 "sam3": "tiny:sam3", "grounding_dino": "tiny:grounding_dino",
                                 "owlv2": "tiny:owlv2"}},
    }
    tiny_checkpoints = {"grounding_dino": (build_tiny_grounding_dino, "2"),
                        "owlv2": build_tiny_owlv2,
                        "mm_grounding_dino": (build_tiny_mm_grounding_dino, "2"),
                        "sam3": _sam3.build_tiny_sam3}

    def preprocess(self, call: dict[str, Any]) -> Any:
        image, name = rgb_image(call["image"]), str(call["object"])
        if not name.strip():
            raise ValueError("Loc needs an object to look for, got an empty string")
        if name.strip() in HALVES:
            return Done(Objects([half_box(name.strip(), image.size)], image.size,
                                labels=[name.strip()], scores=[1.0]))
        return image, name

    def batch_key(self, item: tuple[Image.Image, str]) -> Any:
        # one model batch per image size: a padded batch gives other boxes than a lone call
        # (SAM 3 resizes every image to one size, so any images batch together)
        return item[0].size if self.backend.one_batch_per_size else None

    def postprocess(self, item: tuple[Image.Image, str], found: Any) -> Objects:
        (image, name), (boxes, scores) = item, found
        boxes, scores = clean_detections(boxes, scores, image.size, self.settings["nms_iou"],
                                         self.settings["max_detections"])
        return Objects(boxes, image.size, labels=[name.strip()] * len(boxes),
                       scores=scores.tolist())


TOOLS = [Loc]
