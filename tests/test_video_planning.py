"""Video questions planned and answered (issue 22 items 4 and 5): the `video` task's prompt
(its modules from their declarations, its examples), one-shot and agent mode end to end
with the scripted loopback LLM server (tests/llm_server.py) through the real `openai`
client, what a Look at a video or at tracks shows (a few frames, each counted against the
images budget), the checks that refuse a video or tracks as an answer, `run --video` on
the command line and `run_batch` items with a video. The tiny SAM 3 video model tracks
(its weights are random: what it finds means nothing, so expectations are read from what
it found)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")
pytest.importorskip("torch")

from llm_server import ScriptedServer, image_parts, scripted_client, text_of  # noqa: E402
from video_clips import square_frames, write_clip  # noqa: E402
from visprog.errors import VideoError  # noqa: E402
from visprog.planning.agent import AgentSettings, look_at  # noqa: E402
from visprog.planning.checks import run_checks  # noqa: E402
from visprog.traces.events import AgentRun, Repair, Round  # noqa: E402
from visprog.traces.records import Trace  # noqa: E402
from visprog.traces.step import StepRecord  # noqa: E402
from visprog.traces.video import track_color  # noqa: E402
from visprog.values import Tracks, Video  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_llm_env")

TRACK = "T=Track(video=VIDEO, object='red square')"
ANSWER = "N=Count(box=T)\nANSWER=Eval(expr=\"'yes' if {N} > 0 else 'no'\")\nFINAL=Result(var=ANSWER)"
LOOK_ROUND = f"{TRACK}\nF=FrameAt(video=VIDEO, time=1)\nLOOK_F=Look(var=F)\nLOOK_T=Look(var=T)"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 8 frames at 4 per second: bound at the default 2 per second, 4 frames over 2 s
    return write_clip(tmp_path_factory.mktemp("plan") / "square.mp4", square_frames(8), fps=4)


@pytest.fixture(scope="module")
def shared():
    """One engine for the module, its step cache in memory: Track runs on the clip once."""
    from visprog import VisProg
    from visprog.engine.cache import StepCache

    return VisProg(preset="tiny", cache=StepCache(memory=True), plugins=False)


def engine(vp, server, *, images=False):
    vp.llm = scripted_client(server)
    vp.llm.takes_images = images
    return vp


# --------------------------------------------------------------------------- what a Look shows


def shows(*args, **kw):
    view = look_at(*args, **kw)
    return view.text, view.images


def known_video_and_tracks():
    """A 12-frame clip (2 per second) of coloured frames and two tracks: #1 seen in frames
    0-3, #2 in frames 2-11."""
    frames = [Image.new("RGB", (320, 180), (10 * i, 200, 40)) for i in range(12)]
    video = Video(frames, [i / 2 for i in range(12)], sampling={"fps": 2})
    boxes = np.full((12, 2, 4), np.nan)
    boxes[0:4, 0] = [20, 40, 120, 140]
    boxes[2:12, 1] = [200, 30, 300, 170]
    tracks = Tracks([1, 2], ["car", "dog"], video.times, end=video.end, frame_size=video.size,
                    boxes=boxes)
    return video, tracks


def look_trace(video, tracks):
    steps = [StepRecord(0, 1, "T=Track(video=VIDEO, object='car')", "T", "Track",
                        {"video": video, "object": "car"}, {"video": "VIDEO"}, tracks,
                        draw_on="video"),
             StepRecord(1, 2, "A=T", "A", None, {"var": tracks}, {"var": "T"}, tracks),
             StepRecord(2, 3, "L=Look(var=A)", "L", "Look", {"var": tracks}, {"var": "A"},
                        tracks, draw_on=None),
             StepRecord(3, 4, "V=Look(var=VIDEO)", "V", "Look", {"var": video},
                        {"var": "VIDEO"}, video, draw_on=None)]
    return Trace("", steps=steps, inputs={"VIDEO": video})


def test_a_look_at_a_video_shows_a_few_frames_with_their_times():
    video, tracks = known_video_and_tracks()
    trace = look_trace(video, tracks)
    settings = AgentSettings(look_max_pixels=200 * 200, look_min_pixels=40 * 40)
    text, shown = shows(trace, 3, settings, True)
    assert text == ("Look at VIDEO: a video of 12 frames of 320x180, 0.00 s to 6.00 s; 4 frames "
                    "shown: 0.00 s ({image}), 2.00 s ({image}), 3.50 s ({image}), 5.50 s "
                    "({image}).")
    assert len(shown) == 4
    # the four frames together keep to the bound of one image
    assert all(im.size[0] * im.size[1] <= 200 * 200 // 4 for im in shown)
    assert [np.asarray(im)[5, 5, 0] for im in shown] == [0, 40, 70, 110]  # frames 0, 4, 7, 11
    assert look_at(trace, 3, settings, True).frames == [0.0, 2.0, 3.5, 5.5]
    # the images budget: no more frames than it has room for, and one when it has none
    text, shown = shows(trace, 3, settings, True, room=2)
    assert len(shown) == 2 and "2 frames shown; the images budget has room for 2:" in text
    assert len(shows(trace, 3, settings, True, room=0)[1]) == 1
    assert len(shows(trace, 3, AgentSettings(look_frames=6), True, room=9)[1]) == 6
    text, shown = shows(trace, 3, settings, False)
    assert shown == [] and "{image}" not in text and "not shown" in text


def test_a_look_at_tracks_draws_them_on_the_frames_they_are_seen_in():
    video, tracks = known_video_and_tracks()
    trace = look_trace(video, tracks)
    settings = AgentSettings(look_max_pixels=4 * 320 * 180, look_min_pixels=100)  # as they are
    text, shown = shows(trace, 2, settings, True)
    lines = text.split("\n")
    assert lines[0] == ("Look at A: 2 tracked objects over 12 frames of 320x180, drawn on 4 "
                        "frames: 0.00 s ({image}), 2.00 s ({image}), 3.50 s ({image}), 5.50 s "
                        "({image}); boxes from 0 to 1000:")
    assert lines[1] == ("  #1 car: seen 0.00 s to 2.00 s (2.00 s in all); at 0.00 s [62, 222, "
                        "375, 778], at 1.50 s [62, 222, 375, 778]")
    assert lines[2].startswith("  #2 dog: seen 1.00 s to 6.00 s (5.00 s in all); at 1.00 s")
    assert len(shown) == 4 and shown[0].size == (320, 180)
    assert look_at(trace, 2, settings, True).frames == [0.0, 2.0, 3.5, 5.5]
    first = np.asarray(shown[0])
    # drawn over the video's own frame (through the alias A=T), each id in its colour
    assert first[100, 180].tolist() == [0, 200, 40]
    assert first[80, 20].tolist() == list(track_color(1))
    assert list(track_color(2)) in np.asarray(shown[3]).reshape(-1, 3).tolist()
    text, shown = shows(trace, 2, settings, True, room=3)
    assert len(shown) == 3 and "the images budget has room for 3" in text
    text, shown = shows(trace, 2, settings, False)
    assert shown == [] and "#2 dog: seen 1.00 s to 6.00 s" in text and "{image}" not in text
    # tracks no step made (an input) are drawn over grey
    alone = Trace("", steps=[StepRecord(0, 1, "L=Look(var=X)", "L", "Look", {"var": tracks},
                                        {"var": "X"}, tracks, draw_on=None)])
    _, shown = shows(alone, 0, settings, True)
    assert np.asarray(shown[0])[100, 180].tolist() == [235, 235, 235]
    # regions of one frame of the tracks (ObjectsAt) are drawn over that frame of the video
    at = tracks.frame(tracks.index_at(1.0))  # frame 2: both objects seen
    trace.steps += [StepRecord(4, 5, "O=ObjectsAt(tracks=T, time=1)", "O", "ObjectsAt",
                               {"tracks": tracks, "time": 1}, {"tracks": "T"}, at,
                               draw_on=None),
                    StepRecord(5, 6, "LO=Look(var=O)", "LO", "Look", {"var": at}, {"var": "O"},
                               at, draw_on=None)]
    text, [drawn] = shows(trace, 5, settings, True)
    assert text.startswith("Look at O: 2 regions of a 320x180 image (drawn in {image})")
    assert np.asarray(drawn)[100, 180].tolist() == [20, 200, 40]  # frame 2, not grey
    nothing = Tracks.empty(video)
    _, shown = shows(Trace("", steps=[StepRecord(0, 1, "L=Look(var=X)", "L", "Look",
                                                   {"var": nothing}, {"var": "X"}, nothing)]),
                       0, settings, True)
    assert len(shown) == 4  # nothing seen: the clip's frames, spread evenly


# --------------------------------------------------------------------------- checks


def test_a_video_or_tracks_never_answers_a_question():
    video, tracks = known_video_and_tracks()
    trace = look_trace(video, tracks)
    for value, kind in ((tracks, "Tracks: 2 tracks"), (video, "Video: 320x180")):
        for question in ("How many cars are there?", "Is it to the left or right?"):
            found = run_checks(question, "video", trace, value, ["answer_type"])
            assert len(found) == 1 and kind in found[0].message, (question, found)
    assert run_checks("How many cars are there?", "video", trace, 2, ["answer_type"]) == []
    # multiple choice (NExT-QA, EgoSchema): whatever chooses an option answers
    choice = "How many babies are in the video?\n(A) kitchen\n(B) four\n(C) two"
    for answer in ("C", "(C)", "two", 2, "B. four"):
        assert run_checks(choice, "video", trace, answer, ["answer_type"]) == [], answer
    for answer in ("purple", "D", tracks):
        [found] = run_checks(choice, "video", trace, answer, ["answer_type"])
        assert "choose one of the options (A), (B), (C)" in found.message
    # a Track that found none of what the question presumes, used later
    empty = Tracks.empty(video)
    steps = [StepRecord(0, 1, "T=Track(video=VIDEO, object='car')", "T", "Track",
                        {"video": video, "object": "car"}, {"video": "VIDEO"}, empty),
             StepRecord(1, 2, "W=SeenFor(tracks=T)", "W", "SeenFor", {"tracks": empty},
                        {"tracks": "T"}, 0.0)]
    found = run_checks("How long is the car on screen?", "video", Trace("", steps=steps), 0.0,
                       ["empty_used"])
    assert len(found) == 1 and "found no 'car'" in found[0].message
    assert run_checks("Is there a car?", "video", Trace("", steps=steps), 0.0,
                      ["empty_used"]) == []


# --------------------------------------------------------------------------- one-shot


def test_a_video_question_is_planned_with_the_video_prompt_and_answered(shared, clip):
    program = f"{TRACK}\n{ANSWER}"
    with ScriptedServer([program]) as server:
        out = engine(shared, server).run(None, "Is there a red square?", video=str(clip))
    [request] = server.requests
    system = request["messages"][0]["content"]
    assert "Inputs already defined: VIDEO (Video)." in system
    for line in ("- Track(video: Video, object: Text|TextList) -> Tracks",
                 "- FrameAt(video: Video, time: Number) -> Image",
                 "- VideoQa(video: Video, question: Text) -> Text",
                 "- Count(box: Objects|Tracks) -> Number", "- Vqa(image: Image, question: Text)",
                 "- Result(var: Any) -> Any"):
        assert line in system, line
    for other in ("- Replace(", "- Look(", "- Region(", "- Classify(", "LEFT (Image)"):
        assert other not in system, other
    assert request["messages"][1]["content"] == "Question: How many dogs appear in the video?"
    assert request["messages"][-1]["content"] == "Question: Is there a red square?"
    tracks = out.trace["T"].output
    assert isinstance(tracks, Tracks) and out.trace.meta["task"] == "video"
    assert out.value == ("yes" if len(tracks) else "no")


def test_tracks_as_an_answer_are_repaired(shared, clip):
    bad = f"{TRACK}\nFINAL=Result(var=T)"
    with ScriptedServer([bad, f"{TRACK}\n{ANSWER}"]) as server:
        out = engine(shared, server).run(None, "Is there a red square?", video=str(clip))
    assert out.value in ("yes", "no") and len(server.requests) == 2
    told = server.requests[1]["messages"][-1]["content"]
    assert "[answer_type]" in told and "but the answer is Tracks:" in told
    [repair] = out.trace.find(Repair)
    assert [a.reason for a in repair.attempts] == ["first", "check"] and repair.chosen == 1


# --------------------------------------------------------------------------- agent mode


@pytest.mark.parametrize("images", [True, False])
def test_agent_mode_tracks_looks_at_frames_then_answers(shared, clip, images, tmp_path):
    with ScriptedServer([LOOK_ROUND, ANSWER]) as server:
        out = engine(shared, server, images=images).run(None, "Is there a red square?",
                                                        video=str(clip), mode="agent")
    first, second = server.requests
    system = first["messages"][0]["content"]
    assert "- Look(var: Any) -> Any" in system and "- Track(video: Video" in system
    assert "Question: What color is the car that drives off first?" in [
        m["content"] for m in first["messages"] if m["role"] == "user"]
    tracks = out.trace["T"].output
    seen_frames = int(tracks.seen.any(axis=1).sum()) or len(tracks.times)
    drawn = min(4, seen_frames)
    told = text_of(second["messages"][-1])
    shown = image_parts(second["messages"][-1])
    [r1, r2] = out.trace.find(Round)
    [end] = out.trace.find(AgentRun)
    if images:
        assert len(shown) == 1 + drawn == len(r1.images) == end.images
        assert "Look at F: an image of 160x120 pixels (image 1)." in told
        assert f"Look at T: {len(tracks)} tracked object" in told
        assert f"drawn on {drawn} frame" in told and "(image 2)" in told
        assert end.image_tokens > 0
        # the tracks' frames (by their times in the video), kept with the round
        assert len(r1.frames) == drawn and set(r1.frames) <= set(tracks.times.tolist())
        loaded = Trace.load_json(out.trace.save_json(tmp_path / "t.json"))
        assert loaded.find(Round)[0].frames == r1.frames
    else:
        assert shown == [] and end.images == 0 and "not shown" in told and r1.frames == []
    assert r1.looks == ["F", "T"] and r2.observation == ""
    assert (end.stop, end.rounds) == ("result", 2)
    assert out.value == ("yes" if len(tracks) else "no")
    assert out.program.source == LOOK_ROUND + "\n" + ANSWER


def test_the_images_budget_bounds_the_frames_the_planner_sees(shared, clip):
    with ScriptedServer([LOOK_ROUND, ANSWER]) as server:
        out = engine(shared, server, images=True).run(
            None, "Is there a red square?", video=str(clip), mode="agent",
            agent={"images": 2})
    # the frame took one image; the tracks are drawn on the one frame left
    assert len(image_parts(server.requests[1]["messages"][-1])) == 2
    assert "the images budget has room for 1" in text_of(server.requests[1]["messages"][-1])
    assert out.trace.find(AgentRun)[0].images == 2
    with ScriptedServer([LOOK_ROUND, ANSWER]) as server:
        out = engine(shared, server, images=True).run(
            None, "Is there a red square?", video=str(clip), mode="agent",
            agent={"images": 1}, repair=False)
    assert len(server.requests) == 1  # no room for the tracks' frame: nothing more is sent
    [end] = out.trace.find(AgentRun)
    assert end.stop == "images" and end.images == 0


# --------------------------------------------------------------------------- entry points


def test_run_batch_items_with_a_video_are_video_questions(shared, clip):
    from visprog.engine.batch import BatchItem

    assert BatchItem(video="x.mp4").task == "video" and BatchItem(image="x.png").task == "gqa"
    with ScriptedServer([f"{TRACK}\n{ANSWER}"]) as server:
        [res] = engine(shared, server).run_batch(
            [{"video": str(clip), "question": "Is there a red square?", "id": "q"}])
    assert res.error is None and res.value in ("yes", "no")
    assert "VIDEO (Video)" in server.requests[0]["messages"][0]["content"]


def test_the_command_line_runs_a_video_question(clip, monkeypatch, capsys):
    from visprog.cli import main

    with ScriptedServer([f"{TRACK}\n{ANSWER}"]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        monkeypatch.setenv("VISPROG_LLM_MODEL", "m")
        code = main(["run", "--video", str(clip), "Is there a red square?", "--preset", "tiny",
                     "--frames", "3", "--no-cache"])
        captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() in ("yes", "no")
    assert "VIDEO (Video)" in server.requests[0]["messages"][0]["content"]


# --------------------------------------------------------------------------- composed queries


def test_video_queries_have_the_video_modules_as_methods(shared, clip):
    from visprog.query import QueryError

    video = shared.video(str(clip))
    assert {"track", "frame_at", "frames", "clip", "video_qa"} <= set(dir(video))
    assert "loc" not in dir(video)
    squares = video.track("red square")
    assert {"count", "first_seen", "last_seen", "seen_for", "objects_at"} <= set(dir(squares))
    answer = (squares.count() > 0).then("yes", "no")
    assert answer.program == (f"RED_SQUARE={TRACK[2:]}\nCOUNT=Count(box=RED_SQUARE)\n"
                              "EVAL=Eval(expr=\"'yes' if {COUNT} > 0 else 'no'\")\n")
    assert list(answer.inputs) == ["VIDEO"]
    direct = shared.execute(f"{TRACK}\n{ANSWER}", video=str(clip))
    assert answer.value == direct.value  # runs exactly as the program text would
    frame = video.frame_at(squares.first_seen()) if len(direct.trace["T"].output) else \
        video.frame_at(0)
    assert isinstance(frame.value, Image.Image) and frame.value.size == (160, 120)
    assert "vqa" in dir(frame)  # a frame is an Image: every image module applies
    few = shared.video(str(clip), frames=2)
    assert len(few.value) == 2 and few.clip(0, 1).frames(n=1).program == (
        "CLIP=Clip(video=VIDEO, start=0, end=1)\nFRAMES=Frames(video=CLIP, n=1)\n")
    [batched] = shared.run_batch([answer])
    assert batched.value == direct.value
    with pytest.raises(QueryError, match="loc\\(\\) is not a method of Video values"):
        video.loc("square")
    with pytest.raises(QueryError, match="takes video as Video"):
        squares.frame_at(1)
    with pytest.raises(QueryError, match="give a video file's path"):
        shared.video(None)
    with pytest.raises(VideoError, match="video file not found"):
        shared.video("no such clip.mp4")


# --------------------------------------------------------------------------- the demo


def test_the_demo_runs_and_asks_about_an_uploaded_video(shared, clip, tmp_path):
    from visprog.demos import app as demo

    folders = demo.RunFolders(tmp_path)
    out = demo.run_program(shared, f"{TRACK}\n{ANSWER}", video=str(clip), task="video",
                           folders=folders)
    assert out.ok, out.message
    assert out.result_text in ("yes", "no") and "Ran 4 steps" in out.message
    assert 'class=&quot;strip&quot;' in out.trace_html  # the tracks drawn on a strip of frames
    # a program that reads VIDEO with no video says what to upload
    out = demo.run_program(shared, f"{TRACK}\n{ANSWER}", image=Image.new("RGB", (64, 64)),
                           folders=folders)
    assert not out.ok and "reads VIDEO: upload a video (task video)" in out.message
    # a file that is not a video is refused by the engine, saying so
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    out = demo.run_program(shared, f"{TRACK}\n{ANSWER}", video=str(fake), folders=folders)
    assert not out.ok and "Can&#x27;t use the uploaded video" in out.message
    assert "the VIDEO video" in out.message
    # Ask: the video task plans with VIDEO and answers, in one go and in agent mode
    with ScriptedServer([f"{TRACK}\n{ANSWER}"]) as server:
        program, out = demo.ask(engine(shared, server), "Is there a red square?", "video",
                                video=str(clip), folders=folders)
    assert out.ok and out.result_text in ("yes", "no") and program == f"{TRACK}\n{ANSWER}"
    assert "VIDEO (Video)" in server.requests[0]["messages"][0]["content"]
    with ScriptedServer([LOOK_ROUND, ANSWER]) as server:
        program, out = demo.ask(engine(shared, server, images=True), "Is there a red square?",
                                "video", video=str(clip), folders=folders, agent=True)
    assert out.ok and "Answered in 2 rounds" in out.message and "(looked at F, T)" in out.message
    assert out.message.count("<img ") >= 2  # the frame and the tracks' frames it was shown
    _, out = demo.ask(shared, "Is there a red square?", "video", image=str(clip),
                      folders=folders)
    assert not out.ok and "Upload a video first." in out.message


def test_the_trace_page_draws_tracks_over_their_video_in_the_steps_that_read_them():
    import base64
    import io
    import re

    video, tracks = known_video_and_tracks()
    trace = look_trace(video, tracks)
    trace.steps.append(StepRecord(4, 5, "N=Count(box=T)", "N", "Count", {"box": tracks},
                                  {"box": "T"}, 2, draw_on=None))
    card = next(c for c in trace.to_html().split('<section class="card')
                if "N=Count(box=T)" in c)
    images = [Image.open(io.BytesIO(base64.b64decode(m))).convert("RGB")
              for m in re.findall(r'src="data:image/[a-z]+;base64,([^"]+)"', card)]
    # the Count step's tracks are drawn over the video's frames (blue 40), not grey (235)
    assert len(images) == 8 and all(np.asarray(im)[2, -3, 2] < 100 for im in images)
