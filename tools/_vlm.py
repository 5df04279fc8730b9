"""Tiny random vision-language chat models (`tiny:qwen3_vl`, `tiny:qwen2_5_vl`,
`tiny:qwen3_5`, `tiny:smolvlm`), built offline with hand-made byte-level BPE tokenizers
(`visprog.models.byte_level_bpe`); Vqa registers them. Not a tool file (its name starts
with '_', and it exposes no TOOLS).

Each builder copies what decides shapes and prompts from the published checkpoint (patch
and image sizes, normalisation, special tokens, the chat template's layout); the widths and
depths are tiny. The sources are cited where each value is set.
"""
from __future__ import annotations

from pathlib import Path

from visprog.models import byte_level_bpe

# Words the tiny tokenizers know whole (anything else is spelt in bytes): the questions of
# the tests and the words of programs, so planner prompts stay a few thousand tokens.
TINY_WORDS = ["what", "color", "is", "the", "car", "how", "many", "dogs", "dog", "cat", "are",
              "there", "a", "an", "of", "in", "on", "red", "blue", "green", "yes", "no", "one",
              "two", "left", "right", "user", "assistant", "system", "answer", "question",
              "image", "object", "IMAGE", "Loc", "Vqa", "Count", "Eval", "Result", "var",
              "expr", "Crop", "Select", "query", "box", "ANSWER", "BOX", "Answer", "words",
              "word", "or", "and", "Question", "Program"]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# The layout of Qwen-VL's chat template (Qwen/Qwen3-VL-2B-Instruct chat_template.json):
# `<|im_start|>{role}\n{content}<|im_end|>\n` per message, an image as
# `<|vision_start|><|image_pad|><|vision_end|>`, and `<|im_start|>assistant\n` to answer.
# Written for these tests (system and text-only messages included), not copied.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Qwen3.5's layout is Qwen-VL's with a thinking switch in the generation prompt
# (Qwen/Qwen3.5-0.8B chat_template): `<|im_start|>assistant\n<think>\n` by default, and an
# empty `<think>\n\n</think>\n\n` block when `enable_thinking` is false (what visprog asks).
QWEN3_5_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(
    "<|im_start|>assistant\n{% endif %}",
    "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}")

# SmolVLM-Instruct's layout (HuggingFaceTB/SmolVLM-256M-Instruct chat_template.json):
# `<|im_start|>User:{content}<end_of_utterance>\nAssistant:`.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def qwen_tokenizer(cls_name: str = "Qwen2Tokenizer", template: str = QWEN_CHAT_TEMPLATE):
    """A Qwen2Tokenizer (or Qwen3.5's own class) with the Qwen-VL special tokens
    (Qwen/Qwen3-VL-2B-Instruct tokenizer_config.json: eos <|im_end|>, pad <|endoftext|>).
    They must be registered as special tokens, or BPE splits '<|image_pad|>' into bytes."""
    import transformers

    vocab, merges = byte_level_bpe(TINY_WORDS, QWEN_SPECIALS)
    tok = getattr(transformers, cls_name)(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                                          eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    tok.chat_template = template  # text-only chats (the planner) use the tokenizer's
    return tok


def _qwen_ids(tok) -> dict[str, int]:
    return {"image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
            "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
            "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>")}


def _qwen3vl_image_processor():
    """Qwen3-VL's image processor as published (Qwen/Qwen3-VL-2B-Instruct
    preprocessor_config.json: patch_size=16, merge_size=2, temporal_patch_size=2,
    image_mean=image_std=[0.5]*3, size={"shortest_edge": 65536, "longest_edge": 16777216}:
    min and max PIXELS, not edge lengths)."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
        image_std=[0.5] * 3, size={"shortest_edge": 65536, "longest_edge": 16777216})


def build_tiny_qwen3_vl(folder: Path) -> None:
    """Qwen3-VL (Qwen3VLForConditionalGeneration) of about 0.1M random parameters."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    from visprog.models.vlm import image_only

    torch.manual_seed(0)
    tok = qwen_tokenizer()
    image_processor = _qwen3vl_image_processor()
    processor = image_only(Qwen3VLProcessor)(image_processor=image_processor, tokenizer=tok,
                                             chat_template=QWEN_CHAT_TEMPLATE)
    cfg = Qwen3VLConfig(
        # Qwen/Qwen3-VL-2B-Instruct config.json text_config: rope mrope_interleaved=true,
        # mrope_section=[24, 20, 20] for head_dim 128 (here scaled to head_dim 16: [3, 3, 2]),
        # rope_theta=5000000, tie_word_embeddings=true; eos <|im_end|>, pad <|endoftext|>.
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         # 262144 published; 32768 here (rotary: no weights) so agent
                         # mode's prompt in this tokenizer's many tokens fits with its images
                         head_dim=16, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": [3, 3, 2],
                                          "mrope_interleaved": True},
                         bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        # ... vision_config: patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
        # deepstack_visual_indexes=[5, 11, 17] of depth 24 (here [0] of 2); out_hidden_size
        # equals the text hidden size; num_position_embeddings=2304 (48^2; here 64 = 8^2).
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=32, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        tie_word_embeddings=True, **_qwen_ids(tok))
    Qwen3VLForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    tok.save_pretrained(folder)


def build_tiny_qwen2_5_vl(folder: Path) -> None:
    """Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) of about 0.1M random parameters."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil)

    from visprog.models.vlm import image_only

    torch.manual_seed(0)
    tok = qwen_tokenizer()
    # Qwen/Qwen2.5-VL-3B-Instruct preprocessor_config.json: patch_size=14, merge_size=2,
    # temporal_patch_size=2, OpenAI CLIP mean/std, min_pixels=3136, max_pixels=12845056:
    # the image processor's defaults.
    processor = image_only(Qwen2_5_VLProcessor)(image_processor=Qwen2VLImageProcessorPil(),
                                                tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
    cfg = Qwen2_5_VLConfig(
        # config.json: mrope_section=[16, 24, 24] for head_dim 128; it must sum to head_dim/2
        # (here 16 / 2 = 8: [2, 3, 3]).
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        # vision_config: patch_size=14, spatial_merge_size=2, window_size=112,
        # fullatt_block_indexes=[7, 15, 23, 31] of depth 32 (here [1] of 2).
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[1], out_hidden_size=32),
        tie_word_embeddings=True, **_qwen_ids(tok))
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    tok.save_pretrained(folder)


def build_tiny_qwen3_5(folder: Path) -> None:
    """Qwen3.5 (Qwen3_5ForConditionalGeneration, transformers `qwen3_5`) of about 0.1M random
    parameters: the published hybrid text stack (3 Gated DeltaNet linear-attention layers,
    then 1 gated full-attention layer; their pure-torch fallback, no fla or causal-conv1d)
    behind the Qwen3-VL vision tower and processor."""
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor

    from visprog.models.vlm import image_only

    torch.manual_seed(0)
    tok = qwen_tokenizer("Qwen3_5Tokenizer", QWEN3_5_CHAT_TEMPLATE)
    tok.add_tokens(["<think>", "</think>"])  # whole tokens, decoded as text (as published)
    # transformers maps qwen3_5 to Qwen3-VL's image processor and processor; the
    # published preprocessor_config.json has the Qwen3-VL values.
    image_processor = _qwen3vl_image_processor()
    processor = image_only(Qwen3VLProcessor)(image_processor=image_processor, tokenizer=tok,
                                             chat_template=QWEN3_5_CHAT_TEMPLATE)
    cfg = Qwen3_5Config(
        # Qwen/Qwen3.5-0.8B config.json text_config: layer_types 3 x linear_attention then
        # full_attention (full_attention_interval 4), head_dim 256, 8 heads / 2 kv heads,
        # linear_conv_kernel_dim 4, linear key/value head dim 128, 16 key and 16 value heads,
        # rope {default, rope_theta 1e7, partial_rotary_factor 0.25, mrope_interleaved,
        # mrope_section [11, 11, 10]: sums to 256 * 0.25 / 2}, tie_word_embeddings true, eos
        # <|im_end|>, pad <|endoftext|>. Here head_dim 32, so the section sums to 4: [2, 1, 1]
        # (a wrong sum is not checked by transformers).
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4,
                         layer_types=["linear_attention"] * 3 + ["full_attention"],
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         linear_num_key_heads=2, linear_num_value_heads=2,
                         linear_key_head_dim=16, linear_value_head_dim=16,
                         linear_conv_kernel_dim=4, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e7,
                                          "partial_rotary_factor": 0.25,
                                          "mrope_interleaved": True, "mrope_section": [2, 1, 1]},
                         bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True),
        # vision_config: depth 12, patch 16, spatial merge 2, temporal patch 2,
        # num_position_embeddings 2304 (48^2; here 64 = 8^2, square as it must be),
        # out_hidden_size = the text hidden size.
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=32, num_position_embeddings=64),
        tie_word_embeddings=True, **_qwen_ids(tok))
    Qwen3_5ForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    tok.save_pretrained(folder)


def build_tiny_smolvlm(folder: Path) -> None:
    """SmolVLM (SmolVLMForConditionalGeneration) of about 0.1M random parameters. Needs
    `num2words` (SmolVLMProcessor refuses to start without it)."""
    import torch
    from transformers import (GPT2Tokenizer, SmolVLMConfig, SmolVLMForConditionalGeneration,
                              SmolVLMImageProcessorPil, SmolVLMProcessor)

    from visprog.models.vlm import image_only

    torch.manual_seed(0)
    # HuggingFaceTB/SmolVLM-256M-Instruct tokenizer: <|im_start|> bos, <end_of_utterance>
    # eos, image tokens <fake_token_around_image>, <image>, <global-img>, <row_R_col_C>.
    specials = (["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                 "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)])
    vocab, merges = byte_level_bpe(TINY_WORDS + ["User", "Assistant"], specials,
                                   first=["<|endoftext|>"])
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                        bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                        pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = SMOLVLM_CHAT_TEMPLATE
    # preprocessor_config.json: size={"longest_edge": 2048}, max_image_size={"longest_edge":
    # 512} (512-px tiles plus a global view), image_mean=image_std=[0.5]*3; processor
    # image_seq_len=64 (512/16 = 32 patches a side, / scale_factor 4 -> 8^2).
    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 2048},
                                               max_image_size={"longest_edge": 512},
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = image_only(SmolVLMProcessor)(image_processor=image_processor, tokenizer=tok,
                                             image_seq_len=64, chat_template=SMOLVLM_CHAT_TEMPLATE)
    cfg = SmolVLMConfig(
        # config.json: vision image_size=512, patch_size=16, scale_factor=4; a llama text model
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=512, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=8192,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        scale_factor=4, image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id)
    SmolVLMForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    tok.save_pretrained(folder)
