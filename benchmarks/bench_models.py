"""Load time, per-call latency and peak memory of the model modules, full-size architectures.

The models are the real architectures built from their default configurations (the sizes of
the default checkpoints) with RANDOM weights, so nothing is downloaded: the timings are real,
the answers meaningless. Each module's checkpoint is saved with `save_pretrained` into a
temporary folder, then loaded and called through the module's own tool (the same loader and
`ModelManager` as real checkpoints) in a fresh process, so its memory is measured alone.

    python benchmarks/bench_models.py                      # every module, CPU (+ CUDA fp16 if any)
    python benchmarks/bench_models.py --device cpu --modules Loc,Vqa --calls 3
    python benchmarks/bench_models.py --smoke              # every module on its tiny checkpoint,
                                                           # in this process: seconds (the tests)

Figures per module and device: load seconds (from_pretrained + move to device), the first
call, the median of `--calls` further calls, optionally the per-item time of one batched call
of `--batch` items, parameter bytes, the peak resident memory above the process's size before
loading (VmHWM - VmRSS from /proc/self/status; torch's CPU tensors count in it), and on CUDA
the peak allocated GPU memory. Importing the libraries is not counted in the load time.

Adding a module: write `save(folder)` (random full-size checkpoint(s) with save_pretrained)
and add a `Bench(...)` to BENCHES under the module's name: the module, its settings, the
settings that point into the folder, `kwargs()` (one typical call) and the tiny checkpoints
`--smoke` uses instead. benchmarks/bench_batch.py and bench_gpu.py build their full-size
models with these savers too (`ensure_saved`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BENCH_WORDS = ["a", "photo", "of", "the", "dog", "cat", "person", "car", "red", "what", "color",
               "is", "how", "many", "are", "there", "?", "man", "woman"]


@dataclass
class Bench:
    """How to benchmark one model module (see the module docstring)."""

    save: Callable[..., None]        # (folder, **options): the full-size random checkpoint(s)
    module: str                      # the model module's name ("Loc")
    settings: dict[str, Any]         # its settings besides the checkpoints (the backend...)
    checkpoints: Callable[[Path], dict[str, Any]]  # folder -> the settings naming the saves
    kwargs: Callable[[], dict[str, Any]]
    note: str = ""
    warm: Callable[[], None] | None = None  # imports done before timing the load
    tiny: dict[str, Any] = field(default_factory=dict)  # --smoke: the tiny preset's instead

    def tool(self, folder: Path | None, device: str) -> tuple[Any, Any]:
        """The module's Tool on the saved checkpoints (None: the tiny ones, for --smoke), and
        the model manager it loads with: an engine's (`VisProg`, the default preset with
        these settings), so the module is built as any run builds it."""
        from visprog.api import VisProg

        settings = {**self.settings, **(self.tiny if folder is None else self.checkpoints(folder))}
        vp = VisProg(preset="default", config={self.module: settings}, device=device,
                     cache=False, plugins=False)
        return vp.registry.get(self.module), vp.models


def hf_classes(*names: str) -> Callable[[], None]:
    """A `warm` that imports these transformers classes (their import is not load time)."""
    def warm() -> None:
        import transformers

        for n in names:
            getattr(transformers, n)
    return warm


def sample_image(size=(640, 480)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def candidates(size=(640, 480), n=4):
    from visprog.values import Objects

    w, h = size
    return Objects([(i * w / n, h / 4, (i + 1) * w / n, 3 * h / 4) for i in range(n)],
                              size, labels=["dog"] * n, scores=[0.9] * n)


_DRY = False  # `dry_builds`: the savers make their models on the meta device and save nothing


def _save(folder: Path, *parts: Any) -> None:
    """Every saver ends here: each part (a model, a processor, a pipeline) saved into folder."""
    if not _DRY:
        for part in parts:
            part.save_pretrained(folder)


# -- full-size random checkpoints ------------------------------------------------------------

def grounding_processor(loc_edge: int = 800) -> Any:
    """GroundingDINO's processor (the published one: shortest edge 800, longest 1333; a
    smaller `loc_edge` keeps the aspect limit) with a small BERT vocabulary."""
    from transformers import GroundingDinoImageProcessorPil, GroundingDinoProcessor

    from visprog.models import tiny_bert_tokenizer

    size = {"shortest_edge": loc_edge, "longest_edge": loc_edge * 1333 // 800}
    return GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(size=size),
                                  tokenizer=tiny_bert_tokenizer(BENCH_WORDS))


def save_grounding_dino(folder: Path, loc_edge: int = 800) -> None:
    """grounding-dino-tiny's architecture: Swin-T + BERT-base, 900 queries, 800 px."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    _save(folder, GroundingDinoForObjectDetection(GroundingDinoConfig()),
          grounding_processor(loc_edge))


def save_owlv2(folder: Path) -> None:
    """owlv2-base-patch16-ensemble's architecture: ViT-B/16 at 960 px."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    from visprog.models import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(BENCH_WORDS)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Owlv2Config(text_config={"eos_token_id": eot, "pad_token_id": eot,
                                   "bos_token_id": tok.convert_tokens_to_ids("<|startoftext|>")},
                      vision_config={"image_size": 960})
    proc = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 960, "width": 960}),
                          tokenizer=tok)
    _save(folder, Owlv2ForObjectDetection(cfg), proc)


def save_sam(folder: Path) -> None:
    """sam-vit-base's architecture: ViT-B at 1024 px."""
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    _save(folder, SamModel(SamConfig()), SamProcessor(image_processor=SamImageProcessorPil()))


def save_clip(folder: Path) -> None:
    """clip-vit-base-patch32's architecture."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from visprog.models import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(BENCH_WORDS)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = CLIPConfig(text_config={"eos_token_id": eot, "pad_token_id": eot,
                                  "bos_token_id": tok.convert_tokens_to_ids("<|startoftext|>")})
    _save(folder, CLIPModel(cfg), CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok))


def save_blip(folder: Path) -> None:
    """The architecture of blip-vqa-base and blip-vqa-capfilt-large (both ViT-B/16 at 384 px
    + BERT-base; 'capfilt-large' names the captioner/filter that made its data)."""
    from transformers import (BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil,
                              BlipProcessor, BlipTextConfig, BlipVisionConfig)

    from visprog.models import tiny_bert_tokenizer

    tok = tiny_bert_tokenizer(BENCH_WORDS, extra_special=["[DEC]"])
    tok.add_special_tokens({"bos_token": "[DEC]"})
    v = tok.get_vocab()
    vision = BlipVisionConfig()
    text = BlipTextConfig(encoder_hidden_size=vision.hidden_size, pad_token_id=v["[PAD]"],
                          bos_token_id=v["[DEC]"], sep_token_id=v["[SEP]"], eos_token_id=v["[SEP]"])
    cfg = BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict())
    _save(folder, BlipForQuestionAnswering(cfg),
          BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tok))


def save_vilt(folder: Path) -> None:
    """vilt-b32-finetuned-vqa's architecture: ViT-B/32, 3129 answers."""
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil, ViltProcessor

    from visprog.models import tiny_bert_tokenizer

    answers = {i: f"answer{i}" for i in range(3129)}
    cfg = ViltConfig(num_labels=3129, id2label=answers, label2id={a: i for i, a in answers.items()})
    _save(folder, ViltForQuestionAnswering(cfg),
          ViltProcessor(image_processor=ViltImageProcessorPil(), tokenizer=tiny_bert_tokenizer(BENCH_WORDS)))


def save_grounding_dino_and_sam(folder: Path) -> None:
    save_grounding_dino(folder / "gd")
    save_sam(folder / "sam")


def save_mask2former(folder: Path) -> None:
    """mask2former-swin-tiny-coco-panoptic's architecture: Swin-T, 100 queries, 133 classes,
    384 px shortest edge."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import (
        Mask2FormerImageProcessorPil)

    swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                      drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = {i: f"class{i}" for i in range(133)}
    cfg = Mask2FormerConfig(backbone_config=swin, use_timm_backbone=False,
                            use_pretrained_backbone=False, num_labels=133, id2label=labels,
                            label2id={v: k for k, v in labels.items()})
    _save(folder, Mask2FormerForUniversalSegmentation(cfg),
          Mask2FormerImageProcessorPil(size={"shortest_edge": 384, "longest_edge": 1333}))


def save_sd_inpaint(folder: Path) -> None:
    """stable-diffusion-inpainting (SD 1.5)'s architecture: UNet 9-channel 860M, VAE, CLIP
    ViT-L/14 text encoder (full 49408-token embedding; a small BPE vocabulary in the
    tokenizer), PNDM scheduler; no safety checker (the real default loads one)."""
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from visprog.models import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(BENCH_WORDS)
    tok.model_max_length = 77
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        projection_dim=768, max_position_embeddings=77,
                                        eos_token_id=eot, pad_token_id=eot, bos_token_id=eot - 1))
    unet = UNet2DConditionModel(sample_size=64, in_channels=9, out_channels=4,
                                cross_attention_dim=768)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                        sample_size=512)
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, steps_offset=1)
    _save(folder, StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False))


def save_sdxl_inpaint(folder: Path) -> None:
    """diffusers/stable-diffusion-xl-1.0-inpainting-0.1's architecture (each component's
    config.json): UNet 2.6B (blocks 320/640/1280, transformer depths 1/2/10, cross-attention
    2048, in_channels 9, "text_time" embedding of 2816), the SDXL VAE (scaling 0.13025,
    force_upcast), CLIP ViT-L/14 text encoder and OpenCLIP ViT-bigG/14 with projection (full
    49408-token embeddings; a small BPE vocabulary in the tokenizers), EulerDiscrete
    scheduler. Made and saved in float16 (the published fp16 variant): about 7 GB."""
    import torch

    from visprog.models import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(BENCH_WORDS)
    tok.model_max_length = 77
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # made in float16: 7 GB while building, not 21
    try:
        pipe = _sdxl_pipeline(tok, eot)
    finally:
        torch.set_default_dtype(previous)
    _save(folder, pipe)


def _sdxl_pipeline(tok: Any, eot: int) -> Any:
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler,
                           StableDiffusionXLInpaintPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = dict(vocab_size=49408, max_position_embeddings=77, eos_token_id=eot,
               pad_token_id=eot, bos_token_id=eot - 1)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                       num_hidden_layers=12, num_attention_heads=12,
                                       hidden_act="quick_gelu", projection_dim=768, **ids))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        hidden_act="gelu", projection_dim=1280, **ids))
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True, cross_attention_dim=2048, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    with torch.device("cpu"):  # its tables live on the CPU (and can't be meta in a dry run)
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", steps_offset=1,
                                           timestep_spacing="leading")
    return StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=scheduler, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)


def save_depth_anything(folder: Path) -> None:
    """Depth Anything V2 Small's architecture: DepthAnythingConfig's defaults (the small
    checkpoint's, DINOv2 ViT-S/14 at 518) and its DPT image processor settings."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation,
                              DPTImageProcessorPil)

    processor = DPTImageProcessorPil(
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    _save(folder, DepthAnythingForDepthEstimation(DepthAnythingConfig()), processor)


def save_qwen3_vl(folder: Path) -> None:
    """Qwen/Qwen3-VL-2B-Instruct's architecture (config.json): text 28 layers, hidden 2048,
    16 heads (8 KV) of 128, MLP 6144, vocab 151936, tied embeddings, interleaved mrope
    [24, 20, 20]; vision 24 blocks of 1024 (16 heads, MLP 4096), patch 16, merge 2,
    deepstack [5, 11, 17], 2304 position embeddings (the 4B shares this vision tower).
    Saved in bfloat16 (as published): loaded in float32 on CPU."""
    import torch
    from transformers import (Qwen2VLImageProcessorPil, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration, Qwen3VLProcessor)

    from visprog.models.vlm import image_only
    from visprog.tools._vlm import QWEN_CHAT_TEMPLATE, _qwen_ids, qwen_tokenizer

    tok = qwen_tokenizer()
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                         num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                         head_dim=128, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True},
                         bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=2048, num_position_embeddings=2304,
                           deepstack_visual_indexes=[5, 11, 17]),
        tie_word_embeddings=True, **_qwen_ids(tok))
    torch.manual_seed(0)
    # made in bfloat16 (not made in float32 and cast): half the memory while building
    model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
        image_std=[0.5] * 3, size={"shortest_edge": 65536, "longest_edge": 16777216})
    _save(folder, model, image_only(Qwen3VLProcessor)(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE))


def save_siglip2(folder: Path) -> None:
    """google/siglip2-base-patch16-naflex's architecture: ViT-B/16 (12 x 768, MLP 3072, 256
    patches) and a 12 x 768 text tower over the Gemma vocabulary of 256000, 64 tokens."""
    from transformers import (Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model,
                              Siglip2Processor, Siglip2TextConfig, Siglip2VisionConfig)

    from visprog.models import tiny_siglip2_tokenizer

    tok = tiny_siglip2_tokenizer(BENCH_WORDS + ["this", "is"])
    cfg = Siglip2Config(
        text_config=Siglip2TextConfig(vocab_size=256000, max_position_embeddings=64,
                                      pad_token_id=tok.pad_token_id,
                                      bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id),
        vision_config=Siglip2VisionConfig(patch_size=16, num_patches=256))
    _save(folder, Siglip2Model(cfg),
          Siglip2Processor(image_processor=Siglip2ImageProcessorPil(), tokenizer=tok))


def save_sam3(folder: Path) -> None:
    """SAM 3's architecture (transformers Sam3Config defaults = facebook/sam3): ViT backbone at
    1008 px, CLIP text encoder, DETR encoder/decoder with 200 queries, mask decoder; the
    processor's published preprocessing (tools/_sam3.py reads it)."""
    import json

    from transformers import Sam3Config, Sam3Model

    from visprog.models import tiny_clip_tokenizer
    from visprog.tools import _sam3

    tok = tiny_clip_tokenizer(BENCH_WORDS)
    tok.pad_token = "<|endoftext|>"
    cfg = Sam3Config()
    cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    cfg.text_config.pad_token_id = tok.pad_token_id
    _save(folder, Sam3Model(cfg), tok)
    if not _DRY:
        (folder / "preprocessor_config.json").write_text(json.dumps(_sam3.SAM3_DEFAULTS))


def save_mm_grounding_dino(folder: Path, loc_edge: int = 800) -> None:
    """mm_grounding_dino_tiny's architecture (MMGroundingDinoConfig defaults): Swin-T + BERT-base,
    900 queries, 800 px, GroundingDINO's processor."""
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    _save(folder, MMGroundingDinoForObjectDetection(MMGroundingDinoConfig()),
          grounding_processor(loc_edge))


def save_nothing(folder: Path) -> None:
    """FaceDet's cascade ships inside scikit-image: nothing to save."""
    folder.mkdir(parents=True, exist_ok=True)


# -- the benchmarks --------------------------------------------------------------------------

_FRESH = iter(range(1, 10**9))


def fresh_image():
    """A new random 640x480 image each call (Depth keeps maps by image content)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(next(_FRESH))
    return Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))


def _ocr(folder: Path, ctx: Any):
    from visprog.tools import ocr

    return ocr.Ocr.build({"checkpoint": "pp-ocrv4"}, ctx)


def sign_image():
    """The sample image with two lines of text on a white label."""
    from PIL import ImageDraw, ImageFont

    image = sample_image()
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 40, 420, 170), fill="white")
    font = ImageFont.load_default(size=44)
    draw.text((60, 50), "NORTH EXIT", font=font, fill="black")
    draw.text((60, 110), "Platform 9", font=font, fill="black")
    return image


def face_image():
    """skimage's astronaut (one face) on a 640x480 canvas."""
    from PIL import Image

    try:
        from skimage import data
        face = Image.fromarray(data.astronaut()).resize((400, 400))
    except ImportError:
        face = sample_image((400, 400))
    image = Image.new("RGB", (640, 480), (120, 120, 120))
    image.paste(face, (120, 40))
    return image


def at(key: str, sub: str = "") -> Callable[[Path], dict[str, Any]]:
    """`checkpoints` of a Bench: the setting `key` names the saved folder (or its `sub`)."""
    return lambda folder: {key: str(folder / sub if sub else folder)}


def image_object() -> dict[str, Any]:
    return {"image": sample_image(), "object": "dog"}


def image_question() -> dict[str, Any]:
    return {"image": sample_image(), "question": "what color is the car?"}


def image_candidates(n: int = 4, **more: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"image": sample_image(), "object": candidates(n=n), **more}


REPLACE_KWARGS = image_candidates(n=1, prompt="a photo of a red car")
CATEGORIES = ["dog", "cat", "person", "car"]

BENCHES: dict[str, Bench] = {
    "Loc[grounding_dino]": Bench(
        save_grounding_dino, "Loc", {"backend": "grounding_dino"}, at("checkpoint"),
        image_object, "GroundingDINO-T, 640x480",
        hf_classes("GroundingDinoForObjectDetection", "GroundingDinoProcessor"),
        tiny={"checkpoint": "tiny:grounding_dino"}),
    "Loc[mm_grounding_dino]": Bench(
        save_mm_grounding_dino, "Loc", {"backend": "mm_grounding_dino"}, at("checkpoint"),
        image_object, "MM-GroundingDINO-T, 640x480 (default)",
        hf_classes("MMGroundingDinoForObjectDetection", "GroundingDinoProcessor"),
        tiny={"checkpoint": "tiny:mm_grounding_dino"}),
    "Loc[sam3]": Bench(
        save_sam3, "Loc", {"backend": "sam3"}, at("checkpoint"), image_object,
        "SAM 3 detections, 1008 px", hf_classes("Sam3Model", "CLIPTokenizer"),
        tiny={"checkpoint": "tiny:sam3"}),
    "Select[sam3]": Bench(
        save_sam3, "Select", {"backend": "sam3"}, lambda f: {"checkpoints": {"sam3": str(f)}},
        image_candidates(query="dog,cat"),
        "SAM 3, 4 candidates, 2 query parts (2 rows), 1008 px (default)",
        hf_classes("Sam3Model", "CLIPTokenizer"), tiny={"checkpoints": {"sam3": "tiny:sam3"}}),
    "Loc[owlv2]": Bench(
        save_owlv2, "Loc", {"backend": "owlv2"}, at("checkpoint"), image_object,
        "OWLv2 B/16 960px", hf_classes("Owlv2ForObjectDetection", "Owlv2Processor"),
        tiny={"checkpoint": "tiny:owlv2"}),
    "Select[sam]": Bench(
        save_grounding_dino_and_sam, "Select", {"backend": "sam"},
        lambda f: {"checkpoints": {"grounding_dino": str(f / "gd"), "sam": str(f / "sam")}},
        image_candidates(query="dog,cat"), "GroundingDINO-T + SAM ViT-B, 4 candidates, 2 queries",
        hf_classes("GroundingDinoForObjectDetection", "GroundingDinoProcessor", "SamModel",
                   "SamProcessor"),
        tiny={"checkpoints": {"grounding_dino": "tiny:grounding_dino", "sam": "tiny:sam"}}),
    "Classify": Bench(
        save_siglip2, "Classify", {"backend": "siglip2"}, at("checkpoint"),
        image_candidates(n=8, categories=CATEGORIES),
        "SigLIP2 B/16 NaFlex (256 patches), 8 crops x 4 categories",
        hf_classes("Siglip2Model", "Siglip2Processor"), tiny={"checkpoint": "tiny:siglip2"}),
    "Classify[clip]": Bench(
        save_clip, "Classify", {"backend": "clip"}, at("checkpoint"),
        image_candidates(n=8, categories=CATEGORIES), "CLIP B/32, 8 crops x 4 categories",
        hf_classes("CLIPModel", "CLIPProcessor"), tiny={"checkpoint": "tiny:clip"}),
    "Vqa": Bench(
        save_qwen3_vl, "Vqa", {"backend": "vlm"}, at("checkpoint"), image_question,
        "Qwen3-VL-2B, 640x480 -> 300 image tokens, 10 new tokens (random weights rarely stop "
        "early)", hf_classes("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
        tiny={"checkpoint": "tiny:qwen3_vl"}),
    "Vqa[blip]": Bench(
        save_blip, "Vqa", {"backend": "blip"}, at("checkpoint"), image_question,
        "BLIP ViT-B/16 384px", hf_classes("BlipForQuestionAnswering", "BlipProcessor"),
        tiny={"checkpoint": "tiny:blip_vqa"}),
    "Vqa[vilt]": Bench(
        save_vilt, "Vqa", {"backend": "vilt"}, at("checkpoint"), image_question, "ViLT B/32",
        hf_classes("ViltForQuestionAnswering", "ViltProcessor"), tiny={"checkpoint": "tiny:vilt"}),
    "Seg": Bench(
        save_mask2former, "Seg", {"backend": "mask2former"}, at("checkpoint"),
        lambda: {"image": sample_image()},
        "Mask2Former Swin-T panoptic (133 classes), 640x480 -> 384x512",
        tiny={"checkpoint": "tiny:mask2former"}),
    "FaceDet": Bench(
        save_nothing, "FaceDet", {"backend": "cascade"}, lambda f: {},
        lambda: {"image": face_image()},
        "LBP cascade (scikit-image, CPU only), 640x480 -> 512x384; YuNet needs its model file, "
        "not available offline"),
    # map_cache 0: every call runs the model (the cache would answer repeated images)
    "Depth": Bench(
        save_depth_anything, "Depth", {"map_cache": 0}, at("checkpoint"),
        lambda: {"image": fresh_image(), "object": candidates()},
        "Depth Anything V2 Small (ViT-S/14), 640x480 -> 518x686, 4 objects",
        hf_classes("DepthAnythingForDepthEstimation", "DPTImageProcessorPil"),
        tiny={"checkpoint": "tiny:depth_anything"}),
    "Ocr": Bench(
        save_nothing, "Ocr", {"checkpoint": "pp-ocrv4"}, lambda f: {},
        lambda: {"image": sign_image()},
        "PP-OCRv4 det + rec + cls (REAL weights from rapidocr-onnxruntime, onnxruntime CPU), "
        "640x480, 2 lines"),
    "Replace": Bench(
        save_sdxl_inpaint, "Replace", {"backend": "sdxl", "steps": 2, "resolution": 1024,
                                       "seed": 0}, at("checkpoint"), REPLACE_KWARGS,
        "SDXL inpainting (UNet 2.6B, two CLIP text encoders), 1024x768, only 2 steps "
        "(default 30: ~15x the UNet part) (default)",
        tiny={"checkpoint": "tiny:sdxl_inpaint", "resolution": 64}),
    "Replace[sd]": Bench(
        save_sd_inpaint, "Replace", {"backend": "sd", "steps": 2, "resolution": 512,
                                     "safety_checker": False, "seed": 0}, at("checkpoint"),
        REPLACE_KWARGS, "SD 1.5 inpainting, 512x384, only 2 steps (default 30: ~15x the UNet part)",
        tiny={"checkpoint": "tiny:sd_inpaint", "resolution": 64}),
}


# -- measuring (in a child process per module and device) -----------------------------------

def check_savers(names: list[str] | None = None) -> list[str]:
    """Every saver (or those of `names`) run dry: its full-size models made on the meta
    device (no memory, no weights) and nothing saved, so a library change or a wrong config
    shows here, in seconds, rather than in a long run. The problems found, one line each."""
    import torch

    global _DRY
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(BENCHES):
            bench = BENCHES[name]
            _DRY = True
            try:
                with torch.device("meta"):
                    bench.save(Path(tmp) / name)
            except Exception as e:  # noqa: BLE001 (each bench's own line)
                problems.append(f"{name} (saver): {type(e).__name__}: {e}")
            finally:
                _DRY = False
    return problems


def check_benches() -> list[str]:
    """Every bench's tool built on its tiny checkpoint (its module, backend and settings
    exist) and its typical call checked against the module's declaration (argument names
    and types); nothing is loaded. The problems found, one line each."""
    from visprog.values.types import fits, type_of

    problems = []
    for name, bench in BENCHES.items():
        try:
            tool, _ = bench.tool(None, "cpu")
            kwargs = bench.kwargs()
        except Exception as e:  # noqa: BLE001 (each bench's own line)
            problems.append(f"{name}: {type(e).__name__}: {e}")
            continue
        declared = {p.name: p for p in tool.params}
        for arg, value in kwargs.items():
            if arg not in declared:
                problems.append(f"{name}: {tool.name} takes no argument {arg!r}")
            elif not fits({type_of(value)}, declared[arg].types):
                problems.append(f"{name}: {tool.name}'s {arg} is {type_of(value)}, it takes "
                                f"{'|'.join(sorted(declared[arg].types))}")
        missing = [p.name for p in tool.params if p.required and p.name not in kwargs]
        if missing:
            problems.append(f"{name}: the call lacks {tool.name}'s {missing}")
    return problems


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(name: str, folder: Path | None, device: str, calls: int, batch: int
            ) -> dict[str, Any]:
    """Load and call one module's tool (folder None: its tiny checkpoint); the figures."""
    import torch

    bench = BENCHES[name]
    if bench.warm:
        bench.warm()
    tool, mm = bench.tool(folder, device)
    kwargs = bench.kwargs()
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = _proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    tool(**kwargs)
    sync()
    first = time.perf_counter() - t0
    loaded = mm.loaded()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        tool(**kwargs)
        sync()
        times.append(time.perf_counter() - t0)
    per_item = None
    if batch > 1:
        t0 = time.perf_counter()
        tool.batch_fn([bench.kwargs() for _ in range(batch)])
        sync()
        per_item = (time.perf_counter() - t0) / batch
    return {
        # a bundle without weights (FaceDet's cascade) has no dtype, whatever the device's
        "module": name, "device": device,
        "dtype": loaded[0]["dtype"] if loaded and loaded[0]["bytes"] else "-",
        "note": bench.note if folder is not None else f"the tiny checkpoint: {bench.tiny}",
        "load_s": sum(m["load_seconds"] for m in loaded),
        "first_call_s": first, "median_call_s": statistics.median(times) if times else first,
        "batch_per_item_s": per_item, "batch": batch,
        "param_mb": sum(m["bytes"] for m in loaded) / 2**20,
        "params_m": _params(mm) / 1e6,
        "fp16_mb": _params(mm) * 2 / 2**20,
        "peak_rss_delta_mb": (_proc_status_kb("VmHWM") - rss0) / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def _params(mm: Any) -> int:
    """Parameters (and buffers) of what the manager holds."""
    from visprog.models.manager import _modules_in

    n = 0
    for entry in mm._models.values():
        for m in _modules_in(entry["bundle"]):
            n += sum(t.numel() for t in list(m.parameters()) + list(m.buffers()))
    return n


def ensure_saved(name: str, folder: Path, timeout: float = 3600, **options: Any) -> Path:
    """Save BENCHES[name]'s full-size random checkpoint into `folder` (in a child process, so
    its memory is given back) unless an earlier run did; `options` go to its saver (Loc's
    `loc_edge`). Returns the folder."""
    if not (folder / "saved.ok").exists():
        t0 = time.perf_counter()
        _child(["--_save", name, "--_folder", str(folder), "--_options", json.dumps(options)],
               timeout)
        (folder / "saved.ok").write_text(f"{time.perf_counter() - t0:.1f}")
    return folder


def _child(args: list[str], timeout: float) -> str:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed")
    return res.stdout.strip().splitlines()[-1]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["module", "device", "dtype", "params M", "fp16 MB", "params MB", "load s", "1st call s", "median s",
            "batch/item s", "peak RSS +MB", "peak GPU MB"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["module"], r["device"], "ERROR: " + r["error"][:60]] + [""] * 9)
            continue
        lines.append([r["module"], r["device"], r["dtype"].replace("torch.", ""),
                      _fmt(r.get("params_m"), ".1f"), _fmt(r.get("fp16_mb"), ".0f"),
                      _fmt(r["param_mb"], ".0f"), _fmt(r["load_s"], ".2f"),
                      _fmt(r["first_call_s"], ".3f"), _fmt(r["median_call_s"], ".3f"),
                      _fmt(r["batch_per_item_s"], ".3f"), _fmt(r["peak_rss_delta_mb"], ".0f"),
                      _fmt(r["peak_gpu_mb"], ".0f")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for k, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        if r.get("note"):
            print(f"  {r['module']} ({r['device']}): {r['note']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all",
                   help="cpu, cuda, mps, or 'all' (cpu, plus cuda in fp16 when available)")
    p.add_argument("--modules", default=",".join(BENCHES),
                   help=f"comma-separated, from: {', '.join(BENCHES)}")
    p.add_argument("--calls", type=int, default=3, help="timed calls after the first (median)")
    p.add_argument("--batch", type=int, default=0, help="also time one batched call of N items")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--workdir", help="keep the saved random checkpoints here (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    p.add_argument("--smoke", action="store_true",
                   help="every bench's saver run on the meta device and its tool built on "
                        "its tiny checkpoint, its call checked (nothing loaded), then each "
                        "of --modules on its tiny checkpoint, in "
                        "this process: one call and a batch of 2 (checks that the benchmark "
                        "still runs; figures meaningless)")
    p.add_argument("--_save", help=argparse.SUPPRESS)
    p.add_argument("--_options", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--_measure", help=argparse.SUPPRESS)
    p.add_argument("--_folder", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a._save:
        BENCHES[a._save].save(Path(a._folder), **json.loads(a._options))
        print("saved")
        return 0
    if a._measure:
        print(json.dumps(measure(a._measure, Path(a._folder), a.device, a.calls, a.batch)))
        return 0

    names = [n.strip() for n in a.modules.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown modules {unknown}; choose from {', '.join(BENCHES)}")
    if a.smoke:
        problems = check_savers() + check_benches()  # all of them, loading nothing
        rows = []
        for name in names:
            try:
                rows.append(measure(name, None, "cpu", 0, 2))
            except Exception as e:  # noqa: BLE001 (reported, and the exit status says so)
                rows.append({"module": name, "device": "cpu", "error": f"{type(e).__name__}: {e}"})
        print_table(rows)
        for problem in problems:
            print(f"ERROR {problem}", file=sys.stderr)
        if a.json:
            Path(a.json).write_text(json.dumps({"checked": len(BENCHES), "problems": problems,
                                                "rows": rows}, indent=2))
        return 1 if problems or any("error" in r for r in rows) else 0
    if a.device == "all":
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [a.device]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="visprog-bench-") as tmp:
        root = Path(a.workdir or tmp)
        for name in names:
            folder = root / name.replace("[", "_").replace("]", "")
            try:
                ensure_saved(name, folder, a.timeout)
            except Exception as e:  # report and go on with the other modules
                rows += [{"module": name, "device": d, "error": f"save: {e}"} for d in devices]
                continue
            for d in devices:
                try:
                    out = _child(["--_measure", name, "--_folder", str(folder), "--device", d,
                                  "--calls", str(a.calls), "--batch", str(a.batch)], a.timeout)
                    rows.append(json.loads(out))
                except Exception as e:
                    rows.append({"module": name, "device": d, "error": str(e)})
                print(f"done {name} on {d}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
                if a.json:  # written as it goes, so a run cut short keeps what it measured
                    Path(a.json).write_text(json.dumps(rows, indent=2))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
