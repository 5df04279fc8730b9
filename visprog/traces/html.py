"""A trace as one self-contained HTML page (SPEC 5).

Images are embedded as data URIs, CSS is inline, and there is no script and no external
resource, so the page can be mailed or attached to an issue as it is. Every piece of text that
came from a user or a model (program source, labels, answers, errors, event data) goes through
`html.escape`: a label like ``<script>`` must show as text, never run.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
from PIL import Image

from visprog.traces.draw import background, color_for, draw_objects, thumbnail
from visprog.traces.events import AgentRun, Repair, Round, RunRecord, Vote
from visprog.traces.step import StepRecord
from visprog.traces.video import VIDEO_CSS, tracks_html, video_html
from visprog.values import Objects, Tracks, Video
from visprog.values.region_table import MAX_TABLE_ROWS, region_table
from visprog.values.text import show

THUMB_SIDE = 320  # longest side of an image shown in the page
MAX_TEXT_CHARS = 2000  # longer text values are cut (the JSON trace keeps them whole)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;
 max-width:1100px;padding:0 1em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
pre,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
.src{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em 0;overflow-x:auto}
.src div{white-space:pre;padding:0 .8em}.src .ln{color:#999;display:inline-block;width:2.5em;
 text-align:right;margin-right:1em;user-select:none}.src .bad{background:#fde2e2}
.badge{display:inline-block;border-radius:4px;padding:0 .45em;font-size:.8em;margin-left:.4em;
 vertical-align:middle}.ok{background:#d8f3dc;color:#1b4332}.fail{background:#f8d7da;
 color:#842029}.cached{background:#e2e3f3;color:#27306b}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.7em 1em;margin:.8em 0}
.card.failed{border:2px solid #d9534f;background:#fff7f7}
.card h3{font-size:1em;margin:0 0 .4em}.card .meta{color:#666;font-size:.85em}
.err{color:#842029;background:#f8d7da;border-radius:4px;padding:.4em .6em;white-space:pre-wrap}
table.kv{border-collapse:collapse;margin:.3em 0}table.kv td{vertical-align:top;padding:.25em .6em;
 border-top:1px solid #eee}table.kv td.k{font-weight:600;white-space:nowrap}
table.regions{border-collapse:collapse;font-size:.85em;margin-top:.3em}
table.regions td,table.regions th{border:1px solid #ddd;padding:.1em .5em;text-align:left}
img{max-width:100%;border:1px solid #ccc;border-radius:3px;image-rendering:auto}
.text{white-space:pre-wrap}.muted{color:#888}.swatch{display:inline-block;width:.8em;
 height:.8em;border-radius:2px;margin-right:.3em;vertical-align:middle}
details{margin:.8em 0}summary{cursor:pointer;font-weight:600}
.wrap,table.kv pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
.card code{overflow-wrap:anywhere}
table.fields{border-collapse:collapse;font-size:.9em}table.fields td{vertical-align:top;
 padding:.1em .5em;border-top:1px solid #eee}table.fields td.k{color:#555;font-weight:600;
 white-space:nowrap}ol.fields{margin:.2em 0;padding-left:1.6em}
details.more{margin:.2em 0}details.more summary{font-weight:400;color:#0b57d0;font-size:.85em}
""" + VIDEO_CSS


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Page:
    """Builds one page; caches each image's data URI, as one image appears in many steps."""

    def __init__(self) -> None:
        self._uris: dict[int, str] = {}
        self._keep: list[Any] = []  # keeps cached objects alive so their ids stay unique
        # variable -> the image its Objects were drawn over, so a later step that takes
        # them without their image (Count(box=FACES)) draws them over it too
        self.drawn_on: dict[str, Image.Image | Video] = {}  # variable -> what it was drawn over

    def data_uri(self, im: Image.Image) -> str:
        key = id(im)
        if key not in self._uris:
            self._keep.append(im)
            self._uris[key] = _encode(thumbnail(im, THUMB_SIDE))
        return self._uris[key]

    def img(self, im: Image.Image, alt: str) -> str:
        return (f'<img src="{self.data_uri(im)}" alt="{_esc(alt)}" '
                f'title="{_esc(alt)} ({_esc(show(im))})">')

    def objects(self, objs: Objects, over: Image.Image | None, alt: str) -> str:
        if over is None or over.size != objs.image_size:  # never draw boxes on another image
            over = Image.new("RGB", objs.image_size, (235, 235, 235))
        # Draw on the thumbnail, not the full image, so tags stay readable at page size.
        drawn = draw_objects(thumbnail(over.convert("RGB"), THUMB_SIDE), objs)
        parts = [f'<div>{self.img(drawn, alt)}</div>', f'<div class="muted">{_esc(show(objs))} '
                 f'on a {objs.image_size[0]}x{objs.image_size[1]} image</div>']
        if len(objs):
            parts.append(region_table(objs, color=color_for))
        # Images a module attached to regions (e.g. Depth's `depth_map`), each shown once.
        shown: set[int] = set()
        for r in objs[:MAX_TABLE_ROWS]:
            for k, v in r.extra.items():
                if isinstance(v, Image.Image) and id(v) not in shown:
                    shown.add(id(v))
                    parts.append(f'<div class="muted">{_esc(k)}</div><div>{self.img(v, k)}</div>')
        return "".join(parts)

    def value(self, value: Any, *, over: Image.Image | None = None, alt: str = "") -> str:
        """One value as HTML; Objects are drawn over `over` when given."""
        if isinstance(value, Image.Image):
            return self.img(value, alt or "image")
        if isinstance(value, Objects):
            return self.objects(value, over if isinstance(over, Image.Image) else None,
                                alt or "objects")
        if isinstance(value, Video):  # a strip of a few frames (traces/video.py)
            return video_html(self.img, value)
        if isinstance(value, Tracks):  # drawn over the video they were tracked in
            return tracks_html(self.img, value, over if isinstance(over, Video) else None)
        if value is None:
            return '<span class="muted">None</span>'
        if isinstance(value, bool):
            return f"<code>{value}</code>"
        if isinstance(value, (int, float, np.integer, np.floating)):
            return f"<code>{_esc(show(value))}</code>"
        if isinstance(value, str):
            return f'<span class="text">{_esc(_cut(value))}</span>'
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return "<code>[" + ", ".join(_esc(_cut(repr(v))) for v in value) + "]</code>"
        if isinstance(value, (list, tuple)) and any(isinstance(v, (Image.Image, Objects)) for v in value):
            return "".join(f"<div>{self.value(v, over=over, alt=alt)}</div>" for v in value)
        if isinstance(value, dict):
            return f"<pre>{_esc(_cut(_json(value)))}</pre>"
        return f"<code>{_esc(_cut(repr(value)))}</code>"


MAX_FIELD_CHARS = 400  # a field's text in the events and run details (the JSON keeps it whole)
MAX_FIELD_ITEMS = 10  # entries listed of a list of records; the rest are counted
MAX_FIELD_LINES = 6  # lines shown of a field's text


def _event_fields(event: Any) -> dict[str, Any]:
    """An event's fields for the Events list; the runs of a repair or a vote are listed in
    their own sections above, so here they are only counted; a round's images as their
    size."""
    fields = {k: v for k, v in event.to_dict().items() if k != "kind"}
    if isinstance(event, Round):
        fields["images"] = [show(im) for im in event.images]
    elif isinstance(event, Repair):
        fields["attempts"] = f"{len(event.attempts)}, listed under Attempts above"
    elif isinstance(event, Vote):
        fields["runs"] = f"{len(event.runs)}, listed under Candidates above"
    return fields


def _fields(record: Any, depth: int = 0) -> str:
    """A record (an event's fields, the run details) as a table of its fields that wraps to
    the page's width: empty fields left out, nested records as nested tables (two levels;
    deeper ones as one line of JSON), long text cut."""
    if not isinstance(record, dict):
        return _field(record, depth) or ""
    rows = [(k, _field(v, depth)) for k, v in record.items()]
    return ('<table class="fields">' + "".join(
        f'<tr><td class="k">{_esc(str(k).replace("_", " "))}</td><td>{h}</td></tr>'
        for k, h in rows if h is not None) + "</table>")


def _field(value: Any, depth: int) -> str | None:
    """One field's value as HTML, or None when there is nothing to show."""
    if value is None or (isinstance(value, (str, list, tuple, dict)) and not value):
        return None
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return f"<code>{_esc(show(value))}</code>"
    if isinstance(value, str):
        if "\n" not in value:
            return f'<span class="wrap">{_esc(_cut(value, MAX_FIELD_CHARS))}</span>'
        lines = value.splitlines()
        text = "\n".join(lines[:MAX_FIELD_LINES]) + (
            f"\n... {len(lines) - MAX_FIELD_LINES} more lines" if len(lines) > MAX_FIELD_LINES
            else "")
        return f'<pre class="wrap">{_esc(_cut(text, MAX_FIELD_CHARS))}</pre>'
    scalars = (str, int, float, bool, type(None))
    if isinstance(value, dict) and depth < 2:
        if all(isinstance(v, scalars) for v in value.values()):  # a line: usage, counts
            return '<span class="wrap">' + _esc(", ".join(
                f"{k}: {show(v)}" for k, v in value.items())) + "</span>"
        return _fields(value, depth + 1)
    if isinstance(value, (list, tuple)) and all(isinstance(v, scalars) for v in value):
        return f'<span class="wrap">{_esc(_cut(", ".join(map(show, value)), MAX_FIELD_CHARS))}</span>'
    if isinstance(value, (list, tuple)) and depth < 2:
        items = "".join(f"<li>{_field(v, depth + 1) or ''}</li>"
                        for v in value[:MAX_FIELD_ITEMS])
        more = len(value) - MAX_FIELD_ITEMS
        return (f'<ol class="fields" start="0">{items}</ol>'
                + (f'<div class="muted">... {more} more</div>' if more > 0 else ""))
    try:  # deeper records: one line of JSON
        text = json.dumps(value, ensure_ascii=False, default=repr) \
            if isinstance(value, (dict, list, tuple)) else repr(value)
    except (TypeError, ValueError):
        text = repr(value)
    return f'<span class="wrap">{_esc(_cut(text, MAX_FIELD_CHARS))}</span>'


def _cut(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def _json(value: Any) -> str:
    try:
        return json.dumps(value, indent=1, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):  # e.g. tuple keys; the text form still says what it was
        return repr(value)


def image_data_uri(im: Image.Image, side: int = THUMB_SIDE) -> str:
    """An image as a data URI, scaled down to `side` pixels on its longest side."""
    return _encode(thumbnail(im, side))


def _encode(im: Image.Image) -> str:
    """A data URI, as PNG or JPEG, whichever is smaller (photos: JPEG; drawings: often PNG)."""
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    png = io.BytesIO()
    im.save(png, format="PNG")
    best, mime = png.getvalue(), "image/png"
    if im.mode != "RGBA":
        jpg = io.BytesIO()
        im.save(jpg, format="JPEG", quality=85)
        if len(jpg.getvalue()) < len(best):
            best, mime = jpg.getvalue(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(best).decode('ascii')}"


def _under(page: _Page, value: Any, over: Image.Image | Video | None,
           var: str | None) -> Image.Image | Video | None:
    """What to draw `value` over when it is Objects (an image) or Tracks (a video): the
    step's own image or video when the value belongs to one of its size, else the one it
    was drawn over where the variable `var` was made; None: a plain canvas."""
    if isinstance(value, Tracks):
        def fits(v: Any) -> bool:
            return isinstance(v, Video) and len(v) == len(value.times) \
                and v.size == tuple(value.frame_size)
    elif isinstance(value, Objects):
        def fits(v: Any) -> bool:
            return isinstance(v, Image.Image) and v.size == value.image_size
    else:
        return over
    if fits(over):
        return over
    earlier = page.drawn_on.get(var) if var else None
    return earlier if fits(earlier) else None


def _background(step: StepRecord) -> Image.Image | Video | None:
    """The image a step's Objects are drawn over, or the video its Tracks are: a video
    `draw_on` argument, else `traces.draw.background`."""
    if step.draw_on and isinstance(step.args.get(step.draw_on), Video):
        return step.args[step.draw_on]
    return background(step)


def _drawn_over(page: _Page, step: StepRecord, over: Image.Image | Video | None
                ) -> Image.Image | Video | None:
    """What a step's output is drawn over (`over`: the step's `_background`), remembered for
    its variable so later steps that read it draw it there too."""
    # regions made from regions without an image (A=B, Result(var=B), a filter) are drawn
    # where those were, when of that image's size
    var = next((step.arg_vars[k] for k, v in step.args.items()
                if isinstance(v, (Objects, Tracks)) and step.arg_vars.get(k)), None)
    under = _under(page, step.output, over, var)
    if under is not None:
        page.drawn_on[step.target] = under
    else:
        page.drawn_on.pop(step.target, None)  # a new value of the name: not drawn yet
    return under


def _result_over(page: _Page, steps: list[StepRecord], result: Any) -> Any:
    """What the result is drawn over: where the step that made it drew its output (Objects
    over the image they were found in, not over grey)."""
    maker = next((s for s in reversed(steps) if s.error is None and s.output is result), None)
    return None if maker is None else page.drawn_on.get(maker.target)


def _source_block(program: str, bad_line: int | None) -> str:
    rows = []
    for n, text in enumerate(program.splitlines() or [""], start=1):
        cls = ' class="bad"' if n == bad_line else ""
        rows.append(f'<div{cls}><span class="ln">{n}</span>{_esc(text)}</div>')
    return '<div class="src">' + "".join(rows) + "</div>"


def _step_card(page: _Page, step: StepRecord) -> str:
    failed = step.error is not None
    module = _esc(step.module) if step.module else '<span class="muted">alias</span>'
    badges = ""
    if step.cached:
        badges += '<span class="badge cached">cached</span>'
    badges += '<span class="badge fail">failed</span>' if failed else ""
    head = (f'<h3>Step {step.index + 1} <span class="meta">line {step.line}</span>{badges}</h3>'
            f'<div><code>{_esc(step.source)}</code></div>'
            f'<div class="meta">module {module} &middot; {step.duration * 1000:.1f} ms</div>')
    over = _background(step)
    rows = []
    for name, value in step.args.items():
        var = step.arg_vars.get(name)
        label = _esc(name) + (f' <span class="muted">&larr; {_esc(var)}</span>' if var else "")
        # a video read from a variable is drawn where it was bound or made: one line here
        shown = f'<span class="muted">{_esc(show(value))}</span>' \
            if var and isinstance(value, Video) else \
            page.value(value, over=_under(page, value, over, var),
                       alt=f"{step.target} {name}")
        rows.append(f'<tr><td class="k">{label}</td><td>{shown}</td></tr>')
    if failed:
        rows.append(f'<tr><td class="k">error</td><td><div class="err">{_esc(step.error)}'
                    f'</div></td></tr>')
    else:
        under = _drawn_over(page, step, over)
        rows.append(f'<tr><td class="k">{_esc(step.target)} =</td><td>'
                    f'{page.value(step.output, over=under, alt=step.target)}</td></tr>')
    cls = "card failed" if failed else "card"
    return f'<section class="{cls}">{head}<table class="kv">{"".join(rows)}</table></section>'


def _outcome(a: RunRecord) -> str:
    """One attempt's or candidate's outcome as HTML: its error, findings, verdict, answer."""
    parts = []
    if a.error:
        parts.append(f'<div class="err">{_esc(_cut(a.error))}</div>')
    for f in a.findings:
        where = f"step {f.step + 1}: " if f.step is not None else ""
        parts.append(f'<div><span class="badge fail">{_esc(f.check)}</span> '
                     f'{_esc(where)}{_esc(f.message)}</div>')
    if a.critic is not None:
        parts.append(f'<div>critic: {_esc(a.critic.show())}</div>')
    if not a.error:
        counted = f' <span class="muted">(counted as {_esc(a.key)})</span>' \
            if a.key is not None and a.key != show(a.answer) else ""
        parts.append(f'<div>answer: <code>{_esc(show(a.answer, limit=MAX_TEXT_CHARS))}</code>'
                     f'{counted}</div>')
    if a.note:
        parts.append(f'<div class="muted">{_esc(a.note)}</div>')
    return "".join(parts)


def _attempts_section(event: Repair) -> str:
    """The planning loop's attempts (a `Repair` event): why each program was written, the
    program, and how its run went; the chosen one marked."""
    rows = []
    for a in event.attempts:
        mark = ('<span class="badge ok">chosen</span>' if a.index == event.chosen else
                ('<span class="badge fail">failed</span>' if a.error else ""))
        fixes = a.plan_repairs
        planned = f'<div class="muted">{fixes} parse/check repair{"s" if fixes != 1 else ""}' \
                  f'</div>' if fixes else ""
        rows.append(f'<tr><td class="k">{a.index + 1} {mark}<div class="muted">'
                    f'{_esc(a.reason)}</div></td><td><pre>{_esc(a.program)}'
                    f'</pre>{planned}</td><td>{_outcome(a)}</td></tr>')
    return ('<h2>Attempts</h2><table class="kv"><tr><td class="k">#</td><td class="k">program'
            '</td><td class="k">run</td></tr>' + "".join(rows) + "</table>")


def _vote_section(event: Vote) -> str:
    """The candidates of a vote (a `Vote` event): program, answer, findings."""
    rows = []
    for r in event.runs:
        mark = '<span class="badge ok">chosen</span>' if r.index == event.chosen else ""
        rows.append(f'<tr><td class="k">{r.index + 1} {mark}</td><td><pre>'
                    f'{_esc(r.program)}</pre></td><td>{_outcome(r)}</td></tr>')
    return (f'<h2>Candidates <span class="muted">(selected by {_esc(event.select)})</span></h2>'
            '<table class="kv">' + "".join(rows) + "</table>")


def _rounds_section(page: _Page, rounds: list[Round], ends: list[AgentRun]) -> str:
    """Agent mode's rounds (`Round` events): the steps written, whether a step failed, what
    the planner was told and the images it was shown; then how the run ended."""
    parts = ['<h2>Rounds</h2>']
    for r in rounds:
        failed = '<span class="badge fail">failed</span>' if r.error else ""
        fixes = sum(1 for e in r.plan if getattr(e, "ok", True) is False)
        tokens = r.usage.get("total_tokens")
        meta = [f"{r.calls} LLM call{'s' if r.calls != 1 else ''}"]
        if tokens is not None:
            meta.append(f"{tokens} tokens")
        if r.images:
            meta.append(f"{len(r.images)} image{'s' if len(r.images) != 1 else ''} "
                        f"(~{r.image_tokens} tokens)")
        if fixes:
            meta.append(f"{fixes} parse/check repair{'s' if fixes != 1 else ''}")
        meta.append(f"written in {r.plan_seconds:.2f} s, ran in {r.run_seconds * 1000:.0f} ms")
        steps = ", ".join(str(i + 1) for i in r.steps) or "none"
        body = [f'<h3>Round {r.index + 1}{failed}</h3>',
                f'<div class="meta">{_esc(" · ".join(meta))}; steps {_esc(steps)}</div>',
                f'<pre>{_esc(_cut(r.program))}</pre>']
        if r.error:
            body.append(f'<div class="err">{_esc(_cut(r.error))}</div>')
        if r.observation:
            body.append(f'<div class="muted">The planner was told:</div>'
                        f'<pre class="text">{_esc(_cut(r.observation))}</pre>')
        for k, im in enumerate(r.images, 1):
            if isinstance(im, Image.Image):
                body.append(f'<div class="muted">image {k} shown to the planner '
                            f'({im.width}x{im.height})</div><div>'
                            f'{page.img(im, f"round {r.index + 1} image {k}")}</div>')
        parts.append(f'<section class="card">{"".join(body)}</section>')
    for end in ends:
        answer = {"result": "its Result", "last value": "the last value it computed"}.get(
            end.answer or "", "none")
        note = f" ({_esc(end.note)})" if end.note and end.stop != "result" else ""
        parts.append(f'<div>Stopped by <b>{_esc(end.stop)}</b>{note} after {end.rounds} '
                     f'round{"s" if end.rounds != 1 else ""}, {end.steps} steps, '
                     f'{end.calls} LLM calls, {end.images} images, {end.seconds:.2f} s; '
                     f'the answer is {_esc(answer)}.</div>')
    return "".join(parts)


def _scoped(css: str, root: str) -> str:
    """The page's CSS for a part of another page (a notebook's output): every selector
    under `root`, and `body` is `root` itself, so none of it styles the page around."""
    rules = []
    for rule in css.replace("\n", "").split("}"):
        if rule.strip():
            selectors, declarations = rule.split("{", 1)
            scoped = ",".join(root if s.strip() == "body" else f"{root} {s.strip()}"
                              for s in selectors.split(","))
            rules.append(f"{scoped}{{{declarations}}}")
    return "".join(rules)


def render_value_html(trace: Any) -> str:
    """A run's result alone, as a notebook shows a value (one <div>, its style scoped):
    Objects drawn over the image they were found in, Tracks over their video, else the
    value; the error when the run failed."""
    page = _Page()
    if trace.error is not None:
        body = f'<div class="err">{_esc(trace.error)}</div>'
    else:
        steps = [s for s in trace.steps if s.error is None]
        for step in steps:  # what each output is drawn over, without drawing the steps
            _drawn_over(page, step, _background(step))
        over = _result_over(page, steps, trace.result)
        body = f'<div>{page.value(trace.result, over=over, alt="result")}</div>'
    return (f'<div class="visprog-trace"><style>{_scoped(_CSS, ".visprog-trace")}</style>'
            f'{body}</div>')


def render_html(trace: Any, *, fragment: bool = False) -> str:
    """The whole trace as one HTML page (a string); `fragment`: as a part of another page
    (what a notebook shows: one <div>, its style scoped to it)."""
    page = _Page()
    steps: list[StepRecord] = []
    for step in trace.steps:
        steps.append(step)
        if step.error is not None:  # later steps never ran; show none
            break
    failed_line = steps[-1].line if steps and steps[-1].error is not None else None
    status = ('<span class="badge fail">failed</span>' if not trace.ok or failed_line is not None
              else '<span class="badge ok">ok</span>')
    top = (['<div class="visprog-trace">',
            f'<style>{_scoped(_CSS, ".visprog-trace")}</style>'] if fragment else
           ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            f'<title>visprog trace</title><style>{_CSS}</style></head><body>'])
    out = [*top,
           f'<h1>visprog trace {status}</h1>',
           f'<div class="meta muted">{len(steps)} step{"s" if len(steps) != 1 else ""}, '
           f'{sum(s.duration for s in steps) * 1000:.1f} ms</div>',
           '<h2>Program</h2>', _source_block(trace.program, failed_line)]
    cards = [_step_card(page, s) for s in steps]  # first: they say what is drawn over what
    if trace.error is not None:
        out += ['<h2>Error</h2>', f'<div class="err">{_esc(trace.error)}</div>']
    else:
        over = _result_over(page, steps, trace.result)
        out += ['<h2>Result</h2>', f'<div>{page.value(trace.result, over=over, alt="result")}'
                '</div>']
    if trace.inputs:
        rows = "".join(f'<tr><td class="k">{_esc(k)}</td><td>{page.value(v, alt=str(k))}</td></tr>'
                       for k, v in trace.inputs.items())
        out += ['<h2>Inputs</h2>', f'<table class="kv">{rows}</table>']
    out.append('<h2>Steps</h2>')
    out += cards
    if failed_line is not None:
        out.append('<div class="muted">Steps after the failed one did not run.</div>')
    rounds, ends = trace.find(Round), trace.find(AgentRun)
    if rounds or ends:
        out.append(_rounds_section(page, rounds, ends))
    for event in trace.events:
        if isinstance(event, Repair):
            out.append(_attempts_section(event))
        elif isinstance(event, Vote):
            out.append(_vote_section(event))
    if trace.events:
        rows = "".join(f'<tr><td class="k">{_esc(e.kind.replace("_", " "))}</td><td>'
                       f'{_fields(_event_fields(e))}</td></tr>' for e in trace.events)
        out.append(f'<details><summary>Events ({len(trace.events)})</summary>'
                   f'<table class="kv fields">{rows}</table></details>')
    if trace.meta:
        out.append(f'<details><summary>Run details</summary>{_fields(trace.meta)}</details>')
    out.append('</div>' if fragment else '</body></html>')
    return "\n".join(out)
