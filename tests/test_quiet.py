"""Only what a user must act on reaches stderr; `-v` shows more. Run as real processes: the
libraries say most of these things once per process (the first import, the first load)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
# every module whose libraries had something to say: diffusers' inpainting pipeline (the
# torchvision fallback of the processors it imports, the VAE's upcast), SigLIP 2 (its
# config's defaults), YuNet through OpenCV (targets), Vqa's VLM and the local planner
PROGRAMS = {
    "replace": "F=Seg(image=IMAGE)\nO=Select(image=IMAGE, object=F, query='person', "
               "category=None)\nI=Replace(image=IMAGE, object=O, prompt='a robot')\n"
               "R=Result(var=I)",
    "classify": "O=Loc(image=IMAGE, object='LEFT')\nC=Classify(image=IMAGE, object=O, "
                "categories=['a', 'b'])\nR=Result(var=C)",
    "yunet": "F=FaceDet(image=IMAGE)\nN=Count(box=F)\nR=Result(var=N)",
    "vqa": "A=Vqa(image=IMAGE, question='what is it?')\nR=Result(var=A)",
}


def cli(work: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visprog.cli", *argv], cwd=work,
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)


@pytest.fixture
def work(tmp_path):
    items = [{"id": name, "program": text, "image": str(ASTRONAUT)}
             for name, text in PROGRAMS.items()]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    # YuNet's path through OpenCV, on the tiny random network
    (tmp_path / "yunet.toml").write_text('[FaceDet]\nbackend = "yunet"\nmodel = "tiny:yunet"\n'
                                         'score_threshold = 0.9\n')
    (tmp_path / "classify.vp").write_text(PROGRAMS["classify"])
    return tmp_path


@pytest.mark.slow
def test_a_batch_says_only_its_summary_and_a_run_plans_quietly(work):
    pytest.importorskip("diffusers")
    pytest.importorskip("cv2")
    pytest.importorskip("onnx", reason="tiny:yunet is exported with torch.onnx")
    done = cli(work, "batch", "items.jsonl", "--out", "r.jsonl", "--preset", "tiny",
               "--config", "yunet.toml", "--no-cache")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("visprog batch: 4 items, 4 ok"), done.stderr
    done = cli(work, "run", "What is in the picture?", "--image", str(ASTRONAUT), "--preset",
               "tiny", "--no-cache", "--no-repair")
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_verbose_shows_what_the_libraries_said(work):
    done = cli(work, "exec", "classify.vp", "--image", str(ASTRONAUT), "--preset", "tiny",
               "--no-cache")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    done = cli(work, "exec", "classify.vp", "--image", str(ASTRONAUT), "--preset", "tiny",
               "--no-cache", "-v")
    assert done.returncode == 0
    said = [ln for ln in done.stderr.splitlines() if ln.startswith("visprog: (transformers)")]
    assert said and "bos_token_id" in said[0], done.stderr
    assert "[2] C=Classify" in done.stderr  # and -v's own lines, the steps
