"""VideoQa(video, question) -> Text: a short answer to a question about a video, from a few of
its frames shown to a vision-language chat model at once, each introduced by its time ("at
1.5 s:"), as video question answering with image chat models does (VideoAgent and others
look at about 8 frames a question).

The frames are `frames` spread evenly over the clip (`Frames`: the frame on screen at the
middle of each n-th), each scaled down to at most `max_pixels` pixels so that several fit
in the model's context. The model is Vqa's chat VLM (the same checkpoint loads once for Vqa,
VideoQa and the local planner); Vqa's other backends (a server, BLIP, ViLT) take one image
and are not offered here. To ask about one moment, `Vqa(image=FrameAt(video=..., time=...))`.

Settings (section `[VideoQa]`; defaults and the tiny preset in `VideoQa.presets` below):
    checkpoint: a chat VLM (hub id, local path or `tiny:<name>`).
    frames: how many frames the model sees.
    max_pixels: each frame scaled down (aspect kept) to at most this many pixels.
    max_new_tokens, instruction, max_answer_words: as Vqa's.
"""
from __future__ import annotations

from typing import Any

from PIL import Image

from visprog.models import ModelTool, SettingsError, model_inputs
from visprog.models.vlm import VLM_KIND, load_vlm
from visprog.values import Video

from .vqa import INSTRUCTION, bound_pixels, short_answer


def video_chat(frames: list[Image.Image], times: list[float], question: str,
               instruction: str) -> list[dict[str, Any]]:
    """One user turn: each frame after its time, then the question and the instruction."""
    content: list[dict[str, Any]] = []
    for im, t in zip(frames, times):
        when = f"{t:.2f}".rstrip("0").rstrip(".")
        content += [{"type": "text", "text": f"at {when} s:"}, {"type": "image", "image": im}]
    text = f"{question}\n{instruction}".strip() if instruction else question
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


class VideoQa(ModelTool):
    name = "VideoQa"
    tasks = ("video",)  # the planner's prompts that describe it
    params = {"video": "Video", "question": "Text"}
    returns = "Text"
    doc = "answers a question about the video in a word or two, from a few of its frames"
    draw_on = None
    presets = {
        "default": {"checkpoint": "Qwen/Qwen3-VL-2B-Instruct", "frames": 8,
                    "max_pixels": 448 * 448, "max_new_tokens": 10,
                    "instruction": INSTRUCTION, "max_answer_words": 3},
        "tiny": {"checkpoint": "tiny:qwen3_vl", "frames": 4, "max_new_tokens": 5},
    }

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        frames = s["frames"]
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise SettingsError(f"VideoQa: frames must be a whole number of at least 1, got "
                             f"{frames!r}")
        return {"checkpoint": str(s["checkpoint"]), "frames": frames,
                "max_pixels": int(s["max_pixels"]), "max_new_tokens": int(s["max_new_tokens"]),
                "instruction": str(s.get("instruction") or ""),
                "max_answer_words": max(1, int(s["max_answer_words"]))}

    def preprocess(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        video, question = call["video"], str(call["question"]).strip()
        if not isinstance(video, Video):
            raise TypeError(f"VideoQa: video must be a Video, got {type(video).__name__}")
        if not question:
            raise ValueError("VideoQa needs a question, got an empty string")
        seen = video.evenly(self.settings["frames"])
        frames = [bound_pixels(f, self.settings["max_pixels"]) for f in seen.frames]
        return video_chat(frames, seen.times.tolist(), question, self.settings["instruction"])

    def forward(self, items: list[list[dict[str, Any]]]) -> list[str]:
        model, processor = self.model(VLM_KIND, self.settings["checkpoint"], load_vlm)
        inputs = processor.apply_chat_template(items, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt",
                                               processor_kwargs={"padding": True})
        inputs = model_inputs(inputs, model)
        ids = model.generate(**inputs, max_new_tokens=self.settings["max_new_tokens"],
                             do_sample=False)
        return processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True)

    def postprocess(self, item: Any, answer: str) -> str:
        return short_answer(answer, self.settings["max_answer_words"])


TOOLS = [VideoQa]
