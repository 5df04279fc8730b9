"""Video: frames per second of Track and of a whole program over a clip, and the memory a
tracking session holds against the clip's length, pruned (Track's way) and not.

The clip is written with PyAV: a red square crossing green, then a cut to a blue scene,
at 8 fps and 320x240 (`--size` to change). Three figures:

- Track: frames per second of one Track call on the decoded clip (the model loaded and
  warmed first, so loading is not counted), its phrases in one session.
- program: frames per second of a whole program run on the clip's file: decoding and
  sampling it (`video=`), Track, Count, FirstSeen, SeenFor, FrameAt and a Vqa on that frame.
- memory: the MiB of tensors the tracking session holds after each frame, pruned and not,
  printed at a few clip lengths; pruned, it stops growing once the clip is longer than the
  tracker's memory window (16 frames), while unpruned it grows with every frame.

Models: `--model tiny` (default) is the tiny random SAM 3 video model of the tiny preset
(168 px, about 2M parameters: every code path, on a CPU in seconds). `--model full` builds a
random SAM 3 video model at the published size (facebook/sam3's architecture from
`Sam3VideoConfig()`'s defaults: ViT 1024 wide, 32 layers, 1008 px, a 256-wide tracker with
4 memory-attention layers; random weights, nothing downloaded) and saves it once to the
work folder; its detection thresholds are lowered to 0.2 and its "object present" bias set
so that random weights track a few objects a frame, as trained ones would (at the published
0.5 nothing passes and the tracker would idle). It is meant for a GPU:

    python benchmarks/bench_video.py                       # tiny, CPU
    python benchmarks/bench_video.py --smoke --json        # what the test suite runs
    python benchmarks/bench_video.py --model full --device cuda --frames 64 --lengths 16,32,64
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    import av
    from PIL import Image, ImageDraw

    w, h = size
    cut = frames * 3 // 4
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=8)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            if i < cut:
                im = Image.new("RGB", size, (40, 110, 40))
                x = (10 + 6 * i) % max(1, w - h // 3)
                ImageDraw.Draw(im).rectangle([x, h // 3, x + h // 4, h // 3 + h // 3],
                                             fill=(220, 30, 30))
            else:
                im = Image.new("RGB", size, (30, 40, 150))
            for p in st.encode(av.VideoFrame.from_image(im)):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


def build_full(folder: Path) -> str:
    """A random SAM 3 video model at the published size, saved once; its path."""
    done = folder / "sam3_video_full"
    if (done / "config.json").exists():
        return str(done)
    import json as _json

    import torch
    from transformers import Sam3VideoConfig, Sam3VideoModel

    from visprog.models import tiny_clip_tokenizer
    from visprog.tools import _sam3

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(_sam3.TINY_WORDS)
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = _sam3.TEXT_LEN
    cfg = Sam3VideoConfig(score_threshold_detection=0.2, new_det_thresh=0.2)
    text = cfg.detector_config.text_config
    text.bos_token_id, text.eos_token_id = tok.bos_token_id, tok.eos_token_id
    text.pad_token_id = tok.pad_token_id
    model = Sam3VideoModel(cfg)
    torch.nn.init.constant_(model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias,
                            10.0)
    model.save_pretrained(done)
    tok.save_pretrained(done)
    (done / "preprocessor_config.json").write_text(_json.dumps(
        {"image_processor_type": "Sam3ImageProcessor", **_sam3.SAM3_DEFAULTS}))
    return str(done)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=48, help="frames of the timed clip")
    ap.add_argument("--lengths", default="8,16,32,64,96",
                    help="clip lengths (frames) at which the session's memory is printed")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--phrases", default="red square,ball")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "visprog_bench_video"))
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run for the test suite: 8 timed frames of 160x120, one "
                         "phrase, lengths 8,16,24")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args(argv)
    if args.smoke:
        args.frames, args.lengths, args.size, args.phrases = 8, "8,16,24", "160x120", "red square"
    lengths = sorted({int(n) for n in args.lengths.split(",")})
    size = tuple(int(v) for v in args.size.split("x"))
    phrases = [p.strip() for p in args.phrases.split(",") if p.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    import torch

    from visprog import VisProg
    from visprog.tools import _sam3_video

    checkpoint = "tiny:sam3_video" if args.model == "tiny" else build_full(work)
    config = {"Track": {"checkpoint": checkpoint, "max_objects": 4},
              "video": {"fps": 8, "max_frames": max(args.frames, max(lengths))}}
    vp = VisProg(preset="tiny", config=config, cache=False, plugins=False, device=args.device)
    clip = write_clip(work / f"clip_{args.frames}.mp4", args.frames, size)
    video = vp.bind(video=clip)["VIDEO"]
    track = vp.registry.get("Track")

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # Track: warm (load the model, run a few frames), then time one call on the clip
    track.fn(video=video[:4], object=phrases)
    sync()
    t0 = time.perf_counter()
    tracks = track.fn(video=video, object=phrases)
    sync()
    track_s = time.perf_counter() - t0

    # a whole program on the clip's file: decoding, tracking, the temporal steps, a Vqa
    program = (f"T=Track(video=VIDEO, object={phrases!r})\nN=Count(box=T)\n"
               "SEEN=SeenFor(tracks=T)\nF=FrameAt(video=VIDEO, time=1.0)\n"
               "A=Vqa(image=F, question='what color is the square?')\n")
    vp.execute(program, video=video[:2])  # warm Vqa's model too
    sync()
    t0 = time.perf_counter()
    out = vp.execute(program, video=clip)
    sync()
    program_s = time.perf_counter() - t0

    # the session's memory after each frame, pruned and not
    frames = []
    longest = max(lengths)
    while len(frames) < longest:
        frames += list(video.frames)
    frames = frames[:longest]
    bundle = vp.models.get("sam3_video", checkpoint, _sam3_video.load_sam3_video)  # Track's
    memory = {}
    for prune in (True, False):
        sizes: list[float] = []
        with torch.inference_mode():
            _sam3_video.track(bundle, frames, phrases, prune=prune, max_objects=4,
                              on_frame=lambda i, s: sizes.append(_sam3_video.session_mb(s)))
        memory["pruned" if prune else "unpruned"] = {n: round(sizes[n - 1], 2) for n in lengths}

    figures = {
        "model": args.model, "device": args.device, "frame_size": list(video.size),
        "frames": len(video), "phrases": phrases, "objects_tracked": len(tracks),
        "track_fps": round(len(video) / track_s, 2), "track_s": round(track_s, 3),
        "program_fps": round(len(video) / program_s, 2), "program_s": round(program_s, 3),
        "program_answer": out.value, "session_mb": memory,
    }
    print(f"Track ({args.model}, {args.device}): {len(video)} frames of {size[0]}x{size[1]} in "
          f"{track_s:.2f} s = {figures['track_fps']} frames/s; {len(tracks)} objects")
    print(f"program (decode + Track + Count + SeenFor + FrameAt + Vqa): {program_s:.2f} s = "
          f"{figures['program_fps']} frames/s")
    print("tracking session memory (MiB of tensors) by clip length:")
    print("  frames  " + "".join(f"{n:>9}" for n in lengths))
    for mode, row in memory.items():
        print(f"  {mode:<8}" + "".join(f"{row[n]:>9.2f}" for n in lengths))
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
