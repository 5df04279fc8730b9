"""The `visprog` command: check, exec, trace show, tools; exit codes and messages.

Programs are model-free: Loc's 'LEFT'/'TOP'/... halves need no model, then Count, Eval,
ColorPop and Result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from visprog.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from visprog.errors import ImageError, StepError

OK = ("L=Loc(image=IMAGE, object='LEFT')\n"
      "N=Count(box=L)\n"
      "A=Eval(expr=\"'yes' if {N} > 0 else 'no'\")\n")
BAD = ("L=Lco(image=IMAGE, object='LEFT')\n"
       "N=Count(box=IMAGE)\n")
POP = ("L=Loc(image=IMAGE, object='TOP')\n"
       "I=ColorPop(image=IMAGE, object=L)\n")
FAILS = ("L=Loc(image=IMAGE, object='LEFT')\n"
         "N=Count(box=L)\n"
         "X=Eval(expr='{N} / 0')\n")
TINY = ["--preset", "tiny"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with programs and an image, as the current directory."""
    monkeypatch.chdir(tmp_path)
    for name, text in {"ok.vp": OK, "bad.vp": BAD, "pop.vp": POP, "fails.vp": FAILS,
                       "syntax.vp": "A=Loc(image=IMAGE\n"}.items():
        (tmp_path / name).write_text(text)
    Image.new("RGB", (40, 30), (30, 60, 90)).save(tmp_path / "photo.png")
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- check --------------------------------------------------------------------------------------

def test_check_ok(work, capsys):
    code, out, err = run_cli(capsys, "check", "ok.vp", *TINY)
    assert (code, out, err) == (EXIT_OK, "ok: 3 steps\n", "")


def test_check_reports_every_error_with_line_and_column(work, capsys):
    code, out, err = run_cli(capsys, "check", "bad.vp", *TINY)
    assert code == EXIT_ERROR and out == ""
    assert err.splitlines() == [
        "bad.vp:1:3: unknown module 'Lco' (hint: did you mean 'Loc'?)",
        "bad.vp:2:9: Count's 'box' takes Objects or Tracks; IMAGE is Image "
        "(hint: pass the result of Loc, Seg, Select, FaceDet or Classify)",
    ]
    assert "Traceback" not in err


def test_check_syntax_error(work, capsys):
    code, _, err = run_cli(capsys, "check", "syntax.vp", *TINY)
    assert code == EXIT_ERROR
    assert err.startswith("syntax.vp:1:18: unexpected") and "hint:" in err


def test_check_from_stdin(work, capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO(BAD))
    code, _, err = run_cli(capsys, "check", "-", *TINY)
    assert code == EXIT_ERROR and err.startswith("-:1:3: unknown module 'Lco'")


def test_check_with_declared_inputs(work, capsys):
    (work / "q.vp").write_text("A=Eval(expr=\"'yes' if {Q} == 'x' else 'no'\")\n")
    assert run_cli(capsys, "check", "q.vp", *TINY)[0] == EXIT_ERROR
    assert run_cli(capsys, "check", "q.vp", "--input", "Q=Text", *TINY)[0] == EXIT_OK


# -- exec ---------------------------------------------------------------------------------------

def test_exec_prints_the_result(work, capsys):
    code, out, err = run_cli(capsys, "exec", "ok.vp", "--image", "photo.png", *TINY)
    assert (code, out) == (EXIT_OK, "yes\n")
    assert "Traceback" not in err


def test_exec_writes_html_and_json(work, capsys):
    code, out, err = run_cli(capsys, "exec", "ok.vp", "--image", "photo.png", "--html", "t.html",
                             "--json", "t.json", *TINY)
    assert code == EXIT_OK and out == "yes\n"
    assert "trace: t.html" in err and "trace: t.json" in err
    assert "<html" in (work / "t.html").read_text(encoding="utf-8").lower()
    data = json.loads((work / "t.json").read_text())
    assert isinstance(data, dict)


def test_exec_saves_an_image_result(work, capsys):
    code, out, _ = run_cli(capsys, "exec", "pop.vp", "--image", "photo.png", "--out", "r.png",
                           *TINY)
    assert code == EXIT_OK and out == "result: image 40x30 saved to r.png\n"
    assert Image.open(work / "r.png").size == (40, 30)
    code, out, _ = run_cli(capsys, "exec", "pop.vp", "--image", "photo.png", *TINY)
    assert code == EXIT_OK and (work / "visprog_result.png").is_file()


def test_exec_verbose_lists_steps_and_cache_hits(work, capsys):
    run_cli(capsys, "exec", "ok.vp", "--image", "photo.png", *TINY)
    code, _, err = run_cli(capsys, "exec", "ok.vp", "--image", "photo.png", "-v", *TINY)
    assert code == EXIT_OK
    lines = [l for l in err.splitlines() if l.startswith("  [")]
    assert len(lines) == 3 and all("(cached)" in l for l in lines)
    code, _, err = run_cli(capsys, "exec", "ok.vp", "--image", "photo.png", "-v", "--no-cache",
                           *TINY)
    assert "(cached)" not in err


def test_exec_with_pairs_and_inputs(work, capsys):
    (work / "pair.vp").write_text("A=Loc(image=LEFT, object='TOP')\nB=Loc(image=RIGHT, "
                                  "object='TOP')\nN=Eval(expr=\"{W} + ':' + 'ok'\")\n")
    code, out, _ = run_cli(capsys, "exec", "pair.vp", "--left", "photo.png", "--right",
                           "photo.png", "--input", "W=hello", *TINY)
    assert (code, out) == (EXIT_OK, "hello:ok\n")


def test_exec_missing_image(work, capsys):
    code, out, err = run_cli(capsys, "exec", "ok.vp", "--image", "nope.png", *TINY)
    assert code == EXIT_ERROR and out == ""
    assert err == "visprog: error: image file not found: nope.png\n"


@pytest.mark.parametrize("content", [b"not an image", b""])
def test_exec_unreadable_image(work, capsys, content):
    (work / "broken.jpg").write_bytes(content)
    code, _, err = run_cli(capsys, "exec", "ok.vp", "--image", "broken.jpg", *TINY)
    assert code == EXIT_ERROR and "not an image" in err and "Traceback" not in err


def test_exec_program_error_is_exit_1_with_positions(work, capsys):
    code, out, err = run_cli(capsys, "exec", "bad.vp", "--image", "photo.png", *TINY)
    assert code == EXIT_ERROR and out == ""
    assert err.splitlines()[0] == "bad.vp:1:3: unknown module 'Lco' (hint: did you mean 'Loc'?)"


def test_exec_failing_step_keeps_its_trace(work, capsys):
    code, out, err = run_cli(capsys, "exec", "fails.vp", "--image", "photo.png", "--json",
                             "t.json", *TINY)
    assert code == EXIT_ERROR and out == ""
    assert "step 3 (line 3, X=Eval(...)) failed" in err and "division by zero" in err
    assert "Traceback" not in err
    code, out, _ = run_cli(capsys, "trace", "show", "t.json")
    assert code == EXIT_OK
    assert "line 2: N = Count" in out and "ERROR EvalError" in out and "error:" in out


@pytest.mark.parametrize("argv", [
    ["exec", "missing.vp", "--image", "photo.png"],
    ["check", "missing.vp"],
    ["exec", "ok.vp"],  # no image
    ["exec", "ok.vp", "--image", "photo.png", "--input", "1bad=3"],
    ["exec", "ok.vp", "--image", "photo.png", "--input", "novalue"],
])
def test_usage_errors_exit_2(work, capsys, argv):
    code, out, err = run_cli(capsys, *argv, *TINY)
    assert code == EXIT_USAGE and out == ""
    assert err.startswith("visprog: ") and "Traceback" not in err


def test_program_path_is_a_directory(work, capsys):
    (work / "dir.vp").mkdir()
    code, _, err = run_cli(capsys, "check", "dir.vp", *TINY)
    assert code == EXIT_USAGE and "could not read program file" in err


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["exec", "ok.vp", "--bogus"], ["check"], ["trace"],
    ["exec", "ok.vp", "--image"],
])
def test_bad_flags_exit_2(work, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_debug_raises_instead_of_printing(work, capsys):
    with pytest.raises(ImageError):
        main(["--debug", "exec", "ok.vp", "--image", "nope.png", *TINY])
    with pytest.raises(StepError):
        main(["--debug", "exec", "fails.vp", "--image", "photo.png", *TINY])


# -- trace show and tools -------------------------------------------------------------------------

def test_trace_show(work, capsys):
    run_cli(capsys, "exec", "ok.vp", "--image", "photo.png", "--json", "out.json", *TINY)
    code, out, _ = run_cli(capsys, "trace", "show", "out.json", "--html", "again.html")
    assert code == EXIT_OK
    assert "    1  L=Loc(image=IMAGE, object='LEFT')" in out
    assert "[1] line 1: L = Loc" in out and "-> 1 region (LEFT)" in out
    assert "[3] line 3: A = Eval" in out and "result: yes" in out
    assert (work / "again.html").is_file()


@pytest.mark.parametrize("content,message", [(None, "not found"), ("{", "not valid JSON")])
def test_trace_show_bad_files(work, capsys, content, message):
    if content is not None:
        (work / "t.json").write_text(content)
    code, _, err = run_cli(capsys, "trace", "show", "t.json")
    assert code == EXIT_ERROR and message in err and "Traceback" not in err


def test_tools_lists_signatures(work, capsys):
    code, out, _ = run_cli(capsys, "tools", *TINY)
    assert code == EXIT_OK
    assert "Count(box: Objects|Tracks) -> Number" in out and "CropLeftOf(image: Image, box: Objects)" in out


# -- a real process -------------------------------------------------------------------------------

def subprocess_cli(work: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "visprog.cli", *argv], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)


def test_real_process_exec_and_errors(work):
    done = subprocess_cli(work, "exec", "ok.vp", "--image", "photo.png", "--json", "t.json",
                          *TINY)
    assert (done.returncode, done.stdout) == (EXIT_OK, "yes\n"), done.stderr
    done = subprocess_cli(work, "check", "bad.vp", *TINY)
    assert done.returncode == EXIT_ERROR
    assert done.stderr.startswith("bad.vp:1:3: unknown module 'Lco'")
    assert "Traceback" not in done.stderr


def test_real_process_debug_shows_a_traceback(work):
    done = subprocess_cli(work, "--debug", "exec", "ok.vp", "--image", "nope.png", *TINY)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ImageError: image file not found" in done.stderr


def test_unknown_preset_and_device_are_usage_errors(capsys):
    import torch

    assert main(["config", "show", "--preset", "bogus"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown preset 'bogus'" in err and "tiny" in err
    assert main(["config", "show", "--preset", "tiny", "--device", "banana"]) == EXIT_USAGE
    assert "'banana' is not a device; devices here: cpu" in capsys.readouterr().err
    if not torch.cuda.is_available():
        for argv in (["config", "show"], ["tools"]):
            assert main([*argv, "--preset", "tiny", "--device", "cuda"]) == EXIT_USAGE
            assert "'cuda' is not available here; devices here: cpu" in capsys.readouterr().err
    assert main(["config", "show", "--preset", "tiny", "--device", "cpu"]) == EXIT_OK


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    # `visprog config show | head`: the reader is gone before we write
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "visprog.cli", "config", "show",
                               "--preset", "tiny"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_OK, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_batch_saves_image_results_and_prints_a_summary(work, capsys):
    rows = [{"id": "pop", "program": POP, "image": "photo.png"},
            {"id": "../../escape", "program": OK, "image": "photo.png"},
            {"id": "bad", "program": FAILS, "image": "photo.png"}]
    (work / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    code = main(["batch", "items.jsonl", "--out", "r.jsonl", "--traces", "tr", *TINY])
    assert code == EXIT_ERROR  # one item failed
    err = capsys.readouterr().err
    assert "3 items, 2 ok, 1 failed" in err and "results in r.jsonl" in err
    assert "1 image in r_images" in err
    lines = [json.loads(x) for x in (work / "r.jsonl").read_text().splitlines()]
    assert [r["ok"] for r in lines] == [True, True, False]
    assert lines[0]["type"] == "Image" and lines[0]["value"] == str(Path("r_images") / "pop.png")
    with Image.open(work / lines[0]["value"]) as im:
        assert im.size == (40, 30)
    assert lines[1]["value"] == "yes"
    # an id can't write outside the traces folder
    assert sorted(p.name for p in (work / "tr").glob("*.json")) == ["bad.json", "escape.json",
                                                                     "pop.json"]
    assert not (work.parent / "escape.json").exists()
