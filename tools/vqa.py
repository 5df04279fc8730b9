"""Vqa(image, question) -> Text: a short answer to a question about the image.

Backends: BLIP VQA (default; generates the answer) and ViLT (picks one of its fixed answer
vocabulary). Answers are lower-cased, stripped, inner whitespace collapsed and a trailing
full stop dropped, so Eval can compare them ('yes' / 'no' / '2').

Settings (section `[Vqa]`; defaults and the tiny preset in `Vqa.presets`):
    backend: "blip" or "vilt".
    checkpoints: backend -> checkpoint (hub id, local path or `tiny:<name>`).
    checkpoint: optional; overrides `checkpoints[backend]`.
    max_new_tokens: BLIP's answer length limit, in tokens.
"""
from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

from visprog.models import ModelTool, hf_loader, model_inputs, pick_checkpoint, tiny_bert_tokenizer

from .loc import as_image

TINY_WORDS = ["what", "color", "is", "the", "how", "many", "are", "there", "a", "an", "of",
              "red", "blue", "green", "yes", "no", "one", "two", "dog", "dogs", "cat", "car",
              "left", "right", "?"]
TINY_ANSWERS = ["yes", "no", "red", "blue", "1", "2", "dog", "cat"]


def clean_answer(text: str) -> str:
    """'  Two Dogs. ' -> 'two dogs'."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


# -- BLIP ------------------------------------------------------------------------------------

load_blip = hf_loader("BlipForQuestionAnswering", "BlipProcessor")


def blip_answers(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                 questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """One batched BLIP generate: an answer per (image, question)."""
    model, processor = bundle
    inputs = processor(images=list(images), text=list(questions), return_tensors="pt",
                       padding=True)
    ids = model.generate(**model_inputs(inputs, model), max_new_tokens=max_new_tokens)
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

load_vilt = hf_loader("ViltForQuestionAnswering", "ViltProcessor")


def vilt_answers(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                 questions: Sequence[str]) -> list[str]:
    """One batched ViLT forward: the best answer of its vocabulary per (image, question)."""
    model, processor = bundle
    inputs = processor(images=list(images), text=list(questions), return_tensors="pt",
                       padding=True, truncation=True,
                       max_length=model.config.max_position_embeddings)
    logits = model(**model_inputs(inputs, model)).logits
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


# -- the tool --------------------------------------------------------------------------------

class Vqa(ModelTool):
    name = "Vqa"
    params = {"image": "Image", "question": "Text"}
    returns = "Text"
    doc = "answers a question about the image in a word or two (lower case)"
    backends = ("blip", "vilt")
    presets = {
        "default": {"backend": "blip", "max_new_tokens": 10,
                    "checkpoints": {"blip": "Salesforce/blip-vqa-capfilt-large",
                                    "vilt": "dandelin/vilt-b32-finetuned-vqa"}},
        "classic": {"backend": "blip"},  # the preset of today's defaults keeps BLIP
        "tiny": {"max_new_tokens": 5,
                 "checkpoints": {"blip": "tiny:blip_vqa", "vilt": "tiny:vilt"}},
    }
    tiny_checkpoints = {"blip_vqa": build_tiny_blip, "vilt": build_tiny_vilt}

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {"backend": s["backend"], "checkpoint": pick_checkpoint(s),
                "max_new_tokens": int(s["max_new_tokens"])}

    def preprocess(self, call: dict[str, Any]) -> tuple[Image.Image, str]:
        image, question = as_image(call["image"]), str(call["question"]).strip()
        if not question:
            raise ValueError("Vqa needs a question, got an empty string")
        return image, question

    def forward(self, items: list[tuple[Image.Image, str]]) -> list[str]:
        s = self.settings
        images, questions = [im for im, _ in items], [q for _, q in items]
        if s["backend"] == "blip":
            return blip_answers(self.model("blip_vqa", s["checkpoint"], load_blip), images,
                                questions, s["max_new_tokens"])
        return vilt_answers(self.model("vilt", s["checkpoint"], load_vilt), images, questions)

    def postprocess(self, item: Any, answer: str) -> str:
        return clean_answer(answer)


TOOLS = [Vqa]
build = Vqa.build
