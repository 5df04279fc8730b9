"""Vision-language chat models (Qwen3-VL, Qwen2.5-VL, Qwen3.5, SmolVLM, ... any transformers
image-text-to-text model with a chat template): the loader both Vqa and the local planner use,
so the model manager holds one copy for both roles (kind `VLM_KIND`, same checkpoint).

Without torchvision the stock processors of these models can't be built: ProcessorMixin
type-checks every sub-processor its `__init__` names, and the video processor is a
torchvision-only placeholder (`Qwen3VLProcessor.from_pretrained` raises OSError, and
`AutoProcessor` silently returns only the tokenizer). `image_only` makes a subclass whose
`__init__` leaves the video processor out; images go through the PIL image processor.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

VLM_KIND = "vlm"  # the model manager's kind for these bundles (Vqa and the planner share it)

# model_type -> processor class name, for the image-only fallback.
PROCESSORS = {
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_vl_moe": "Qwen3VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen3_5": "Qwen3VLProcessor",  # as transformers' AutoProcessor maps it
    "qwen3_5_moe": "Qwen3VLProcessor",
    "smolvlm": "SmolVLMProcessor",
    "idefics3": "Idefics3Processor",
}
_IMAGE_ONLY: dict[str, type] = {}


def image_only(processor_class: type) -> type:
    """A subclass of a VLM processor without its video processor (see the module docstring).
    Its `apply_chat_template` is ProcessorMixin's: SmolVLM's own reads the video processor's
    frame settings even for images."""
    name = processor_class.__name__
    if name not in _IMAGE_ONLY:
        from transformers.processing_utils import ProcessorMixin

        base_init = processor_class.__init__

        base_params = inspect.signature(base_init).parameters

        if "image_seq_len" in base_params:  # SmolVLM, Idefics3: from_pretrained passes the
            # saved value only to an argument the code names
            seq_default = base_params["image_seq_len"].default

            def __init__(self, image_processor=None, tokenizer=None, image_seq_len=seq_default,
                         chat_template=None, **kw):
                kw.pop("video_processor", None)
                base_init(self, image_processor=image_processor, tokenizer=tokenizer,
                          video_processor=None, image_seq_len=image_seq_len,
                          chat_template=chat_template, **kw)
        else:
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):
                kw.pop("video_processor", None)
                base_init(self, image_processor=image_processor, tokenizer=tokenizer,
                          video_processor=None, chat_template=chat_template, **kw)

        # ProcessorMixin saves (and type-checks) what the signature names: keep the base's
        # arguments (SmolVLM's image_seq_len) but the video processor
        sig = inspect.signature(base_init)
        __init__.__signature__ = sig.replace(parameters=[
            p for n, p in sig.parameters.items() if n != "video_processor"])
        # the stock name, so a saved processor_config.json loads with AutoProcessor where
        # torchvision is installed
        _IMAGE_ONLY[name] = type(name, (processor_class,),
                                 {"__init__": __init__, "__module__": __name__,
                                  "apply_chat_template": ProcessorMixin.apply_chat_template})
    return _IMAGE_ONLY[name]


def template_kwargs(template: str | None) -> dict[str, Any]:
    """What to pass to a chat template beside the messages: thinking off where the template
    has the switch (Qwen3.5 thinks first by default; Vqa wants a word, the planner a
    program); nothing for a template without it (an unknown variable only warns)."""
    return {"enable_thinking": False} if template and "enable_thinking" in template else {}


def is_vlm_checkpoint(path: str) -> bool:
    """Whether a checkpoint holds a vision-language model (its config has a vision part): a
    local folder's config.json, else a hub id's config as transformers finds it (its local
    cache first)."""
    import json

    if os.path.isdir(path):
        try:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(cfg, dict) and "vision_config" in cfg
    from visprog.models.checkpoints import hub_unreachable

    try:
        import transformers

        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        except OSError:
            if hub_unreachable():  # no network: not found, and no minutes of retries
                return False
            config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, ImportError):
        return False
    return getattr(config, "vision_config", None) is not None


def load_processor(path: str) -> Any:
    """The checkpoint's processor: AutoProcessor where it gives a full one (torchvision
    present), else the image-only subclass of the model type's processor."""
    import transformers

    try:
        proc = transformers.AutoProcessor.from_pretrained(path)
        if hasattr(proc, "image_processor") and hasattr(proc, "tokenizer"):
            return proc
    except (OSError, ValueError, AttributeError, ImportError):
        pass
    model_type = transformers.AutoConfig.from_pretrained(path).model_type
    if model_type not in PROCESSORS:
        raise ValueError(f"no processor for the vision-language model type {model_type!r} "
                         f"without torchvision; known: {', '.join(sorted(PROCESSORS))}")
    return image_only(getattr(transformers, PROCESSORS[model_type])).from_pretrained(path)


def load_vlm(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """A model-manager loader: `(model, processor)`. The tokenizer pads on the left, for
    batched generation (a padded row then ends where its answer starts)."""
    import transformers

    processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    import torch

    # None means float32 (the manager's contract); from_pretrained would otherwise keep a
    # checkpoint's bfloat16 (Qwen-VL's as published), slow on most CPUs
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype or torch.float32)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model.to(device).eval(), processor
