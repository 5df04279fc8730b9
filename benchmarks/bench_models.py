"""Load time, per-call latency and peak memory of the model modules, full-size architectures.

The models are the real architectures built from their default configurations (the sizes of
the default checkpoints) with RANDOM weights, so nothing is downloaded: the timings are real,
the answers meaningless. Each module's checkpoint is saved with `save_pretrained` into a
temporary folder, then loaded and called through the module's own tool (the same loader and
`ModelManager` as real checkpoints) in a fresh process, so its memory is measured alone.

    python benchmarks/bench_models.py                      # every module, CPU (+ CUDA fp16 if any)
    python benchmarks/bench_models.py --device cpu --modules Loc,Vqa --calls 3

Figures per module and device: load seconds (from_pretrained + move to device), the first
call, the median of `--calls` further calls, optionally the per-item time of one batched call
of `--batch` items, parameter bytes, the peak resident memory above the process's size before
loading (VmHWM - VmRSS from /proc/self/status; torch's CPU tensors count in it), and on CUDA
the peak allocated GPU memory.

Adding a module: write `save(folder)` (random full-size checkpoint(s) with save_pretrained),
`tool(folder, ctx)` (the module's Tool, settings pointing into folder) and `kwargs()` (one
typical call) and add `Bench(...)` to BENCHES under the module's name.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BENCH_WORDS = ["a", "photo", "of", "the", "dog", "cat", "person", "car", "red", "what", "color",
               "is", "how", "many", "are", "there", "?", "man", "woman"]


@dataclass
class Bench:
    """How to benchmark one model module (see the module docstring)."""

    save: Callable[[Path], None]
    tool: Callable[[Path, Any], Any]
    kwargs: Callable[[], dict[str, Any]]
    note: str = ""


def sample_image(size=(640, 480)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def candidates(size=(640, 480), n=4):
    from visprog.values import Objects

    w, h = size
    return Objects.from_boxes([(i * w / n, h / 4, (i + 1) * w / n, 3 * h / 4) for i in range(n)],
                              size, labels=["dog"] * n, scores=[0.9] * n)


def _save(folder: Path, model: Any, processor: Any) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


# -- full-size random checkpoints ------------------------------------------------------------

def save_grounding_dino(folder: Path) -> None:
    """grounding-dino-tiny's architecture: Swin-T + BERT-base, 900 queries, 800 px."""
    from transformers import (GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor)

    from visprog.tools.models import tiny_bert_tokenizer

    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(),
                                  tokenizer=tiny_bert_tokenizer(BENCH_WORDS))
    _save(folder, GroundingDinoForObjectDetection(GroundingDinoConfig()), proc)


def save_owlv2(folder: Path) -> None:
    """owlv2-base-patch16-ensemble's architecture: ViT-B/16 at 960 px."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    from visprog.tools.models import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(BENCH_WORDS)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Owlv2Config(text_config={"eos_token_id": eot, "pad_token_id": eot,
                                   "bos_token_id": tok.convert_tokens_to_ids("<|startoftext|>")},
                      vision_config={"image_size": 960})
    proc = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 960, "width": 960}),
                          tokenizer=tok)
    _save(folder, Owlv2ForObjectDetection(cfg), proc)


def save_sam(folder: Path) -> None:
    """sam-vit-base's architecture: ViT-B at 1024 px."""
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    _save(folder, SamModel(SamConfig()), SamProcessor(image_processor=SamImageProcessorPil()))


def save_clip(folder: Path) -> None:
    """clip-vit-base-patch32's architecture."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from visprog.tools.models import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(BENCH_WORDS)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = CLIPConfig(text_config={"eos_token_id": eot, "pad_token_id": eot,
                                  "bos_token_id": tok.convert_tokens_to_ids("<|startoftext|>")})
    _save(folder, CLIPModel(cfg), CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok))


def _save_blip(folder: Path, large: bool) -> None:
    from transformers import (BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil,
                              BlipProcessor, BlipTextConfig, BlipVisionConfig)

    from visprog.tools.models import tiny_bert_tokenizer

    tok = tiny_bert_tokenizer(BENCH_WORDS, extra_special=["[DEC]"])
    tok.add_special_tokens({"bos_token": "[DEC]"})
    v = tok.get_vocab()
    vision = (BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                               num_attention_heads=16) if large else BlipVisionConfig())
    text = BlipTextConfig(encoder_hidden_size=vision.hidden_size, pad_token_id=v["[PAD]"],
                          bos_token_id=v["[DEC]"], sep_token_id=v["[SEP]"], eos_token_id=v["[SEP]"])
    cfg = BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict())
    _save(folder, BlipForQuestionAnswering(cfg),
          BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tok))


def save_blip_large(folder: Path) -> None:
    """blip-vqa-capfilt-large's architecture: ViT-L/16 at 384 px + BERT-base."""
    _save_blip(folder, large=True)


def save_blip_base(folder: Path) -> None:
    """blip-vqa-base's architecture: ViT-B/16 at 384 px + BERT-base."""
    _save_blip(folder, large=False)


def save_vilt(folder: Path) -> None:
    """vilt-b32-finetuned-vqa's architecture: ViT-B/32, 3129 answers."""
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil, ViltProcessor

    from visprog.tools.models import tiny_bert_tokenizer

    answers = {i: f"answer{i}" for i in range(3129)}
    cfg = ViltConfig(num_labels=3129, id2label=answers, label2id={a: i for i, a in answers.items()})
    _save(folder, ViltForQuestionAnswering(cfg),
          ViltProcessor(image_processor=ViltImageProcessorPil(), tokenizer=tiny_bert_tokenizer(BENCH_WORDS)))


def save_grounding_dino_and_sam(folder: Path) -> None:
    save_grounding_dino(folder / "gd")
    save_sam(folder / "sam")


# -- the benchmarks --------------------------------------------------------------------------

def _loc(backend: str):
    def tool(folder: Path, ctx: Any):
        from visprog.tools import loc

        return loc.build({"backend": backend, "checkpoint": str(folder)}, ctx)
    return tool


def _select(folder: Path, ctx: Any):
    from visprog.tools import select_objects

    return select_objects.build({"checkpoints": {"grounding_dino": str(folder / "gd"),
                                                 "sam": str(folder / "sam")}}, ctx)


def _classify(folder: Path, ctx: Any):
    from visprog.tools import classify

    return classify.build({"checkpoint": str(folder)}, ctx)


def _vqa(backend: str):
    def tool(folder: Path, ctx: Any):
        from visprog.tools import vqa

        return vqa.build({"backend": backend, "checkpoint": str(folder)}, ctx)
    return tool


BENCHES: dict[str, Bench] = {
    "Loc": Bench(save_grounding_dino, _loc("grounding_dino"),
                 lambda: {"image": sample_image(), "object": "dog"}, "GroundingDINO-T, 640x480"),
    "Loc[owlv2]": Bench(save_owlv2, _loc("owlv2"),
                        lambda: {"image": sample_image(), "object": "dog"}, "OWLv2 B/16 960px"),
    "Select": Bench(save_grounding_dino_and_sam, _select,
                    lambda: {"image": sample_image(), "object": candidates(), "query": "dog,cat"},
                    "GroundingDINO-T + SAM ViT-B, 4 candidates, 2 queries"),
    "Classify": Bench(save_clip, _classify,
                      lambda: {"image": sample_image(), "object": candidates(n=8),
                               "categories": ["dog", "cat", "person", "car"]},
                      "CLIP B/32, 8 crops x 4 categories"),
    "Vqa": Bench(save_blip_large, _vqa("blip"),
                 lambda: {"image": sample_image(), "question": "what color is the car?"},
                 "BLIP ViT-L (capfilt-large)"),
    "Vqa[blip-base]": Bench(save_blip_base, _vqa("blip"),
                            lambda: {"image": sample_image(), "question": "what color is the car?"},
                            "BLIP ViT-B"),
    "Vqa[vilt]": Bench(save_vilt, _vqa("vilt"),
                       lambda: {"image": sample_image(), "question": "what color is the car?"},
                       "ViLT B/32"),
}


# -- measuring (in a child process per module and device) -----------------------------------

def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(name: str, folder: Path, device: str, calls: int, batch: int) -> dict[str, Any]:
    """Load and call one module's tool; returns the figures."""
    import torch

    from visprog.tools import ToolContext
    from visprog.tools.models import ModelManager

    bench = BENCHES[name]
    mm = ModelManager(device=device)
    tool = bench.tool(folder, ToolContext(models=mm))
    kwargs = bench.kwargs()
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = _proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    tool(**kwargs)
    sync()
    first = time.perf_counter() - t0
    loaded = mm.loaded()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        tool(**kwargs)
        sync()
        times.append(time.perf_counter() - t0)
    per_item = None
    if batch > 1:
        t0 = time.perf_counter()
        tool.batch_fn([bench.kwargs() for _ in range(batch)])
        sync()
        per_item = (time.perf_counter() - t0) / batch
    return {
        "module": name, "device": device, "dtype": loaded[0]["dtype"] if loaded else "-",
        "note": bench.note,
        "load_s": sum(m["load_seconds"] for m in loaded),
        "first_call_s": first, "median_call_s": statistics.median(times) if times else first,
        "batch_per_item_s": per_item, "batch": batch,
        "param_mb": sum(m["bytes"] for m in loaded) / 2**20,
        "peak_rss_delta_mb": (_proc_status_kb("VmHWM") - rss0) / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def _child(args: list[str], timeout: float) -> str:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed")
    return res.stdout.strip().splitlines()[-1]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["module", "device", "dtype", "params MB", "load s", "1st call s", "median s",
            "batch/item s", "peak RSS +MB", "peak GPU MB"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["module"], r["device"], "ERROR: " + r["error"][:60]] + [""] * 7)
            continue
        lines.append([r["module"], r["device"], r["dtype"].replace("torch.", ""),
                      _fmt(r["param_mb"], ".0f"), _fmt(r["load_s"], ".2f"),
                      _fmt(r["first_call_s"], ".3f"), _fmt(r["median_call_s"], ".3f"),
                      _fmt(r["batch_per_item_s"], ".3f"), _fmt(r["peak_rss_delta_mb"], ".0f"),
                      _fmt(r["peak_gpu_mb"], ".0f")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for k, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        if r.get("note"):
            print(f"  {r['module']} ({r['device']}): {r['note']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all",
                   help="cpu, cuda, mps, or 'all' (cpu, plus cuda in fp16 when available)")
    p.add_argument("--modules", default=",".join(BENCHES),
                   help=f"comma-separated, from: {', '.join(BENCHES)}")
    p.add_argument("--calls", type=int, default=3, help="timed calls after the first (median)")
    p.add_argument("--batch", type=int, default=0, help="also time one batched call of N items")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--workdir", help="keep the saved random checkpoints here (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    p.add_argument("--_save", help=argparse.SUPPRESS)
    p.add_argument("--_measure", help=argparse.SUPPRESS)
    p.add_argument("--_folder", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a._save:
        BENCHES[a._save].save(Path(a._folder))
        print("saved")
        return 0
    if a._measure:
        print(json.dumps(measure(a._measure, Path(a._folder), a.device, a.calls, a.batch)))
        return 0

    names = [n.strip() for n in a.modules.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown modules {unknown}; choose from {', '.join(BENCHES)}")
    if a.device == "all":
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [a.device]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="visprog-bench-") as tmp:
        root = Path(a.workdir or tmp)
        for name in names:
            folder = root / name.replace("[", "_").replace("]", "")
            try:
                if not (folder / "saved.ok").exists():
                    t0 = time.perf_counter()
                    _child(["--_save", name, "--_folder", str(folder)], a.timeout)
                    (folder / "saved.ok").write_text(f"{time.perf_counter() - t0:.1f}")
            except Exception as e:  # report and go on with the other modules
                rows += [{"module": name, "device": d, "error": f"save: {e}"} for d in devices]
                continue
            for d in devices:
                try:
                    out = _child(["--_measure", name, "--_folder", str(folder), "--device", d,
                                  "--calls", str(a.calls), "--batch", str(a.batch)], a.timeout)
                    rows.append(json.loads(out))
                except Exception as e:
                    rows.append({"module": name, "device": d, "error": str(e)})
                print(f"done {name} on {d}", file=sys.stderr, flush=True)
    print_table(rows)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
