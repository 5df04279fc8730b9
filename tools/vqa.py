"""Vqa(image, question) -> Text: a short answer to a question about the image.

Backends:
- "vlm" (default): a vision-language chat model from transformers through its chat template
  (Qwen3-VL by default; Qwen2.5-VL, Qwen3.5, SmolVLM and others by `checkpoints.vlm`), a batch of
  calls as one left-padded greedy `generate`, with a short-answer instruction.
- "endpoint": any OpenAI-compatible chat-completions server that takes images (vLLM or
  Ollama serving a VLM, a hosted model); parallel requests stand in for batching.
- "blip" (the `classic` preset; generates the answer) and "vilt" (picks one of its fixed
  answer vocabulary).

Answers are lower-cased, stripped, inner whitespace collapsed and a trailing full stop
dropped, so Eval can compare them ('yes' / 'no' / '2'). A chat model's answer is also cut to
its first sentence and at most `max_answer_words` words ("Yes, there is a dog." -> "yes").

Settings (section `[Vqa]`; defaults and the other presets in `Vqa.presets`):
    backend: "vlm", "endpoint", "blip" or "vilt".
    checkpoints: backend -> checkpoint (hub id, local path or `tiny:<name>`).
    checkpoint: optional; overrides `checkpoints[backend]`.
    max_new_tokens: the answer length limit, in tokens.
    instruction: appended to each question for the chat backends.
    max_pixels: images are scaled down (aspect kept) to at most this many pixels before a
        chat model's processor sees them, which bounds its image tokens (Qwen3-VL: one token
        per 32x32 pixels).
    max_answer_words: a chat answer is cut to this many words.
    min_pixels: images are scaled up (aspect kept) to at least this many pixels before a chat
        model sees them; 0 (the default): as they are. Qwen3-VL's processor scales small
        images (a zoomed-in crop) up to 65536 pixels itself; Qwen2.5-VL's only to 3136 and a
        served model's as its server does, so `min_pixels = 65536` gives those the detail.
    endpoint: the "endpoint" backend's server: model, base_url, api_key (else the
        environment, see visprog.models.remote), timeout, max_retries, concurrency.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from PIL import Image

from visprog.models import (Backend, ModelTool, SettingsError, bound_pixels, hf_loader,
                            model_images, model_inputs, pick_checkpoint, rgb_image,
                            tiny_bert_tokenizer)
from visprog.models.vlm import VLM_KIND, load_vlm, template_kwargs

from . import _vlm

TINY_WORDS = ["what", "color", "is", "the", "how", "many", "are", "there", "a", "an", "of",
              "red", "blue", "green", "yes", "no", "one", "two", "dog", "dogs", "cat", "car",
              "left", "right", "?"]
TINY_ANSWERS = ["yes", "no", "red", "blue", "1", "2", "dog", "cat"]


def clean_answer(text: str) -> str:
    """'  Two Dogs. ' -> 'two dogs'."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


# Openings a chat model may put before its answer, dropped: "the answer is two" -> "two".
_LEAD = re.compile(r"^(?:(?:the )?answer(?: is)?\s*[:\-]?|it is|it's|there (?:is|are)|"
                   r"i see|i think)\s+")
_SENTENCE_END = re.compile(r"[.!?;\n]\s|[.!?;\n]$|\n")


def short_answer(text: str, max_words: int = 3) -> str:
    """A chat model's reply as a short answer: its first sentence, without a leading
    "the answer is"/"there are", "yes"/"no" alone when it starts with one, at most
    `max_words` words, then `clean_answer`. Never empty unless the reply is.

    >>> short_answer("Yes, there is a red dog on the left.")
    'yes'
    >>> short_answer("There are 2 dogs.")
    '2 dogs'
    """
    text = str(text).strip().strip("\"'`*").strip()
    cut = _SENTENCE_END.search(text)
    first = text[:cut.start()] if cut and cut.start() > 0 else text
    first = " ".join(first.lower().split())
    first = _LEAD.sub("", first, count=1) or first
    head = re.match(r"(yes|no)\b[,!.]?", first)
    if head and len(first) > len(head.group(1)):
        first = head.group(1)
    words = first.split()[:max(1, int(max_words))]
    return clean_answer(" ".join(words).strip(",:;\"'`*"))


# -- chat VLMs (transformers) ----------------------------------------------------------------

def vlm_prompt(question: str, instruction: str) -> str:
    return f"{question}\n{instruction}".strip() if instruction else question


def vlm_inputs(bundle: tuple[Any, Any], images: Sequence[Image.Image],
               questions: Sequence[str], instruction: str) -> Any:
    """The processor's batch for (image, question) pairs through the chat template, left
    padded, on the model's device and dtype."""
    model, processor = bundle
    chats = [[{"role": "user", "content": [{"type": "image", "image": im},
                                           {"type": "text", "text": vlm_prompt(q, instruction)}]}]
             for im, q in zip(images, questions)]
    inputs = processor.apply_chat_template(chats, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt",
                                           processor_kwargs={"padding": True},
                                           **template_kwargs(processor.chat_template))
    return model_inputs(inputs, model)


def vlm_answers(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                questions: Sequence[str], instruction: str, max_new_tokens: int) -> list[str]:
    """One batched greedy generate: the decoded reply per (image, question)."""
    model, processor = bundle
    # thin strips (a CropLeftOf at the edge) padded: the VLM processor refuses extreme ratios
    inputs = vlm_inputs(bundle, model_images(images), questions, instruction)
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# -- BLIP ------------------------------------------------------------------------------------

load_blip = hf_loader("BlipForQuestionAnswering", "BlipProcessor")


def blip_answers(bundle: tuple[Any, Any], images: Sequence[Image.Image],
                 questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """One batched BLIP generate: an answer per (image, question)."""
    model, processor = bundle
    inputs = processor(images=model_images(images), text=list(questions), return_tensors="pt",
                       padding=True)
    ids = model.generate(**model_inputs(inputs, model), max_new_tokens=max_new_tokens)
    return processor.batch_decode(ids, skip_special_tokens=True)


def build_tiny_blip(folder) -> None:
    """A BLIP VQA of about 0.2M random parameters with Salesforce/blip-vqa-capfilt-large's
    inputs: preprocessor_config.json (384x384, bicubic, OpenAI mean/std: BlipImageProcessor's
    defaults), config.json (vision image_size 384, patch_size 16; text
    max_position_embeddings 512) and tokenizer_config.json (BERT uncased, model_max_length
    512, padding on the right)."""
    import torch
    from transformers import (BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil,
                              BlipProcessor, BlipTextConfig, BlipVisionConfig)

    torch.manual_seed(0)
    tok = tiny_bert_tokenizer(TINY_WORDS, extra_special=["[DEC]"])
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder starts with [DEC]
    tok.model_max_length, tok.padding_side = 512, "right"
    vocab = tok.get_vocab()
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tok)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=384, patch_size=16)
    text = BlipTextConfig(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32,
                          intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          max_position_embeddings=512, pad_token_id=vocab["[PAD]"],
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
    inputs = processor(images=model_images(images), text=list(questions), return_tensors="pt",
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


# -- the backends ----------------------------------------------------------------------------

def unzip(items: list[tuple[Image.Image, str]]) -> tuple[list[Image.Image], list[str]]:
    return [im for im, _ in items], [q for _, q in items]


class Blip(Backend):
    """BLIP (the `classic` preset): generates the answer."""

    chat = False  # a chat model's images are bounded to max_pixels, its answers shortened

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        # the keys (and cache keys) of before the chat models
        return {"backend": s["backend"], "checkpoint": pick_checkpoint(s),
                "max_new_tokens": int(s["max_new_tokens"])}

    def forward(self, tool: ModelTool, items: list[tuple[Image.Image, str]]) -> list[str]:
        s = self.settings
        return blip_answers(tool.model("blip_vqa", s["checkpoint"], load_blip), *unzip(items),
                            s["max_new_tokens"])


class Vilt(Blip):
    """ViLT: picks one answer of its fixed vocabulary."""

    def forward(self, tool: ModelTool, items: list[tuple[Image.Image, str]]) -> list[str]:
        return vilt_answers(tool.model("vilt", self.settings["checkpoint"], load_vilt),
                            *unzip(items))


class ChatVlm(Backend):
    """A vision-language chat model from transformers (the default), through its chat
    template: a batch is one left-padded greedy `generate`."""

    chat = True

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {**self.chat_settings(s), "checkpoint": pick_checkpoint(s)}

    @staticmethod
    def chat_settings(s: dict[str, Any]) -> dict[str, Any]:
        return {"backend": s["backend"], "max_new_tokens": int(s["max_new_tokens"]),
                "instruction": str(s.get("instruction") or ""),
                "max_pixels": int(s["max_pixels"]),
                "max_answer_words": max(1, int(s["max_answer_words"])),
                # only when set: 0 changes nothing, and the cache keys stay what they were
                **({"min_pixels": int(s["min_pixels"])} if s.get("min_pixels") else {})}

    def forward(self, tool: ModelTool, items: list[tuple[Image.Image, str]]) -> list[str]:
        s = self.settings
        return vlm_answers(tool.model(VLM_KIND, s["checkpoint"], load_vlm), *unzip(items),
                           s["instruction"], s["max_new_tokens"])


class Endpoint(ChatVlm):
    """An OpenAI-compatible server that takes images; parallel requests stand in for a
    batch. What answers (model, server) is in the cache key; the key, the timeouts and the
    concurrency are not."""

    uses_torch = False

    def __init__(self, s: dict[str, Any]):
        self.client = endpoint_client(s, "Vqa")
        super().__init__(s)

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {**self.chat_settings(s), "model": self.client.model, "base_url": self.client.where}

    def forward(self, tool: ModelTool, items: list[tuple[Image.Image, str]]) -> list[str]:
        s = self.settings
        return self.client.ask_many([(im, vlm_prompt(q, s["instruction"])) for im, q in items],
                                    max_tokens=s["max_new_tokens"])


def endpoint_client(s: Mapping[str, Any], module: str) -> Any:
    """The `VisionEndpoint` of a module's `endpoint` table (model, base_url, api_key,
    timeout, max_retries, backoff, max_backoff, concurrency, image_format).

    Raises:
        SettingsError: no model or key, a bad value, or the `openai` package is missing.
    """
    from visprog.models.remote import RemoteModelError, VisionEndpoint

    ep = dict(s.get("endpoint") or {})
    try:
        return VisionEndpoint(
            ep.get("model") or None, ep.get("base_url") or None, ep.get("api_key") or None,
            timeout=float(ep.get("timeout", 60.0)), max_retries=int(ep.get("max_retries", 3)),
            backoff=float(ep.get("backoff", 0.5)), max_backoff=float(ep.get("max_backoff", 8.0)),
            concurrency=int(ep.get("concurrency", 8)),
            image_format=str(ep.get("image_format", "png")), section=f"{module}.endpoint")
    except (RemoteModelError, TypeError, ValueError) as e:
        raise SettingsError(f"{module}: {e}") from e


# -- the tool --------------------------------------------------------------------------------

INSTRUCTION = "Reply with only the answer: one or two words, or a number."


class Vqa(ModelTool):
    name = "Vqa"
    tasks = ("gqa", "nlvr", "video")  # the planner's prompts that describe it
    params = {"image": "Image", "question": "Text"}
    returns = "Text"
    doc = "answers a question about the image in a word or two (lower case)"
    backends = {"vlm": ChatVlm, "endpoint": Endpoint, "blip": Blip, "vilt": Vilt}
    presets = {
        "default": {"backend": "vlm", "max_new_tokens": 10, "instruction": INSTRUCTION,
                    "max_pixels": 1024 * 1024, "max_answer_words": 3,
                    "checkpoints": {"vlm": "Qwen/Qwen3-VL-2B-Instruct",
                                    "blip": "Salesforce/blip-vqa-capfilt-large",
                                    "vilt": "dandelin/vilt-b32-finetuned-vqa"},
                    "endpoint": {"model": "", "base_url": "", "api_key": "", "timeout": 60.0,
                                 "max_retries": 3, "concurrency": 8}},
        # today's defaults, unchanged (the VisProg paper's BLIP)
        "classic": {"backend": "blip"},
        "tiny": {"max_new_tokens": 5,
                 "checkpoints": {"vlm": "tiny:qwen3_vl", "blip": "tiny:blip_vqa",
                                 "vilt": "tiny:vilt"}},
    }
    tiny_checkpoints = {"blip_vqa": (build_tiny_blip, "2"), "vilt": build_tiny_vilt,
                        "qwen3_vl": (_vlm.build_tiny_qwen3_vl, "2"),
                        "qwen2_5_vl": _vlm.build_tiny_qwen2_5_vl,
                        "qwen3_5": _vlm.build_tiny_qwen3_5,
                        "smolvlm": _vlm.build_tiny_smolvlm}

    def preprocess(self, call: dict[str, Any]) -> tuple[Image.Image, str]:
        image, question = rgb_image(call["image"]), str(call["question"]).strip()
        if not question:
            raise ValueError("Vqa needs a question, got an empty string")
        if self.backend.chat:
            image = bound_pixels(image, self.settings["max_pixels"],
                                 self.settings.get("min_pixels", 0))
        return image, question

    def postprocess(self, item: Any, answer: str) -> str:
        if self.backend.chat:
            return short_answer(answer, self.settings["max_answer_words"])
        return clean_answer(answer)


TOOLS = [Vqa]
