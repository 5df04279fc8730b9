"""The demo's logic without a browser: run, errors, limits, planning, examples, escaping."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprog.demos import app as demo
from visprog.api import VisProg
from visprog.errors import Diagnostic, VisProgError
from visprog.traces.records import Trace

HALF_PROGRAM = ("HALF=Loc(image=IMAGE, object='LEFT')\n"
                "IMAGE0=ColorPop(image=IMAGE, object=HALF)\n"
                "N=Count(box=HALF)\n"
                "RESULT=Result(var=IMAGE0)")


@pytest.fixture(scope="module")
def vp():
    """The engine `launch` builds: the demo's limit on upload pixels."""
    return VisProg(preset="tiny", cache=False, plugins=False, max_pixels=demo.MAX_IMAGE_PIXELS)


@pytest.fixture()
def folders(tmp_path):
    return demo.RunFolders(tmp_path / "runs")


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))


def test_run_image_result_gives_trace_and_downloads(vp, folders, photo):
    seen = []
    out = demo.run_program(vp, HALF_PROGRAM, photo, folders=folders, on_step=seen.append)
    assert out.ok, out.message
    assert out.result_image is not None and out.result_image.size == (80, 60)
    assert out.result_text == "image 80x60 (shown below)"
    assert [s.target for s in seen] == ["HALF", "IMAGE0", "N", "RESULT"]
    assert "Ran 4 steps" in out.message and "vp-ok" in out.message
    assert out.trace_html.startswith("<iframe") and 'sandbox="allow-same-origin"' in out.trace_html
    html_path, json_path = out.files
    assert html_path.endswith(".html") and "<img" in open(html_path, encoding="utf-8").read()
    loaded = Trace.load_json(json_path)  # inline JSON: one file, loads back whole
    assert [s.target for s in loaded] == ["HALF", "IMAGE0", "N", "RESULT"]
    assert isinstance(loaded["IMAGE0"].output, Image.Image)


@pytest.mark.parametrize("value,task,text", [
    (True, "gqa", "yes"), (False, "gqa", "no"), (np.bool_(True), "gqa", "yes"),
    (True, "nlvr", "True"), (False, "nlvr", "False"),
    (3, "gqa", "3"), (0.125, "gqa", "0.125"), ("red", "gqa", "red"),
    (["Mars", "Venus"], "knowtag", "Mars, Venus"), (None, "gqa", ""),
])
def test_format_result(value, task, text):
    assert demo.format_result(value, task) == text


def test_bool_result_reads_yes_no_for_gqa_and_true_false_for_nlvr(vp, folders, photo):
    prog = "HALF=Loc(image=IMAGE, object='TOP')\nN=Count(box=HALF)\nA=Eval(expr='{N} == 1')"
    assert demo.run_program(vp, prog, photo, folders=folders).result_text == "yes"
    pair = prog.replace("IMAGE", "LEFT")
    out = demo.run_program(vp, pair, left=photo, right=photo, task="nlvr", folders=folders)
    assert out.ok and out.result_text == "True"


@pytest.mark.parametrize("program,line,needle", [
    ("HALF=Loc(image=IMAGE, object='LEFT')\nN=Count(box=HALF\n", 2, ""),   # unclosed paren
    ("HALF=Loc(image=IMAGE, object='LEFT')\nX=Sgment(image=IMAGE)", 2, "Sgment"),
    ("N=Count(box=NOPE)", 1, "NOPE"),
])
def test_program_errors_show_inline_with_line_numbers(vp, folders, photo, program, line, needle):
    out = demo.run_program(vp, program, photo, folders=folders)
    assert not out.ok and out.files == [] and out.trace_html == ""
    assert "vp-error" in out.message
    assert f"first on line {line}" in out.message
    assert f"line {line}, column" in out.message
    assert 'class="vp-line vp-bad"><span class="vp-ln">' + str(line) in out.message
    assert needle in out.message


def test_unknown_module_hint_is_shown(vp, folders, photo):
    out = demo.run_program(vp, "X=Sgment(image=IMAGE)", photo, folders=folders)
    assert "hint:" in out.message and "Seg" in out.message


def test_program_reading_a_pair_without_one_says_what_to_upload(vp, folders, photo):
    out = demo.run_program(vp, "A=Loc(image=LEFT, object='TOP')", photo, folders=folders)
    assert not out.ok and "reads LEFT: upload a LEFT/RIGHT pair" in out.message
    # 'LEFT' inside a string is no input; a broken program reading IMAGE gets no such hint
    out = demo.run_program(vp, "A=Loc(image=IMAGE, object='LEFT')\nB=Count(box=A))", photo,
                           folders=folders)
    assert not out.ok and "upload" not in out.message
    out = demo.run_program(vp, "A=Loc(image=IMAGE, object='TOP')", left=photo, right=photo,
                           folders=folders)
    assert not out.ok and "reads IMAGE: upload an image" in out.message


def test_failing_step_names_it_and_keeps_the_trace_up_to_it(vp, folders, photo):
    prog = ("HALF=Loc(image=IMAGE, object='LEFT')\nN=Count(box=HALF)\n"
            "Z=Eval(expr='{N} / 0')\nRESULT=Result(var=Z)")
    out = demo.run_program(vp, prog, photo, folders=folders)
    assert not out.ok
    assert "Step 3 failed (line 3, Z=Eval(...))" in out.message
    assert [s.target for s in out.trace] == ["HALF", "N", "Z"]
    assert out.trace[-1].error and out.trace_html.startswith("<iframe")
    assert len(out.files) == 2 and all(f for f in out.files)
    assert "Steps after the failed one did not run" in open(out.files[0], encoding="utf-8").read()


@pytest.mark.parametrize("program,needle", [
    ("", "empty"),
    ("   \n\n", "empty"),
    ("A=Eval(expr='1')\n" * (demo.MAX_PROGRAM_LINES + 1), f"up to {demo.MAX_PROGRAM_LINES}"),
    ("A=Eval(expr='" + "1+" * demo.MAX_PROGRAM_CHARS + "1')", "characters"),
])
def test_program_limits(vp, folders, photo, program, needle):
    out = demo.run_program(vp, program, photo, folders=folders)
    assert not out.ok and needle in out.message


def test_image_limits_and_bad_uploads(vp, folders, photo, tmp_path):
    small = VisProg(preset="tiny", cache=False, plugins=False, max_pixels=1000)
    out = demo.run_program(small, HALF_PROGRAM, photo, folders=folders)
    assert not out.ok and "IMAGE image" in out.message and "over the limit" in out.message
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    out = demo.run_program(vp, HALF_PROGRAM, str(fake), folders=folders)
    assert not out.ok and "not an image" in out.message
    out = demo.run_program(vp, HALF_PROGRAM, None, folders=folders)
    assert not out.ok and "Upload an image first" in out.message


@pytest.mark.usefixtures("no_llm_env")
def test_uploads_are_bound_by_the_engine_with_its_limits(folders, photo, monkeypatch):
    """Run and Ask read uploads through `VisProg.bind`, so the engine's limits are the only
    ones (here a shortest side of 64 refuses the 80x60 photo that the library's default
    of 8 takes), said with which upload it was; a pair names the failing side."""
    strict = VisProg(preset="tiny", cache=False, plugins=False, min_side=64)
    assert strict.llm is not None  # Vqa's local VLM plans, so Ask gets as far as binding
    bound = []
    real = strict.bind
    monkeypatch.setattr(strict, "bind", lambda *a, **kw: bound.append(kw or a) or real(*a, **kw))
    out = demo.run_program(strict, HALF_PROGRAM, photo, folders=folders)
    assert not out.ok and "the IMAGE image" in out.message and "minimum of 64" in out.message
    _, asked = demo.ask(strict, "How many balls?", "gqa", photo, folders=folders)
    assert not asked.ok and "Can&#x27;t use the uploaded image" in asked.message
    _, pair = demo.ask(strict, "Both have balls.", "nlvr", None, Image.new("RGB", (100, 100)),
                       photo, folders=folders)
    assert not pair.ok and "the RIGHT image" in pair.message
    assert len(bound) == 4  # IMAGE, IMAGE, LEFT, RIGHT: each upload through the engine
    fine = VisProg(preset="tiny", cache=False, plugins=False)
    assert demo.run_program(fine, HALF_PROGRAM, photo, folders=folders).ok


def test_the_demos_pixel_limit_is_its_engines(monkeypatch):
    from visprog.cli import main

    seen = {}
    monkeypatch.setattr(demo, "launch", lambda *a, **kw: seen.update(kw))
    assert demo.main(["--preset", "tiny", "--max-pixels", "1234"]) == 0
    assert seen["max_pixels"] == 1234
    assert main(["demo", "--preset", "tiny", "--no-cache", "--max-pixels", "99"]) == 0
    assert seen["vp"].image_limits["max_pixels"] == 99
    assert main(["demo", "--preset", "tiny", "--no-cache"]) == 0
    assert seen["vp"].image_limits["max_pixels"] == demo.MAX_IMAGE_PIXELS


def test_big_upload_is_refused_before_decoding(vp, folders, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (5000, 4000)).save(path)  # 20 MP > 16 MP, tiny file
    out = demo.run_program(vp, HALF_PROGRAM, str(path), folders=folders)
    assert not out.ok and "20,000,000 pixels" in out.message


def test_everything_from_users_and_models_is_escaped(vp, folders, photo):
    prog = 'A=Eval(expr="\'<script>alert(1)</script>\'")\nB=Nope(x="<b>bold</b>")'
    out = demo.run_program(vp, prog, photo, folders=folders)
    assert "<script>" not in out.message and "<b>bold" not in out.message
    assert "&lt;script&gt;" in out.message
    ok = demo.run_program(vp, 'A=Eval(expr="\'<img src=x onerror=alert(1)>\'")', photo,
                          folders=folders)
    assert ok.ok and ok.result_text == "<img src=x onerror=alert(1)>"
    # the iframe attribute holds the page escaped once more; no raw tag, no template braces
    assert "<img src=x" not in ok.trace_html and "{" not in ok.trace_html
    assert "&amp;lt;img src=x onerror" in ok.trace_html


def test_diagnostics_outside_the_text_still_show():
    d = [Diagnostic(line=0, column=0, text="", message="empty <program>", hint="write a step")]
    out = demo.diagnostics_html("", d)
    assert "empty &lt;program&gt;" in out and "hint: write a step" in out


def test_progress_reports_each_step(vp, folders, photo):
    reports = []
    total = demo.count_steps(vp, HALF_PROGRAM)
    on_step = demo.step_progress(lambda frac, desc: reports.append((frac, desc)), total)
    assert demo.run_program(vp, HALF_PROGRAM, photo, folders=folders, on_step=on_step).ok
    assert [r[0] for r in reports] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert reports[2][1] == "step 2/4: IMAGE0=ColorPop(image=IMAGE, object=HALF)"
    assert demo.count_steps(vp, "N=Count(box=") == 0 and demo.count_steps(vp, "") == 0


class _Planner:
    """Stands in for `VisProg.plan` to test the demo's handling of its answers."""

    def __init__(self, result=None, error=None):
        self.result, self.error, self.calls = result, error, []

    def plan(self, question, task="gqa"):
        self.calls.append((question, task))
        if self.error:
            raise self.error
        return self.result


class _Plan:
    text = "A=Eval(expr='1 + 1')"


@pytest.mark.parametrize("vp_like,question,task,program,needle", [
    (_Planner(_Plan()), "How many?", "gqa", _Plan.text, "Planned"),
    (_Planner(error=VisProgError("no <LLM> configured")), "Q?", "gqa", None,
     "no &lt;LLM&gt; configured<br>You can still write a program"),
    (_Planner(error=RuntimeError("connection refused")), "Q?", "gqa", None, "connection refused"),
    (object(), "Q?", "gqa", None, "OPENAI_API_KEY"),
    (_Planner(_Plan()), "  ", "gqa", None, "Type a question"),
    (_Planner(_Plan()), "x" * (demo.MAX_QUESTION_CHARS + 1), "gqa", None, "characters"),
    (_Planner(_Plan()), "Q?", "vqa2", None, "Unknown task"),
])
def test_plan_program(vp_like, question, task, program, needle):
    text, message = demo.plan_program(vp_like, question, task)
    assert text == program
    assert needle in message


@pytest.mark.usefixtures("no_llm_env")
def test_planning_without_llm_says_so():
    # Vqa on BLIP: no local VLM plans in place of an LLM
    vp = VisProg(preset="tiny", cache=False, plugins=False, config={"Vqa": {"backend": "blip"}})
    text, message = demo.plan_program(vp, "Is there a ball?", "gqa")
    assert text is None and "Planning is not available" in message


def test_examples_are_real_photos_in_an_installed_wheel_and_their_programs_check(vp, tmp_path):
    pytest.importorskip("skimage")
    paths = demo.example_images()
    assert set(paths) == set(demo.EXAMPLE_PHOTOS)  # all in scikit-image's wheel
    import skimage

    for name, path in paths.items():
        assert path.is_file() and Path(skimage.__file__).parent in path.parents
        with Image.open(path) as im:
            assert min(im.size) >= 300  # photos, not drawings
    rows = demo.example_rows(paths)
    assert {r[0] for r in rows} == set(demo.TASKS) - {"video"}  # no video given
    pytest.importorskip("av")
    clip = demo.example_video(tmp_path, paths)
    assert demo.example_video(tmp_path, paths) == clip  # made once
    video = vp.bind(video=clip)["VIDEO"]
    assert video.size == demo.EXAMPLE_VIDEO_SIZE and video.end == pytest.approx(2.0)
    # a pan across the photo: the first frame is its left part, the last its right part
    with Image.open(paths["coffee.png"]) as photo:
        left = np.asarray(photo.convert("RGB").crop((0, 80, 320, 320)), dtype=float)
    assert abs(np.asarray(video.frames[0], dtype=float) - left).mean() < 12
    rows = demo.example_rows(paths, clip)
    assert {r[0] for r in rows} == set(demo.TASKS)
    for task, question, program, image, left, right, video in rows:
        inputs = {name: "Video" if name == "VIDEO" else "Image" for name in demo.TASKS[task]}
        assert vp.check(program, inputs) == [], (task, program)
        assert (image is not None) == ("IMAGE" in inputs)
        assert (video is not None) == ("VIDEO" in inputs)
        assert question and len(question) <= demo.MAX_QUESTION_CHARS
    # a photo that is not there leaves its rows out, not a broken example
    fewer = {k: v for k, v in paths.items() if k != "chelsea.png"}
    assert all("chelsea" not in str(r) for r in demo.example_rows(fewer))
    assert demo.example_rows({}) == []


def test_run_folders_keep_only_the_newest(tmp_path):
    folders = demo.RunFolders(tmp_path, keep=2)
    made = [folders.new() for _ in range(4)]
    assert [p.exists() for p in made] == [False, False, True, True]


def test_build_app_wires_the_widgets(vp, tmp_path):
    pytest.importorskip("gradio")
    app = demo.build_app(vp, folders=demo.RunFolders(tmp_path))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"program", "run-btn", "plan-btn", "ask-btn", "status", "trace-view", "downloads",
            "image-input", "left-input", "right-input", "video-input", "result-text"} <= ids
    config = json.dumps(app.get_config_file(), default=str)
    assert "Run" in config and "Plan" in config


def test_cli_has_demo_subcommand():
    from visprog.cli import build_parser

    args = build_parser().parse_args(["demo", "--preset", "tiny", "--port", "7999"])
    assert args.port == 7999 and args.host == "127.0.0.1" and args.func.__name__ == "cmd_demo"


def test_a_run_reads_each_upload_once_and_renders_the_trace_once(vp, folders, photo, monkeypatch):
    import visprog.values.inputs as inputs_module

    reads, renders = [], []
    real_load, real_html = inputs_module.load_image, Trace.to_html
    monkeypatch.setattr(inputs_module, "load_image",
                        lambda *a, **k: reads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(Trace, "to_html", lambda self: renders.append(1) or real_html(self))
    out = demo.run_program(vp, HALF_PROGRAM, photo, folders=folders)
    assert out.ok and reads == [1] and renders == [1]  # read by the engine's bind, once


def test_a_taken_port_is_one_line_naming_it_and_the_flag(capsys):
    import socket

    from visprog.cli import EXIT_USAGE, main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(demo.PortInUse, match=f"port {port} on 127.0.0.1 is in use.*--port"):
            demo.check_port("127.0.0.1", port)
        assert main(["demo", "--preset", "tiny", "--port", str(port)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"port {port}" in err and "--port" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    demo.check_port("127.0.0.1", None)  # Gradio picks one: nothing to check


IMAGE_ANSWER = ("HALF=Loc(image=IMAGE, object='LEFT')\nIMAGE0=ColorPop(image=IMAGE, object=HALF)\n"
                "RESULT=Result(var=IMAGE0)")
YES_NO = "HALF=Loc(image=IMAGE, object='LEFT')\nN=Count(box=HALF)\n" \
         "A=Eval(expr=\"'yes' if {N} > 0 else 'no'\")\nRESULT=Result(var=A)"


@pytest.mark.parametrize("replies, kind, title", [
    # every attempt answers a yes/no question with an image: flagged each time
    ([IMAGE_ANSWER] * 3, "vp-warn", "Answered, but every attempt was flagged"),
    # the first is flagged, its repair is not: answered after repair
    ([IMAGE_ANSWER, YES_NO], "vp-ok", "Answered after repair"),
    ([YES_NO], "vp-ok", "Answered"),
])
def test_ask_warns_with_the_findings_when_the_answer_given_was_flagged(folders, photo, replies,
                                                                         kind, title):
    from llm_server import ScriptedServer, scripted_client

    with ScriptedServer([f"```\n{r}\n```" for r in replies]) as server:
        vp = VisProg(preset="tiny", cache=False, plugins=False, llm=scripted_client(server))
        program, out = demo.ask(vp, "Is the left half red?", "gqa", photo, folders=folders)
    assert out.ok and program is not None
    assert f'class="vp-msg {kind}"' in out.message and f"<b>{title}" in out.message
    flagged = "the question asks for yes or no" in out.message
    assert flagged == (kind == "vp-warn" or len(replies) == 2)  # findings, or a repaired attempt
    if kind == "vp-warn":
        assert '<ul class="vp-findings"><li>[answer_type] ' in out.message
