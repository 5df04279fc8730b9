"""Replace: inpaints the objects with what a text prompt describes (SPEC 4).

A diffusers inpainting pipeline on the union of the objects' masks (an object without a mask
counts as its box). Backends: "sdxl" (default; `StableDiffusionXLInpaintPipeline`, the
diffusers/stable-diffusion-xl-1.0-inpainting-0.1 checkpoint, CreativeML Open RAIL++-M
licence, commercial use allowed, 1024-pixel working size) and "sd" (the `classic` preset;
`StableDiffusionInpaintPipeline`, SD 1.5 inpainting at 512):

1. the mask is dilated by `mask_dilation` pixels, so the seam falls just outside the object
   (objects' edges from segmentation are rarely exact and leftover rim pixels look bad);
2. image and mask are resized to the model's working size: the longer side becomes
   `resolution` (512 for SD 1.x/2.x inpainting, 64 for the tiny model), both sides rounded
   to multiples of 8 (the VAE and the pipeline's check need it), aspect ratio kept;
3. the pipeline inpaints there; the result is resized back to the original size and pasted
   into the ORIGINAL image only inside the dilated mask, so every pixel outside it is
   exactly the input's (the VAE round trip would otherwise change them all slightly).

No objects, or objects with no area: the image comes back unchanged (a copy).

`seed` (an int) makes results repeatable: each call draws its noise from a CPU
`torch.Generator` seeded with it, so the same inputs give the same image on any device and in
any batch. With `seed` unset the tool samples afresh each call and is not cacheable.

Memory: `offload` = "model" moves each sub-model to the GPU only while it runs
(diffusers' `enable_model_cpu_offload`, needs `accelerate`; SDXL in half precision then needs
about 5 GB of GPU memory instead of about 7), "sequential" moves layer by layer (slowest,
least memory), "none" keeps the pipeline on the device, and "auto" (default) picks "model" on
a CUDA GPU of less than 12 GiB and "none" elsewhere. It changes where the pipeline runs, not
what it paints, so it is not part of the cache key.

Safety checker (backend "sd"): the tiny preset has none. With a real checkpoint the checkpoint's own safety
checker is loaded when it has one (SD 1.x inpainting does; it blacks out images it flags
NSFW and diffusers logs a warning); `safety_checker = false` in the config drops it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from visprog.models import Backend, Done, ModelTool, SettingsError, pick_checkpoint

from .crop import check_objects_image


def working_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(width, height) with the longer side `resolution`, both multiples of 8 (at least 8)."""
    w, h = size
    scale = resolution / max(w, h)
    return (max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8))


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by `pixels` in every direction (a square max filter)."""
    if pixels <= 0 or not mask.any():
        return mask
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * pixels + 1))
    return np.asarray(grown) > 0


PIPELINES = {"sdxl": "StableDiffusionXLInpaintPipeline", "sd": "StableDiffusionInpaintPipeline"}
STRENGTHS = {"sdxl": 0.99, "sd": 1.0}  # what strength = "auto" means for each backend
OFFLOADS = ("auto", "none", "model", "sequential")
SMALL_GPU_BYTES = 12 * 2**30  # "auto" offloads below this much GPU memory


def pick_offload(offload: str, device: str) -> str:
    """The offload mode to use on `device` ("auto" resolved)."""
    if offload != "auto":
        return offload
    if not device.startswith("cuda"):
        return "none"
    import torch

    index = torch.device(device).index or 0
    return "model" if torch.cuda.get_device_properties(index).total_memory < SMALL_GPU_BYTES \
        else "none"


def load_inpaint(safety_checker: bool, backend: str = "sd", offload: str = "none"):
    """A manager loader: (path, device, dtype) -> the backend's inpainting pipeline."""

    def load(path: str, device: str, dtype: Any) -> Any:
        import diffusers
        import torch
        from diffusers.pipelines import pipeline_utils
        from diffusers.utils import logging as diffusers_logging

        extra: dict[str, Any] = {}
        if backend == "sd" and not safety_checker:
            extra = {"safety_checker": None, "requires_safety_checker": False}
        # newer diffusers take `dtype` and warn on `torch_dtype`; older ones know only the latter
        key = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
        extra[key] = dtype or torch.float32
        bars = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()  # its bar for each load, however quick
        try:
            pipe = getattr(diffusers, PIPELINES[backend]).from_pretrained(path, **extra)
        finally:
            if bars:
                diffusers_logging.enable_progress_bar()
        mode = pick_offload(offload, device)
        if mode == "none" or not device.startswith("cuda"):
            pipe = pipe.to(device)
        elif mode == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


def _generators(seed: int | None, n: int) -> list[Any] | None:
    import torch

    if seed is None:
        return None
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for _ in range(n)]


def inpaint(pipe: Any, jobs: list[dict[str, Any]], s: dict[str, Any]) -> list[Image.Image]:
    """Inpaint jobs that share one working size, as one pipeline batch.

    Each job has `image` (RGB, original size), `mask` (bool H x W, dilated) and `prompt`.
    """
    w, h = working_size(jobs[0]["image"].size, int(s["resolution"]))
    images = [j["image"].resize((w, h), Image.LANCZOS) for j in jobs]
    # a working pixel is repainted when any of the original pixels under it is
    masks = [Image.fromarray(j["mask"].astype(np.uint8) * 255).resize((w, h), Image.BOX)
             .point(lambda v: 255 if v > 0 else 0) for j in jobs]
    out = pipe(prompt=[j["prompt"] for j in jobs], image=images, mask_image=masks,
               height=h, width=w, num_inference_steps=int(s["steps"]),
               guidance_scale=float(s["guidance"]), strength=float(s["strength"]),
               negative_prompt=[s["negative_prompt"]] * len(jobs) if s["negative_prompt"]
               else None,
               generator=_generators(s["seed"], len(jobs)), output_type="pil")
    results = []
    for j, painted in zip(jobs, out.images):
        back = np.asarray(painted.convert("RGB").resize(j["image"].size, Image.LANCZOS))
        keep = np.asarray(j["image"])
        results.append(Image.fromarray(np.where(j["mask"][:, :, None], back, keep)
                                       .astype(np.uint8), mode="RGB"))
    return results


# -- tiny offline checkpoint ------------------------------------------------------------------

TINY_WORDS = ["a", "photo", "of", "red", "blue", "green", "car", "dog", "cat", "sky", "tree",
              "with", "sunglasses", "hat", "flower"]


def build_tiny_sd_inpaint(folder) -> None:
    """A small random Stable Diffusion inpainting pipeline (UNet with 9 input channels, VAE,
    CLIP text encoder with a hand-made BPE vocabulary, DDIM), no safety checker."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from visprog.models import tiny_clip_tokenizer

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(TINY_WORDS)
    tok.model_max_length = 77  # the pipeline pads prompts to this
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, eos_token_id=eot,
        pad_token_id=eot, bos_token_id=eot - 1))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=9, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=64)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)



def build_tiny_sdxl_inpaint(folder) -> None:
    """A small random SDXL inpainting pipeline with the real one's structure and shapes.

    Copied from diffusers/stable-diffusion-xl-1.0-inpainting-0.1 (model_index.json and each
    component's config.json): UNet in_channels 9 (latents, masked-image latents, mask),
    out_channels 4, addition_embed_type "text_time" with the pooled text embedding of the
    second encoder plus 6 time ids (requires_aesthetics_score false), cross-attention over
    both encoders' hidden states concatenated; two CLIP text encoders (CLIPTextModel and
    CLIPTextModelWithProjection) with 77-token tokenizers; a VAE with 4 latent channels and
    4 blocks (scale factor 8), scaling_factor 0.13025, force_upcast; EulerDiscreteScheduler
    (scaled_linear betas 0.00085-0.012, steps_offset 1, timestep_spacing "leading").
    Widths and depths are shrunk.
    """
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from visprog.models import tiny_clip_tokenizer

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(TINY_WORDS)
    tok.model_max_length = 77
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, eos_token_id=eot,
                pad_token_id=eot, bos_token_id=eot - 1)
    te1 = CLIPTextModel(CLIPTextConfig(**text))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=9, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + 32,  # 6 time ids + pooled text
        cross_attention_dim=64, norm_num_groups=8)                 # 32 + 32 hidden
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025,
        force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=scheduler, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder)


# -- the backends ----------------------------------------------------------------------------

class Inpainter(Backend):
    """What Replace's backends share: the settings that change what it paints (the cache
    key), checked, and where the pipeline runs (`offload`: not in the cache key)."""

    name: str
    drop: str  # the one of the shared keys this backend's settings leave out

    def __init__(self, s: dict[str, Any]):
        if s["offload"] not in OFFLOADS:
            raise SettingsError(f"Replace: offload must be one of {', '.join(OFFLOADS)}, "
                                f"got {s['offload']!r}")
        self.offload = s["offload"]  # where it runs, not what it paints: not in the cache key
        super().__init__(s)

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        s = {"checkpoint": pick_checkpoint(s),
             **{k: s[k] for k in ("backend", "steps", "guidance", "seed", "resolution",
                                  "mask_dilation", "negative_prompt", "strength",
                                  "safety_checker")}}
        del s[self.drop]
        strength = s["strength"]
        if strength == "auto":
            s["strength"] = STRENGTHS[self.name]
        elif isinstance(strength, bool) or not isinstance(strength, (int, float)) \
                or not 0 < strength <= 1:
            raise SettingsError(f"Replace: strength must be a number in (0, 1] or \"auto\", "
                                f"got {strength!r}")
        # TOML has no null: "random" (or "", or a negative number) means a fresh sample per call
        seed = s["seed"]  # (note 0 == False: compare by type, not with `in`)
        if (isinstance(seed, str) and seed in ("", "random")) or seed is False or (
                isinstance(seed, int) and not isinstance(seed, bool) and seed < 0):
            s["seed"] = None
        elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise SettingsError(f"Replace: seed must be an integer or unset, got {s['seed']!r}")
        if int(s["resolution"]) < 8 or int(s["steps"]) < 1:
            raise SettingsError("Replace: resolution must be at least 8 and steps at least 1")
        return s

    def forward(self, tool: ModelTool, jobs: list[dict[str, Any]]) -> list[Image.Image]:
        safety, kind = self.pipeline()
        if self.offload != "none":
            kind += f"_offload_{self.offload}"
        pipe = tool.model(kind, self.settings["checkpoint"],
                          load_inpaint(safety, self.name, self.offload))
        return inpaint(pipe, jobs, self.settings)

    def pipeline(self) -> tuple[bool, str]:
        """Whether the pipeline keeps its safety checker, and the model manager's kind."""
        raise NotImplementedError


class Sdxl(Inpainter):
    """SDXL inpainting (the default), 1024-pixel working size."""

    name, drop = "sdxl", "safety_checker"  # the SDXL pipeline has none

    def pipeline(self) -> tuple[bool, str]:
        return False, "sdxl_inpaint"


class Sd(Inpainter):
    """SD 1.5 inpainting (the `classic` preset), with the checkpoint's safety checker unless
    `safety_checker = false`."""

    name, drop = "sd", "backend"  # the settings (and cache keys) SD 1.5 had before backends

    def pipeline(self) -> tuple[bool, str]:
        safety = bool(self.settings["safety_checker"])
        return safety, "sd_inpaint" if safety else "sd_inpaint_no_safety"


# -- the tool --------------------------------------------------------------------------------

class Replace(ModelTool):
    name = "Replace"
    tasks = ("imgedit",)  # the planner's prompts that describe it
    params = {"image": "Image", "object": "Objects", "prompt": "Text"}
    returns = "Image"
    doc = "Replaces the objects with what the prompt describes (inpainting)."
    backends = {"sdxl": Sdxl, "sd": Sd}
    presets = {
        "default": {
            "backend": "sdxl",
            "checkpoints": {"sdxl": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                            "sd": "stable-diffusion-v1-5/stable-diffusion-inpainting"},
            "steps": 30,
            "guidance": 7.5,
            "seed": 0,                # an int: repeatable and cacheable; "random": fresh each call
            "resolution": 1024,       # the working size's longer side (SDXL's; SD 1.5: 512)
            "mask_dilation": 4,       # pixels at the original size
            "negative_prompt": "",
            # how far the masked area is noised: 1.0 starts from pure noise. "auto": the
            # backend's own (STRENGTHS): SDXL inpainting rarely works at 1.0 (its model card
            # says to stay below it and uses 0.99; diffusers' SDXL pipeline defaults to
            # 0.9999, PR 4858), SD 1.5 inpainting was trained for 1.0
            "strength": "auto",
            "safety_checker": True,   # "sd": the checkpoint's NSFW filter (blacks out flagged images)
            "offload": "auto",        # "auto", "none", "model", "sequential" (see above)
            # `checkpoint = "..."` (a hub id or folder) overrides checkpoints[backend]
        },
        # today's (SD 1.5) defaults, unchanged: same settings, same cache keys
        "classic": {"backend": "sd", "resolution": 512},
        "tiny": {"checkpoints": {"sdxl": "tiny:sdxl_inpaint", "sd": "tiny:sd_inpaint"},
                 "steps": 2, "resolution": 64, "mask_dilation": 2, "safety_checker": False},
    }
    tiny_checkpoints = {"sd_inpaint": build_tiny_sd_inpaint,
                        "sdxl_inpaint": build_tiny_sdxl_inpaint}

    def cacheable(self) -> bool:
        return self.settings["seed"] is not None

    def preprocess(self, call: dict[str, Any]) -> Any:
        objects = call["object"]
        image = check_objects_image(call["image"], objects, "Replace")
        mask = dilate(objects.union_mask(), int(self.settings["mask_dilation"])) \
            if len(objects) else np.zeros((image.height, image.width), bool)
        if not isinstance(call["prompt"], str):
            raise TypeError(f"Replace: prompt must be text, got {type(call['prompt']).__name__}")
        if not mask.any():  # nothing to repaint
            return Done(image.copy())
        return {"image": image, "mask": mask, "prompt": call["prompt"]}

    def batch_key(self, job: dict[str, Any]) -> tuple[int, int]:
        return working_size(job["image"].size, int(self.settings["resolution"]))


TOOLS = [Replace]
