"""VideoQa(video, question) -> Text: a short answer to a question about a video, from a few of
its frames shown to a vision-language chat model at once, each introduced by its time ("at
1.5 s:"), as video question answering with image chat models does (VideoAgent and others
look at about 8 frames a question).

The frames are `frames` spread evenly over the clip (`Frames`: the frame on screen at the
middle of each n-th), each scaled down to at most `max_pixels` pixels so that several fit
in the model's context. Backends (the `backend` setting):
- "vlm" (default): Vqa's chat VLM from transformers (the same checkpoint loads once for Vqa,
  VideoQa and the local planner);
- "endpoint": an OpenAI-compatible server whose model takes several images (vLLM serving
  Qwen3-VL...), sent the same turn: each frame as an image part after its time. Its table
  `[VideoQa.endpoint]` is Vqa's (model, base_url, api_key, timeout, max_retries, concurrency,
  image_format; the VISPROG_VQA_* variables fill what it leaves empty).
BLIP and ViLT take one image and are not offered here. To ask about one moment,
`Vqa(image=FrameAt(video=..., time=...))`.

Settings (section `[VideoQa]`; defaults and the tiny preset in `VideoQa.presets` below):
    backend: "vlm" or "endpoint".
    checkpoint: the "vlm" backend's chat VLM (hub id, local path or `tiny:<name>`).
    frames: how many frames the model sees.
    max_pixels: each frame scaled down (aspect kept) to at most this many pixels.
    max_new_tokens, instruction, max_answer_words: as Vqa's.
"""
from __future__ import annotations

from typing import Any

from PIL import Image

from visprog.models import Backend, ModelTool, SettingsError, model_inputs
from visprog.models.vlm import VLM_KIND, load_vlm
from visprog.values import Video

from .vqa import INSTRUCTION, bound_pixels, endpoint_client, short_answer


def video_chat(frames: list[Image.Image], times: list[float], question: str,
               instruction: str) -> list[dict[str, Any]]:
    """One user turn: each frame after its time, then the question and the instruction."""
    content: list[dict[str, Any]] = []
    for im, t in zip(frames, times):
        when = f"{t:.2f}".rstrip("0").rstrip(".")
        content += [{"type": "text", "text": f"at {when} s:"}, {"type": "image", "image": im}]
    text = f"{question}\n{instruction}".strip() if instruction else question
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


def turn_parts(chat: list[dict[str, Any]]) -> list[Image.Image | str]:
    """The user turn of `video_chat` as a server's parts: its images and texts in order."""
    return [p["image"] if p["type"] == "image" else p["text"] for p in chat[0]["content"]]


class LocalVlm(Backend):
    """The chat VLM from transformers: a batch of clips is one left-padded greedy
    `generate`."""

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {**self.common(s), "checkpoint": str(s["checkpoint"])}

    @staticmethod
    def common(s: dict[str, Any]) -> dict[str, Any]:
        frames = s["frames"]
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise SettingsError(f"VideoQa: frames must be a whole number of at least 1, got "
                                f"{frames!r}")
        return {"backend": s["backend"], "frames": frames, "max_pixels": int(s["max_pixels"]),
                "max_new_tokens": int(s["max_new_tokens"]),
                "instruction": str(s.get("instruction") or ""),
                "max_answer_words": max(1, int(s["max_answer_words"]))}

    def forward(self, tool: ModelTool, items: list[list[dict[str, Any]]]) -> list[str]:
        model, processor = tool.model(VLM_KIND, self.settings["checkpoint"], load_vlm)
        inputs = processor.apply_chat_template(items, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt",
                                               processor_kwargs={"padding": True})
        inputs = model_inputs(inputs, model)
        ids = model.generate(**inputs, max_new_tokens=self.settings["max_new_tokens"],
                             do_sample=False)
        return processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True)


class FramesEndpoint(Backend):
    """An OpenAI-compatible server: one request a clip (parallel requests stand in for a
    batch). What answers (model, server) is in the cache key; the key and timeouts are not."""

    uses_torch = False

    def __init__(self, s: dict[str, Any]):
        self.client = endpoint_client(s, "VideoQa")
        super().__init__(s)

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        return {**LocalVlm.common(s), "model": self.client.model, "base_url": self.client.where}

    def forward(self, tool: ModelTool, items: list[list[dict[str, Any]]]) -> list[str]:
        return self.client.ask_many([turn_parts(chat) for chat in items],
                                    max_tokens=self.settings["max_new_tokens"])


class VideoQa(ModelTool):
    name = "VideoQa"
    tasks = ("video",)  # the planner's prompts that describe it
    params = {"video": "Video", "question": "Text"}
    returns = "Text"
    doc = "answers a question about the video in a word or two, from a few of its frames"
    draw_on = None
    backends = {"vlm": LocalVlm, "endpoint": FramesEndpoint}
    presets = {
        "default": {"backend": "vlm", "checkpoint": "Qwen/Qwen3-VL-2B-Instruct", "frames": 8,
                    "max_pixels": 448 * 448, "max_new_tokens": 10,
                    "instruction": INSTRUCTION, "max_answer_words": 3,
                    "endpoint": {"model": "", "base_url": "", "api_key": "", "timeout": 60.0,
                                 "max_retries": 3, "concurrency": 8}},
        "tiny": {"checkpoint": "tiny:qwen3_vl", "frames": 4, "max_new_tokens": 5},
    }

    def preprocess(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        video, question = call["video"], str(call["question"]).strip()
        if not isinstance(video, Video):
            raise TypeError(f"VideoQa: video must be a Video, got {type(video).__name__}")
        if not question:
            raise ValueError("VideoQa needs a question, got an empty string")
        seen = video.evenly(self.settings["frames"])
        frames = [bound_pixels(f, self.settings["max_pixels"]) for f in seen.frames]
        return video_chat(frames, seen.times.tolist(), question, self.settings["instruction"])

    def postprocess(self, item: Any, answer: str) -> str:
        return short_answer(answer, self.settings["max_answer_words"])


TOOLS = [VideoQa]
