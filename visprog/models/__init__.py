"""Models: the model manager (lazy, shared loading; device and dtype), the memory budget,
checkpoints (hub ids, local paths, tiny random models built offline), tiny tokenizers, and
the base that model tools are built on (with `ToolContext`, what they share)."""
from visprog.models.checkpoints import (TINY_PREFIX, ModelLoadError, add_tiny_source, cache_dir,
                                        hub_unreachable, load_error, looks_like_path,
                                        quiet_loading, register_tiny, resolve_checkpoint,
                                        tiny_dir)
from visprog.models.images import (MODEL_MAX_ASPECT, bound_pixels, model_image, model_images,
                                   rgb_image)
from visprog.models.library_logs import quiet_opencv, route_library_logs
from visprog.models.manager import (Loader, ModelManager, default_manager, manager_of,
                                    model_dtype, pick_device, to_model_inputs)
from visprog.models.model_tool import (Backend, Done, ModelTool, SettingsAtFirstUse,
                                       SettingsError, ToolContext, hf_loader, is_model_tool,
                                       merge_settings, model_inputs, pick_checkpoint,
                                       settings_known)
from visprog.models.tokenizers import (byte_level_bpe, tiny_bert_tokenizer, tiny_bpe,
                                       tiny_clip_tokenizer, tiny_siglip2_tokenizer)

__all__ = ["TINY_PREFIX", "ModelLoadError", "add_tiny_source", "cache_dir", "hub_unreachable",
           "load_error", "looks_like_path", "quiet_loading", "register_tiny",
           "resolve_checkpoint", "tiny_dir", "MODEL_MAX_ASPECT", "bound_pixels", "model_image",
           "model_images", "rgb_image", "Loader",
           "ModelManager", "default_manager", "manager_of", "model_dtype", "pick_device",
           "to_model_inputs", "byte_level_bpe", "tiny_bert_tokenizer", "tiny_bpe",
           "tiny_clip_tokenizer", "tiny_siglip2_tokenizer", "Backend", "Done", "ModelTool",
           "SettingsError", "ToolContext", "hf_loader", "is_model_tool", "merge_settings",
           "model_inputs", "pick_checkpoint", "SettingsAtFirstUse", "settings_known",
           "quiet_opencv", "route_library_logs"]
