"""The demo in a real headless Chromium: upload, run, trace, errors, examples, downloads, and
the standalone trace page. Screenshots go to artifacts/ (look at them).

Needs: `pip install playwright gradio` and Debian's `chromium` (apt-get install -y chromium);
Playwright's own browser download is not used.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="browser tests need the playwright package")
pytest.importorskip("gradio", reason="browser tests need gradio (the demo extra)")
CHROMIUM = os.environ.get("VISPROG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("browser tests need Chromium: apt-get install -y chromium "
                "(or set VISPROG_CHROMIUM)", allow_module_level=True)

from visprog.demos import app as demo  # noqa: E402
from visprog.api import VisProg  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
HALF_PROGRAM = ("HALF=Loc(image=IMAGE, object='LEFT')\n"
                "IMAGE0=ColorPop(image=IMAGE, object=HALF)\n"
                "N=Count(box=HALF)\n"
                "RESULT=Result(var=IMAGE0)")
BROKEN_PROGRAM = ("HALF=Loc(image=IMAGE, object='LEFT')\n"
                  "N=Count(box=HALF))\n"
                  "RESULT=Result(var=N)")
FAILING_PROGRAM = ("HALF=Loc(image=IMAGE, object='TOP')\nN=Count(box=HALF)\n"
                   "Z=Eval(expr='{N} / 0')\nRESULT=Result(var=Z)")
TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # No LLM: planning must say so, and programs must still run.
    saved = {k: os.environ.pop(k) for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL")
             if k in os.environ}
    port = _free_port()
    # (Vqa on BLIP: a local chat VLM would plan in place of an LLM)
    vp = VisProg(preset="tiny", cache=False, plugins=False, config={"Vqa": {"backend": "blip"}})
    blocks = demo.launch(vp=vp, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ARTIFACTS.mkdir(exist_ok=True)
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server)
    pg.wait_for_selector("#run-btn")
    yield pg
    pg.close()


def _set_program(page, text: str) -> None:
    editor = page.locator("#program .cm-content")
    editor.click()
    editor.fill(text)


def _run(page) -> None:
    """Press Run and wait for the run's own status message (a message shown before, e.g.
    Plan's, stays on screen while the run is in progress)."""
    msg = page.locator("#status .vp-msg")
    before = msg.first.inner_text() if msg.count() else None
    page.click("#run-btn")
    page.wait_for_function(
        "(before) => { const m = document.querySelector('#status .vp-msg');"
        " return m !== null && m.innerText !== before; }", arg=before)


def test_upload_run_shows_result_trace_and_downloads(page):
    coffee = demo.example_images()["coffee.png"]
    page.locator("#image-input input[type=file]").set_input_files(str(coffee))
    page.wait_for_selector("#image-input img")
    _set_program(page, HALF_PROGRAM)
    _run(page)
    assert "Ran 4 steps" in page.locator("#status").inner_text()
    assert page.locator("#result-text textarea").input_value() == "image 600x400 (shown below)"
    page.wait_for_selector("#result-image img")
    trace = page.frame_locator("iframe.vp-trace")
    cards = trace.locator("section.card")
    assert cards.count() == 4
    assert "ColorPop" in cards.nth(1).inner_text()
    widths = trace.locator("img").evaluate_all("els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 5 and all(w > 0 for w in widths)
    links = page.locator("#downloads a")
    names = page.locator("#downloads").inner_text().replace("\n", "")
    assert "visprog_trace.html" in names and "visprog_trace.json" in names
    href = links.first.get_attribute("href")
    resp = page.request.get(href if href.startswith("http") else page.url.rstrip("/") + href)
    assert resp.ok and b"visprog trace" in resp.body()
    page.screenshot(path=str(ARTIFACTS / "demo_run.png"), full_page=True)


def test_broken_program_shows_error_with_its_line(page):
    page.locator("#image-input input[type=file]").set_input_files(
        str(demo.example_images()["coffee.png"]))
    _set_program(page, BROKEN_PROGRAM)
    _run(page)
    status = page.locator("#status")
    text = status.inner_text()
    assert "does not parse" in text and "line 2" in text
    bad = status.locator(".vp-bad")
    assert bad.count() == 1 and bad.inner_text().startswith("2")
    assert "N=Count(box=HALF))" in bad.inner_text()
    assert page.locator("iframe.vp-trace").count() == 0
    status.screenshot(path=str(ARTIFACTS / "demo_parse_error.png"))


def test_failing_step_shows_which_and_the_trace_up_to_it(page):
    page.locator("#image-input input[type=file]").set_input_files(
        str(demo.example_images()["coffee.png"]))
    _set_program(page, FAILING_PROGRAM)
    _run(page)
    assert "Step 3 failed (line 3" in page.locator("#status").inner_text()
    trace = page.frame_locator("iframe.vp-trace")
    assert trace.locator("section.card").count() == 3
    assert trace.locator("section.card.failed").count() == 1
    page.screenshot(path=str(ARTIFACTS / "demo_step_error.png"), full_page=True)


def test_pair_example_and_plan_without_llm(page):
    rows = page.locator("#examples table tbody tr")
    rows.filter(has_text="cat on the left").first.click()
    page.wait_for_selector("#left-input img")
    page.wait_for_selector("#right-input img")
    # real photos (scikit-image's cat and coffee), not drawn shapes
    sizes = [page.locator(f"#{side}-input img").first.evaluate(
        "im => [im.naturalWidth, im.naturalHeight]") for side in ("left", "right")]
    assert sizes == [[451, 300], [600, 400]]
    assert "LEFT" in page.locator("#program .cm-content").inner_text()
    assert page.locator("#task input[value=nlvr]").is_checked()
    page.click("#plan-btn")
    page.wait_for_selector("#status .vp-msg")
    assert "still write a program" in page.locator("#status").inner_text()
    # the program is kept, so it can still be run by hand
    assert "LEFT" in page.locator("#program .cm-content").inner_text()
    page.screenshot(path=str(ARTIFACTS / "demo_pair_example.png"), full_page=True)


def test_standalone_trace_page_renders(page, tmp_path):
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    out = demo.run_program(vp, HALF_PROGRAM, demo.example_images()["coffee.png"],
                           folders=demo.RunFolders(tmp_path))
    html_path = Path(out.files[0])
    page.goto(html_path.as_uri())
    assert page.title() == "visprog trace"
    widths = page.locator("img").evaluate_all("els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 5 and all(w > 0 for w in widths)
    assert page.locator("section.card").count() == 4
    assert page.locator("table.regions").count() >= 1  # the half box, listed under its drawing
    page.screenshot(path=str(ARTIFACTS / "trace_page.png"), full_page=True)


def test_trace_page_draws_counted_regions_over_their_image_and_folds_long_tables(page, tmp_path):
    pytest.importorskip("onnx", reason="tiny:yunet is exported with torch.onnx")
    # a random YuNet finds hundreds of "faces": a long table, counted by a step of no image
    vp = VisProg(preset="tiny", cache=False, plugins=False,
                 config={"FaceDet": {"backend": "yunet", "model": "tiny:yunet",
                                     "score_threshold": 0.5}})
    out = vp.execute("FACES=FaceDet(image=IMAGE)\nN=Count(box=FACES)",
                     image=str(Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"))
    n = out.value
    assert n > 50
    html_path = out.trace.save_html(tmp_path / "t.html")
    page.goto(html_path.as_uri())
    cards = page.locator("section.card")
    found = cards.nth(0).locator("img").last.get_attribute("src")
    counted = cards.nth(1).locator("img")
    assert counted.count() == 1 and counted.get_attribute("src") == found  # over the photo
    # the region table: every column named, the first rows shown, the rest folded
    heads = cards.nth(1).locator("table.regions").first.locator("th").all_inner_texts()
    assert heads == ["#", "label", "score", "box (x1, y1, x2, y2)"]
    fold = cards.nth(1).locator("details.more")
    assert fold.locator("summary").inner_text() == f"show all {n} regions"
    assert cards.nth(1).locator("table.regions").first.locator("tr").count() == 1 + 5
    assert not fold.locator("table").is_visible()
    fold.locator("summary").click()
    assert fold.locator("table").is_visible()
    assert fold.locator("tr").count() == 1 + 45 + 1  # header, rows 6-50, "... more"
    cards.nth(1).screenshot(path=str(ARTIFACTS / "trace_count_folded_open.png"))


PLANNED = ("HALF=Loc(image=IMAGE, object='LEFT')\n"
           "N=Count(box=HALF)\n"
           "FINAL=Result(var=N)")


@pytest.fixture(scope="module")
def planning_server():
    """The demo with a real LLM client talking to a scripted chat-completions server on
    127.0.0.1: Plan must fill the program box with what the model wrote."""
    from llm_server import ScriptedServer, scripted_client

    reply = f"Here is the program:\n```\n{PLANNED}\n```"
    with ScriptedServer([reply]) as llm_server:
        llm = scripted_client(llm_server)
        vp = VisProg(preset="tiny", cache=False, plugins=False, llm=llm)
        port = _free_port()
        blocks = demo.launch(vp=vp, port=port, block=False)
        yield f"http://127.0.0.1:{port}/", llm_server
        blocks.close()


def test_plan_fills_the_program_then_run_answers(browser, planning_server):
    url, llm_server = planning_server
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    pg.wait_for_selector("#run-btn")
    pg.locator("#image-input input[type=file]").set_input_files(
        str(demo.example_images()["coffee.png"]))
    pg.wait_for_selector("#image-input img")
    pg.locator("#question textarea").fill("How many halves are on the left?")
    pg.click("#plan-btn")
    pg.wait_for_function(
        "() => document.querySelector('#program .cm-content').innerText.includes('FINAL=')")
    program = pg.locator("#program .cm-content").inner_text()
    assert "N=Count(box=HALF)" in program and "```" not in program  # cleaned of the fences
    assert len(llm_server.requests) == 1
    assert "How many halves are on the left?" in str(llm_server.requests[0])
    _run(pg)
    assert "Ran 3 steps" in pg.locator("#status").inner_text()
    assert pg.locator("#result-text textarea").input_value() == "1"
    # a text answer: no empty image box taking half the screen
    assert not pg.locator("#result-image").is_visible()
    pg.screenshot(path=str(ARTIFACTS / "demo_plan_run.png"), full_page=True)
    pg.close()


FLAGGED = ("HALF=Loc(image=IMAGE, object='LEFT')\nIMAGE0=ColorPop(image=IMAGE, object=HALF)\n"
           "RESULT=Result(var=IMAGE0)")


@pytest.fixture()
def flagging_server():
    """The demo with an LLM that answers a yes/no question with an image, every time."""
    from llm_server import ScriptedServer, scripted_client

    with ScriptedServer([f"```\n{FLAGGED}\n```"] * 3) as llm_server:
        vp = VisProg(preset="tiny", cache=False, plugins=False, llm=scripted_client(llm_server))
        port = _free_port()
        blocks = demo.launch(vp=vp, port=port, block=False)
        yield f"http://127.0.0.1:{port}/"
        blocks.close()


def test_ask_flagged_every_time_warns_with_findings_and_the_trace_panels_read(browser,
                                                                             flagging_server):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(flagging_server)
    pg.wait_for_selector("#run-btn")
    pg.locator("#image-input input[type=file]").set_input_files(
        str(demo.example_images()["coffee.png"]))
    pg.wait_for_selector("#image-input img")
    pg.locator("#question textarea").fill("Is the cup full?")
    pg.click("#ask-btn")
    pg.wait_for_selector("#status .vp-msg")
    status = pg.locator("#status .vp-msg")
    assert "vp-warn" in status.get_attribute("class")
    assert "Answered, but every attempt was flagged" in status.inner_text()
    assert "[answer_type]" in status.locator(".vp-findings").inner_text()
    assert status.locator(".vp-attempts li").count() == 3
    assert pg.locator("#result-image").is_visible()  # the answer is an image: shown
    # the trace's Events and Run details: fields that wrap, never wider than the frame
    trace = pg.frame_locator("iframe.vp-trace")
    for summary in ("Events", "Run details"):
        trace.locator(f"summary:has-text('{summary}')").click()
    events = trace.locator("details:has(summary:has-text('Events')) table.fields")
    assert events.count() >= 2 and trace.locator("details pre:has-text('{')").count() == 0
    assert "plan attempt" in trace.locator("details").first.inner_text()
    widths = trace.locator("html").evaluate(
        "h => [h.scrollWidth, h.clientWidth]")
    assert widths[0] <= widths[1], widths  # nothing runs off the right edge
    trace.locator("summary:has-text('Events')").scroll_into_view_if_needed()
    pg.screenshot(path=str(ARTIFACTS / "demo_ask_flagged.png"), full_page=True)
    pg.locator("iframe.vp-trace").screenshot(path=str(ARTIFACTS / "demo_ask_flagged_trace.png"))
    pg.close()


VIDEO_PROGRAM = ("SQUARES=Track(video=VIDEO, object='red square')\n"
                 "N=Count(box=SQUARES)\n"
                 "RESULT=Result(var=N)")


@pytest.fixture(scope="module")
def square_clip(tmp_path_factory):
    pytest.importorskip("av")
    from video_clips import square_frames, write_clip

    # VP8 in WebM: a codec the browser plays, so the page shows the upload
    return write_clip(tmp_path_factory.mktemp("clip") / "square.webm", square_frames(8), fps=4,
                      codec="libvpx")


def _upload_video(page, clip) -> None:
    page.locator("#task input[value=video]").check()
    page.wait_for_selector("#video-input", state="visible")
    assert not page.locator("#image-input").is_visible()  # the video task reads VIDEO only
    page.locator("#video-input input[type=file]").set_input_files(str(clip))
    page.wait_for_selector("#video-input video")
    # the browser plays it: its first frame decoded, its size known
    page.wait_for_function("() => document.querySelector('#video-input video').readyState >= 2")
    assert page.locator("#video-input video").evaluate(
        "v => [v.videoWidth, v.videoHeight]") == [160, 120]


def test_video_upload_runs_and_the_trace_shows_its_frames(page, square_clip):
    _upload_video(page, square_clip)
    _set_program(page, VIDEO_PROGRAM)
    _run(page)
    assert "Ran 3 steps" in page.locator("#status").inner_text()
    assert page.locator("#result-text textarea").input_value().isdigit()
    trace = page.frame_locator("iframe.vp-trace")
    assert trace.locator("section.card").count() == 3
    # the video and its tracks as strips of frames with their times
    strips = trace.locator(".strip")
    assert strips.count() >= 2 and "0.00 s" in strips.first.inner_text()
    widths = trace.locator(".strip img").evaluate_all("els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 8 and all(w > 0 for w in widths)
    page.screenshot(path=str(ARTIFACTS / "demo_video_run.png"), full_page=True)


def test_video_example_loads_the_clip_and_runs(page):
    pytest.importorskip("av")
    page.locator("#examples table tbody tr").filter(has_text="cups go past").first.click()
    page.wait_for_selector("#video-input video")
    page.wait_for_function("() => document.querySelector('#video-input video').readyState >= 2")
    assert page.locator("#video-input video").evaluate(
        "v => [v.videoWidth, v.videoHeight]") == list(demo.EXAMPLE_VIDEO_SIZE)
    assert page.locator("#task input[value=video]").is_checked()
    assert "Track(video=VIDEO" in page.locator("#program .cm-content").inner_text()
    _run(page)
    assert "Ran 3 steps" in page.locator("#status").inner_text()
    page.screenshot(path=str(ARTIFACTS / "demo_video_example.png"), full_page=True)


@pytest.fixture(scope="module")
def video_planning_server():
    """The demo with an LLM (a scripted server) that writes a video program."""
    from llm_server import ScriptedServer, scripted_client

    with ScriptedServer([], respond=lambda body: VIDEO_PROGRAM) as llm_server:
        vp = VisProg(preset="tiny", cache=False, plugins=False, llm=scripted_client(llm_server))
        port = _free_port()
        blocks = demo.launch(vp=vp, port=port, block=False)
        yield f"http://127.0.0.1:{port}/", llm_server
        blocks.close()


def test_ask_about_an_uploaded_video(browser, video_planning_server, square_clip):
    url, llm_server = video_planning_server
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    pg.wait_for_selector("#run-btn")
    _upload_video(pg, square_clip)
    pg.locator("#question textarea").fill("How many red squares go past?")
    pg.click("#ask-btn")
    pg.wait_for_selector("#status .vp-msg")
    assert "Answered" in pg.locator("#status").inner_text()
    assert pg.locator("#result-text textarea").input_value().isdigit()
    assert "SQUARES=Track(video=VIDEO" in pg.locator("#program .cm-content").inner_text()
    request = llm_server.requests[-1]
    assert "VIDEO (Video)" in request["messages"][0]["content"]
    assert "How many red squares go past?" in request["messages"][-1]["content"]
    pg.screenshot(path=str(ARTIFACTS / "demo_video_ask.png"), full_page=True)
    pg.close()
