"""Video inputs and values without a model: reading clips written with PyAV (mp4, webm, mov,
animated gif, a folder of frames, a list of images), sampling, the limits and hostile files,
the Video and Tracks values (types, checker, codec and cache keys, Eval, the constrained
grammar, traces), binding VIDEO through the API and the command line, and the plain video
modules (Frames, FrameAt, Clip; FirstSeen, LastSeen, SeenFor, ObjectsAt and Count over tracks
whose truth is known)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")

from video_clips import (SIZE, blank_frames, mean_color, square_box, square_frames,  # noqa: E402
                         write_clip)
from visprog import VisProg  # noqa: E402
from visprog.cli import main  # noqa: E402
from visprog.errors import CheckError, ConfigError, ImageError, StepError, VideoError  # noqa: E402
from visprog.language.checker import check  # noqa: E402
from visprog.language.parser import parse  # noqa: E402
from visprog.planning.llm_grammar import StepGrammar  # noqa: E402
from visprog.traces.records import Trace  # noqa: E402
from visprog.values import Objects, Tracks, Video, VideoSettings, codec, load_video  # noqa: E402
from visprog.values.text import show  # noqa: E402
from visprog.values.types import type_of  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """16 frames at 8 fps (2 s) of the moving square, in each container; and a clip with a
    cut at frame 10 (1.25 s)."""
    d = tmp_path_factory.mktemp("clips")
    frames = square_frames(16)
    out = {"mp4": write_clip(d / "square.mp4", frames),
           "webm": write_clip(d / "square.webm", frames, codec="libvpx"),
           "mov": write_clip(d / "square.mov", frames),
           "gif": write_clip(d / "square.gif", frames, codec="gif"),
           "cut": write_clip(d / "cut.mp4", square_frames(16, cut=10))}
    folder = d / "frames"
    folder.mkdir()
    for i, im in enumerate(frames[:5]):
        im.save(folder / f"frame_{i}.png")  # frame_10 sorts after frame_9 (numbers as numbers)
    out["folder"] = folder
    out["dir"] = d
    return out


@pytest.fixture(scope="module")
def vp():
    return VisProg(preset="tiny", cache=False, plugins=False)


# -- reading and sampling ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mp4", "webm", "mov", "gif"])
def test_each_container_decodes_to_its_frames_and_times(clips, kind):
    video = load_video(clips[kind], {"fps": 8})
    assert len(video) == 16 and video.size == SIZE
    assert np.allclose(video.times, np.arange(16) / 8, atol=0.011)  # gif: 1/100 s delays
    assert video.end == pytest.approx(2.0, abs=0.02) and video.source == f"square.{kind}"
    # the pixels are the clip's: the square is red where it should be, in the first and last
    for i in (0, 15):
        x1, y1, x2, y2 = square_box(i)
        inside = mean_color(video[i].crop((x1 + 4, y1 + 4, x2 - 4, y2 - 4)))
        assert inside[0] > 150 and inside[1] < 90, (kind, i, inside)


def test_sampling_by_fps_by_count_and_scaled_down(clips):
    two = load_video(clips["mp4"])  # the default: 2 a second
    assert two.times.tolist() == [0.0, 0.5, 1.0, 1.5] and two.sampling == {"fps": 2.0}
    assert two.spans().tolist() == [0.5] * 4
    five = load_video(clips["mp4"], {"frames": 5})
    # the frame on screen at the middle of each fifth of 2 s: 0.2, 0.6, 1.0, 1.4, 1.8
    assert five.times.tolist() == [0.125, 0.5, 1.0, 1.375, 1.75]
    assert five.sampling == {"frames": 5}
    small = load_video(clips["mp4"], {"fps": 1, "max_side": 80})
    assert small.size == (80, 60) and small.sampling == {"fps": 1.0, "max_side": 80}
    assert len(load_video(clips["mp4"], {"fps": 100})) == 16  # never more than the clip has
    assert len(load_video(clips["mp4"].read_bytes(), {"fps": 4})) == 8  # bytes read alike


def test_a_folder_and_a_list_of_images_are_clips_at_fps(clips):
    video = load_video(clips["folder"], {"fps": 4})
    assert len(video) == 5 and video.times.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert video.end == 1.25 and video.source == "frames"
    frames = square_frames(6)
    listed = load_video([frames[0], np.asarray(frames[1]), str(clips["folder"] / "frame_2.png")])
    assert len(listed) == 3 and listed.times.tolist() == [0, 0.5, 1.0]
    assert listed[1].tobytes() == frames[1].tobytes()
    assert len(load_video(frames, {"frames": 2})) == 2


def test_video_methods_pick_frames_by_time(clips):
    video = load_video(clips["mp4"], {"fps": 8})
    assert video.index_at(0.3) == 2 and video.index_at(-1) == 0 and video.index_at(99) == 15
    part = video.between(0.5, 1.0)
    assert part.times.tolist() == [0.5, 0.625, 0.75, 0.875, 1.0] and part.end == 1.0
    assert video.evenly(4).times.tolist() == [0.25, 0.75, 1.25, 1.75]
    assert video[[0, 3]].times.tolist() == [0.0, 0.375]
    with pytest.raises(IndexError):
        video[[3, 1]]
    with pytest.raises(AttributeError):
        video.end = 3  # a Video never changes


# -- limits and hostile files -----------------------------------------------------------------

def test_limits_say_what_is_wrong_and_which_setting_allows_more(clips):
    with pytest.raises(VideoError, match=r"2\.0 s long, over the limit of 1 s.*max_duration"):
        load_video(clips["mp4"], {"max_duration": 1})
    with pytest.raises(VideoError, match=r"gives about 16 frames, over the limit of 10.*fps.*"
                                         r"max_frames"):
        load_video(clips["mp4"], {"fps": 8, "max_frames": 10})
    with pytest.raises(VideoError, match=r"160x120 = 19,200 pixels.*max_frame_pixels"):
        load_video(clips["mov"], {"max_frame_pixels": 10_000})
    with pytest.raises(VideoError, match="over the limit"):
        load_video(clips["folder"], {"max_frames": 2})
    with pytest.raises(VideoError, match="unknown \\[video\\] setting fsp"):
        load_video(clips["mp4"], {"fsp": 3})
    with pytest.raises(ValueError, match="frames = 20 is over max_frames = 10"):
        VideoSettings.make({"frames": 20, "max_frames": 10})
    assert VideoSettings.make({"max_frames": "none"}).max_frames is None


def _gif_bomb(path):
    """A tiny animated GIF whose header claims a 60000x60000 canvas (14 GB of pixels)."""
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = bytearray(path.read_bytes())
    data[6:10] = struct.pack("<HH", 60000, 60000)
    path.write_bytes(bytes(data))
    return path


def _hostile(tmp_path, clips):
    import av

    zero = tmp_path / "zero.mp4"  # a valid MP4 holding no video
    c = av.open(str(zero), "w")
    c.add_stream("mpeg4", rate=8).pix_fmt = "yuv420p"
    c.start_encoding()
    c.close()
    whole = clips["mp4"].read_bytes()
    (tmp_path / "head.mp4").write_bytes(whole[:len(whole) // 3])  # cut before its index
    fast = tmp_path / "fast.mp4"  # index first: cutting it loses frames, not the index
    with av.open(str(fast), "w", options={"movflags": "faststart"}) as c:
        st = c.add_stream("mpeg4", rate=8)
        st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
        for im in square_frames(16):
            for p in st.encode(av.VideoFrame.from_image(im)):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    data = fast.read_bytes()
    (tmp_path / "tail.mp4").write_bytes(data[:int(len(data) * 0.6)])
    (tmp_path / "notes.txt").write_text("hello\n" * 100)  # FFmpeg would 'play' it as tty art
    (tmp_path / "list.m3u8").write_text(f"#EXTM3U\n#EXTINF:2,\n{clips['mp4']}\n")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_clip(tmp_path / "huge.mp4", blank_frames(1, size=(4000, 2400)))
    (tmp_path / "empty_dir").mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (32, 32)).save(mixed / "1.png")
    Image.new("RGB", (40, 32)).save(mixed / "2.png")
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("zero.mp4", "holds no frames"),
    ("head.mp4", "damaged or truncated"),
    ("tail.mp4", "truncated or damaged: its header counts 16 frames, 3 decode"),
    ("notes.txt", "not a video file"),
    ("list.m3u8", "not a video file"),
    ("noise.mp4", "not a video file"),
    ("empty.mp4", "not a video file"),
    ("huge.mp4", "4000x2400 = 9,600,000 pixels, over the limit of 8,294,400"),
    ("bomb.gif", "60000x60000 = 3,600,000,000 pixels"),
    ("missing.mp4", "video file not found"),
    ("empty_dir", "holds no frames"),
    ("mixed", "frames of a video are one size: frame 1 is 40x32, frame 0 is 32x32"),
])
def test_bad_and_hostile_videos_are_clear_errors(tmp_path, clips, name, message):
    _hostile(tmp_path, clips)
    _gif_bomb(tmp_path / "bomb.gif")
    with pytest.raises(VideoError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_video(tmp_path / name)
    assert isinstance(e.value, ImageError)  # refused like a bad image wherever inputs are


def test_a_clip_longer_than_the_limit_is_refused_when_bound(vp, clips):
    strict = VisProg(preset="tiny", cache=False, plugins=False,
                     config={"video": {"max_duration": 1.5}})
    with pytest.raises(VideoError, match="max_duration"):
        strict.execute("N=FrameAt(video=VIDEO, time=0)", video=clips["mp4"])
    with pytest.raises(ConfigError, match="fps must be at least"):
        VisProg(preset="tiny", cache=False, plugins=False, config={"video": {"fps": -1}})
    # a Video made elsewhere keeps to the engine's limits too
    with pytest.raises(VideoError, match="max_duration"):
        strict.bind(video=load_video(clips["mp4"]))


# -- the values: types, checker, codec, Eval, grammar, traces ---------------------------------

def known_tracks(video: Video, cut: int | None = None) -> Tracks:
    """The true track of the square (id 1) in the frames the video kept, gone from `cut`
    seconds on; and a second object (id 2) seen only in the first half second."""
    t = len(video)
    boxes = np.full((t, 2, 4), np.nan)
    masks = np.zeros((t, 2, SIZE[1], SIZE[0]), bool)
    for i, time in enumerate(video.times):
        frame = round(time * 8)
        if cut is None or time < cut:
            boxes[i, 0] = square_box(frame)
            x1, y1, x2, y2 = square_box(frame)
            masks[i, 0, y1:y2, x1:x2] = True
        if time < 0.5:
            boxes[i, 1] = (100, 80, 140, 110)
            masks[i, 1, 80:110, 100:140] = True
    return Tracks([1, 2], ["red square", "ball"], video.times, end=video.end,
                  frame_size=video.size, boxes=boxes, scores=np.full((t, 2), 0.9), masks=masks)


def test_types_show_and_codec_round_trip(clips):
    video = load_video(clips["mp4"], {"fps": 4})
    tracks = known_tracks(video)
    assert type_of(video) == "Video" and type_of(tracks) == "Tracks"
    assert show(video) == "video 160x120, 8 frames, 0-2 s"
    assert show(tracks, typed=True) == "Tracks: 2 tracks (red square, ball) over 8 frames"
    for value in (video, tracks):
        for raw in (False, True):  # the cache's PNG frames, the wire's raw ones
            back = codec.decode(codec.encode(value, raw_images=raw))
            assert type(back) is type(value) and codec.digest(back) == codec.digest(value)
    back = codec.decode(codec.encode(tracks))
    assert np.array_equal(back.masks, tracks.masks) and back.labels.tolist() == ["red square", "ball"]
    assert np.array_equal(back.seen, tracks.seen) and back.end == tracks.end


def test_cache_keys_come_from_frames_and_sampling(clips, tmp_path):
    a = load_video(clips["mp4"], {"fps": 4})
    (tmp_path / "copy.mp4").write_bytes(clips["mp4"].read_bytes())
    same_frames = load_video(tmp_path / "copy.mp4", {"fps": 4})
    assert codec.digest(a) == codec.digest(same_frames)  # where it came from is not content
    assert codec.digest(a) != codec.digest(load_video(clips["mp4"], {"fps": 2}))
    # the same frames said to be sampled another way are another value
    relabelled = Video(a.frames, a.times, end=a.end, sampling={"frames": 8})
    assert codec.digest(relabelled) != codec.digest(a)
    shifted = Video(a.frames, a.times + 0.01, end=a.end + 0.01, sampling=a.sampling)
    assert codec.digest(shifted) != codec.digest(a)


def test_checker_and_eval_know_the_video_types(vp):
    inputs = {"VIDEO": "Video"}
    assert check(parse("T=Track(video=VIDEO, object='car')\nN=Count(box=T)\n"
                       "A=Eval(expr=\"'yes' if {T} > 1 else 'no'\")"), vp.registry, inputs) == []
    [d] = check(parse("O=Loc(image=VIDEO, object='car')"), vp.registry, inputs)
    assert "takes Image; VIDEO is Video" in d.message and "FrameAt(video=VIDEO" in d.hint
    [d] = check(parse("T=Track(video=IMAGE, object='car')"), vp.registry, {"IMAGE": "Image"})
    assert "pass the video itself" in d.hint
    [d] = check(parse("F=FrameAt(video=VIDEO, time=1)"), vp.registry, {"IMAGE": "Image"})
    assert "the input VIDEO was not given" in d.message and "--video PATH" in d.hint
    [d] = check(parse("A=Eval(expr='{VIDEO} + 1')"), vp.registry, inputs)
    assert "Eval can't read {VIDEO}" in d.message


def test_the_constrained_grammar_offers_video_modules_on_video_only(vp):
    grammar = StepGrammar(vp.registry).text({"VIDEO": frozenset({"Video"})})
    rules = dict(line.split(": ", 1) for line in grammar.splitlines() if ": " in line)
    calls = {r for r in rules["call"].split(" | ")}
    track = next(c for c in calls if '"Track("' in rules[c])
    assert '"video=" v_' in rules[track]
    # no image module can be called with only a video defined
    assert not any(f'"{name}("' in grammar for name in ("Loc", "Vqa", "Crop"))
    with_tracks = StepGrammar(vp.registry).text({"VIDEO": frozenset({"Video"}),
                                                 "T": frozenset({"Tracks"})})
    assert '"FirstSeen("' in with_tracks and '"{T}"' in with_tracks  # Eval reads its count


def test_trace_json_stores_frames_as_files_and_html_stays_small(vp, tmp_path, clips):
    video = load_video(clips["mp4"], {"fps": 8})
    long = Video([video[i % 16] for i in range(240)], np.arange(240) / 8, sampling={"fps": 8})
    out = vp.execute("C=Clip(video=VIDEO, start=1, end=20)\nF=FrameAt(video=C, time=2)",
                     video=long)
    path = out.save_json(tmp_path / "run.json")
    doc = json.loads(path.read_text())
    frames = doc["inputs"]["VIDEO"]["frames"]
    assert len(frames) == 240 and all("file" in f for f in frames)
    # each distinct frame is one file, however many steps and frames show it
    assert len(list((tmp_path / "run_files").glob("img_*.png"))) == 16
    back = Trace.load_json(path)
    assert codec.digest(back.inputs["VIDEO"]) == codec.digest(long)
    html_path = out.save_html(tmp_path / "run.html")
    page = html_path.read_text()
    assert page.count("<img") <= 3 * 8 + 2  # the input, the clip and the frame: strips of 8
    assert len(page) < 300_000
    assert "30.00 s" not in page and "0.00 s" in page and "video 160x120, 240 frames" in page


def test_tracks_are_drawn_one_colour_per_id_across_frames(clips):
    from visprog.traces.video import draw_tracks, track_color

    video = load_video(clips["mp4"], {"fps": 8})
    tracks = known_tracks(video)
    for t in (0, 1, 8):
        drawn = np.asarray(draw_tracks(video[t], tracks, t))
        x1, y1, x2, y2 = square_box(t)
        edge = drawn[y1 + 10, x1]  # the outline's left edge, in id 1's colour
        assert tuple(edge) == track_color(1), (t, edge)
    assert track_color(1) != track_color(2)


# -- binding VIDEO --------------------------------------------------------------------------

def test_video_binds_through_execute_run_batch_and_bind(vp, clips):
    program = "F=FrameAt(video=VIDEO, time=1.0)\nN=Frames(video=VIDEO, n=2)"
    out = vp.execute(program, video=clips["mp4"])
    assert out.trace["F"].output.size == SIZE and len(out.trace["N"].output) == 2
    assert type_of(out.trace.inputs["VIDEO"]) == "Video"
    results = vp.run_batch([{"program": program, "video": clips["mp4"]},
                            {"program": program, "video": clips["folder"]},
                            {"program": program, "video": clips["dir"] / "nope.mp4"}])
    assert results[0].error is None and results[1].error is None
    assert isinstance(results[2].error, VideoError)
    read = {}
    a = vp.bind(video=clips["mp4"], read=read)["VIDEO"]
    assert vp.bind(video=clips["mp4"], read=read)["VIDEO"] is a  # read once for a batch
    mine = vp.load_video(clips["mp4"], fps=8)
    assert len(vp.bind(inputs={"CLIP": mine})["CLIP"]) == 16
    with pytest.raises(VideoError, match="unknown"):
        vp.load_video(clips["mp4"], speed=2)


def test_the_command_line_takes_video(tmp_path, clips, capsys):
    prog = tmp_path / "p.vp"
    prog.write_text("F=FrameAt(video=VIDEO, time=1.9)\nN=Frames(video=VIDEO, n=40)\n"
                    "R=Result(var=N)\n")
    assert main(["exec", str(prog), "--video", str(clips["mp4"]), "--preset", "tiny",
                 "--no-cache", "--fps", "4", "--json", str(tmp_path / "t.json")]) == 0
    assert "video 160x120, 8 frames, 0-2 s" in capsys.readouterr().out
    assert main(["exec", str(prog), "--video", str(tmp_path / "p.vp"), "--preset", "tiny",
                 "--no-cache"]) == 1
    assert "not a video file" in capsys.readouterr().err
    assert main(["exec", str(prog), "--image", str(clips["folder"] / "frame_0.png"),
                 "--frames", "3", "--preset", "tiny", "--no-cache"]) == 2
    assert "give --video PATH" in capsys.readouterr().err


# -- the plain video modules over known tracks ---------------------------------------------------

def test_frame_modules(vp, clips):
    out = vp.execute("A=FrameAt(video=VIDEO, time=0.74)\nB=Clip(video=VIDEO, start=0.5, "
                     "end=1.2)\nC=FrameAt(video=B, time=0)\nD=Frames(video=VIDEO, n=3)",
                     video=load_video(clips["mp4"], {"fps": 8}))
    video = out.trace.inputs["VIDEO"]
    assert out.trace["A"].output.tobytes() == video[5].tobytes()  # 0.625 s is on screen
    assert out.trace["A"].output is not video[5]  # a copy: drawing on it can't touch the clip
    clip = out.trace["B"].output
    assert clip.times.tolist() == [0.5, 0.625, 0.75, 0.875, 1.0, 1.125]
    assert out.trace["C"].output.tobytes() == video[4].tobytes()  # times stay the video's
    assert out.trace["D"].output.times.tolist() == [0.25, 1.0, 1.625]
    for bad, message in [("Frames(video=VIDEO, n=0)", "at least 1"),
                         ("Clip(video=VIDEO, start=2, end=1)", "before start")]:
        with pytest.raises(StepError, match=message):
            vp.execute(f"X={bad}", video=video)


def test_temporal_questions_over_known_tracks_with_a_cut(vp, clips):
    video = load_video(clips["cut"], {"fps": 8})
    tracks = known_tracks(video, cut=10 / 8)
    program = """\
N=Count(box=T)
FIRST=FirstSeen(tracks=T)
LEFT=LastSeen(tracks=T)
SEEN=SeenFor(tracks=T)
BALL=SeenFor(tracks=B)
AT=ObjectsAt(tracks=T, time=1.0)
LATE=ObjectsAt(tracks=T, time=1.9)
A=Eval(expr="'yes' if {LEFT} < 1.5 and {T} == 2 else 'no'")
"""
    ball = tracks[1]
    out = vp.execute(program, video=video, inputs={"T": tracks, "B": ball})
    t = out.trace
    assert t["N"].output == 2 and t["FIRST"].output == 0.0
    assert t["LEFT"].output == 1.25  # the square leaves at the cut
    assert t["SEEN"].output == 1.25 and t["BALL"].output == 0.5
    at = t["AT"].output
    assert isinstance(at, Objects) and at.image_size == SIZE and len(at) == 1
    assert at.boxes[0].tolist() == list(square_box(8)) and at.extra["track_id"].tolist() == [1]
    assert len(t["LATE"].output) == 0 and t["A"].output == "yes"
    gone = Tracks([7], ["dog"], video.times, end=video.end, frame_size=SIZE,
                  boxes=np.full((len(video), 1, 4), np.nan))
    with pytest.raises(StepError, match=r"no tracked object \(dog\) is seen.*Count"):
        vp.execute("F=FirstSeen(tracks=T)", inputs={"T": gone})
    assert vp.execute("N=Count(box=T)", inputs={"T": gone}).value == 1  # one id, never seen


def test_tracks_values_refuse_what_does_not_fit():
    with pytest.raises(ValueError, match="distinct"):
        Tracks([1, 1], ["a", "b"], [0.0], frame_size=(4, 4), boxes=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="masks of 1 frames x 1 tracks"):
        Tracks([1], ["a"], [0.0], frame_size=(4, 4), boxes=np.zeros((1, 1, 4)),
               masks=np.zeros((1, 1, 3, 3), bool))
    with pytest.raises(ValueError, match="increasing"):
        Video([Image.new("RGB", (8, 8))] * 2, [1.0, 0.5])


def test_a_trace_whose_frame_files_are_gone_still_loads(vp, tmp_path, clips):
    out = vp.execute("F=FrameAt(video=VIDEO, time=0.5)", video=clips["mp4"])
    path = out.save_json(tmp_path / "run.json")
    for f in (tmp_path / "run_files").glob("*.png"):
        f.unlink()
    missing: list[str] = []
    back = Trace.load_json(path, missing=missing)
    assert show(back.inputs["VIDEO"]) == "video of 4 frames (files missing)"
    assert len(missing) == 4 and "files missing" in back.to_html()
    with pytest.raises(ValueError, match="not found"):
        Trace.load_json(path)
