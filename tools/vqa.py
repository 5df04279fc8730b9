"""Vqa(image, question) -> Text: a short answer to a question about the image.

Backends: BLIP VQA (default; generates the answer) and ViLT (picks one of its fixed answer
vocabulary). Answers are lower-cased, stripped, inner whitespace collapsed and a trailing
full stop dropped, so Eval can compare them ('yes' / 'no' / '2').

Settings (section `[Vqa]`):
    backend: "blip" or "vilt".
    checkpoints: backend -> checkpoint (hub id, local path or `tiny:<name>`).
    checkpoint: optional; overrides `checkpoints[backend]`.
    max_new_tokens: BLIP's answer length limit, in tokens.
"""
from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

from visprog.config import module_settings
from visprog.registry import Param, Tool, parse_types

from .models import (manager_of, model_dtype, model_image, register_tiny, rgb_image,
                     tiny_bert_tokenizer, to_model_inputs)

VERSION = "1"
BACKENDS = ("blip", "vilt")
TINY_WORDS = ["what", "color", "is", "the", "how", "many", "are", "there", "a", "an", "of",
              "red", "blue", "green", "yes", "no", "one", "two", "dog", "dogs", "cat", "car",
              "left", "right", "?"]
TINY_ANSWERS = ["yes", "no", "red", "blue", "1", "2", "dog", "cat"]


def clean_answer(text: str) -> str:
    """'  Two Dogs. ' -> 'two dogs'."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


# -- BLIP ------------------------------------------------------------------------------------

def load_blip(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import BlipForQuestionAnswering, BlipProcessor

    processor = BlipProcessor.from_pretrained(path)
    model = BlipForQuestionAnswering.from_pretrained(path, dtype=dtype).to(device)
    return model, processor


def blip_answers(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                 questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """One batched BLIP generate: an answer per (image, question)."""
    import torch

    model, processor = bundle
    inputs = processor(images=list(images), text=list(questions), return_tensors="pt",
                       padding=True)
    with torch.inference_mode():
        ids = model.generate(**to_model_inputs(inputs, model.device, model_dtype(model)),
                             max_new_tokens=max_new_tokens)
    return processor.batch_decode(ids, skip_special_tokens=True)


def build_tiny_blip(folder) -> None:
    """A BLIP VQA of about 0.2M random parameters, 64-pixel inputs."""
    import torch
    from transformers import (BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil,
                              BlipProcessor, BlipTextConfig, BlipVisionConfig)

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer(TINY_WORDS, extra_special=["[DEC]"])
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder starts with [DEC]
    vocab = tok.get_vocab()
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 64, "width": 64}),
                              tokenizer=tok)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=64, patch_size=16)
    text = BlipTextConfig(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32,
                          intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          max_position_embeddings=64, pad_token_id=vocab["[PAD]"],
                          bos_token_id=vocab["[DEC]"], sep_token_id=vocab["[SEP]"],
                          eos_token_id=vocab["[SEP]"])
    cfg = BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=32)
    BlipForQuestionAnswering(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


# -- ViLT ------------------------------------------------------------------------------------

def load_vilt(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import ViltForQuestionAnswering, ViltProcessor

    processor = ViltProcessor.from_pretrained(path)
    model = ViltForQuestionAnswering.from_pretrained(path, dtype=dtype).to(device)
    return model, processor


def vilt_answers(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                 questions: Sequence[str]) -> list[str]:
    """One batched ViLT forward: the best answer of its vocabulary per (image, question)."""
    import torch

    model, processor = bundle
    inputs = processor(images=list(images), text=list(questions), return_tensors="pt",
                       padding=True, truncation=True,
                       max_length=model.config.max_position_embeddings)
    with torch.inference_mode():
        logits = model(**to_model_inputs(inputs, model.device, model_dtype(model))).logits
    return [model.config.id2label[int(i)] for i in logits.float().argmax(-1).cpu()]


def build_tiny_vilt(folder) -> None:
    """A ViLT VQA of about 0.1M random parameters, 64-pixel inputs."""
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil, ViltProcessor

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer(TINY_WORDS)
    processor = ViltProcessor(image_processor=ViltImageProcessorPil(size={"shortest_edge": 64}),
                              tokenizer=tok)
    cfg = ViltConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=32,
                     max_position_embeddings=40, num_labels=len(TINY_ANSWERS),
                     id2label=dict(enumerate(TINY_ANSWERS)),
                     label2id={a: i for i, a in enumerate(TINY_ANSWERS)})
    ViltForQuestionAnswering(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)


register_tiny("blip_vqa", build_tiny_blip)
register_tiny("vilt", build_tiny_vilt)


# -- the tool --------------------------------------------------------------------------------

def vqa_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return module_settings("Vqa", settings, BACKENDS)


def build(settings: dict[str, Any], ctx: Any) -> Tool:
    """The Vqa tool with its section of the configuration (see the module docstring)."""
    s = vqa_settings(settings)
    backend, checkpoint, max_new = s["backend"], s["checkpoint"], int(s["max_new_tokens"])

    def run_batch(calls: list[dict[str, Any]]) -> list[str]:
        images = [model_image(rgb_image(c["image"])) for c in calls]
        questions = [str(c["question"]).strip() for c in calls]
        if any(not q for q in questions):
            raise ValueError("Vqa needs a question, got an empty string")
        if not calls:
            return []
        mm = manager_of(ctx)
        if backend == "blip":
            raw = blip_answers(mm.get("blip_vqa", checkpoint, load_blip), images, questions, max_new)
        else:
            raw = vilt_answers(mm.get("vilt", checkpoint, load_vilt), images, questions)
        return [clean_answer(a) for a in raw]

    def vqa(image, question):
        return run_batch([{"image": image, "question": question}])[0]

    return Tool(
        name="Vqa",
        params=(Param("image", parse_types("Image")), Param("question", parse_types("Text"))),
        returns=parse_types("Text"), fn=vqa,
        doc="answers a question about the image in a word or two (lower case)",
        version=VERSION, batch_fn=run_batch,
        settings={"backend": backend, "checkpoint": checkpoint, "max_new_tokens": max_new})
