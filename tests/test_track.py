"""Track on SAM 3's video model (the tiny random one, built offline as the recipe does), the
session pruning that keeps a long clip's memory flat, NMS without the hub kernel, Track
calls of several programs sharing one session, Track over the Ray wire format (no Ray),
VideoQa with the tiny chat VLM, and programs end to end: Track -> Count, a temporal
question, FrameAt -> Ocr reading text drawn on a frame with the real OCR weights.

The tiny model's weights are random, so what it finds means nothing; what is checked is
what holds whatever it finds (ids, labels, shapes, boxes that bound the masks, equal
results however the calls are grouped), and the real OCR reads real text."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from video_clips import SIZE, blank_frames, square_frames, text_frame, write_clip  # noqa: E402
from visprog import VisProg  # noqa: E402
from visprog.errors import ConfigError, StepError  # noqa: E402
from visprog.models import resolve_checkpoint  # noqa: E402
from visprog.tools import _sam3_video  # noqa: E402
from visprog.values import Tracks, Video, codec, load_video  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("track") / "square.mp4", square_frames(16))


@pytest.fixture(scope="module")
def vp():
    return VisProg(preset="tiny", cache=False, plugins=False)


@pytest.fixture(scope="module")
def bundle():
    with torch.inference_mode():
        return _sam3_video.load_sam3_video(resolve_checkpoint("tiny:sam3_video"), "cpu", None)


def check_tracks(tracks: Tracks, video: Video, phrases: list[str]) -> None:
    """What holds for any Tracks that Track gives."""
    k = len(tracks)
    assert tracks.ids.tolist() == list(range(1, k + 1))
    assert set(tracks.labels.tolist()) <= set(phrases)
    assert tracks.times.tolist() == video.times.tolist() and tracks.end == video.end
    assert tracks.frame_size == video.size and tracks.masks.shape == (len(video), k, 120, 160)
    seen = tracks.seen
    firsts = [int(np.flatnonzero(seen[:, j])[0]) for j in range(k)]
    assert firsts == sorted(firsts), "ids are numbered in the order objects first appear"
    for t, j in zip(*np.nonzero(seen)):
        ys, xs = np.nonzero(tracks.masks[t, j])
        assert len(xs), "a seen object has a mask"
        assert tracks.boxes[t, j].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert not tracks.masks[~seen].any() and np.isnan(tracks.boxes[~seen]).all()


def test_track_follows_several_prompts_with_ids_that_stay(vp, clip):
    out = vp.execute("T=Track(video=VIDEO, object=['red square', 'ball'])\nN=Count(box=T)",
                     video=clip)
    tracks, video = out.trace["T"].output, out.trace.inputs["VIDEO"]
    assert len(tracks) >= 1  # random weights at threshold 0.2 always find something
    check_tracks(tracks, video, ["red square", "ball"])
    assert out.value == len(tracks) <= 4  # the tiny checkpoint's cap: 2 per prompt


def test_the_trackers_ids_persist_and_keep_their_prompt(bundle, clip):
    video = load_video(clip, {"fps": 8})
    with torch.inference_mode():
        results = _sam3_video.track(bundle, video.frames, ["red square", "ball"])
    prompt_of: dict[int, str] = {}
    for r in results:
        for obj, prompt in zip(r.ids, r.prompts):
            assert prompt_of.setdefault(obj, prompt) == prompt  # an id never changes prompt
    assert prompt_of and set(prompt_of.values()) <= {"red square", "ball"}


def test_pruning_keeps_a_long_sessions_memory_flat_and_the_results(bundle):
    """The tracker reads at most 16 frames back: without pruning the session grows with
    every frame; with it, what it holds per object stops growing once an object is older
    than that (objects come and go, so the total moves within that bound), and tracking
    gives the same results."""
    frames = square_frames(16) * 3
    window = 17  # max(num_maskmem 7, max_object_pointers_in_encoder 16) + this frame
    runs = {}
    for prune, n in ((True, 48), (False, 32)):
        sizes, held = [], []

        def measure(i, s):
            sizes.append(_sam3_video.session_mb(s))
            held.append(max([len(d["non_cond_frame_outputs"]) + len(d["cond_frame_outputs"])
                             for d in s.output_dict_per_obj.values()] + [0]))
            held[-1] = max(held[-1], len(s.suppressed_obj_ids),
                           sum(v.numel() > 0 for v in s.processed_frames.values()))

        with torch.inference_mode():
            results = _sam3_video.track(bundle, frames[:n], ["red square"], prune=prune,
                                        on_frame=measure)
        runs[prune] = (sizes, held, results)
    (pruned, held, _), (full, full_held, _) = runs[True], runs[False]
    assert max(held) <= window + 4 and full_held[-1] == 32, (held, full_held)
    assert max(pruned[32:]) <= max(pruned[16:32]) * 1.05, pruned  # flat
    assert full[31] > 1.5 * pruned[31], (full, pruned)
    # a frame's result is final once 15 more have run (hotstart); the first 17 frames' are
    # in both runs, and depend on tracking (pruned from frame 17 on) up to frame 31
    assert len(runs[True][2]) == 48
    for a, b in zip(runs[True][2][:17], runs[False][2][:17]):
        assert a.ids == b.ids and np.array_equal(a.boxes, b.boxes)
        assert np.array_equal(a.masks, b.masks)


def test_nms_runs_without_the_hub_kernel(bundle):
    import importlib

    msv = importlib.import_module("transformers.models.sam3_video.modeling_sam3_video")
    assert msv.cv_utils_kernel.generic_nms is _sam3_video.generic_nms  # put in at load
    masks = torch.full((3, 16, 16), -10.0)
    masks[0, 2:10, 2:10] = masks[1, 2:10, 3:10] = masks[2, 10:15, 10:15] = 10.0
    keep = msv.nms_masks(pred_probs=torch.tensor([0.9, 0.8, 0.7]), pred_masks=masks,
                         prob_threshold=0.5, iou_threshold=0.5)
    assert keep.tolist() == [True, False, True]  # the duplicate of the best one is gone
    boxes = _sam3_video.masks_to_boxes(masks > 0)
    assert boxes.tolist() == [[2, 2, 9, 9], [3, 2, 9, 9], [10, 10, 14, 14]]


def test_calls_on_one_clip_share_a_session_and_equal_lone_runs(vp, clip, monkeypatch):
    sessions = []
    real = _sam3_video.track
    monkeypatch.setattr(_sam3_video, "track",
                        lambda bundle, frames, phrases, **kw: sessions.append(list(phrases))
                        or real(bundle, frames, phrases, **kw))
    programs = ["T=Track(video=VIDEO, object='red square')",
                "T=Track(video=VIDEO, object='ball')\nN=Count(box=T)"]
    batched = vp.run_batch([{"program": p, "video": clip} for p in programs], batch_size=4)
    assert sessions == [["red square", "ball"]]  # one session for both programs' prompts
    lone = [vp.execute(p, video=clip) for p in programs]
    assert sessions[1:] == [["red square"], ["ball"]]
    for b, one in zip(batched, lone):
        assert b.error is None
        assert codec.digest(b.trace["T"].output) == codec.digest(one.trace["T"].output)


def test_track_settings_and_bad_calls(vp, clip):
    with pytest.raises(ConfigError, match="max_objects must be a number"):
        VisProg(preset="tiny", cache=False, plugins=False,
                config={"Track": {"max_objects": "many"}})
    few = VisProg(preset="tiny", cache=False, plugins=False,
                  config={"Track": {"max_objects": 1, "masks": False}})
    tracks = few.execute("T=Track(video=VIDEO, object='red square')", video=clip).value
    assert len(tracks) <= 1 and tracks.masks is None
    with pytest.raises(StepError, match="needs an object"):
        vp.execute("T=Track(video=VIDEO, object=' ')", video=clip)


def test_track_then_count_and_when(vp, clip):
    program = """\
T=Track(video=VIDEO, object='red square')
N=Count(box=T)
FIRST=FirstSeen(tracks=T)
SEEN=SeenFor(tracks=T)
ANSWER=Eval(expr="'yes' if {N} > 0 and {FIRST} < 1 else 'no'")
"""
    out = vp.execute(program, video=clip)
    tracks = out.trace["T"].output
    assert out.trace["N"].output == len(tracks)
    assert out.trace["FIRST"].output == tracks.first_seen()
    assert out.trace["SEEN"].output == pytest.approx(tracks.time_seen())
    assert out.value == ("yes" if len(tracks) and tracks.first_seen() < 1 else "no")


def test_frame_at_then_ocr_reads_the_text_on_that_frame(vp, tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    frames = blank_frames(8) + [text_frame("VISPROG 42")] * 4 + blank_frames(4)
    path = write_clip(tmp_path / "sign.mp4", frames, lossless=True)  # text from 1.0 to 1.5 s
    program = "F=FrameAt(video=VIDEO, time=T)\nTEXT=Ocr(image=F)"
    read = vp.execute(program, video=path, inputs={"T": 1.2}).value
    assert read.replace(" ", "") == "VISPROG42", read
    assert vp.execute(program, video=path, inputs={"T": 0.2}).value == ""


def test_track_through_the_wire_format(vp, clip):
    """A replica's request handling (decode, the engine's chunk runner, encode) without Ray,
    as tests/test_hosting_wire.py does: the Video goes out, the Tracks come back, equal to a
    run in this process."""
    from visprog.hosting.client import decode_reply, encode_request
    from visprog.hosting.serve import ModuleServer

    server = ModuleServer.__new__(ModuleServer)
    server.tool, server.max_batch_size = vp.registry.get("Track"), 8
    server.batches, server.calls, server.batch_sizes = 0, 0, []
    video = vp.bind(video=clip)["VIDEO"]
    calls = [{"video": video, "object": "red square"}, {"video": video, "object": "ball"}]
    request = encode_request(calls, "Track")
    [reply] = server._run([request])
    remote = decode_reply(reply, "Track", 2)
    local = vp.registry.get("Track").batch_fn([dict(c) for c in calls])
    assert [codec.digest(r) for r in remote] == [codec.digest(t) for t in local]
    assert server.batch_sizes == [2]  # both calls in one batch, one session


def test_video_qa_shows_several_frames_with_their_times(vp, clip):
    from visprog.tools.video_qa import VideoQa

    tool = VideoQa({"checkpoint": "tiny:qwen3_vl", "frames": 3})
    video = load_video(clip, {"fps": 8})
    [turn] = tool.preprocess({"video": video, "question": "where is the square?"})
    images = [c for c in turn["content"] if c["type"] == "image"]
    texts = [c["text"] for c in turn["content"] if c["type"] == "text"]
    assert len(images) == 3 and texts[:3] == ["at 0.25 s:", "at 1 s:", "at 1.62 s:"]
    assert texts[-1].startswith("where is the square?\nReply with only the answer")
    answer = vp.execute("A=VideoQa(video=VIDEO, question='where is the square?')",
                        video=clip).value
    assert isinstance(answer, str) and len(answer.split()) <= 3


def test_video_qa_endpoint_sends_the_frames_after_their_times_in_one_turn(clip):
    """The "endpoint" backend: one request a clip, against the scripted loopback server,
    with each frame an image part after its time and the question last."""
    import base64
    import io

    from PIL import Image

    from llm_server import Reply, ScriptedServer
    from visprog.config import load_config
    from visprog.models import ToolContext
    from visprog.tools.video_qa import VideoQa

    video = load_video(clip, {"fps": 8})
    settings = {**load_config("tiny")["VideoQa"], "backend": "endpoint", "frames": 3}
    with ScriptedServer([Reply("The square is on the Left side."), Reply("Yes.")]) as server:
        ep = {"model": "served-vlm", "base_url": server.url, "api_key": "k", "backoff": 0.01}
        tool = VideoQa.build({**settings, "endpoint": ep}, ToolContext())
        answers = tool.batch_fn([{"video": video, "question": "where is the square?"},
                                 {"video": video, "question": "is it moving?"}])
    assert answers == ["the square is", "yes"]  # shortened as the local model's are
    assert tool.settings["model"] == "served-vlm" and "checkpoint" not in tool.settings
    assert VideoQa.describe_model(tool.settings) == f"served-vlm at {server.url}"  # config show
    assert len(server.requests) == 2
    first = next(r for r in server.requests if "where" in r["messages"][0]["content"][-1]["text"])
    content = first["messages"][0]["content"]
    assert [c["type"] for c in content] == ["text", "image_url"] * 3 + ["text"]
    assert [c["text"] for c in content[:-1:2]] == ["at 0.25 s:", "at 1 s:", "at 1.62 s:"]
    sent = Image.open(io.BytesIO(base64.b64decode(content[1]["image_url"]["url"].split(",")[1])))
    assert sent.size == video.evenly(3).frames[0].size  # the frame itself (within max_pixels)
    assert content[-1]["text"].startswith("where is the square?\nReply with only the answer")
    assert first["max_tokens"] == settings["max_new_tokens"] and first["temperature"] == 0.0


def test_video_qa_endpoint_settings_are_checked_and_named(clip, monkeypatch):
    from visprog.config import load_config
    from visprog.models import ToolContext
    from visprog.tools.video_qa import VideoQa

    monkeypatch.delenv("VISPROG_VQA_MODEL", raising=False)
    settings = {**load_config("tiny")["VideoQa"], "backend": "endpoint"}
    with pytest.raises(ConfigError, match=r"VideoQa.*\[VideoQa.endpoint\] model"):
        VideoQa.build(settings, ToolContext())
    with pytest.raises(ConfigError, match="VideoQa"):
        VideoQa.build({**settings, "endpoint": {"model": "m", "api_key": "k",
                                                "timeout": "soon"}}, ToolContext())
    with pytest.raises(ConfigError, match="vlm, endpoint"):
        VideoQa.build({**settings, "backend": "blip"}, ToolContext())
