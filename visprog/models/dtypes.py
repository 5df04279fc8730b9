"""Which floating-point type each model loads in.

A model module's `dtype` setting is one of `DTYPE_SETTINGS`:

- "fp32", "bf16", "fp16": that type (refused on a device that lacks it);
- "auto" (the default): the checkpoint's published type where the device supports it.
  On a CUDA GPU: float16 for a checkpoint published in float16; bfloat16 for one published
  in bfloat16 (Qwen3-VL) where the GPU has it (compute capability 8.0 and later). With
  `[models] half = true` (the default) the rest also run in half precision, the GPU's best:
  bfloat16 where it has it, else float16 (so float16 only for checkpoints published in it
  or on GPUs without bfloat16: a bfloat16-trained model can overflow float16, Qwen2-VL then
  writes "!!!!", transformers issue 33294). With `half = false` they stay in float32. On
  CPU and MPS "auto" is float32 whatever was published (half precision there is slow or
  unsupported).

The decision (`choose_dtype`) is a pure function of the setting, the published type and
the device's capabilities (`DeviceCaps`), so it is tested for every case without a GPU;
`device_caps` detects a real device's, `read_published_dtype` reads a checkpoint's
`config.json` (a local folder, or the Hugging Face cache, never the network unless asked).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from visprog.errors import DtypeError

DTYPE_SETTINGS = ("auto", "bf16", "fp16", "fp32")
TORCH_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_PUBLISHED = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
              "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


@dataclass(frozen=True)
class DeviceCaps:
    """What a device computes in: its kind ("cuda", "mps", "cpu"), whether it has bfloat16
    and float16 arithmetic, and a name for messages."""

    kind: str
    bf16: bool
    fp16: bool
    name: str = ""


CPU = DeviceCaps("cpu", bf16=True, fp16=True, name="cpu")  # torch runs both there (slowly)


def device_caps(device: str) -> DeviceCaps:
    """The capabilities of `device` ("cpu", "cuda", "cuda:1", "mps"), detected.

    A CUDA device that can't be queried (no driver here) counts as one without bfloat16,
    the conservative choice."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        try:
            index = torch.device(device).index or 0
            major, minor = torch.cuda.get_device_capability(index)
            name = f"{device} ({torch.cuda.get_device_name(index)}, compute {major}.{minor})"
        except (RuntimeError, AssertionError, AttributeError):
            return DeviceCaps("cuda", bf16=False, fp16=True, name=f"{device} (not available)")
        # bfloat16 arithmetic (not emulation) arrived with Ampere, compute capability 8.0
        return DeviceCaps("cuda", bf16=major >= 8, fp16=True, name=name)
    if kind == "mps":
        return DeviceCaps("mps", bf16=False, fp16=True, name="mps")
    return DeviceCaps(kind, bf16=True, fp16=True, name=device)


def check_dtype_setting(value: Any, where: str = "dtype") -> str:
    """A module's `dtype` setting, checked (None means "auto").

    Raises:
        DtypeError: anything but one of DTYPE_SETTINGS.
    """
    if value is None:
        return "auto"
    if not isinstance(value, str) or value.strip().lower() not in DTYPE_SETTINGS:
        raise DtypeError(f"{where}: dtype must be one of {', '.join(DTYPE_SETTINGS)}, "
                         f"got {value!r}")
    return value.strip().lower()


def published_dtype(config: Mapping[str, Any]) -> str | None:
    """The floating type a checkpoint's config says its weights are in ("bfloat16",
    "float16", "float32"), or None when it says nothing readable. transformers 5 writes
    `dtype`, older versions `torch_dtype`; a vision-language model may say it only in its
    text config."""
    for cfg in (config, config.get("text_config") or {}):
        if not isinstance(cfg, Mapping):
            continue
        for key in ("dtype", "torch_dtype"):
            value = cfg.get(key)
            if isinstance(value, str):
                name = _PUBLISHED.get(value.lower().removeprefix("torch."))
                if name:
                    return name
    return None


def read_published_dtype(checkpoint: str, *, download: bool = False) -> str | None:
    """`published_dtype` of a checkpoint's config.json: a local folder's, else a hub id's
    from the Hugging Face cache (fetched only with `download`). None when there is none
    (a diffusers pipeline has model_index.json instead), it can't be read, or it isn't here.
    """
    local = Path(os.path.expanduser(checkpoint))
    path: Any = None
    if local.exists():  # a folder (a file, like FaceDet's ONNX model, says nothing)
        path = local / "config.json" if local.is_dir() else None
    else:
        try:
            import huggingface_hub

            path = huggingface_hub.try_to_load_from_cache(checkpoint, "config.json")
            if not isinstance(path, str) and download:
                path = huggingface_hub.hf_hub_download(checkpoint, "config.json")
        except Exception:  # no hub client, a bad id, no network, no such file: unknown
            return None
    if not isinstance(path, (str, Path)):
        return None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return published_dtype(config) if isinstance(config, Mapping) else None


def choose_dtype(setting: str, published: str | None, caps: DeviceCaps, *,
                 half: bool = True) -> str:
    """The torch dtype name ("bfloat16", "float16", "float32") a model loads in.

    Args:
        setting: the module's `dtype` setting (DTYPE_SETTINGS).
        published: the checkpoint's published type (`published_dtype`), None if unknown.
        caps: the device's capabilities.
        half: `[models] half`: whether "auto" may run checkpoints published in float32 in
            half precision on a GPU.

    Raises:
        DtypeError: a bad setting, or an explicit type the device lacks.
    """
    setting = check_dtype_setting(setting)
    if setting != "auto":
        name = TORCH_NAMES[setting]
        if (name == "bfloat16" and not caps.bf16) or (name == "float16" and not caps.fp16):
            other = "fp16" if name == "bfloat16" else "fp32"
            raise DtypeError(f"dtype {setting!r}: {caps.name or caps.kind} has no {name} "
                             f"arithmetic; use \"auto\" or {other!r}")
        return name
    if caps.kind != "cuda":
        return "float32"
    if published == "float16":
        return "float16"
    if published == "bfloat16" and caps.bf16:
        return "bfloat16"
    if not half:  # no precision below what was published
        return "float32"
    return "bfloat16" if caps.bf16 else "float16"


def torch_dtype(name: str) -> Any:
    """The torch dtype for a name `choose_dtype` gives."""
    import torch

    return getattr(torch, name)
