"""Several processes started at once on an empty cache folder: the first builds each tiny
model, the others wait for it and use the finished copy. None builds it again, sees half a
folder, or has the folder it resolved moved away while it loads (with one builder per
process, a late process used to replace the copy an earlier one was loading, and that one
failed with "Repo id must be in the form ...")."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = r"""
import os, sys, time
from pathlib import Path
from visprog.models.checkpoints import register_tiny, resolve_checkpoint

log = Path(sys.argv[1])

def build(folder):
    with open(log, "a") as f:
        f.write(f"build {os.getpid()}\n")
    (folder / "weights.bin").write_bytes(b"x" * 1000)
    time.sleep(1.5)  # a build takes a while: the other processes arrive meanwhile
    (folder / "config.json").write_text("{}")

register_tiny("slowmodel", build)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
path = Path(resolve_checkpoint("tiny:slowmodel"))
# "load" it, slowly, as from_pretrained reads file after file
for _ in range(6):
    assert (path / "config.json").read_text() == "{}", "config missing"
    assert (path / "weights.bin").stat().st_size == 1000, "weights missing"
    time.sleep(0.3)
print(path)
"""


def test_processes_started_at_once_build_a_tiny_model_once(tmp_path):
    log = tmp_path / "builds.log"
    cache = tmp_path / "cache"
    env = {**os.environ, "VISPROG_CACHE_DIR": str(cache)}
    env.pop("VISPROG_TINY_DIR", None)
    start = time.time() + 3  # after every interpreter has imported visprog
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(log), str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert len(log.read_text().splitlines()) == 1  # one build, the others waited for it
    assert {out.strip() for out, _ in outs} == {str(cache / "tiny" / "slowmodel")}
    left = [p.name for p in (cache / "tiny").iterdir() if p.is_dir() and p.name != "slowmodel"]
    assert left == []  # no half-built or moved-away copies
