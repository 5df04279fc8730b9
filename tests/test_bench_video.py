"""benchmarks/bench_video.py runs (its --smoke mode: the tiny SAM 3 video model on CPU) and
prints its figures: frames per second of Track and of a whole program, and the tracking
session's memory by clip length, which pruning keeps well under the unpruned session's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("transformers")


def test_bench_video_smoke(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_video.py"
    spec = importlib.util.spec_from_file_location("bench_video", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(["--smoke", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert "frames/s" in out and "tracking session memory" in out
    assert figures["frames"] == 8 and figures["track_fps"] > 0 and figures["program_fps"] > 0
    pruned, full = figures["session_mb"]["pruned"], figures["session_mb"]["unpruned"]
    assert set(pruned) == set(full) == {8, 16, 24}
    # the unpruned session grows with every frame; the pruned one holds the window only
    assert full[24] > full[16] > full[8]
    assert pruned[24] < 0.6 * full[24]
