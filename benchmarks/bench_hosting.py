"""The cost of hosting: 64 GQA-style programs in-process versus through Ray Serve.

Loc and Vqa (the model modules of the programs) run either in this process or on Ray Serve
deployments of a local Ray instance that this script starts (one replica each). The same
programs run two ways each:

- sequential: `VisProg.execute`, one program after another (each model step is one request);
- batched: `VisProg.run_batch` (steps of many programs sent together; through Ray Serve each
  call is a request and the replica's `@serve.batch` coalesces them again).

Everything runs once untimed first (models loaded, replicas warm), then `--reps` timed runs;
the step cache is off. The values of the two hosts are checked to be identical. Printed:
programs/s for each mode and host, the overhead of hosting per program and per model request,
and the replicas' batch counts.

    python benchmarks/bench_hosting.py                              # tiny preset, CPU
    python benchmarks/bench_hosting.py --full --device cuda         # full-size BLIP VQA and
                                                                    # GroundingDINO-tiny, fp16

`--full` uses the full-size architectures built from default configs with random weights
(the builder and Loc threshold calibration of benchmarks/bench_batch.py; nothing is
downloaded); on CUDA each replica gets `--gpu-fraction` of the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import TEMPLATES as BATCH_TEMPLATES, make_images  # noqa: E402  (same scenes)

# bench_batch's programs, but the first counts only (its Vqa question repeats the third's)
TEMPLATES = [
    "BOX0=Loc(image=IMAGE, object='car')\nN=Count(box=BOX0)\n"
    "FINAL=Eval(expr=\"'yes' if {N} > 0 else 'no'\")",
    *BATCH_TEMPLATES[1:],
]
HOSTED = ("Loc", "Vqa")


def workload(n_programs: int, n_images: int, size: tuple[int, int]) -> list[dict]:
    images = make_images(n_images, size)
    return [{"program": TEMPLATES[i % len(TEMPLATES)], "image": images[(i // len(TEMPLATES))
                                                                      % n_images], "id": i}
            for i in range(n_programs)]


def full_size_config(work: Path, device: str) -> dict:
    """Loc and Vqa on the full-size random checkpoints (built once into `work`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_batch import build_checkpoints, calibrate_loc

    from visprog.api import VisProg, module_catalog

    edge = 800 if device.startswith("cuda") else 224
    blip, gdino = build_checkpoints(work, edge)
    probe = VisProg(preset="default", cache=False, plugins=False, device=device,
                    config={"Vqa": {"checkpoint": str(blip)}})
    threshold = calibrate_loc(probe, gdino, make_images(1, (640, 480))[0])
    probe.models.unload()
    return {"Vqa": {"checkpoint": str(blip)},
            "Loc": {"checkpoint": str(gdino), "box_threshold": threshold, "text_threshold": 0.0}}


# -- which default models fit together (parameter counts on the meta device) ----------------

def default_architectures() -> dict:
    """name -> (what it is, constructor of the model of the default checkpoint's architecture,
    modules that use it). Configs follow the default checkpoints of visprog/presets.toml."""
    from transformers import (BlipConfig, BlipForQuestionAnswering, CLIPConfig, CLIPModel,
                              CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              GroundingDinoConfig, GroundingDinoForObjectDetection,
                              Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Owlv2Config, Owlv2ForObjectDetection, SamConfig, SamModel,
                              SwinConfig, ViltConfig, ViltForQuestionAnswering)

    def blip_large():  # blip-vqa-capfilt-large: ViT-L/16 at 384 px, BERT-base text
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "image_size": 384, "patch_size": 16}
        return BlipForQuestionAnswering(BlipConfig(vision_config=vision,
                                                   text_config={"encoder_hidden_size": 1024}))

    def mask2former_swin_tiny():  # 133 COCO panoptic classes
        swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                          window_size=7, out_features=["stage1", "stage2", "stage3", "stage4"])
        return Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=swin,
                                                                     num_labels=133))

    def sd_inpaint():  # SD 1.5 inpainting: UNet (9 input channels), VAE, CLIP ViT-L/14 text
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet = UNet2DConditionModel(in_channels=9, out_channels=4, cross_attention_dim=768,
                                    attention_head_dim=8, sample_size=64)
        vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4,
                            block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                            latent_channels=4, sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12,
                                            max_position_embeddings=77, vocab_size=49408))
        import torch
        return torch.nn.ModuleList([unet, vae, text])

    def sd_safety_checker():  # CLIP ViT-L/14 vision tower
        from transformers import CLIPVisionModel
        return CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                                num_hidden_layers=24, num_attention_heads=16,
                                                patch_size=14, image_size=224))

    return {
        "grounding-dino-tiny": (lambda: GroundingDinoForObjectDetection(GroundingDinoConfig()),
                                "Loc, Select"),
        "sam-vit-base": (lambda: SamModel(SamConfig()), "Select"),
        "clip-vit-base-patch32": (lambda: CLIPModel(CLIPConfig()), "Classify (Select: clip)"),
        "blip-vqa-capfilt-large": (blip_large, "Vqa"),
        "vilt-b32-vqa": (lambda: ViltForQuestionAnswering(ViltConfig(num_labels=3129)),
                         "Vqa: vilt"),
        "owlv2-base-patch16": (lambda: Owlv2ForObjectDetection(Owlv2Config()), "Loc: owlv2"),
        "mask2former-swin-tiny-coco-panoptic": (mask2former_swin_tiny, "Seg"),
        "sd-inpainting (unet+vae+text)": (sd_inpaint, "Replace"),
        "sd safety checker": (sd_safety_checker, "Replace (safety_checker = true)"),
    }


def model_sizes() -> dict:
    """Parameter and buffer counts of each default architecture, built on the meta device
    (no memory, no download), and their fp16 bytes."""
    import torch

    out = {}
    for name, (make, used_by) in default_architectures().items():
        with torch.device("meta"):
            model = make()
        params = sum(p.numel() for p in model.parameters())
        buffers = sum(b.numel() for b in model.buffers())
        out[name] = {"params": params, "buffers": buffers, "used_by": used_by,
                     "fp16_bytes": 2 * (params + buffers), "fp32_bytes": 4 * (params + buffers)}
    return out


def print_sizes(sizes: dict) -> None:
    print(f"{'default model':<38}{'params':>9}{'fp16':>10}{'fp32':>10}  used by")
    for name, s in sizes.items():
        print(f"{name:<38}{s['params'] / 1e6:>8.1f}M{s['fp16_bytes'] / 1e9:>8.2f}GB"
              f"{s['fp32_bytes'] / 1e9:>8.2f}GB  {s['used_by']}")
    sets = {
        "GQA set (Loc, Select, Classify, Vqa)": ["grounding-dino-tiny", "sam-vit-base",
                                                 "clip-vit-base-patch32", "blip-vqa-capfilt-large"],
        "every default module": ["grounding-dino-tiny", "sam-vit-base", "clip-vit-base-patch32",
                                 "blip-vqa-capfilt-large", "mask2former-swin-tiny-coco-panoptic",
                                 "sd-inpainting (unet+vae+text)", "sd safety checker"],
    }
    for label, names in sets.items():
        total = sum(sizes[n]["fp16_bytes"] for n in names)
        print(f"{label}: {total / 1e9:.2f} GB of weights in fp16")


def timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_modes(vp, items: list[dict], reps: int, batch_size) -> dict:
    def sequential():
        return [vp.execute(it["program"], image=it["image"]).value for it in items]

    def batched():
        results = vp.run_batch(items, batch_size=batch_size)
        bad = [r for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} programs failed: {bad[0].error}")
        return [r.value for r in results]

    sequential(), batched()  # warm: models loaded, replicas warm, libraries imported
    seq_s, seq_values = timed(sequential, reps)
    bat_s, bat_values = timed(batched, reps)
    return {"sequential_s": seq_s, "batched_s": bat_s, "values": seq_values,
            "batched_values": bat_values}


def model_steps(items: list[dict]) -> int:
    return sum(sum(line.split("=", 1)[1].startswith(HOSTED) for line in it["program"].splitlines())
               for it in items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--programs", type=int, default=64)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--image-size", default="640x480", help="WxH")
    p.add_argument("--reps", type=int, default=1, help="timed repetitions (median)")
    p.add_argument("--batch-size", default="16", help="run_batch batch size, or auto")
    p.add_argument("--max-batch-size", type=int, default=16, help="Serve batch size")
    p.add_argument("--batch-wait", type=float, default=0.005, help="Serve batch wait (s)")
    p.add_argument("--full", action="store_true",
                   help="full-size BLIP VQA and GroundingDINO-tiny (random weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (models in both hosts)")
    p.add_argument("--gpu-fraction", type=float, default=0.0,
                   help="GPU per replica (default: 0.4 on cuda)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in this process on CPU; each replica gets one CPU, so "
                        "Ray gives it one thread too (a fair comparison)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "visprog-bench"),
                   help="folder for --full checkpoints")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--sizes", action="store_true",
                   help="only print the default models' sizes (meta device) and exit")
    args = p.parse_args(argv)
    if args.sizes:
        sizes = model_sizes()
        print_sizes(sizes)
        if args.json:
            Path(args.json).write_text(json.dumps(sizes, indent=2))
        return 0

    import ray
    import torch

    from visprog.api import VisProg, module_catalog
    from visprog.hosting.client import client_of
    from visprog.hosting.serve import deploy

    w, h = (int(v) for v in args.image_size.lower().split("x"))
    items = workload(args.programs, args.images, (w, h))
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    cuda = args.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads)
    preset = "default" if args.full else "tiny"
    config: dict = {"models": {"device": args.device, "half": cuda}}
    if not cuda:  # the replicas too: the same thread count gives the same floats
        config["models"]["cpu_threads"] = args.threads
    if args.full:
        config.update(full_size_config(Path(args.work), args.device))
    gpu = args.gpu_fraction or (0.4 if cuda else 0.0)
    hosted = {m: {**config.get(m, {}), "host": "ray", "replicas": 1, "gpu_fraction": gpu,
                  "num_cpus": 1, "max_batch_size": args.max_batch_size,
                  "batch_wait_s": args.batch_wait, "timeout_s": 600} for m in HOSTED}
    hosted_config = {**config, **hosted}

    print(f"workload: {len(items)} programs over {args.images} images {w}x{h}, "
          f"{model_steps(items)} model steps; preset {preset}"
          f"{' (full-size random)' if args.full else ''}, device {args.device}")
    local = VisProg(preset=preset, cache=False, plugins=False, config=config)
    here = run_modes(local, items, args.reps, batch_size)
    local.models.unload()  # the replicas get the memory (and the GPU) to themselves

    t = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             num_cpus=args.num_cpus or max(2, os.cpu_count() or 2))
    deploy(VisProg(preset=preset, cache=False, plugins=False, config=hosted_config).config,
           module_catalog())
    startup = time.perf_counter() - t
    remote = VisProg(preset=preset, cache=False, plugins=False, config=hosted_config)
    clients = {m: client_of(remote.registry.get(m)) for m in HOSTED}
    before = {m: c.stats() for m, c in clients.items()}
    there = run_modes(remote, items, args.reps, batch_size)
    after = {m: c.stats() for m, c in clients.items()}
    ray.shutdown()

    def differ(a: list, b: list) -> int:
        return sum(x != y for x, y in zip(a, b))

    # Sequential requests reach a replica one at a time, as in-process calls do: same values.
    # Batched ones are grouped by arrival on the replica, not as run_batch groups them; on a
    # GPU in fp16 a different batch (other padding, other kernels) can move a score across a
    # threshold of these random-weight models, as batching alone does in-process.
    diffs = {"sequential": differ(here["values"], there["values"]),
             "batched": differ(here["batched_values"], there["batched_values"]),
             "in_process_batched_vs_sequential": differ(here["values"], here["batched_values"])}
    same = diffs["sequential"] == 0 and diffs["batched"] == 0
    n, steps = len(items), model_steps(items)
    figures = {"programs": n, "model_steps": steps, "preset": preset, "full": args.full,
               "device": args.device, "ray_startup_s": round(startup, 2),
               "identical_values": same, "values_differing": diffs, "modes": {}}
    print(f"\nRay start + deploy (replicas warm up): {startup:.1f} s; values identical: {same}")
    print(f"values differing from in-process, of {len(items)}: sequential {diffs['sequential']}, "
          f"batched {diffs['batched']} (in-process batched vs sequential: "
          f"{diffs['in_process_batched_vs_sequential']})")
    print(f"{'mode':<11}{'in-process':>16}{'Ray Serve':>16}{'overhead':>14}{'per request':>14}")
    for mode in ("sequential", "batched"):
        a, b = here[f"{mode}_s"], there[f"{mode}_s"]
        per_prog = (b - a) / n * 1000
        per_req = (b - a) / steps * 1000
        figures["modes"][mode] = {"in_process_s": round(a, 3), "ray_s": round(b, 3),
                                  "in_process_programs_per_s": round(n / a, 2),
                                  "ray_programs_per_s": round(n / b, 2),
                                  "overhead_ms_per_program": round(per_prog, 2),
                                  "overhead_ms_per_request": round(per_req, 2)}
        print(f"{mode:<11}{n / a:>10.1f} pr/s{n / b:>10.1f} pr/s{per_prog:>9.1f} ms/pr"
              f"{per_req:>9.1f} ms/rq")
    for m in HOSTED:
        calls = after[m]["calls"] - before[m]["calls"]
        batches = after[m]["batches"] - before[m]["batches"]
        sizes = after[m]["batch_sizes"][len(before[m]["batch_sizes"]):]
        figures[f"{m}_replica"] = {"calls": calls, "batches": batches,
                                   "max_batch": max(sizes) if sizes else 0}
        print(f"{m} replica: {calls} calls in {batches} batches "
              f"(largest {max(sizes) if sizes else 0})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if diffs["sequential"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
