"""Select(image, object, query, category=None) -> Objects: the candidates that `query` names.

Backend "sam3" (default): SAM 3's promptable concept segmentation turns each query part into
instance masks, boxes and scores in one model (tools/_sam3.py), batched over calls; each
found mask is matched to the candidates by mask IoU exactly as for "sam" below. With no
candidates at all, the found instances themselves are the selection (labelled with the query
part, `extra["sam3_score"]`); a query part SAM 3 finds nothing for selects nothing. A query
longer than the text encoder's 32 tokens is cut there, with a note in the trace.

Backend "sam" (`classic` preset, LangSAM style): GroundingDINO grounds each query to boxes, SAM turns
those boxes into masks, and each grounded mask is matched to the candidates by mask IoU
(a candidate without a mask counts as its filled box). For each query the candidates whose
IoU reaches `match_iou` are selected, best match first; when none reaches it, the single
best-overlapping candidate is taken (the grounder saw the thing but the two segmentations
disagree), and when nothing overlaps at all the query selects nothing. A candidate already
selected by an earlier part of an 'a,b' query is not selected again.

Backend "clip": each candidate's crop is scored by CLIP against each query and the best
candidate per query (not taken by an earlier part) is selected; no masks are made.

Shared rules:
- `category`, when given, narrows the candidates to those whose label names it (case and a
  plural 's' ignored; a word of a label like 'tree-merged' counts). If no candidate's label
  names it, all candidates are kept: labels from Seg (COCO names) often differ from the
  planner's words.
- a query `'a,b'` selects each of a and b, each part a different candidate.
- selected regions keep their box, score and mask; a candidate without a mask gets SAM's
  mask. The label becomes the query part that selected it (the old one is kept in
  `extra["candidate_label"]`), with `extra["match_iou"]` or `extra["clip_score"]`.
- an empty query selects nothing, and so do no candidates with "sam" and "clip" (no model
  runs).

Settings (section `[Select]`; defaults and the tiny and classic presets in `Select.presets`):
    backend: "sam3", "sam" or "clip".
    checkpoints: {sam3, grounding_dino, sam, clip} checkpoints.
    sam3_threshold, mask_threshold: SAM 3's instance score and mask thresholds.
    box_threshold, text_threshold: GroundingDINO's thresholds ("sam").
    match_iou: mask IoU at which a found mask selects a candidate.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from visprog.models import (Backend, Done, ModelTool, hf_loader, model_image, model_inputs,
                            rgb_image)
from visprog.values import Objects, Region

from . import _sam3
from ._notes import note
from .classify import clip_logits, crop_region, load_clip
from .loc import clean_detections, ground, load_grounding_dino

MAX_GROUNDED = 10     # grounded boxes per query sent to SAM
IOU_GRID = 512        # masks are compared on a grid of at most this many pixels a side


# -- SAM -------------------------------------------------------------------------------------

load_sam = hf_loader("SamModel", "SamProcessor")  # with the PIL image processor


def sam_masks(bundle: tuple[Any, Any], image: Image.Image, boxes: np.ndarray) -> np.ndarray:
    """One bool mask of the image's H x W per box (xyxy, image pixels), in one SAM forward."""
    w, h = image.size
    if len(boxes) == 0:
        return np.zeros((0, h, w), dtype=bool)
    model, processor = bundle
    inputs = processor(images=model_image(image),  # boxes are the same in the padded image
                       input_boxes=[[list(map(float, b)) for b in boxes]], return_tensors="pt")
    out = model(**model_inputs(inputs, model), multimask_output=False)
    masks = processor.post_process_masks(out.pred_masks.float().cpu(), inputs["original_sizes"],
                                         inputs["reshaped_input_sizes"])[0]
    return masks[:, 0, :h, :w].numpy().astype(bool)  # (n_boxes, H, W): the padding cut off


def build_tiny_sam(folder) -> None:
    """A SAM of about 0.1M random parameters with facebook/sam-vit-base's inputs:
    preprocessor_config.json (longest edge 1024, padded to 1024x1024, ImageNet mean/std:
    SamImageProcessor's defaults) and config.json (vision image_size 1024, patch_size 16)."""
    import torch
    from transformers import (SamConfig, SamImageProcessorPil, SamMaskDecoderConfig,
                              SamModel, SamProcessor, SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(0)
    side, width = 1024, 32  # vision output channels == prompt encoder == mask decoder width
    cfg = SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, output_channels=width, num_hidden_layers=2,
                                      num_attention_heads=2, window_size=4, global_attn_indexes=[1],
                                      num_pos_feats=width // 2, mlp_dim=64, image_size=side),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=width, image_size=side),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=width, mlp_dim=64,
                                                 num_attention_heads=2, iou_head_hidden_dim=32))
    processor = SamProcessor(image_processor=SamImageProcessorPil())
    SamModel(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)



# -- matching --------------------------------------------------------------------------------

def _norm_word(word: str) -> str:
    w = word.strip().lower()
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def names_category(label: str | None, category: str) -> bool:
    """Whether a candidate's label names the category ('Dogs' ~ 'dog', 'tree-merged' ~ 'tree')."""
    if not label:
        return False
    cat = _norm_word(category)
    return _norm_word(label) == cat or cat in {_norm_word(p) for p in re.split(r"[-_\s/]+", label)}


def narrow(candidates: Objects, category: str | None) -> Objects:
    """The candidates whose label names `category`; all of them when none does."""
    if not category or not str(category).strip():
        return candidates
    keep = np.array([names_category(r.label, str(category)) for r in candidates], dtype=bool)
    return candidates[keep] if keep.any() else candidates


def split_query(query: str) -> list[str]:
    """'man, woman' -> ['man', 'woman']; empty parts dropped, order kept, repeats once."""
    return list(dict.fromkeys(p.strip() for p in str(query).split(",") if p.strip()))


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of bool masks a (n, H, W) and b (m, H, W), on a grid of <= IOU_GRID."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    step = max(1, int(np.ceil(max(a.shape[1:]) / IOU_GRID)))
    fa = a[:, ::step, ::step].reshape(len(a), -1).astype(np.float32)
    fb = b[:, ::step, ::step].reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def pick_by_iou(ious: np.ndarray, match_iou: float,
                taken: set[int] = frozenset()) -> list[tuple[int, int, float]]:
    """From IoUs (grounded, candidates): (candidate, grounded, iou) selected, best first.

    Candidates in `taken` (selected by an earlier query part) are skipped, so 'a,b' can
    select a different candidate for b than for a.
    """
    if ious.size == 0:
        return []
    best_g = ious.argmax(axis=0)                       # best grounded mask per candidate
    best = ious[best_g, np.arange(ious.shape[1])]
    order = [int(c) for c in np.argsort(-best, kind="stable") if int(c) not in taken]
    chosen = [c for c in order if best[c] >= match_iou]
    if not chosen and order and best[order[0]] > 0:
        chosen = [order[0]]
    return [(c, int(best_g[c]), float(best[c])) for c in chosen]


def _selected(cand: Region, query: str, mask: np.ndarray | None, **extra: float) -> Region:
    return replace(cand, label=query, mask=cand.mask if cand.mask is not None else mask,
                   extra={**cand.extra, "candidate_label": cand.label, **extra})


# -- the tool --------------------------------------------------------------------------------

Job = tuple[Image.Image, Objects, list[str]]  # the image, its candidates, the query's parts


class Sam3Concepts(Backend):
    """"sam3" (default): SAM 3's concept segmentation finds each query part's instances."""

    one_batch_per_size = False  # SAM 3 resizes every image to one size
    finds_without_candidates = True  # with no candidates, what it finds is the selection

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {"backend": "sam3", "checkpoints": {"sam3": s["checkpoints"]["sam3"]},
                "sam3_threshold": float(s["sam3_threshold"]),
                "mask_threshold": float(s["mask_threshold"]),
                "match_iou": float(s["match_iou"])}

    def forward(self, tool: ModelTool, jobs: list[Job]) -> list[Objects]:
        s = self.settings
        rows = [(j, q) for j, (_, _, qs) in enumerate(jobs) for q in qs]
        bundle = tool.model("sam3", s["checkpoints"]["sam3"], _sam3.load_sam3)
        texts = [q for _, q in rows]
        for q, cut in zip(texts, _sam3.too_long(bundle, texts)):
            if cut:
                note(tool.ctx, tool.name, f"query {q[:60]!r}... cut to SAM 3's "
                     f"{bundle['text_len']} text tokens", query=q)
        found = _sam3.detect(bundle, [jobs[j][0] for j, _ in rows], texts,
                             threshold=s["sam3_threshold"], mask_threshold=s["mask_threshold"],
                             limit=MAX_GROUNDED)
        out = []
        for j, (image, cands, _) in enumerate(jobs):
            mine = [(q, f) for (jj, q), f in zip(rows, found) if jj == j]
            regions: list[Region] = []
            if not len(cands):  # no candidates: the instances found are the selection
                for q, f in mine:
                    regions += [Region(box=tuple(map(float, b)), mask=m, label=q, score=float(sc),
                                       extra={"sam3_score": float(sc)})
                                for b, sc, m in zip(f.boxes, f.scores, f.masks)]
                out.append(Objects.from_regions(regions, image.size))
                continue
            cand_masks = np.stack([cands.region_mask(i) for i in range(len(cands))])
            taken: set[int] = set()
            for q, f in mine:
                for c, g, iou in pick_by_iou(mask_iou(f.masks, cand_masks), s["match_iou"],
                                             taken):
                    taken.add(c)
                    regions.append(_selected(cands[c], q, f.masks[g], match_iou=iou,
                                             sam3_score=float(f.scores[g])))
            out.append(Objects.from_regions(regions, image.size))
        return out


class GroundedSam(Backend):
    """"sam" (the `classic` preset): GroundingDINO grounds each query part, SAM masks it."""

    one_batch_per_size = True  # the grounder pads, and a padded batch gives other boxes
    finds_without_candidates = False
    uses = ("grounding_dino", "sam")  # its checkpoints

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {"backend": s["backend"],
                "checkpoints": {k: s["checkpoints"][k] for k in self.uses},
                "box_threshold": float(s["box_threshold"]),
                "text_threshold": float(s["text_threshold"]), "match_iou": float(s["match_iou"])}

    def forward(self, tool: ModelTool, jobs: list[Job]) -> list[Objects]:
        s, cks = self.settings, self.settings["checkpoints"]
        pairs = [(j, q) for j, (_, _, qs) in enumerate(jobs) for q in qs]
        gd = tool.model("grounding_dino", cks["grounding_dino"], load_grounding_dino)
        found = ground(gd, [jobs[j][0] for j, _ in pairs], [q for _, q in pairs],
                       s["box_threshold"], s["text_threshold"])
        sam = tool.model("sam", cks["sam"], load_sam)
        out = []
        for j, (image, cands, _) in enumerate(jobs):
            mine = [(q, clean_detections(b, sc, image.size, 0.5, MAX_GROUNDED))
                    for (jj, q), (b, sc) in zip(pairs, found) if jj == j]
            boxes = [b for _, (b, _) in mine]
            all_masks = sam_masks(sam, image, np.concatenate(boxes) if boxes else np.zeros((0, 4)))
            cand_masks = np.stack([cands.region_mask(i) for i in range(len(cands))])
            regions, taken, start = [], set(), 0
            for q, (b, _) in mine:
                masks = all_masks[start:start + len(b)]
                start += len(b)
                for c, g, iou in pick_by_iou(mask_iou(masks, cand_masks), s["match_iou"], taken):
                    taken.add(c)
                    regions.append(_selected(cands[c], q, masks[g], match_iou=iou))
            out.append(Objects.from_regions(regions, image.size))
        return out


class ClipCrops(GroundedSam):
    """"clip": CLIP scores each candidate's crop against each query part."""

    uses = ("clip",)

    def forward(self, tool: ModelTool, jobs: list[Job]) -> list[Objects]:
        crops, owner = [], []
        for j, (image, cands, _) in enumerate(jobs):
            crops += [crop_region(image, r.box, 0.1) for r in cands]
            owner += [j] * len(cands)
        texts = sorted({f"a photo of {q}" for _, _, qs in jobs for q in qs})
        logits = clip_logits(tool.model("clip", self.settings["checkpoints"]["clip"], load_clip),
                             crops, texts)
        col, owner_arr = {t: i for i, t in enumerate(texts)}, np.array(owner)
        out = []
        for j, (image, cands, qs) in enumerate(jobs):
            sub = logits[owner_arr == j]
            regions, taken = [], set()
            for q in qs:
                scores = sub[:, col[f"a photo of {q}"]]
                free = [int(c) for c in np.argsort(-scores, kind="stable") if int(c) not in taken]
                if free:  # the best candidate no earlier query part took
                    taken.add(free[0])
                    regions.append(_selected(cands[free[0]], q, None,
                                             clip_score=float(scores[free[0]])))
            out.append(Objects.from_regions(regions, image.size))
        return out


class Select(ModelTool):
    name = "Select"
    tasks = ("imgedit",)  # the planner's prompts that describe it
    params = {"image": "Image", "object": "Objects", "query": "Text", "category": "Text|None"}
    defaults = {"category": None}
    returns = "Objects"
    doc = ("the objects of `object` that `query` names ('a,b' selects each); "
           "`category` narrows them by label first")
    backends = {"sam3": Sam3Concepts, "sam": GroundedSam, "clip": ClipCrops}
    presets = {
        "default": {"backend": "sam3", "sam3_threshold": 0.5, "mask_threshold": 0.5,
                    "box_threshold": 0.3, "text_threshold": 0.25, "match_iou": 0.5,
                    "checkpoints": {"sam3": "facebook/sam3",
                                    "grounding_dino": "IDEA-Research/grounding-dino-tiny",
                                    "sam": "facebook/sam-vit-base",
                                    "clip": "openai/clip-vit-base-patch32"}},
        # today's (before SAM 3) defaults, unchanged: same settings, same cache keys
        "classic": {"backend": "sam"},
        "tiny": {"sam3_threshold": 0.0, "box_threshold": 0.05, "text_threshold": 0.0,
                 "checkpoints": {"sam3": "tiny:sam3", "grounding_dino": "tiny:grounding_dino",
                                 "sam": "tiny:sam", "clip": "tiny:clip"}},
    }
    tiny_checkpoints = {"sam": (build_tiny_sam, "2"), "sam3": _sam3.build_tiny_sam3}

    def preprocess(self, call: dict[str, Any]) -> Any:
        image, cands = rgb_image(call["image"]), call["object"]
        if not isinstance(cands, Objects):
            raise TypeError(f"Select: object must be Objects, got {type(cands).__name__}")
        if cands.image_size != image.size:
            raise ValueError(f"Select: the objects belong to an image of size "
                             f"{cands.image_size}, not {image.size}")
        cands, queries = narrow(cands, call.get("category")), split_query(call["query"])
        # nothing asked, or nothing to select from (SAM 3 then gives what it finds)
        if not queries or (not len(cands) and not self.backend.finds_without_candidates):
            return Done(Objects.empty(image.size))
        return image, cands, queries

    def batch_key(self, job: Job) -> Any:
        # SAM 3 resizes every image to one size, so any images batch together; the
        # grounder pads, and a padded batch gives other boxes: one batch per image size
        return job[0].size if self.backend.one_batch_per_size else None


TOOLS = [Select]
