"""The `visprog` command.

Exit codes: 0 ok; 1 a program or runtime error (message on stderr, no traceback unless
--debug); 2 a usage error (bad flags, a program file that can't be read).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image

from visprog.engine.schedule import batch_size_arg
from visprog.errors import ProgramError, StepError, VisProgError, VisProgWarning, first_line
from visprog.values.text import plural
from visprog.values.textfiles import read_text

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def _read_program(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    try:
        return read_text(p)  # a BOM, CRLF or lone-CR line ends are fine
    except FileNotFoundError:
        raise UsageError(f"program file not found: {p}") from None
    except ValueError as e:  # not UTF-8: names the line and the byte
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"could not read program file {p}: {e}") from None


def _parse_inputs(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--input takes NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def _diagnostic_line(file: str, d: Any) -> str:
    """`FILE:LINE:COL: message (hint: ...)`, the form editors and terminals link to."""
    hint = f" (hint: {d.hint})" if d.hint else ""
    return f"{file or '<program>'}:{d.line}:{d.column}: {d.message}{hint}"


def _result_data(value: Any) -> Any:
    """A result as its line of output holds it: Objects as their regions and lists as
    they are (printed as JSON), everything else as its short text (`values.text.show`)."""
    from visprog.values import Objects
    from visprog.values.text import show

    if isinstance(value, Objects):
        return value.to_list()
    if isinstance(value, (list, tuple)):
        return [v if v is None or isinstance(v, (str, bool, int, float)) else _result_data(v)
                for v in value]
    return show(value)


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default",
                   help="model preset: default (today's models), classic (the VisProg-era "
                        "models) or tiny (offline, random)")
    p.add_argument("--config", help="TOML file overriding the preset's module settings")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--no-cache", action="store_true", help="run every step afresh")
    p.add_argument("--cache-dir", help="on-disk step cache folder")


def _add_output_flags(p: argparse.ArgumentParser, *, verbose: str) -> None:
    """Where a run's trace and image result go (exec and run)."""
    p.add_argument("--html", help="write the trace as one HTML page")
    p.add_argument("--json", help="write the trace as JSON (images beside it)")
    p.add_argument("--out", help="where to save an image result (default visprog_result.png)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help=f"{verbose}, and what the libraries said that needs no action")


def _check_engine_flags(args: argparse.Namespace) -> None:
    """--preset and --device name things that exist, else a usage error (exit 2) that lists
    them; checked before anything is built."""
    from visprog.config import preset_names
    from visprog.errors import ConfigError
    from visprog.models.manager import check_device

    presets = preset_names()
    if args.preset not in presets:
        raise UsageError(f"unknown preset {args.preset!r}; presets are: {', '.join(presets)}")
    try:
        check_device(getattr(args, "device", None))
    except ConfigError as e:
        raise UsageError(f"--device: {e}") from None


def _engine(args: argparse.Namespace, **extra: Any):
    from visprog.api import VisProg

    _check_engine_flags(args)
    return VisProg(preset=args.preset, config=args.config, device=args.device,
                   cache=not args.no_cache, cache_dir=args.cache_dir, **extra)


def _write_outputs(args: argparse.Namespace, trace: Any) -> None:
    if getattr(args, "html", None):
        trace.save_html(args.html)
        print(f"trace: {args.html}", file=sys.stderr)
    if getattr(args, "json", None):
        trace.save_json(args.json)
        print(f"trace: {args.json}", file=sys.stderr)


def _print_result(args: argparse.Namespace, value: Any) -> None:
    if isinstance(value, Image.Image):
        out = Path(args.out or "visprog_result.png")
        value.save(out)
        print(f"result: image {value.width}x{value.height} saved to {out}")
    else:
        data = _result_data(value)
        print(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False))


def cmd_check(args: argparse.Namespace) -> int:
    from visprog.language.checker import DEFAULT_INPUTS

    text = _read_program(args.file)
    vp = _engine(args)
    inputs = dict(DEFAULT_INPUTS)
    inputs.update(_parse_inputs(args.input))
    problems = vp.check(text, inputs)
    if problems:
        for d in problems:
            print(_diagnostic_line(args.file, d), file=sys.stderr)
        return EXIT_ERROR
    print(f"ok: {plural(len(vp.parse(text)), 'step')}")
    return EXIT_OK


def _video_input(args: argparse.Namespace, vp: Any) -> Any:
    """The VIDEO input of --video, sampled as --fps/--frames say (else as the config's
    [video] table does); None without --video."""
    if getattr(args, "fps", None) is not None or getattr(args, "frames", None) is not None:
        if not args.video:
            raise UsageError("--fps and --frames sample the --video input: give --video PATH")
        return vp.load_video(args.video, fps=args.fps, frames=args.frames)
    return args.video


def _add_video_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", help="the VIDEO input: a video file (mp4, webm, mov, animated "
                                   "gif...) or a folder of frames")
    p.add_argument("--fps", type=float, help="sample the video at this many frames a second "
                                             "(default: the config's [video] fps, 2)")
    p.add_argument("--frames", type=int, help="or sample this many frames, spread evenly")


def cmd_exec(args: argparse.Namespace) -> int:
    text = _read_program(args.file)
    if not (args.image or args.left or args.right or args.video):
        raise UsageError("give an input image: --image PATH (or --left/--right for pairs, "
                         "--video PATH for a video)")
    vp = _engine(args)
    video = _video_input(args, vp)
    on_step = None
    if args.verbose:
        def on_step(rec: Any) -> None:
            tag = " (cached)" if rec.cached else ""
            print(f"  [{rec.index + 1}] {rec.source}  {rec.duration * 1000:.0f} ms{tag}",
                  file=sys.stderr)
    try:
        out = vp.execute(text, args.image, left=args.left, right=args.right, video=video,
                         inputs=_parse_inputs(args.input), on_step=on_step)
    except StepError as e:
        if e.trace is not None:
            _write_outputs(args, e.trace)  # the steps that ran are not lost
        raise
    _write_outputs(args, out.trace)
    _print_result(args, out.value)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    vp = _engine(args)
    plan = vp.plan(args.question, task=args.task or "gqa", **_planner_options(args))
    print(plan.text)
    return EXIT_OK


def _run_inputs(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(task, image or left, right) of `visprog run`: a pair (--left/--right, or --image with
    --right) is the nlvr task unless --task says otherwise; a task whose inputs don't match
    the images given is a usage error."""
    from visprog.planning.prompts import TASKS

    if args.left and args.image:
        raise UsageError("give --image PATH for one image, or --left PATH --right PATH for a "
                         "pair, not both --image and --left")
    first = args.left or args.image
    pair = bool(args.left or args.right)
    task = args.task or ("nlvr" if pair else "gqa")
    wants_pair = set(TASKS[task].inputs) == {"LEFT", "RIGHT"}
    if wants_pair and not (first and args.right):
        raise UsageError(f"--task {task} compares two images: give --left LEFT --right RIGHT")
    if not first:
        raise UsageError("give an input image: --image PATH (or --left PATH --right PATH for "
                         "a pair)")
    if pair and not wants_pair:
        raise UsageError(f"--task {task} takes one image (--image PATH); a pair (--left/"
                         "--right) is --task nlvr")
    return task, first, args.right if pair else None


def cmd_run(args: argparse.Namespace) -> int:
    if args.video:  # a question about a video: its task's prompt binds VIDEO
        if args.left or args.right:
            raise UsageError("give --video PATH, or images (--image, --left/--right), not both")
        task, image, right = args.task or "video", args.image, None
    else:
        task, image, right = _run_inputs(args)
    if args.rounds is not None and args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    vp = _engine(args)
    video = _video_input(args, vp)
    mode = vp.repair_settings(mode="agent" if args.agent else None).mode
    if mode == "agent" and args.vote > 1:
        raise UsageError("--vote samples whole programs: it is for one-shot mode, not --agent")
    if args.rounds is not None and mode != "agent":
        raise UsageError("--rounds is for agent mode: add --agent")
    agent = {"rounds": args.rounds} if args.rounds is not None else None
    try:
        out = vp.run(image, args.question, task=task, right=right, video=video,
                     vote=args.vote, repair=repair_option(args),
                     mode="agent" if args.agent else None, agent=agent,
                     **_planner_options(args))
    except VisProgError as e:
        trace = getattr(e, "trace", None)
        if trace is not None:
            _write_outputs(args, trace)  # the plan and the steps that ran are not lost
            if args.verbose:
                _print_repairs(trace.events)
                _print_rounds(trace.events)
        raise
    if args.verbose:
        from visprog.traces.events import PlanCacheHit, plan_events

        for event in plan_events(out.trace.events):
            state = "cached" if isinstance(event, PlanCacheHit) else \
                ("ok" if event.ok else plural(len(event.errors), "error"))
            print(f"  plan: {state}", file=sys.stderr)
        _print_repairs(out.trace.events)
        _print_rounds(out.trace.events)
        print("program:\n" + "\n".join(f"  {line}" for line in out.program.source.splitlines()),
              file=sys.stderr)
    if args.program:
        Path(args.program).write_text(out.program.source.rstrip("\n") + "\n", encoding="utf-8")
        print(f"program: {args.program}", file=sys.stderr)
    _write_outputs(args, out.trace)
    _print_result(args, out.value)
    return EXIT_OK


def _print_repairs(events: Sequence[Any]) -> None:
    """One line per run attempt of the planning loop (stderr)."""
    from visprog.traces.events import Repair

    for event in events:
        if not isinstance(event, Repair):
            continue
        for a in event.attempts:
            mark = "*" if a.index == event.chosen else " "
            print(f" {mark}attempt {a.index + 1} ({a.reason}): {a.state()}", file=sys.stderr)


def _print_rounds(events: Sequence[Any]) -> None:
    """Agent mode: one line per round (its steps, what it showed), then how it ended
    (stderr)."""
    from visprog.traces.events import AgentRun, Round

    for event in events:
        if isinstance(event, Round):
            steps = "; ".join(line.strip() for line in event.program.splitlines()
                              if line.strip()) or "(no valid steps written)"
            shown = f", shown {', '.join(event.looks)}" if event.looks else ""
            images = f", {len(event.images)} image{'s' if len(event.images) != 1 else ''}" \
                if event.images else ""
            failed = f", failed: {event.error}" if event.error else ""
            print(f"  round {event.index + 1}: {steps}{shown}{images}{failed}", file=sys.stderr)
        elif isinstance(event, AgentRun):
            tokens = event.usage.get("total_tokens", 0)
            print(f"  agent: stopped by {event.stop} after {event.rounds} rounds, "
                  f"{event.steps} steps, {event.calls} LLM calls, {tokens} tokens, "
                  f"answer from {event.answer or 'nothing'}"
                  + (f" ({event.note})" if event.note and event.stop != "result" else ""),
                  file=sys.stderr)


def add_repair_arguments(p: argparse.ArgumentParser, *, vote: bool = False) -> None:
    """The repair loop's flags (`visprog run` and `visprog eval`; `--select` only where
    there is a `--vote`)."""
    from visprog.planning.checks import CHECKS

    p.add_argument("--repair", type=int, metavar="N",
                   help="corrections allowed after a run that raises or fails a check "
                        "(default: the config's, 2; 0 checks without repairing)")
    p.add_argument("--no-repair", action="store_true",
                   help="no checks and no repair: the first program's run is the answer")
    p.add_argument("--critic", action="store_true",
                   help="also ask the LLM whether each run answers its question")
    p.add_argument("--no-check", action="append", default=[], choices=sorted(CHECKS),
                   metavar="NAME", help=f"switch a check off ({', '.join(CHECKS)})")
    if vote:
        p.add_argument("--select", choices=("checks", "majority"),
                       help="with --vote: prefer runs that pass the checks (default) or the "
                            "plain majority")


def repair_option(args: Any) -> Any:
    """`repair=` for `VisProg.run`/`run_batch` from the flags (None: the config's)."""
    if getattr(args, "no_repair", False):
        return False
    options: dict[str, Any] = {}
    if getattr(args, "repair", None) is not None:
        options["attempts"] = args.repair
    if getattr(args, "critic", False):
        options["critic"] = True
    if getattr(args, "no_check", None):
        options["checks"] = {name: False for name in args.no_check}
    if getattr(args, "select", None):
        options["select"] = args.select
    return options or None


def _planner_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.attempts is not None:
        options["attempts"] = args.attempts
    if args.examples is not None:
        options["examples"] = args.examples if args.examples == "all" else int(args.examples)
    if args.no_plan_cache:
        options["cache"] = False
    if args.deadline is not None:
        options["deadline_s"] = args.deadline
    return options


def _add_planner_flags(p: argparse.ArgumentParser) -> None:
    from visprog.planning.prompts import TASKS

    p.add_argument("question", help="the question, statement or instruction")
    p.add_argument("--task", choices=sorted(TASKS),
                   help="which kind of question (default gqa; nlvr for a pair of images)")
    p.add_argument("--attempts", type=int, help="tries per program, repairs included (default 3)")
    p.add_argument("--deadline", type=float, metavar="SECONDS",
                   help="the most all LLM requests of a plan may take together, retries "
                        "included (default 120)")
    p.add_argument("--examples", help="in-context examples: 'all' (default) or how many")
    p.add_argument("--no-plan-cache", action="store_true",
                   help="ask the LLM even if this question was planned before")


def cmd_trace_show(args: argparse.Namespace) -> int:
    from visprog.traces.records import Trace

    missing: list[str] = []  # it prints text: images that did not move with it can be spared
    trace = Trace.load_json(args.file, missing=missing)
    print(trace)  # the program, a line a step, the result (Trace.__str__)
    if args.html:
        trace.save_html(args.html)
        print(f"html: {args.html}")
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                          if len(missing) > 5 else "")
        print(f"visprog: warning: {plural(len(missing), 'image file')} of this trace "
              f"{'is' if len(missing) == 1 else 'are'} missing (its _files folder did not "
              f"move with it?); shown as text: {shown}", file=sys.stderr)
    return EXIT_OK


def cmd_tools(args: argparse.Namespace) -> int:
    vp = _engine(args)
    for tool in sorted(vp.tools, key=lambda t: t.name):
        print(f"{tool.signature()}\n    {tool.doc}")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    from visprog.api import describe_config

    _check_engine_flags(args)
    info = describe_config(args.preset, args.config, device=args.device)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return EXIT_OK
    models = info["models"]
    # no global "half" here: each module's dtype below is what it will load in
    print(f"preset: {info['preset']}   device: {models['device']}"
          + (f"   config: {args.config}" if args.config else ""))
    cols = ["module", "backend", "checkpoint", "device", "dtype"]
    if any(r["host"] != "local" for r in info["modules"]):
        cols.append("host")
    rows = [[str(r[c]) for c in cols] for r in info["modules"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    for row in [cols, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    llm = info.get("llm")
    if llm:
        print(f"planner LLM: {llm.get('backend', '?')} {llm.get('model') or '-'}"
              + (f" at {llm['base_url']}" if llm.get("base_url") else ""))
    else:
        why = info.get("llm_error") or "none configured"
        print(f"planner LLM: none ({first_line(why)})")
    return EXIT_OK


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that files close and the summary is written
    as on Ctrl-C (exit 143)."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Any:
    """While the block runs, SIGTERM unwinds it like Ctrl-C (only the main thread can)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _eval_sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The [video] keys --fps and --frames set for `visprog eval` (--fps alone turns a
    configured `frames` off)."""
    out: dict[str, Any] = {}
    if args.fps is not None:
        out.update(fps=args.fps, frames=0)
    if args.frames is not None:
        out["frames"] = args.frames
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from visprog.evaluation.harness import cmd_eval as run_eval

    vp = _engine(args)
    # the flags' settings over the configuration, in the one recipe that this engine and
    # every Ray worker's are assembled from
    flags: dict[str, Any] = {}
    if args.no_plan_cache:
        flags["planner"] = {"cache": False}
    sampling = _eval_sampling(args)
    if sampling:  # each item's video, sampled as --fps/--frames say
        flags["video"] = sampling
    recipe = vp.assembly.recipe
    if flags:
        from dataclasses import replace

        from visprog.api import VisProg
        from visprog.errors import ConfigError
        from visprog.models.model_tool import merge_settings

        recipe = replace(recipe, config=merge_settings(recipe.config, flags))
        try:
            vp = VisProg.from_recipe(recipe)
        except ConfigError as e:  # the configuration alone assembled: the flags are wrong
            raise UsageError(str(e)) from None
    executor = None
    if getattr(args, "ray", None):
        import functools

        from visprog.api import VisProg
        from visprog.hosting.cluster import ray_executor

        # each worker assembles this engine again, from its recipe (the resolved config)
        executor = ray_executor(args.ray, functools.partial(VisProg.from_recipe, recipe))
    with _terminate_as_interrupt():
        run_eval(args, vp, executor, repair=repair_option(args))
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    failed = run_items(args, _engine(args))
    return EXIT_ERROR if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo lives in demos/app.py (gradio is the `demo` extra), imported only here.
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the demo needs gradio: pip install 'visprog[demo]'") from None
    from visprog.demos import app  # demos/ installs as visprog.demos

    max_pixels = args.max_pixels or app.MAX_IMAGE_PIXELS  # the demo's own, lower default
    try:
        app.check_port(args.host, args.port)  # before the engine is built
        app.launch(vp=_engine(args, max_pixels=max_pixels), preset=args.preset,
                   port=args.port, host=args.host)
    except app.PortInUse as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visprog", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="parse and check a program without running it")
    p.add_argument("file", help="program file, or - for standard input")
    p.add_argument("--input", action="append", default=[], metavar="NAME=TYPE",
                   help="declare an extra input variable and its type")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("exec", help="run a program on an image")
    p.add_argument("file", help="program file, or - for standard input")
    p.add_argument("--image", help="the IMAGE input")
    p.add_argument("--left", help="the LEFT image (pairs)")
    p.add_argument("--right", help="the RIGHT image (pairs)")
    _add_video_flags(p)
    p.add_argument("--input", action="append", default=[], metavar="NAME=TEXT",
                   help="bind another input variable to a text value")
    _add_output_flags(p, verbose="print each step as it ends")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_exec)

    # The planner (an LLM from VISPROG_LLM_MODEL + OPENAI_API_KEY [+ OPENAI_BASE_URL], or
    # VISPROG_LLM_PATH for a local model) writes the program.
    p = sub.add_parser("plan", help="ask the LLM for a program and print it (nothing runs)")
    _add_planner_flags(p)
    _add_engine_flags(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="plan a program for a question, then run it on an image")
    _add_planner_flags(p)
    p.add_argument("--image", help="the IMAGE input (with --right: the LEFT image)")
    p.add_argument("--left", help="the LEFT image of a pair (--task nlvr)")
    p.add_argument("--right", help="the RIGHT image of a pair (--task nlvr)")
    _add_video_flags(p)
    p.add_argument("--vote", type=int, default=1,
                   help="sample this many programs, run each, keep the majority answer")
    p.add_argument("--agent", action="store_true",
                   help="agent mode: the planner writes the program in rounds, seeing what "
                        "each round gave (its Look steps) before the next")
    p.add_argument("--rounds", type=int, metavar="N",
                   help="agent mode: the most rounds (default: the config's, 6)")
    p.add_argument("--program", metavar="FILE",
                   help="save the program that answered (visprog exec runs it again)")
    add_repair_arguments(p, vote=True)
    _add_output_flags(p, verbose="print the planner's attempts, the repairs, the rounds and "
                                 "the program")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("trace", help="look at a saved trace")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    t = tsub.add_parser("show", help="print a saved JSON trace")
    t.add_argument("file")
    t.add_argument("--html", help="also render it as an HTML page")
    t.set_defaults(func=cmd_trace_show)

    from visprog.evaluation.harness import add_eval_arguments

    p = sub.add_parser("eval", help="score programs or the planner on GQA, NLVR2, V*Bench, "
                                    "HR-Bench, NExT-QA, EgoSchema or a JSONL")
    add_eval_arguments(p)
    add_repair_arguments(p)
    _add_engine_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("batch", help="run many programs together (model calls batched)")
    add_batch_arguments(p)
    _add_engine_flags(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("demo", help="start the web demo (needs the demo extra: gradio)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 serves other machines)")
    p.add_argument("--max-pixels", type=int,
                   help="refuse uploads over this many pixels (default: the demo's 16 MP)")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="look at the resolved configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("show", help="every model module's backend, checkpoint, device and "
                                     "dtype in a preset (with a config file's overrides)")
    c.add_argument("--preset", default="default",
                   help="model preset: default, classic or tiny")
    c.add_argument("--config", help="TOML file overriding the preset's module settings")
    c.add_argument("--device", help="cpu, cuda, mps (default: the config's, else the best)")
    c.add_argument("--json", action="store_true", help="print JSON with every setting")
    c.set_defaults(func=cmd_config_show)

    p = sub.add_parser("tools", help="list the modules and their signatures")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_tools)

    from visprog.hosting.serve import add_serve_arguments  # imports no ray: that happens in cmd_serve

    p = sub.add_parser("serve", help="serve model modules on Ray Serve (needs the ray extra)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from visprog.config import find_modules, load_config
    from visprog.hosting.serve import main as serve_main

    modules = find_modules()
    return serve_main(args, load_config(args.preset, args.config, modules=modules),
                      modules.catalog())


def _warning_printer(show: Any) -> Any:
    """Warnings of visprog's own (the run goes on) as one line each; others as Python
    prints them."""
    def printer(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, VisProgWarning):
            print(f"visprog: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return printer


@contextlib.contextmanager
def _verbose_log(verbose: bool) -> Iterator[None]:
    """With -v: visprog's log at INFO on stderr too (what the libraries said that needs no
    action, `models/library_logs.py`; OpenCV's own log); without, warnings only."""
    if not verbose:
        yield
        return
    log = logging.getLogger("visprog")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad flags
    try:
        with _verbose_log(getattr(args, "verbose", False)), \
                warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _warning_printer(warnings.showwarning)
            return args.func(args)
    except UsageError as e:
        print(f"visprog: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ProgramError as e:
        if args.debug:
            raise
        for d in e.diagnostics:
            print(_diagnostic_line(getattr(args, "file", ""), d), file=sys.stderr)
        return EXIT_ERROR
    except VisProgError as e:
        if args.debug:
            raise
        print(f"visprog: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:
        print("visprog: interrupted", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:
        # The reader went away (`visprog config show | head`): not an error of ours. Point
        # stdout at nothing so the interpreter's own flush at exit does not fail again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK




# -- visprog batch ------------------------------------------------------------------------------

def add_batch_arguments(p: Any) -> None:
    """The flags of `visprog batch` (the engine flags are added by the CLI)."""
    p.add_argument("items", help="JSONL, one item a line: {id, program or program_file, "
                                 "image | left and right | video, inputs}")
    p.add_argument("--out", help="results JSONL (default: standard output)")
    p.add_argument("--traces", help="folder to save each item's trace as <id>.json")
    p.add_argument("--images", dest="image_dir",
                   help="folder for results that are images, written as <id>.png (default: "
                        "<out>_images beside --out, else batch_images)")
    p.add_argument("--batch-size", type=batch_size_arg, default="auto",
                   help="calls per batched module call, or auto (default: by device)")


def file_name(item_id: Any, taken: set[str]) -> str:
    """A file name for an item id: letters, digits, '.', '_' and '-' kept, anything else
    (a path separator, '..') replaced, so an id can't write outside its folder; ids that
    clean to the same name get -2, -3... Remembers the name in `taken`."""
    import re

    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(item_id)).strip("._")[:100] or "item"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def run_items(args: Any, vp: Any) -> int:
    """`visprog batch`: run every item of a JSONL file; one result line per item (an image
    result is saved as a PNG and its path written), then a summary on stderr. Returns the
    number of items that failed."""
    import json
    import sys
    import time
    from pathlib import Path

    from visprog.engine.batch import BatchItem
    from visprog.evaluation.datasets import DatasetError, _json_lines
    from visprog.values import type_of

    t0 = time.perf_counter()
    base = Path(args.items).parent
    items = []
    for lineno, row in _json_lines(Path(args.items)):
        row = dict(row)
        if "program_file" in row:
            program_file = base / row.pop("program_file")
            try:
                row["program"] = read_text(program_file)
            except (OSError, ValueError) as e:
                raise DatasetError(f"{args.items}:{lineno}: could not read program_file "
                                   f"{program_file}: {e}") from None
        if "program" not in row:
            raise DatasetError(f"{args.items}:{lineno}: missing field 'program'")
        for key in ("image", "left", "right", "video"):
            if isinstance(row.get(key), str):
                row[key] = str(base / row[key])
        row.setdefault("id", lineno)
        items.append(BatchItem(**{k: row.get(k) for k in
                                  ("program", "image", "left", "right", "inputs", "id",
                                   "video")}))
    if args.image_dir:
        image_dir = Path(args.image_dir)
    elif args.out:
        image_dir = Path(args.out).with_name(Path(args.out).stem + "_images")
    else:
        image_dir = Path("batch_images")
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    failed, images, names = 0, 0, set()
    try:
        for res in vp.run_batch(items, batch_size=args.batch_size, use_cache=not args.no_cache):
            failed += not res.ok
            name = file_name(res.id, names)
            if args.traces and res.trace is not None:
                Path(args.traces).mkdir(parents=True, exist_ok=True)
                res.trace.save_json(Path(args.traces) / f"{name}.json")
            value = res.value
            kind = type_of(value) if res.ok else None
            if isinstance(value, Image.Image):
                image_dir.mkdir(parents=True, exist_ok=True)
                path = image_dir / f"{name}.png"
                value.save(path)
                value, images = str(path), images + 1
            elif not (value is None or isinstance(value, (bool, int, float))):
                value = _result_data(value)
            out.write(json.dumps({"id": res.id, "ok": res.ok, "type": kind, "value": value,
                                  "error": None if res.ok else str(res.error)},
                                 ensure_ascii=False, default=str) + "\n")
            out.flush()  # each result is on disk as soon as it is known
    finally:
        if out is not sys.stdout:
            out.close()
    where = f"; results in {args.out}" if args.out else ""
    saved = f"; {images} image{'s' if images != 1 else ''} in {image_dir}" if images else ""
    print(f"visprog batch: {len(items)} item{'s' if len(items) != 1 else ''}, "
          f"{len(items) - failed} ok, {failed} failed in {time.perf_counter() - t0:.1f} s"
          f"{where}{saved}", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
