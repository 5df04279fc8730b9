"""SAM 3's video model (transformers `Sam3VideoModel`: SAM 3's detector and a memory tracker)
for Track: text-prompted concept tracking, several prompts in one session, each object with
an id that stays the same from frame to frame.

How it is run (transformers 5.25, no torchvision; see ../shared/recipes/sam3_video.py):
- Frames are preprocessed one at a time with SAM 3's own settings (`_sam3.preprocess_images`:
  `Sam3VideoProcessor` and its image processor are torchvision placeholders) and added to
  the session by index; `model(inference_session=, frame_idx=)` then runs the detector and
  the tracker on it. That is the whole-video path of `propagate_in_video_iterator` (its
  hotstart heuristics, which drop tracks that never match a detection or duplicate
  another, are on), fed as the frames come, so the preprocessed clip is never held whole
  (at 1008 px it is 12 MB a frame).
- Outputs wait `hotstart_delay` frames (as propagate does) before they are post-processed,
  so a track that hotstart removes never shows.
- The session keeps every frame, every object's memory and per-frame bookkeeping forever;
  `prune` drops what the tracker will not read again after each frame: preprocessed frames
  (an empty stand-in keeps their count, which the tracker reads), memories older than the
  memory window (`num_maskmem`, `max_object_pointers_in_encoder` frames), conditioning
  frames beyond the `max_cond_frame_num` most recent (the ones it attends to when tracking
  forwards; their object pointers are all it loses), and bookkeeping older than the
  hotstart window. Memory stays flat once a clip is longer than the window.
- The hub kernel for detection NMS and mask hole filling ("kernels-community/cv-utils")
  can't be fetched offline, and then NMS is silently skipped (duplicate tracks): torch and
  scipy stand-ins are put in its place, and a torch `masks_to_boxes` in place of
  torchvision's, which post-processing calls.

Not a tool file (its name starts with '_', and it exposes no TOOLS).
"""
from __future__ import annotations

import importlib
import json
import logging
import types
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import _sam3

TINY_SIZE = 168  # the tiny model's image size (published 1008, see build_tiny_sam3_video)


# -- offline stand-ins for torchvision and the hub kernel ------------------------------------

def masks_to_boxes(masks: Any) -> Any:
    """torchvision.ops.masks_to_boxes in torch: (N, H, W) bool -> (N, 4) x1 y1 x2 y2 of the
    first and last pixel rows and columns (inclusive, as torchvision's)."""
    import torch

    if masks.numel() == 0:
        return torch.zeros(0, 4, device=masks.device)
    h, w = masks.shape[-2:]
    rows, cols = masks.any(2), masks.any(1)
    ys, xs = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    return torch.stack([torch.where(cols, xs, w).amin(1), torch.where(rows, ys, h).amin(1),
                        torch.where(cols, xs, -1).amax(1), torch.where(rows, ys, -1).amax(1)],
                       1).float()


def generic_nms(ious: Any, scores: Any, iou_threshold: float, use_iou_matrix: bool = True) -> Any:
    """Greedy NMS over a precomputed (mask) IoU matrix: the kept indices, best first."""
    import torch

    order = scores.argsort(descending=True).tolist()
    over = (ious > iou_threshold).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in order:
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return torch.tensor(keep, dtype=torch.long, device=scores.device)


def cc_2d(mask: Any, get_counts: bool = True) -> tuple[Any, Any]:
    """8-connected components of (N, 1, H, W) masks: each pixel's component label and that
    component's area (0 on the background)."""
    import scipy.ndimage
    import torch

    m = mask[:, 0].cpu().numpy()
    labels = np.zeros(m.shape, np.int32)
    counts = np.zeros(m.shape, np.int32)
    for i in range(len(m)):
        labels[i] = scipy.ndimage.label(m[i], structure=np.ones((3, 3)))[0]
        counts[i] = np.where(labels[i] > 0, np.bincount(labels[i].ravel())[labels[i]], 0)
    return (torch.from_numpy(labels)[:, None].to(mask.device),
            torch.from_numpy(counts)[:, None].to(mask.device))


def _modules() -> tuple[Any, Any]:
    # the real modules: `from transformers import Sam3VideoProcessor` gives a placeholder
    psv = importlib.import_module("transformers.models.sam3_video.processing_sam3_video")
    msv = importlib.import_module("transformers.models.sam3_video.modeling_sam3_video")
    return psv, msv


def install_stand_ins() -> None:
    """Put the stand-ins in place (once per process; the same whatever the machine, so a
    GPU box with network and a laptop offline track alike)."""
    psv, msv = _modules()
    psv.masks_to_boxes = masks_to_boxes
    if not isinstance(msv.cv_utils_kernel, types.SimpleNamespace):
        msv.cv_utils_kernel = types.SimpleNamespace(generic_nms=generic_nms, cc_2d=cc_2d)
    # "hitting max_num_objects" is said every frame once the cap is reached
    logging.getLogger(msv.__name__).setLevel(logging.ERROR)


def _postprocessor() -> Any:
    """An object with Sam3VideoProcessor's `postprocess_outputs` (pure torch; it needs none
    of the processor's parts)."""
    psv, _ = _modules()

    class Post(psv.Sam3VideoProcessor):
        def __init__(self) -> None:  # no image/video processor, no tokenizer
            pass

    return Post()


# -- loading ----------------------------------------------------------------------------------

def load_sam3_video(path: str, device: str, dtype: Any) -> dict[str, Any]:
    """A model-manager loader: the model, its tokenizer, its preprocessing settings and the
    post-processor."""
    from transformers import AutoTokenizer, Sam3VideoModel

    install_stand_ins()
    cfg = _sam3._read_json(path, "preprocessor_config.json") or \
        _sam3._read_json(path, "processor_config.json").get("image_processor", {})
    prep = _sam3.Sam3Preprocess.from_config(cfg)
    model = Sam3VideoModel.from_pretrained(path, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    text_len = min(_sam3.TEXT_LEN, int(getattr(model.config.detector_config.text_config,
                                               "max_position_embeddings", _sam3.TEXT_LEN)))
    return {"model": model, "tokenizer": tok, "prep": prep, "text_len": text_len,
            "post": _postprocessor()}


# -- tracking ---------------------------------------------------------------------------------

class FrameResult:
    """What one frame's post-processing gives: per object id its prompt, score, box (x1 y1
    x2 y2, pixel edges) and mask (H x W bool)."""

    __slots__ = ("ids", "prompts", "scores", "boxes", "masks")

    def __init__(self, ids: list[int], prompts: list[str], scores: np.ndarray,
                 boxes: np.ndarray, masks: np.ndarray | None):
        self.ids, self.prompts, self.scores, self.boxes, self.masks = \
            ids, prompts, scores, boxes, masks


def track(bundle: dict[str, Any], frames: Sequence[Any], phrases: Sequence[str], *,
          masks: bool = True, prune: bool = True, max_objects: int | None = None,
          detection_threshold: float | None = None, new_object_threshold: float | None = None,
          on_frame: Callable[[int, Any], None] | None = None) -> list[FrameResult]:
    """Track every phrase through the frames (PIL images of one size) in one session.

    Args:
        masks: keep each object's mask (else boxes and scores only).
        prune: drop what the tracker will not read again after each frame (see the module
            docstring); off only to measure what it saves.
        max_objects: at most this many objects per phrase (the model's cap is for the whole
            session: this times the number of phrases); None: the checkpoint's cap per
            phrase.
        detection_threshold, new_object_threshold: the detector's score to count and to
            start a new track; None: the checkpoint's.
        on_frame: called with (frame index, session) after each frame (benchmarks).

    Returns:
        One `FrameResult` per frame.
    """
    import torch

    _, msv = _modules()
    model, tok, post = bundle["model"], bundle["tokenizer"], bundle["post"]
    cfg = model.config
    per_phrase = cfg.max_num_objects if max_objects is None else max(1, int(max_objects))
    model.max_num_objects = per_phrase * max(1, len(phrases))
    model.score_threshold_detection = cfg.score_threshold_detection \
        if detection_threshold is None else float(detection_threshold)
    model.new_det_thresh = cfg.new_det_thresh if new_object_threshold is None \
        else float(new_object_threshold)
    device, dtype = model.device, model.dtype
    w, h = frames[0].size
    session = msv.Sam3VideoInferenceSession(
        video=None, video_height=h, video_width=w, inference_device=device,
        inference_state_device=device, video_storage_device=device, dtype=dtype)
    for text in phrases:
        pid = session.add_prompt(text)
        if pid not in session.prompt_input_ids:
            enc = tok(text, padding="max_length", max_length=bundle["text_len"], truncation=True,
                      return_tensors="pt")
            session.prompt_input_ids[pid] = enc["input_ids"].to(device)
            session.prompt_attention_masks[pid] = enc["attention_mask"].to(device)
    results: list[FrameResult | None] = [None] * len(frames)
    waiting: list[Any] = []
    delay = int(model.hotstart_delay)
    empty = torch.empty(0, device=device, dtype=dtype)
    for i, frame in enumerate(frames):
        pixels = _sam3.preprocess_images([frame], bundle["prep"])[0]
        session.add_new_frame(pixels, frame_idx=i)
        out = model(inference_session=session, frame_idx=i)
        if delay > 0:
            session.hotstart_removed_obj_ids.update(out.removed_obj_ids)
        waiting.append(out)
        last = i == len(frames) - 1
        while waiting and (last or len(waiting) >= max(delay, 1)):
            done = waiting.pop(0)
            results[done.frame_idx] = _result(post, session, done, w, h, masks)
        if prune:
            prune_session(session, model, i, empty)
        if on_frame is not None:
            on_frame(i, session)
    return results  # type: ignore[return-value]


def _result(post: Any, session: Any, out: Any, w: int, h: int, masks: bool) -> FrameResult:
    r = post.postprocess_outputs(session, out, original_sizes=[[h, w]])
    prompt_of = {i: text for text, obj_ids in r["prompt_to_obj_ids"].items() for i in obj_ids}
    # post-processing takes the boxes before it resolves overlaps between the masks of one
    # prompt, which can leave a mask smaller or empty: boxes are taken again from the masks
    # as they end, and an object left with no pixels is not seen in this frame
    final = r["masks"]
    kept = final.flatten(1).any(1).cpu() if len(final) else torch_empty_bool()
    idx = kept.nonzero().flatten().tolist()
    ids = [int(r["object_ids"][i]) for i in idx]
    final = final[kept.to(final.device)] if len(final) else final
    boxes = masks_to_boxes(final).float().cpu().numpy().astype(np.float64).reshape(-1, 4)
    boxes[:, 2:] += 1  # the last pixel row and column -> the box's far edges
    scores = r["scores"].float().cpu().numpy().astype(np.float64)[idx]
    return FrameResult(ids, [prompt_of[i] for i in ids], scores, boxes,
                       final.cpu().numpy().astype(bool) if masks else None)


def torch_empty_bool() -> Any:
    import torch

    return torch.zeros(0, dtype=torch.bool)


def prune_session(session: Any, model: Any, frame_idx: int, empty: Any) -> None:
    """Drop what tracking from frame `frame_idx` on will not read (see the module
    docstring)."""
    tc = model.tracker_model.config
    window = max(int(tc.num_maskmem), int(tc.max_object_pointers_in_encoder))
    old = frame_idx - window  # memories before this frame are never read again
    hot = frame_idx - int(model.hotstart_delay)  # nor hotstart bookkeeping before this one
    if session.processed_frames is not None and frame_idx in session.processed_frames:
        session.processed_frames[frame_idx] = empty  # keeps the count the tracker reads
    for d in session.output_dict_per_obj.values():
        non_cond, cond = d["non_cond_frame_outputs"], d["cond_frame_outputs"]
        for f in [f for f in non_cond if f < old]:
            del non_cond[f]
        recent = set(sorted(cond)[-int(tc.max_cond_frame_num):]) \
            if int(tc.max_cond_frame_num) > 0 else set(cond)
        for f in [f for f in cond if f < old and f not in recent]:
            del cond[f]
    for tracked in session.frames_tracked_per_obj.values():
        for f in [f for f in tracked if f < old]:
            del tracked[f]
    for per_frame in (session.obj_id_to_tracker_score_frame_wise, session.suppressed_obj_ids):
        for f in [f for f in per_frame if f < min(old, hot)]:
            del per_frame[f]
    for lists in (session.unmatched_frame_inds, session.overlap_pair_to_frame_inds):
        for key in list(lists):
            kept = [f for f in lists[key] if f >= hot]
            if kept:
                lists[key] = kept
            else:
                del lists[key]


def session_mb(obj: Any, seen: set[int] | None = None) -> float:
    """MiB held by the tensors inside a session (or any nested part of it), each storage
    counted once."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        if st.data_ptr() in seen:
            return 0.0
        seen.add(st.data_ptr())
        return st.nbytes() / 2 ** 20
    if isinstance(obj, dict):
        return sum(session_mb(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(session_mb(v, seen) for v in obj)
    if type(obj).__module__.startswith("transformers"):
        return session_mb(vars(obj), seen)
    return 0.0


# -- tiny:sam3_video ---------------------------------------------------------------------------

def build_tiny_sam3_video(folder: Any, size: int = TINY_SIZE) -> None:
    """A random SAM 3 video model (about 2M parameters) offline, as the recipe does.

    Shape-relevant settings from facebook/sam3's published config.json and
    processor_config.json: patch 14, window 24, mean = std = 0.5, bilinear, rescale 1/255, a
    CLIP BPE tokenizer with texts padded to 32 tokens, `memory_encoder_output_channels` 64,
    the tracker's `num_maskmem` 7, `max_object_pointers_in_encoder` 16,
    `max_cond_frame_num` 4, `hotstart_delay` 15 (the Sam3VideoConfig and
    Sam3TrackerVideoConfig defaults, as published). The image size is 168 (published 1008,
    same patch and window: 12x12 patches in one window), so a frame costs about 0.07 s of
    one CPU core instead of seconds; a random model at the published size is what
    benchmarks/bench_video.py runs on a GPU. Widths and depths are shrunk (the tracker's
    hidden size must be a multiple of 64 above 64). Random weights never say "object
    present", so that bias is set to +10; detection thresholds 0.2 (random scores are
    about 0.25) and at most 2 objects per prompt, so random detections don't start a
    new track every frame.
    """
    import torch
    from transformers import (Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig,
                              Sam3VideoModel, Sam3ViTConfig, Sam3VisionConfig)

    from visprog.models import tiny_clip_tokenizer

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(_sam3.TINY_WORDS)
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = _sam3.TEXT_LEN
    e = 128  # fpn / tracker hidden size (published 256)

    def vision() -> Any:
        # a plain dict for backbone_config raises KeyError (it has no model_type)
        return Sam3VisionConfig(fpn_hidden_size=e, backbone_config=Sam3ViTConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            patch_size=14, window_size=24, global_attn_indexes=[1]))

    small = dict(num_attention_heads=2, intermediate_size=64)
    detector = Sam3Config(
        vision_config=vision(),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         projection_dim=e, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=_sam3.TEXT_LEN, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        geometry_encoder_config=dict(hidden_size=e, num_layers=1, **small),
        detr_encoder_config=dict(hidden_size=e, num_layers=1, **small),
        detr_decoder_config=dict(hidden_size=e, num_layers=1, num_queries=8, **small),
        mask_decoder_config=dict(hidden_size=e, num_attention_heads=2))
    tracker = Sam3TrackerVideoConfig(
        vision_config=vision(), prompt_encoder_config=dict(hidden_size=e),
        mask_decoder_config=dict(hidden_size=e, mlp_dim=256, num_attention_heads=2,
                                 iou_head_hidden_dim=e),
        memory_attention_hidden_size=e, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=256, memory_encoder_hidden_size=e,
        mask_downsampler_embed_dim=e, memory_fuser_embed_dim=e,
        memory_fuser_intermediate_dim=256, memory_fuser_num_layers=1)
    cfg = Sam3VideoConfig(detector_config=detector, tracker_config=tracker,
                          low_res_mask_size=4 * size // 14, score_threshold_detection=0.2,
                          new_det_thresh=0.2, max_num_objects=2)
    cfg.image_size = size  # after building: reaches the tracker's feature sizes and RoPE
    model = Sam3VideoModel(cfg)
    torch.nn.init.constant_(model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias,
                            10.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Sam3ImageProcessor", **_sam3.SAM3_DEFAULTS,
         "size": {"height": size, "width": size}}, indent=1))
