"""The visprog web demo: ask a question, see the program, run it, read its trace.

The logic lives in plain functions that know nothing of Gradio (`run_program`,
`plan_program`, `diagnostics_html`, `trace_view_html`, ...), so they are unit-tested without a
browser; `build_app(vp)` only wires them to widgets, and `launch(...)` starts a server.

    python -m demos.app --preset tiny        # or: visprog demo --preset tiny

Every piece of text that came from a user or a model is HTML-escaped before it reaches the
page. The trace is shown in a sandboxed iframe (no scripts) holding the same self-contained
page that "Download trace (HTML)" gives, so what you see is what you download.
"""
from __future__ import annotations

import html
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from visprog.errors import (AgentError, ImageError, ProgramError, StepError, VideoError,
                            VisProgError, no_llm_message)
from visprog.traces.events import AgentRun, Repair, Round, RunRecord, Vote
from visprog.traces.records import StepRecord, Trace
from visprog.values.text import show

# -- limits (what one demo request may ask for) ---------------------------------------------
# The demo's engine refuses larger uploads with a message (`VisProg(max_pixels=...)`, the
# one limit its bind and its runs apply; `--max-pixels` changes it): a 4000 x 4000 photo.
MAX_IMAGE_PIXELS = 16_000_000
MAX_UPLOAD_SIZE = "25mb"  # Gradio refuses bigger files (a video too) before they reach us
MAX_PROGRAM_CHARS = 4_000
MAX_PROGRAM_LINES = 60
MAX_QUESTION_CHARS = 500
KEEP_RUNS = 20  # per-run download folders kept on disk; older ones are deleted

# task -> the input variables its programs read (SPEC 6)
TASKS: dict[str, tuple[str, ...]] = {
    "gqa": ("IMAGE",),
    "nlvr": ("LEFT", "RIGHT"),
    "imgedit": ("IMAGE",),
    "knowtag": ("IMAGE",),
    "video": ("VIDEO",),
}
TASK_HELP = {
    "gqa": "a question about the image, e.g. 'Is there a red ball left of the box?'",
    "nlvr": "a statement about a LEFT/RIGHT pair, e.g. 'There are more circles on the left.'",
    "imgedit": "an editing instruction, e.g. 'Blur the background behind the ball.'",
    "knowtag": "a tagging instruction needing knowledge, e.g. 'Tag the planets.'",
    "video": "a question about the video, e.g. 'How many cars drive past?'",
}
# The examples' photos: scikit-image's sample data, inside its wheel (each public domain or
# CC0, as `skimage.data`'s docstrings say), so the demo ships no pictures of its own.
EXAMPLE_PHOTOS = {
    "astronaut.png": "Eileen Collins, NASA (public domain)",
    "chelsea.png": "Chelsea the cat, Stefan van der Walt (CC0)",
    "coffee.png": "a cup of coffee, Rachel Michetti (CC0)",
    "rocket.jpg": "DSCOVR on Falcon 9, SpaceX (public domain)",
}

BY_HAND = "You can still write a program in the code box, or click an example, and press Run."
NO_LLM_MESSAGE = no_llm_message("Planning") + " (before starting the demo). " + BY_HAND


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# -- results --------------------------------------------------------------------------------
@dataclass
class RunOutput:
    """What one press of "Run" shows.

    Attributes:
        ok: the program ran to the end.
        result_text: the result as text ("" when there is none).
        result_image: the result when it is an image, else None.
        trace_html: the trace view (an iframe holding the trace page), or "".
        files: downloads (trace as HTML and JSON) as paths.
        message: a status or error box, HTML (escaped).
        trace: the trace itself, when there is one.
    """

    ok: bool
    result_text: str = ""
    result_image: Image.Image | None = None
    trace_html: str = ""
    files: list[str] = field(default_factory=list)
    message: str = ""
    trace: Trace | None = None


def format_result(value: Any, task: str = "gqa") -> str:
    """A program's value as text (`visprog.values.text.show`): booleans read yes/no for GQA
    and True/False for NLVR (SPEC 3: the caller decides)."""
    if isinstance(value, Image.Image):
        return f"{show(value)} (shown below)"
    return show(value, task=task)


def message_box(kind: str, title: str, body_html: str = "") -> str:
    """A status box. `title` is escaped here; `body_html` must be escaped by the caller."""
    body = f'<div class="vp-body">{body_html}</div>' if body_html else ""
    return (f'<div class="vp-msg vp-{kind}" role="status"><b>{_esc(title)}</b>{body}</div>')


def diagnostics_html(program: str, diagnostics: Sequence[Any]) -> str:
    """The program with its numbered lines; each bad line highlighted and followed by its
    problems (a caret at the column, the message, the hint)."""
    by_line: dict[int, list[Any]] = {}
    for d in diagnostics:
        by_line.setdefault(int(d.line), []).append(d)
    lines = program.splitlines() or [""]
    rows = []
    for n, text in enumerate(lines, start=1):
        bad = n in by_line
        cls = "vp-line vp-bad" if bad else "vp-line"
        rows.append(f'<div class="{cls}"><span class="vp-ln">{n}</span>{_esc(text)}</div>')
        for d in by_line.get(n, []):
            rows.append(_diag_row(d))
    # problems whose line is outside the text (e.g. "empty program") still show
    for d in (d for ln, ds in sorted(by_line.items()) if ln < 1 or ln > len(lines) for d in ds):
        rows.append(_diag_row(d))
    return f'<div class="vp-src">{"".join(rows)}</div>'


def _diag_row(d: Any) -> str:
    col = max(int(getattr(d, "column", 1) or 1), 1)
    hint = f'<div class="vp-hint">hint: {_esc(d.hint)}</div>' if getattr(d, "hint", "") else ""
    return (f'<div class="vp-diag"><span class="vp-ln"></span><span class="vp-caret">'
            f'{"&nbsp;" * (col - 1)}^</span> line {int(d.line)}, column {col}: '
            f'{_esc(d.message)}{hint}</div>')


def trace_view_html(trace: Trace, height: int = 900, page: str | None = None) -> str:
    """The trace page (`page`, if already rendered) inside a sandboxed iframe (no scripts
    can run in it).

    The page is put in `srcdoc`, so it is escaped once more for the attribute; braces are
    written as entities because Gradio's HTML component treats its value as a template.
    """
    doc = html.escape(page if page is not None else trace.to_html(), quote=True)
    doc = doc.replace("{", "&#123;").replace("}", "&#125;").replace("$", "&#36;")
    return (f'<iframe class="vp-trace" title="visprog trace" sandbox="allow-same-origin" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #ddd;border-radius:8px;'
            f'resize:vertical" srcdoc="{doc}"></iframe>')


# -- limits ---------------------------------------------------------------------------------
def program_problem(program: str) -> str | None:
    """Why a program text is refused before parsing (empty, too long), or None."""
    if not program or not program.strip():
        return "The program is empty: click Plan, pick an example, or write one (one step a line)."
    if len(program) > MAX_PROGRAM_CHARS:
        return (f"The program is {len(program):,} characters; the demo runs programs of up to "
                f"{MAX_PROGRAM_CHARS:,}.")
    n = len(program.splitlines())
    if n > MAX_PROGRAM_LINES:
        return f"The program has {n} lines; the demo runs programs of up to {MAX_PROGRAM_LINES}."
    return None


def read_inputs(vp: Any, image: Any, left: Any, right: Any, video: Any = None
                ) -> dict[str, Any]:
    """The uploaded images (and video) as input variables, bound by the engine as every
    entry binds inputs (`VisProg.bind`: read once, converted to RGB, checked against the
    engine's image limits; a video decoded and sampled as its `[video]` table says, within
    its limits of frames, duration and pixels per frame).

    Raises:
        ImageError: an image upload is not an image or is outside the limits (the message
            names which one); VideoError (an ImageError) for the video upload.
    """
    bound = {}
    for name, value in (("IMAGE", image), ("LEFT", left), ("RIGHT", right)):
        if value is None:
            continue
        try:
            bound.update(vp.bind(**{name.lower(): value}))
        except ImageError as e:
            raise ImageError(f"the {name} image: {e}") from e
    if video is not None:
        try:
            bound.update(vp.bind(video=video))
        except ImageError as e:
            raise VideoError(f"the VIDEO video: {e}") from e
    return bound


def upload_problem(e: ImageError) -> str:
    """The message box of an upload the engine refused."""
    what = "video" if isinstance(e, VideoError) else "image"
    return message_box("error", f"Can't use the uploaded {what}", _esc(e))


def _missing_inputs_hint(diagnostics: Sequence[Any], bound: dict[str, Any]) -> str:
    """What to upload when the checker found an input variable undefined."""
    wanted = sorted({m.group(1) for d in diagnostics
                     if (m := re.search(r"undefined variable '(IMAGE|LEFT|RIGHT|VIDEO)'",
                                        d.message))}
                    - set(bound))
    if not wanted:
        return ""
    return ("This program reads " + ", ".join(wanted) + ": upload "
            + ("a LEFT/RIGHT pair (task nlvr)" if "LEFT" in wanted or "RIGHT" in wanted
               else "a video (task video)" if "VIDEO" in wanted else "an image") + ".")


# -- run ------------------------------------------------------------------------------------
class RunFolders:
    """Per-run folders for downloads, under one base folder; only the newest `keep` stay."""

    def __init__(self, base: str | Path | None = None, keep: int = KEEP_RUNS):
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="visprog-demo-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._lock = threading.Lock()
        self._count = 0

    def new(self) -> Path:
        with self._lock:
            self._count += 1
            folder = self.base / f"run{self._count:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            runs = sorted(p for p in self.base.iterdir() if p.is_dir() and p.name.startswith("run"))
            for old in runs[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            return folder


def save_downloads(trace: Trace, folder: Path, page: str | None = None) -> list[str]:
    """The trace as one HTML page (`page`, if already rendered) and one JSON file (images
    inline), for download."""
    html_path = folder / "visprog_trace.html"
    html_path.write_text(page if page is not None else trace.to_html(), encoding="utf-8")
    data = trace.save_json(folder / "visprog_trace.json", inline=True)
    return [str(html_path), str(data)]


def run_program(vp: Any, program: str, image: Any = None, left: Any = None, right: Any = None,
                *, video: Any = None, task: str = "gqa", folders: RunFolders | None = None,
                on_step: Callable[[StepRecord], None] | None = None) -> RunOutput:
    """Run a (possibly hand-edited) program on the uploaded images (and video); never raises
    for bad input: every failure comes back as a message.

    Args:
        vp: a `visprog.api.VisProg`.
        program: the program text.
        image, left, right: uploads (paths, PIL images, arrays or None).
        video: the VIDEO upload (a video file's path) or None.
        task: decides how a yes/no result is printed.
        folders: where the downloads go (a fresh temporary base when None).
        on_step: called with each finished step (progress display).
    """
    program = program or ""
    problem = program_problem(program)
    if problem:
        return RunOutput(False, message=message_box("error", problem))
    try:
        bound = read_inputs(vp, image, left, right, video)
    except ImageError as e:
        return RunOutput(False, message=upload_problem(e))
    if not bound:
        return RunOutput(False, message=message_box(
            "error", "Upload an image first (or a LEFT/RIGHT pair for nlvr, a video for the "
                     "video task), or click an example."))
    folders = folders or RunFolders()
    try:
        # the uploads are read once (above); parse and check once, then run
        job = vp.job(program, bound)
        out = vp.run_jobs([job], on_step=on_step)[0]
        if out.error is not None:
            raise out.error
    except ProgramError as e:
        n = len(e.diagnostics)
        first = e.diagnostics[0] if e.diagnostics else None
        kind = "does not parse" if type(e).__name__ == "ParseError" else "does not check"
        title = (f"The program {kind}: {n} problem{'s' if n != 1 else ''}"
                 + (f", first on line {first.line}" if first else ""))
        hint = _missing_inputs_hint(e.diagnostics, bound)
        body = diagnostics_html(program, e.diagnostics)
        if hint:
            body += f'<div class="vp-hint">{_esc(hint)}</div>'
        return RunOutput(False, message=message_box("error", title, body))
    except StepError as e:
        trace = e.trace
        page = trace.to_html() if trace is not None else None  # rendered once, shown and saved
        files = save_downloads(trace, folders.new(), page) if trace is not None else []
        what = f"{e.target}={e.module}(...)" if e.module else e.target
        cause = str(e.cause) if e.cause is not None else str(e)
        title = f"Step {e.index + 1} failed (line {e.line}, {what})"
        body = (f'<div class="vp-err">{_esc(cause)}</div><div>The trace below shows the steps '
                f'up to the failed one.</div>')
        return RunOutput(False, message=message_box("error", title, body), files=files,
                         trace_html=trace_view_html(trace, page=page) if trace is not None else "",
                         trace=trace)
    except VisProgError as e:
        return RunOutput(False, message=message_box("error", "The run stopped", _esc(e)))
    except Exception as e:  # a bug must not take the page down; say what happened
        return RunOutput(False, message=message_box(
            "error", "Internal error (please report it)", _esc(f"{type(e).__name__}: {e}")))
    trace = out.trace
    page = trace.to_html()  # rendered once, shown and saved
    files = save_downloads(trace, folders.new(), page)
    value = out.value
    n = len(trace)
    hits = sum(1 for s in trace if s.cached)
    took = trace.duration
    title = (f"Ran {n} step{'s' if n != 1 else ''} in "
             + (f"{took:.2f} s" if took >= 1 else f"{took * 1000:.0f} ms")
             + (f" ({hits} from the cache)" if hits else ""))
    return RunOutput(True, result_text=format_result(value, task),
                     result_image=value if isinstance(value, Image.Image) else None,
                     trace_html=trace_view_html(trace, page=page), files=files,
                     message=message_box("ok", title), trace=trace)


# -- ask: plan, run, repair ----------------------------------------------------------------
def attempts_html(trace: Trace | None) -> str:
    """The planning loop's attempts of a run, one line each ("" when there was one plain
    run)."""
    repairs = trace.find(Repair) if trace is not None else []
    if not repairs:
        return ""
    event = repairs[-1]
    rows = []
    for a in event.attempts:
        chosen = " (chosen)" if a.index == event.chosen else ""
        rows.append(f"<li>attempt {a.index + 1}, {_esc(a.reason)}{chosen}: {_esc(a.state())}"
                    f"</li>")
    return f'<ol class="vp-attempts">{"".join(rows)}</ol>'


ROUND_THUMB = 160  # longest side of an image the planner saw, as the rounds list shows it


def rounds_html(trace: Trace | None) -> str:
    """Agent mode's rounds, one item each: the steps written, what failed, the images the
    planner was shown (small), then how the run ended ("" when there were no rounds)."""
    from visprog.traces.html import image_data_uri

    rounds = trace.find(Round) if trace is not None else []
    if not rounds:
        return ""
    rows = []
    for r in rounds:
        steps = "; ".join(line.strip() for line in r.program.splitlines() if line.strip())
        failed = f' <span class="vp-err">failed: {_esc(r.error)}</span>' if r.error else ""
        shown = "".join(f'<img src="{image_data_uri(im, ROUND_THUMB)}" alt="round '
                        f'{r.index + 1} image {k}" title="shown to the planner">'
                        for k, im in enumerate(r.images, 1) if isinstance(im, Image.Image))
        looks = f" (looked at {_esc(', '.join(r.looks))})" if r.looks else ""
        rows.append(f"<li>round {r.index + 1}: <code>{_esc(steps)}</code>{looks}{failed}"
                    f"{'<div>' + shown + '</div>' if shown else ''}</li>")
    end = next(iter(trace.find(AgentRun)), None)
    tail = ""
    if end is not None:
        tail = (f"<div>stopped by {_esc(end.stop)} after {end.rounds} rounds; answer from "
                f"{_esc(end.answer or 'nothing')}</div>")
    return f'<ol class="vp-rounds">{"".join(rows)}</ol>{tail}'


def ask(vp: Any, question: str, task: str, image: Any = None, left: Any = None,
        right: Any = None, *, video: Any = None, folders: RunFolders | None = None,
        agent: bool = False) -> tuple[str | None, RunOutput]:
    """Plan, run and repair in one go (`vp.run`): the program that answered (for the code
    box) and what to show, with every attempt of the repair loop listed. With `agent`, the
    program is written in rounds (`vp.run(..., mode="agent")`) and every round is listed
    with the images the planner saw. Never raises."""
    question = (question or "").strip()
    if task not in TASKS:
        return None, RunOutput(False, message=message_box("error", f"Unknown task {task!r}."))
    if not question:
        return None, RunOutput(False, message=message_box("error", f"Type {TASK_HELP[task]}"))
    if len(question) > MAX_QUESTION_CHARS:
        return None, RunOutput(False, message=message_box(
            "error", f"The question is {len(question)} characters; the demo takes up to "
                     f"{MAX_QUESTION_CHARS}."))
    if getattr(vp, "llm", None) is None or not hasattr(vp, "run"):
        return None, RunOutput(False, message=message_box("warn", "This visprog has no planner.",
                                                          _esc(NO_LLM_MESSAGE)))
    wanted = TASKS[task]
    try:  # only the uploads the task reads (a hidden box may still hold an earlier one)
        bound = read_inputs(vp, *(v if name in wanted else None for name, v in
                                  (("IMAGE", image), ("LEFT", left), ("RIGHT", right),
                                   ("VIDEO", video))))
    except ImageError as e:
        return None, RunOutput(False, message=upload_problem(e))
    if not set(wanted) <= set(bound):
        what = {("LEFT", "RIGHT"): "a LEFT/RIGHT pair", ("VIDEO",): "a video"}.get(
            wanted, "an image")
        return None, RunOutput(False, message=message_box("error", f"Upload {what} first."))
    folders = folders or RunFolders()
    try:
        mode = {"mode": "agent"} if agent else {}
        if wanted == ("VIDEO",):
            out = vp.run(None, question, task=task, video=bound["VIDEO"], **mode)
        else:
            target = (bound["LEFT"], bound["RIGHT"]) if wanted == ("LEFT", "RIGHT") \
                else bound["IMAGE"]
            out = vp.run(target, question, task=task, **mode)
    except (StepError, AgentError) as e:  # every attempt failed: show them all, and the trace
        trace = e.trace
        page = trace.to_html() if trace is not None else None
        files = save_downloads(trace, folders.new(), page) if trace is not None else []
        body = f'<div class="vp-err">{_esc(e)}</div>' + attempts_html(trace) + rounds_html(trace)
        return (trace.program if trace is not None else None), RunOutput(
            False, message=message_box("error", "No program answered", body), files=files,
            trace_html=trace_view_html(trace, page=page) if trace is not None else "",
            trace=trace)
    except VisProgError as e:
        return None, RunOutput(False, message=message_box("warn", "Planning failed", _esc(e)))
    except Exception as e:  # network and client errors of the LLM backend
        return None, RunOutput(False, message=message_box(
            "error", "The planner failed", _esc(f"{type(e).__name__}: {e}")))
    trace = out.trace
    page = trace.to_html()
    files = save_downloads(trace, folders.new(), page)
    listed = attempts_html(trace) + rounds_html(trace)
    repaired = any((e.chosen or 0) > 0 for e in trace.find(Repair))
    flagged, runs = flagged_answer(trace)
    if flagged is not None:  # the best there was, but the checks (or the critic) object
        every = all(not r.passed for r in runs)
        title = ("Answered, but every attempt was flagged" if every and len(runs) > 1 else
                 "Answered, but the answer was flagged") + ": check it before you trust it"
        message = message_box("warn", title, "<div>What the checks found in the answer "
                              "given:</div>" + findings_html(flagged)
                              + "<div>The attempts:</div>" + listed)
    else:
        title = "Answered after repair" if repaired else "Answered"
        rounds = len(trace.find(Round))
        if rounds:
            title = f"Answered in {rounds} round{'s' if rounds != 1 else ''}"
        message = message_box("ok", title, listed)
    return out.program.source, RunOutput(
        True, result_text=format_result(out.value, task),
        result_image=out.value if isinstance(out.value, Image.Image) else None,
        trace_html=trace_view_html(trace, page=page), files=files, message=message,
        trace=trace)


def flagged_answer(trace: Trace) -> tuple[RunRecord | None, list[RunRecord]]:
    """The run whose answer was given, when the result checks or the critic objected to it
    (the planning loop answers with the best it had), else None; and all the runs."""
    for event in reversed(trace.events):
        if isinstance(event, Repair):
            chosen, runs = event.chosen_attempt, event.attempts
        elif isinstance(event, Vote):
            runs = event.runs
            chosen = runs[event.chosen] if 0 <= event.chosen < len(runs) else None
        else:
            continue
        flagged = chosen is not None and chosen.ran and not chosen.passed
        return (chosen if flagged else None), runs
    return None, []


def findings_html(run: RunRecord) -> str:
    """What the checks and the critic said about a run's answer, a line each."""
    lines = [_esc(str(f)) for f in run.findings]
    if run.critic is not None and not run.critic.ok:
        lines.append("[critic] " + _esc(run.critic.show()))
    return f'<ul class="vp-findings">{"".join(f"<li>{ln}</li>" for ln in lines)}</ul>'


# -- plan -----------------------------------------------------------------------------------
def plan_program(vp: Any, question: str, task: str) -> tuple[str | None, str]:
    """Ask the planner for a program.

    Returns:
        (program text or None, status message HTML). With no LLM configured the message says
        so and how to go on by hand.
    """
    question = (question or "").strip()
    if task not in TASKS:
        return None, message_box("error", f"Unknown task {task!r}; pick one of {', '.join(TASKS)}.")
    if not question:
        return None, message_box("error", f"Type {TASK_HELP[task]}")
    if len(question) > MAX_QUESTION_CHARS:
        return None, message_box("error", f"The question is {len(question)} characters; "
                                          f"the demo takes up to {MAX_QUESTION_CHARS}.")
    plan = getattr(vp, "plan", None)
    if plan is None:
        return None, message_box("warn", "This visprog has no planner.", _esc(NO_LLM_MESSAGE))
    try:
        result = plan(question, task=task)
    except ProgramError as e:
        return None, message_box("error", "The planner's program has errors",
                                 "<br>".join(_esc(d) for d in e.diagnostics))
    except VisProgError as e:
        # the planner's own message says what to configure
        return None, message_box("warn", "Planning is not available",
                                 _esc(e) + "<br>" + _esc(BY_HAND))
    except Exception as e:  # network and client errors of the LLM backend
        return None, message_box("error", "The planner failed",
                                 _esc(f"{type(e).__name__}: {e}"))
    text = getattr(result, "text", result)
    return str(text), message_box("ok", "Planned. Edit the program if you like, then press Run.")


# -- examples -------------------------------------------------------------------------------
def example_images() -> dict[str, Path]:
    """The example photos (`EXAMPLE_PHOTOS`) by name: files inside scikit-image's wheel;
    none without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return {}
    folder = Path(data.__file__).resolve().parent
    return {name: folder / name for name in EXAMPLE_PHOTOS if (folder / name).is_file()}


EXAMPLE_VIDEO = "coffee_pan.webm"  # made from coffee.png by `example_video`: VP8, which
# browsers play (the page shows it), in WebM
EXAMPLE_VIDEO_SIZE, EXAMPLE_VIDEO_FRAMES, EXAMPLE_VIDEO_FPS = (320, 240), 16, 8


def example_video(folder: str | Path, photos: dict[str, Path]) -> Path | None:
    """The video example: a camera panning across the coffee photo (2 s of VP8 in WebM,
    written with PyAV into `folder`, once), so the demo ships no video of its own; None
    without PyAV or the photo."""
    target = Path(folder) / EXAMPLE_VIDEO
    if target.is_file():
        return target
    if "coffee.png" not in photos:
        return None
    try:
        import av
    except ImportError:
        return None
    with Image.open(photos["coffee.png"]) as im:
        photo = im.convert("RGB")
    w, h = EXAMPLE_VIDEO_SIZE
    Path(folder).mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part.webm")
    with av.open(str(part), "w") as out:
        stream = out.add_stream("libvpx", rate=EXAMPLE_VIDEO_FPS)
        stream.bit_rate = 1_000_000
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(EXAMPLE_VIDEO_FRAMES):
            x = round(i * (photo.width - w) / (EXAMPLE_VIDEO_FRAMES - 1))
            frame = photo.crop((x, (photo.height - h) // 2, x + w, (photo.height + h) // 2))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    part.replace(target)  # a reader never sees half a file
    return target


def example_rows(paths: dict[str, Path], video: Path | None = None) -> list[list[Any]]:
    """Rows for gr.Examples: task, question, program, image, left, right, video; one a
    task at least, on real photos (the video: a pan across one, `example_video`). The
    programs use only modules that run without a planner (and rows whose photo or video is
    missing are left out)."""
    rows = [
        ["gqa", "Is there a cat?",
         "CAT=Loc(image=IMAGE, object='cat')\nN=Count(box=CAT)\n"
         "ANSWER=Eval(expr=\"'yes' if {N} > 0 else 'no'\")\nRESULT=Result(var=ANSWER)",
         "chelsea.png", None, None],
        ["gqa", "What is in the picture?",
         "ANSWER=Vqa(image=IMAGE, question='What is in the picture?')\nRESULT=Result(var=ANSWER)",
         "rocket.jpg", None, None],
        ["imgedit", "Put sunglasses on the faces.",
         "FACES=FaceDet(image=IMAGE)\n"
         "IMAGE0=Emoji(image=IMAGE, object=FACES, emoji='smiling_face_with_sunglasses')\n"
         "RESULT=Result(var=IMAGE0)",
         "astronaut.png", None, None],
        ["imgedit", "Keep the left half in colour.",
         "HALF=Loc(image=IMAGE, object='LEFT')\nIMAGE0=ColorPop(image=IMAGE, object=HALF)\n"
         "RESULT=Result(var=IMAGE0)",
         "coffee.png", None, None],
        ["knowtag", "Tag the faces.",
         "FACES=FaceDet(image=IMAGE)\nIMAGE0=Tag(image=IMAGE, object=FACES)\n"
         "RESULT=Result(var=IMAGE0)",
         "astronaut.png", None, None],
        ["nlvr", "There is a cat on the left and none on the right.",
         "A=Loc(image=LEFT, object='cat')\nB=Loc(image=RIGHT, object='cat')\n"
         "NA=Count(box=A)\nNB=Count(box=B)\nANSWER=Eval(expr='{NA} > 0 and {NB} == 0')\n"
         "RESULT=Result(var=ANSWER)",
         None, "chelsea.png", "coffee.png"],
    ]
    out = []
    for task, question, program, *photos in rows:
        if all(p is None or p in paths for p in photos):
            out.append([task, question, program,
                        *(None if p is None else str(paths[p]) for p in photos), None])
    if video is not None:
        out.append(["video", "How many cups go past?",
                    "CUPS=Track(video=VIDEO, object='cup')\nN=Count(box=CUPS)\n"
                    "RESULT=Result(var=N)",
                    None, None, None, str(video)])
    return out


def count_steps(vp: Any, program: str) -> int:
    """How many steps a program has (0 when it is refused or does not parse)."""
    if program_problem(program or ""):
        return 0
    try:
        return len(vp.parse(program))
    except VisProgError:
        return 0  # the run reports the parse error itself


def step_progress(report: Callable[..., Any], total: int) -> Callable[[StepRecord], None]:
    """An `on_step` callback that reports "step i/n: line" to `report(fraction, desc=...)`
    (a `gr.Progress`), so a long run shows how far it got."""
    if total:
        report((0, total), desc="starting")

    def on_step(rec: StepRecord) -> None:
        if total:
            report((min(rec.index + 1, total), total),
                   desc=f"step {rec.index + 1}/{total}: {rec.source.strip()[:60]}")
    return on_step


# -- UI -------------------------------------------------------------------------------------
CSS = """
.vp-msg{border-radius:6px;padding:.6em .8em;margin:.2em 0}
.vp-ok{background:#d8f3dc;color:#1b4332}.vp-error{background:#f8d7da;color:#842029}
.vp-warn{background:#fff3cd;color:#664d03}.vp-body{margin-top:.4em}
.vp-src{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;background:#fff;
 color:#1d1d1f;border:1px solid #ddd;border-radius:6px;padding:.4em 0;margin-top:.4em;
 overflow-x:auto}
.vp-line,.vp-diag{white-space:pre;padding:0 .6em}.vp-bad{background:#fde2e2}
.vp-diag{color:#842029;white-space:pre-wrap}.vp-ln{display:inline-block;width:2.4em;
 color:#999;text-align:right;margin-right:.8em}.vp-caret{color:#d9534f;font-weight:700}
.vp-hint{color:#555;font-style:italic}.vp-err{white-space:pre-wrap;font-family:monospace}
.vp-findings{margin:.3em 0 .3em 1.2em;padding:0}
"""


def build_app(vp: Any, *, folders: RunFolders | None = None) -> Any:
    """The Gradio Blocks of the demo, around one `VisProg` engine."""
    import gradio as gr

    folders = folders or RunFolders()
    paths = example_images()

    def shown_image(image: Image.Image | None) -> Any:
        # the result image's box only for an image answer: a text answer needs no half screen
        return gr.update(value=image, visible=image is not None)

    def on_task(task: str):
        wanted = TASKS.get(task, ("IMAGE",))
        return (gr.update(visible=wanted == ("IMAGE",)),
                gr.update(visible=wanted == ("LEFT", "RIGHT")),
                gr.update(visible=wanted == ("VIDEO",)),
                gr.update(placeholder=TASK_HELP.get(task, "")))

    def on_plan(question: str, task: str):
        text, message = plan_program(vp, question, task)
        return (gr.update() if text is None else text), message

    def on_ask(question: str, task: str, image: Any, left: Any, right: Any, video: Any,
               agent: bool):
        text, out = ask(vp, question, task, image, left, right, video=video, folders=folders,
                        agent=bool(agent))
        return ((gr.update() if text is None else text), out.message, out.result_text,
                shown_image(out.result_image), out.trace_html, out.files or None)

    def on_run(program: str, task: str, image: Any, left: Any, right: Any, video: Any,
               progress=gr.Progress()):
        out = run_program(vp, program, image, left, right, video=video, task=task,
                          folders=folders,
                          on_step=step_progress(progress, count_steps(vp, program)))
        return (out.message, out.result_text, shown_image(out.result_image), out.trace_html,
                out.files or None)

    with gr.Blocks(title="visprog demo") as app:
        gr.Markdown("## visprog: visual programs, step by step\n"
                    "Upload an image (a LEFT/RIGHT pair, or a video for the video task), "
                    "ask a question, press **Plan** "
                    "to get a program, edit it if you like, and press **Run**. "
                    f"Engine preset: `{_esc(getattr(vp, 'preset', '?'))}`.")
        with gr.Row():
            with gr.Column(scale=1):
                task = gr.Radio(list(TASKS), value="gqa", label="Task", elem_id="task")
                with gr.Group(visible=True) as single:
                    image = gr.Image(type="filepath", image_mode=None, label="IMAGE",
                                     sources=["upload", "clipboard"], elem_id="image-input",
                                     height=280)
                with gr.Row(visible=False) as pair:
                    left = gr.Image(type="filepath", image_mode=None, label="LEFT",
                                    sources=["upload", "clipboard"], elem_id="left-input",
                                    height=200)
                    right = gr.Image(type="filepath", image_mode=None, label="RIGHT",
                                     sources=["upload", "clipboard"], elem_id="right-input",
                                     height=200)
                with gr.Group(visible=False) as video_box:
                    # taken as uploaded: no conversion, which would need an ffmpeg program
                    # (PyAV's own FFmpeg decodes it); the sound is never read
                    video = gr.Video(label="VIDEO", sources=["upload"], elem_id="video-input",
                                     height=280, format=None, include_audio=True)
                question = gr.Textbox(label="Question or instruction", lines=2,
                                      placeholder=TASK_HELP["gqa"], elem_id="question",
                                      max_length=MAX_QUESTION_CHARS)
                with gr.Row():
                    plan_btn = gr.Button("Plan", elem_id="plan-btn")
                    ask_btn = gr.Button("Ask (plan, run, repair)", elem_id="ask-btn")
                agent_mode = gr.Checkbox(
                    label="Agent mode: write the program in rounds, looking at what each "
                          "round found", value=False, elem_id="agent-mode")
            with gr.Column(scale=1):
                program = gr.Code(label="Program (editable)", language="python", lines=8,
                                  interactive=True, elem_id="program")
                run_btn = gr.Button("Run", variant="primary", elem_id="run-btn")
                status = gr.HTML(elem_id="status")
                result_text = gr.Textbox(label="Result", interactive=False, elem_id="result-text")
                result_image = gr.Image(label="Result image", type="pil", interactive=False,
                                        elem_id="result-image", height=280, visible=False)
        gr.Markdown("### Trace")
        trace_view = gr.HTML(elem_id="trace-view")
        downloads = gr.File(label="Download the trace (HTML, JSON)", file_count="multiple",
                            interactive=False, elem_id="downloads")
        if paths:
            clip = example_video(folders.base / "examples", paths)
            gr.Examples(example_rows(paths, clip),
                        inputs=[task, question, program, image, left, right, video],
                        label="Examples (click one, then Run)", elem_id="examples")
            gr.Markdown("Example photos from scikit-image's sample data: " + "; ".join(
                f"{name}: {_esc(credit)}" for name, credit in EXAMPLE_PHOTOS.items()
                if name in paths) + (" (the video pans across the coffee photo)" if clip
                                     else "") + ".", elem_id="example-credits")

        task.change(on_task, [task], [single, pair, video_box, question])
        plan_btn.click(on_plan, [question, task], [program, status])
        question.submit(on_plan, [question, task], [program, status])
        ask_btn.click(on_ask, [question, task, image, left, right, video, agent_mode],
                      [program, status, result_text, result_image, trace_view, downloads])
        run_btn.click(on_run, [program, task, image, left, right, video],
                      [status, result_text, result_image, trace_view, downloads])
    return app


class PortInUse(OSError):
    """The demo's port is taken; the message names it and the flag to change it."""


def check_port(host: str, port: int | None) -> None:
    """Raise `PortInUse` when `port` on `host` can't be listened on (None: Gradio picks a
    free one, nothing to check). Checked before the engine is built, so a taken port costs
    a line, not a minute of loading and a traceback."""
    import socket

    if port is None:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PortInUse(f"can't listen on {host}:{port}: {e.strerror or e}; check --host") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            why = "is in use" if e.errno in (98, 48, 10048) else f"can't be used ({e.strerror})"
            raise PortInUse(f"port {port} on {host} {why}; pass another one with --port, "
                            "or leave --port out to take a free one from 7860") from None


def launch(preset: str = "default", *, port: int | None = None, host: str = "127.0.0.1",
           cache: bool = True, cache_dir: str | None = None, block: bool = True,
           vp: Any = None, max_pixels: int | None = MAX_IMAGE_PIXELS,
           **launch_kwargs: Any) -> Any:
    """Build the engine and start the demo server.

    Args:
        preset: the engine preset ("default" or "tiny").
        port: the port (Gradio picks a free one from 7860 when None).
        host: the address to listen on; "0.0.0.0" to serve other machines.
        cache: use the step cache.
        cache_dir: the on-disk cache folder.
        block: keep serving until interrupted; False returns once the server is up.
        vp: an engine to use instead of building one (its own image limits hold).
        max_pixels: the engine's limit on an input image's pixels, when it is built here.

    Returns:
        The Gradio Blocks (call `.close()` to stop a non-blocking server).
    """
    import gradio as gr

    from visprog.api import VisProg

    check_port(host, port)
    vp = vp or VisProg(preset=preset, cache=cache, cache_dir=cache_dir, max_pixels=max_pixels)
    folders = RunFolders()
    app = build_app(vp, folders=folders)
    app.queue(default_concurrency_limit=1)  # one engine, one run at a time
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                   max_file_size=MAX_UPLOAD_SIZE,
                   allowed_paths=sorted({str(p.parent) for p in example_images().values()}
                                        | {str(folders.base / "examples")}),
                   css=CSS, theme=gr.themes.Soft(), footer_links=[], quiet=not block)
    except OSError as e:  # taken between the check and the launch
        if port is None:
            raise
        raise PortInUse(f"port {port} on {host} is in use ({e}); pass another one with "
                        "--port") from None
    return app


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m demos.app", description="the visprog web demo")
    p.add_argument("--preset", default="default", help="default (real models) or tiny (offline)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS,
                   help=f"refuse uploads over this many pixels (default {MAX_IMAGE_PIXELS:,})")
    args = p.parse_args(argv)
    try:
        launch(args.preset, port=args.port, host=args.host, cache=not args.no_cache,
               max_pixels=args.max_pixels)
    except PortInUse as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
