"""The README's two-terminal flow with Ray Serve, as two real processes: `visprog serve`
without `--address` starts a local Ray instance (Ray 2.59+ turns token authentication on for
it) and prints the `ray_address` for clients; `visprog exec` in another process, configured
with that address, runs a hosted module through it.

Its own file, so that it runs while no other Ray instance of the test session is up. Both
processes get a fresh HOME: the token Ray writes (~/.ray/auth_token) is made for this test
and found there by the client, as it is for a user with two terminals.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'visprog[ray]'")

from visprog.api import VisProg  # noqa: E402

pytestmark = pytest.mark.slow  # two processes and a local Ray instance: a minute or more

EXAMPLE_IMAGE = os.path.join(os.path.dirname(__file__), "..", "examples", "astronaut.jpg")
PROGRAM = "A=Vqa(image=IMAGE, question='what color is the dog?')\n"
SECTION = '[Vqa]\nhost = "ray"\nray_app = "twoterm"\nnum_cpus = 0.25\n'


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def _wait_for(lines: queue.Queue, pattern: str, seconds: float, seen: list[str]) -> re.Match:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"no line matching {pattern!r} from visprog serve:\n{''.join(seen)}")


def test_serve_in_one_terminal_and_exec_in_another(tmp_path):
    expected = VisProg(preset="tiny", cache=False).execute(PROGRAM, image=EXAMPLE_IMAGE).value
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    server_cfg = tmp_path / "cluster.toml"
    server_cfg.write_text(SECTION)
    program = tmp_path / "ask.vp"
    program.write_text(PROGRAM)
    server = subprocess.Popen(
        [sys.executable, "-m", "visprog.cli", "serve", "--preset", "tiny",
         "--config", str(server_cfg), "--num-cpus", "2"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "serve.err", "w"), text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(server.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        address = _wait_for(lines, r'ray_address = "([^"]+)"', 240, seen).group(1)
        _wait_for(lines, r"token authentication is on", 10, seen)
        assert (home / ".ray" / "auth_token").is_file()
        client_cfg = tmp_path / "client.toml"
        client_cfg.write_text(SECTION + f'ray_address = "{address}"\ntimeout_s = 60\n')
        client = subprocess.run(
            [sys.executable, "-m", "visprog.cli", "exec", str(program), "--image", EXAMPLE_IMAGE,
             "--preset", "tiny", "--config", str(client_cfg)],
            capture_output=True, text=True, timeout=240, env=env)
        assert client.returncode == 0, client.stderr[-3000:]
        assert client.stdout.strip() == str(expected)
        assert "InvalidAuthToken" not in client.stderr
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
