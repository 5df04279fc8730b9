"""Scoring visprog on a data set: run every item, write one result line each, summarise.

    >>> items = load_dataset("testdev_balanced_questions.json", images="gqa/images")  # doctest: +SKIP
    >>> summary = evaluate(vp, items, "gqa.results.jsonl", limit=500)                 # doctest: +SKIP

Each item's program is the one it carries, else one planned by the LLM. Items run in chunks
through `VisProg.run_batch` and its planning loop (`visprog.planning.loop`: plan, run, look
back, select), so model calls are batched across questions. Every item is appended to the
results file (flushed) as soon as it is final, not when its chunk ends, and the progress bar
moves with it; Ctrl-C (or SIGTERM, from `visprog eval`) keeps every finished line and writes
the summary of what is done. A rerun resumes: it skips the ids already in the file, after
cutting off a last line that a kill left half-written, and retries the items that failed for
a reason outside the program (`cause` below). The summary's `this_run` says how many items
were resumed, retried and new.

Before any planning, every item's image (or video) files are looked for: an item whose files
are missing is written at once as an `error` whose message names the folder looked in and
`--images` (`--videos`); when no item's files are there, `evaluate` raises `DatasetError` before doing any work.

Each result line: id, task, question, answer, program, prediction (as the benchmark writes
it, `visprog.values.text.show`), correct, status, error and cause. Status is one of:

- `correct`;
- `wrong`: the program ran, the answer differs after normalisation (`visprog.answers`);
- `no_program`: no valid program (no LLM, the planner failed, or the given program does not
  parse or check);
- `error`: the program failed while running (a step error, an unreadable image).

`cause` says when a failure was not the program's: "input" (an input image could not be
read) or "service" (an LLM, server or model could not be reached or is not configured);
None otherwise. Those items run again on the next run. (Lines written before `cause` existed
are read by their error: `ImageError` and `LLMError` are retried.)

With repair on (the config's [planner] settings, or `repair=`), each item's run is checked
against its question and corrected by the planner when it raises or looks wrong
(`visprog.planning.loop`); only those items run again. Each line then also has the first
attempt's prediction and whether it was right (`first_prediction`, `first_correct`), which
repairs led to the final program (`repairs`: "plan" for a parse/check repair of the first
program, "runtime", "check", "critic"), the number of programs run (`attempts`) and the
checks' findings on the final run. The summary's "repair" part counts the repaired items by
kind, the answers the repairs changed, made right and made wrong, and the accuracy before
repair (first attempts) and after.

A multiple-choice item (V*Bench, HR-Bench) is right when the option its prediction chooses
is the right one (`visprog.evaluation.answers.choose_option`); its line also has `chosen`,
that option's letter (None when it chose none).

The summary (JSON) has the accuracy overall and per question type, and the failure counts.

`mode="agent"` (`visprog eval --mode agent`, or the config's [planner] mode) has the planner
write each program in rounds, looking at what its steps found; every chunk's items advance
round by round together (`VisProg.run_batch(..., mode="agent")`). "oneshot" plans each
program at once. Either mode, each line says what its item
cost: `rounds` (agent rounds; one-shot: programs run), `steps` (of the final program),
`llm_calls`, `llm_tokens`, `images` and `image_tokens` (sent to the planner); the summary's
"cost" averages them per item, with `seconds` per item (this run's wall time over its items),
so one-shot and agent can be compared on the same models. An item with a video (NExT-QA,
EgoSchema, JSONL with "video") also says how many of its video's frames the run looked at
(`frames`: read by a module or shown to the planner, `visprog.evaluation.frames`) of those
sampled (`frames_sampled`), and the summary averages both.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from visprog.evaluation.answers import choose_option, is_correct
from visprog.engine.batch import BatchItem
from visprog.engine.core import ItemResult
from visprog.engine.schedule import AUTO, batch_size_arg
from visprog.evaluation.datasets import FORMATS, DatasetError, EvalItem
from visprog.evaluation.frames import frames_looked_at
from visprog.errors import (CheckError, ConfigError, HostError, ImageError, LLMError,
                            ModelLoadError, ParseError, RemoteModelError, VisProgWarning)
from visprog.traces.events import AgentRun, PlanAttempt, Repair, plan_events
from visprog.values.text import plural, show

STATUSES = ("correct", "wrong", "no_program", "error")
REPAIR_KINDS = ("plan", "runtime", "check", "critic")
CAUSES = ("input", "service")  # failures outside the program: retried on resume
DEFAULT_CHUNK = 64  # items per run_batch call: big enough to fill batches, small enough to resume
MODES = ("oneshot", "agent")  # how programs are planned: at once, or in rounds that look
NO_LLM = "no program given and no LLM configured to plan one"
# Errors of a service the program needs (an endpoint, a model's checkpoint, the LLM, a
# hosted module).
_SERVICE_ERRORS = (RemoteModelError, ModelLoadError, LLMError, HostError, ConnectionError,
                   TimeoutError)


def select(items: Sequence[EvalItem], *, limit: int | None = None, shuffle: bool = False,
           seed: int = 0) -> list[EvalItem]:
    """The items to evaluate: shuffled with `seed` first (so `--limit` takes a random
    sample), then the first `limit`."""
    chosen = list(items)
    if shuffle:
        random.Random(seed).shuffle(chosen)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        chosen = chosen[:limit]
    return chosen


def read_results(path: str | os.PathLike, *, repair: bool = True) -> list[dict[str, Any]]:
    """The result lines already written. A last line cut short by a kill is dropped, and with
    `repair` cut off the file, so that appending continues on a clean line."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        try:
            row = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = False
        if nl < 0 and line.strip():
            break  # a half-written last line (even if it parses: its newline never came)
        if row is False:  # damaged in the middle: its item runs again, later lines count
            warnings.warn(f"skipping a damaged line in {p} at byte {pos}", VisProgWarning,
                          stacklevel=2)
        if isinstance(row, dict) and "id" in row:
            records.append(row)
        good_end = end
        pos = end
    if repair and good_end < len(data):
        with open(p, "r+b") as f:
            f.truncate(good_end)
    return records


def evaluate(vp: Any, items: Sequence[EvalItem], results_path: str | os.PathLike, *,
             summary_path: str | os.PathLike | None = None, batch_size: int | str = AUTO,
             limit: int | None = None, shuffle: bool = False, seed: int = 0,
             chunk_size: int = DEFAULT_CHUNK, use_cache: bool = True, progress: bool = True,
             dataset: str = "", executor: Callable[..., Iterable[dict[str, Any]]] | None = None,
             repair: Any = None, mode: str | None = None, agent: Any = None) -> dict[str, Any]:
    """Evaluate `vp` on `items`, resuming from `results_path`; return the summary.

    Args:
        vp: a `VisProg`.
        items: from `visprog.datasets.load_dataset`.
        results_path: the JSONL of result lines (appended to; existing ids are skipped).
        summary_path: where to write the summary JSON (default: results path + .summary.json).
        batch_size: for `run_batch` ("auto" by device).
        limit, shuffle, seed: which items (`select`).
        chunk_size: items per batched run.
        progress: show a progress bar (stderr) with rate and ETA.
        dataset: a name for the summary.
        executor: runs the chunks elsewhere, e.g. on a Ray cluster
            (`visprog.hosting.cluster.ray_executor`): called with the list of chunks (and
            batch_size=, use_cache=), it yields their result lines as chunks finish.
        repair: `VisProg.run_batch`'s repair setting (default: the config's).
        mode, agent: "oneshot" or "agent" and agent mode's budgets (`VisProg.run_batch`;
            default: the config's).

    Raises:
        ConfigError: an unknown mode, or a mode or budgets where the engine (or the
            executor) takes none (before any item runs).
    """
    _check_mode(vp, mode, agent, executor)
    results_path = Path(results_path)
    summary_path = Path(summary_path) if summary_path else _summary_path(results_path)
    chosen = select(items, limit=limit, shuffle=shuffle, seed=seed)
    last: dict[str, dict[str, Any]] = {}
    for r in read_results(results_path):
        last[str(r["id"])] = r
    retry = {i for i, r in last.items() if record_cause(r) is not None}
    todo = [it for it in chosen if it.id not in last or it.id in retry]
    counts = {"resumed": len(chosen) - len(todo), "retried": sum(it.id in retry for it in todo),
              "new": sum(it.id not in last for it in todo)}
    missing = {} if executor is not None else {  # the workers read the images: they look
        it.id: msg for it in todo if (msg := missing_images(it)) is not None}
    if todo and len(missing) == len(todo):
        raise DatasetError(_none_found(todo, missing))
    results_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = _progress(len(chosen), len(chosen) - len(todo), enabled=progress)
    tally = {"n": 0, "correct": 0}
    interrupted = False
    try:
        with open(results_path, "a", encoding="utf-8") as out:
            def write(record: dict[str, Any]) -> None:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()  # on disk as soon as the item is final: a kill loses nothing done
                tally["n"] += 1
                tally["correct"] += record["correct"]
                bar.update(1)
                bar.set_postfix(acc=f"{tally['correct'] / tally['n']:.3f}", refresh=False)

            for item in todo:  # found missing before any planning: nothing to run
                if item.id in missing:
                    write(_record(item, None, None, "error", ImageError(missing[item.id])))
            runnable = [it for it in todo if it.id not in missing]
            chunks = [runnable[s:s + chunk_size]
                      for s in range(0, len(runnable), max(1, chunk_size))]
            if executor is None:
                for chunk in chunks:
                    _run_chunk(vp, chunk, write, batch_size, use_cache, repair=repair,
                               mode=mode, agent=agent)
            else:
                # the CLI's repair flags reach the workers too (None: their config's)
                extra = {**_mode_options(mode, agent),
                         **({"repair": repair} if repair is not None else {})}
                for record in executor(chunks, batch_size=batch_size, use_cache=use_cache,
                                       **extra):
                    write(record)
            os.fsync(out.fileno())
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        elapsed = time.perf_counter() - started
        summary = summarize(read_results(results_path), [it.id for it in chosen])
        if summary["cost"] is not None and tally["n"]:
            summary["cost"]["seconds"] = round(elapsed / tally["n"], 3)
        summary.update({"dataset": dataset, "mode": _mode(vp, mode),
                        "results": str(results_path),
                        "preset": getattr(vp, "preset", None), "batch_size": batch_size,
                        "this_run": {**counts, "items": tally["n"], "seconds": round(elapsed, 3),
                                     "items_per_s": round(tally["n"] / elapsed, 3)
                                     if elapsed else None, "interrupted": interrupted}})
        summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False),
                                encoding="utf-8")
        summary["summary"] = str(summary_path)
    return summary


def missing_images(item: EvalItem) -> str | None:
    """Why an item's image (or video) files can't be read (not there, not a file), naming
    the folder looked in; None when they are there (http(s) addresses are not looked for)."""
    gone = [p for p in item.files() if "://" not in p and not os.path.isfile(p)]
    if not gone:
        return None
    folders = sorted({str(Path(p).parent.resolve()) for p in gone})
    kind = "video" if gone == [item.video] else "image"
    what = f"{kind} file not found" if len(gone) == 1 else f"{kind} files not found"
    return (f"{what}: {', '.join(gone)} (looked in {' and '.join(folders)}; give the {kind}s "
            f"folder with --{kind}s)")


def _none_found(todo: Sequence[EvalItem], missing: dict[str, str]) -> str:
    folders = sorted({str(Path(p).parent.resolve()) for it in todo for p in it.files()})
    shown = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")
    first = missing[todo[0].id]
    kind = "videos" if all(it.video for it in todo) else "images"
    return (f"none of the {plural(len(todo), 'item')} to evaluate has its {kind}: looked in "
            f"{shown}; give the {kind} folder with --{kind} (the first: {first})")


def failure_cause(error: Any) -> str | None:
    """"input" when an input image could not be read, "service" when an LLM, a server or a
    model could not be reached (or none is configured), else None: the program's own."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImageError):
            return "input"
        if isinstance(error, _SERVICE_ERRORS):
            return "service"
        error = getattr(error, "cause", None) or error.__cause__
    return None


def record_cause(record: dict[str, Any]) -> str | None:
    """The `cause` of a result line's failure; for lines written before it was recorded,
    read from the error's class name."""
    if "cause" in record:
        return record["cause"] if record["cause"] in CAUSES else None
    error = str(record.get("error") or "")
    if error.startswith("ImageError:"):
        return "input"
    if error.startswith("LLMError:") or error == NO_LLM:
        return "service"
    return None


def _mode(vp: Any, mode: str | None) -> str:
    """The mode the items ran in: `mode`, else the config's."""
    if mode is not None or not hasattr(vp, "repair_settings"):
        return mode or "oneshot"
    return vp.repair_settings().mode


def summarize(records: Iterable[dict[str, Any]], ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy overall and by question type, and the failure counts, over the records whose
    id is in `ids` (all when None). A repeated id counts once (its last line)."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in records:
        by_id[str(r["id"])] = r
    wanted = list(by_id) if ids is None else [i for i in ids if i in by_id]
    rows = [by_id[i] for i in wanted]
    counts = {s: 0 for s in STATUSES}
    by_type: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        counts[r.get("status", "error")] = counts.get(r.get("status", "error"), 0) + 1
        for kind, value in (r.get("types") or {}).items():
            cell = by_type[kind].setdefault(str(value), {"n": 0, "correct": 0})
            cell["n"] += 1
            cell["correct"] += bool(r.get("correct"))
    for cells in by_type.values():
        for cell in cells.values():
            cell["accuracy"] = round(cell["correct"] / cell["n"], 4)
    n = len(rows)
    causes = {c: sum(record_cause(r) == c for r in rows) for c in CAUSES}
    return {"total": len(ids) if ids is not None else n, "done": n,
            "correct": counts["correct"],
            "accuracy": round(counts["correct"] / n, 4) if n else None,
            "failures": {s: counts[s] for s in ("no_program", "error", "wrong")},
            "outside": causes,
            "by_type": {k: dict(sorted(v.items())) for k, v in sorted(by_type.items())},
            "repair": _repair_summary(rows), "cost": _cost_summary(rows)}


COSTS = ("rounds", "steps", "llm_calls", "llm_tokens", "images", "image_tokens")


VIDEO_COSTS = ("frames", "frames_sampled")  # video items: frames looked at, of those sampled


def _cost_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What an item cost on average (over the lines that say; None when none does); for
    video items also the frames looked at and sampled (over the items with a video that
    ran)."""
    known = [r for r in rows if all(k in r for k in COSTS)]
    if not known:
        return None
    out = {k: round(sum(float(r[k] or 0) for r in known) / len(known), 3) for k in COSTS}
    videos = [r for r in rows if all(r.get(k) is not None for k in VIDEO_COSTS)]
    if videos:
        out.update({k: round(sum(float(r[k]) for r in videos) / len(videos), 3)
                    for k in VIDEO_COSTS})
    return out


def _repair_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items repaired, by kind; the answers the repairs changed, made right and made wrong;
    the accuracy of the first attempts against the final."""
    by_kind = {k: 0 for k in REPAIR_KINDS}
    repaired = changed = fixed = broken = 0
    first = 0
    for r in rows:
        kinds = r.get("repairs") or []
        repaired += bool(kinds)
        for k in kinds:
            by_kind[k] = by_kind.get(k, 0) + 1
        was = bool(r.get("first_correct", r.get("correct")))
        now = bool(r.get("correct"))
        first += was
        if kinds:
            changed += r.get("first_prediction", r.get("prediction")) != r.get("prediction")
            fixed += now and not was
            broken += was and not now
    n = len(rows)
    return {"repaired": repaired, "by_kind": by_kind, "changed": changed,
            "became_right": fixed, "became_wrong": broken,
            "attempts": sum(int(r.get("attempts") or 0) for r in rows),
            "accuracy_before": round(first / n, 4) if n else None,
            "accuracy_after": round(sum(bool(r.get("correct")) for r in rows) / n, 4) if n else None}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    acc = summary["accuracy"]
    lines = [f"accuracy: {acc:.2%} ({summary['correct']}/{summary['done']}"
             f"{'' if summary['done'] == summary['total'] else ', of ' + str(summary['total'])})"
             if acc is not None else "accuracy: - (nothing evaluated)"]
    f = summary["failures"]
    lines.append(f"failures: no valid program {f['no_program']}, runtime error {f['error']}, "
                 f"wrong answer {f['wrong']}")
    outside = summary.get("outside") or {}
    if any(outside.values()):
        parts = []
        if outside.get("input"):
            parts.append(f"{plural(outside['input'], 'item')} whose images could not be read")
        if outside.get("service"):
            parts.append(f"{plural(outside['service'], 'item')} whose LLM, server or model "
                         "could not be reached")
        lines.append(f"not the program's fault: {' and '.join(parts)}; a rerun retries them")
    rep = summary.get("repair")
    if rep and rep["repaired"] and rep["accuracy_before"] is not None:
        kinds = ", ".join(f"{k} {v}" for k, v in rep["by_kind"].items() if v)
        lines.append(f"repair: {plural(rep['repaired'], 'item')} repaired ({kinds}): "
                     f"{plural(rep.get('changed', 0), 'answer')} changed, "
                     f"{rep.get('became_right', 0)} became right, "
                     f"{rep.get('became_wrong', 0)} became wrong; accuracy "
                     f"{rep['accuracy_before']:.2%} before repair, "
                     f"{rep['accuracy_after']:.2%} after")
    cost = summary.get("cost")
    if cost:
        seconds = f", {cost['seconds']:.2f} s" if cost.get("seconds") is not None else ""
        lines.append(f"per item: {cost['rounds']:g} rounds, {cost['steps']:g} steps, "
                     f"{cost['llm_calls']:g} LLM calls, {cost['llm_tokens']:g} LLM tokens, "
                     f"{cost['images']:g} images ({cost['image_tokens']:g} image tokens)"
                     f"{seconds}")
        if cost.get("frames") is not None:
            lines.append(f"frames looked at: {cost['frames']:g} per video item (of "
                         f"{cost['frames_sampled']:g} sampled)")
    for kind, cells in summary["by_type"].items():
        parts = ", ".join(f"{name} {c['accuracy']:.1%} (n={c['n']})" for name, c in cells.items())
        lines.append(f"by {kind}: {parts}")
    run = summary.get("this_run")
    if run and "new" in run:
        lines.append(f"this run: {run['new']} new, {run['retried']} retried (failed outside the "
                     f"program before), {run['resumed']} resumed from the results file"
                     + (" (interrupted)" if run.get("interrupted") else ""))
    return "\n".join(lines)


# -- one chunk ------------------------------------------------------------------------------

def _check_mode(vp: Any, mode: str | None, agent: Any, executor: Any = None) -> None:
    """Refuse an unknown mode, and a mode or budgets where whatever runs the items can't
    take them (before any item runs, so nothing is written)."""
    import inspect

    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown planning mode {mode!r}; modes: {', '.join(MODES)}")
    for name in _mode_options(mode, agent):
        for what, fn in (("VisProg.run_batch", getattr(vp, "run_batch", None)),
                         ("the executor", executor)):
            if fn is None:
                continue
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError):
                continue
            if name not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ConfigError(f"{what} takes no {name} argument in this version"
                                  + ("; use --mode oneshot" if name == "mode" else ""))


def _mode_options(mode: str | None, agent: Any) -> dict[str, Any]:
    """The planning mode and agent budgets to pass on (none: the config's)."""
    return {k: v for k, v in (("mode", mode), ("agent", agent)) if v is not None}


def _run_chunk(vp: Any, items: list[EvalItem], write: Callable[[dict[str, Any]], None],
               batch_size: int | str, use_cache: bool, *, repair: Any = None,
               mode: str | None = None, agent: Any = None) -> None:
    """Items through `run_batch` (the planning loop plans those without a program, runs
    them all together and repairs what needs it); each result line is written as its item
    is done."""
    batch: list[BatchItem] = []
    by_id: dict[str, EvalItem] = {}
    for item in items:
        if item.program is None and getattr(vp, "llm", None) is None:
            write(_record(item, None, None, "no_program", NO_LLM))
            continue
        by_id[item.id] = item
        batch.append(BatchItem(item.program, image=item.image, left=item.left, right=item.right,
                               video=item.video, id=item.id, question=item.question,
                               task=item.task))
    if not batch:
        return

    def finished(res: ItemResult) -> None:
        item = by_id[res.id]
        planned = item.program is None
        source = res.program.source if res.program is not None else (
            None if planned else str(item.program))
        events = res.trace.events if res.trace is not None else []
        steps = len(res.trace.steps) if res.trace is not None else 0
        video = _video_frames(res.trace, getattr(vp, "registry", None))
        if res.error is None:
            status = "correct" if is_correct(res.value, item.answer, item.options) else "wrong"
            write(_record(item, source, res.value, status, None, events=events, steps=steps,
                          video=video))
        else:
            unplanned = planned and res.program is None and not isinstance(res.error, ImageError)
            status = "no_program" if unplanned or isinstance(res.error, (ParseError, CheckError)) \
                else "error"
            write(_record(item, source, None, status, res.error, events=events, steps=steps,
                          video=video))

    options: dict[str, Any] = {} if repair is None else {"repair": repair}
    options.update(_mode_options(mode, agent))
    vp.run_batch(batch, batch_size=batch_size, use_cache=use_cache, on_item=finished, **options)


def _repairs(events: Sequence[Any]) -> dict[str, Any]:
    """From a trace's events: the repair kinds on the way to the final program, whether
    there was a repair history, the first run's answer and whether it ran, the programs run
    and the final run's findings."""
    repairs = [e for e in events if isinstance(e, Repair)]
    attempts = repairs[-1].attempts if repairs else []
    chosen = 0
    if repairs:
        chosen = len(attempts) - 1 if repairs[-1].chosen is None else repairs[-1].chosen
    first_plan = attempts[0].plan if attempts else [
        e for e in plan_events(events) if e.revision is None]
    kinds = []
    if any(isinstance(e, PlanAttempt) and not e.ok for e in first_plan):
        kinds.append("plan")  # the first reply did not parse or check
    for a in attempts[1:chosen + 1]:
        if a.reason not in kinds:
            kinds.append(a.reason)
    first = attempts[0] if attempts else None
    return {"kinds": kinds, "history": bool(attempts),
            "first_answer": first.answer if first is not None else None,
            "first_ran": first is not None and first.ran,
            "attempts": max(1, len(attempts)),
            "findings": [f.message for f in attempts[chosen].findings] if attempts else []}


def _costs(events: Sequence[Any], steps: int) -> dict[str, Any]:
    """What an item cost, from its trace's events: agent mode's `AgentRun`, else the
    planner's replies (plan attempts of every program run, the critic's verdicts)."""
    ends = [e for e in events if isinstance(e, AgentRun)]
    if ends:
        end = ends[-1]
        return {"rounds": end.rounds, "steps": end.steps, "llm_calls": end.calls,
                "llm_tokens": int(end.usage.get("total_tokens", 0)), "images": end.images,
                "image_tokens": end.image_tokens}
    repairs = [e for e in events if isinstance(e, Repair)]
    runs = repairs[-1].attempts if repairs else []
    plans = [p for r in runs for p in r.plan] if runs else plan_events(events)
    replies = [p for p in plans if isinstance(p, PlanAttempt)]
    verdicts = [r.critic for r in runs if r.critic is not None and r.critic.reply]
    tokens = sum(int(p.usage.get("total_tokens", 0)) for p in replies)
    tokens += sum(int(v.usage.get("total_tokens", 0)) for v in verdicts)
    return {"rounds": max(1, len(runs)), "steps": steps,
            "llm_calls": len(replies) + len(verdicts), "llm_tokens": tokens, "images": 0,
            "image_tokens": 0}


def _video_frames(trace: Any, registry: Any) -> dict[str, int]:
    """A video item's frames: those its run looked at (`frames_looked_at`), of those
    sampled; nothing for an item without a video."""
    looked = frames_looked_at(trace, registry)
    if looked is None:
        return {}
    return {"frames": looked, "frames_sampled": len(trace.inputs["VIDEO"])}


def _record(item: EvalItem, program: Any, value: Any, status: str, error: Any, *,
            events: Sequence[Any] = (), steps: int = 0,
            video: dict[str, int] | None = None) -> dict[str, Any]:
    if program is not None and not isinstance(program, str):
        program = getattr(program, "source", str(program))
    correct = status == "correct"
    prediction = show(value, task=item.task) if status in ("correct", "wrong") else None
    rep = _repairs(events)
    if program is None:
        rep["kinds"] = []  # planning failed: nothing was repaired
    if "plan" in rep["kinds"] or program is None:
        first_prediction, first_correct = None, False  # the first reply gave no program to run
    elif rep["history"]:
        ran = rep["first_ran"]
        first_prediction = show(rep["first_answer"], task=item.task) if ran else None
        first_correct = ran and is_correct(rep["first_answer"], item.answer, item.options)
    else:
        first_prediction, first_correct = prediction, correct
    cause = "service" if error == NO_LLM else failure_cause(error)
    record = {"id": item.id, "task": item.task, "question": item.question,
              "answer": item.answer, "program": program, "prediction": prediction,
              "correct": correct, "status": status,
              "error": None if error is None else (error if isinstance(error, str)
                                                   else f"{type(error).__name__}: {error}"),
              "cause": cause if status in ("no_program", "error") else None,
              "types": item.types, "first_prediction": first_prediction,
              "first_correct": first_correct, "repairs": rep["kinds"],
              "attempts": rep["attempts"] if program is not None else 0,
              "findings": rep["findings"], **_costs(events, steps), **(video or {})}
    if item.options:  # multiple choice: the option the answer chose
        record["chosen"] = choose_option(value, item.options) if prediction is not None else None
    return record


def _summary_path(results: Path) -> Path:
    name = results.name[:-len(".jsonl")] if results.name.endswith(".jsonl") else results.name
    return results.with_name(name + ".summary.json")


class _PlainProgress:
    """A fallback progress line when tqdm is not installed: done/total, rate and ETA."""

    def __init__(self, total: int, initial: int):
        self.total, self.n, self.start_n = total, initial, initial
        self.t0 = time.perf_counter()
        self.postfix = ""

    def update(self, k: int) -> None:
        self.n += k
        elapsed = time.perf_counter() - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed else 0.0
        eta = (self.total - self.n) / rate if rate else float("inf")
        print(f"\r{self.n}/{self.total} {rate:.2f} it/s ETA {eta:.0f}s {self.postfix}",
              end="", file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        print(file=sys.stderr)


class _NoProgress:
    def update(self, k: int) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, *, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, initial)
    # tqdm's default format shows done/total, elapsed<remaining (ETA) and the rate
    return tqdm(total=total, initial=initial, unit="q", desc="eval", dynamic_ncols=True,
                file=sys.stderr, smoothing=0.1)


# -- command line ---------------------------------------------------------------------------

def add_eval_arguments(p: Any) -> None:
    """The flags of `visprog eval` (the engine flags are added by the CLI)."""
    p.add_argument("dataset", help="questions file: GQA questions JSON, NLVR2 JSONL, V*Bench's "
                                   "test_questions.jsonl or folder, HR-Bench TSV, NExT-QA CSV, "
                                   "EgoSchema questions.json or folder, or JSONL of {image or "
                                   "video, question, answer[, options, program]}")
    p.add_argument("--format", choices=FORMATS,
                   help="data set format (default: detected from the file)")
    p.add_argument("--mode", choices=MODES,
                   help="oneshot: plan each program at once; agent: write it in rounds, the "
                        "planner looking at what each round found (default: the config's "
                        "[planner] mode, oneshot unless set)")
    p.add_argument("--images", "--videos", dest="images",
                   help="images (or videos) folder (default: beside the data set file; "
                        "NExT-QA: NExTVideo/ beside it, EgoSchema: videos/ beside it, when "
                        "there)")
    p.add_argument("--fps", type=float,
                   help="sample each item's video at this many frames a second (default: "
                        "the config's [video] fps, 2)")
    p.add_argument("--frames", type=int,
                   help="or this many frames of each video, spread evenly (EgoSchema's "
                        "three minutes at 2 a second are more than [video] max_frames, 256)")
    p.add_argument("--programs", help="JSONL of {id, program}: ready programs for the items")
    p.add_argument("--out", help="results JSONL (default: <dataset>.results.jsonl); "
                                 "a rerun resumes from it")
    p.add_argument("--summary", help="summary JSON (default: beside the results)")
    p.add_argument("--limit", type=int, help="evaluate only the first N items")
    p.add_argument("--shuffle", action="store_true", help="shuffle the items before --limit")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--batch-size", type=batch_size_arg, default=AUTO,
                   help="calls per batched module call, or auto (default: by device)")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                   help=f"items run together per batch (default {DEFAULT_CHUNK})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plan-cache", action="store_true",
                   help="ask the LLM even for questions planned before")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="spread the chunks over a Ray cluster ('auto', 'HOST:6379'): planning "
                        "and execution run there (needs the ray extra; image paths must be "
                        "readable on the workers)")


def cmd_eval(args: Any, vp: Any, executor: Any = None, *, repair: Any = None) -> dict[str, Any]:
    """Run `visprog eval` with parsed `args` on `vp` (chunks on `executor` when given, e.g.
    `visprog.hosting.cluster.ray_executor`; `repair` for `run_batch`); print and return
    the summary."""
    from visprog.evaluation.datasets import load_dataset

    items = load_dataset(args.dataset, args.format, images=args.images, programs=args.programs)
    out = args.out or str(Path(args.dataset).with_suffix("")) + ".results.jsonl"
    try:
        summary = evaluate(vp, items, out, summary_path=args.summary,
                           batch_size=args.batch_size, limit=args.limit, shuffle=args.shuffle,
                           seed=args.seed, chunk_size=args.chunk, use_cache=not args.no_cache,
                           progress=not args.no_progress, dataset=str(args.dataset),
                           executor=executor, repair=repair, mode=getattr(args, "mode", None))
    except KeyboardInterrupt:
        print(f"stopped: every finished item is in {out}; run the same command again to "
              "resume", file=sys.stderr)
        raise
    print(format_summary(summary))
    print(f"results: {out}\nsummary: {summary['summary']}")
    return summary
