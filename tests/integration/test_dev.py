"""`linkwatch dev` end to end: its own broker and worker, real-time traffic, triggers within a
minute and a half, and nothing left running afterwards, however it is stopped.

Each run is a separate process with its own broker, so it cannot disturb the session broker and
a leftover child would outlive it where `pgrep` can see it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

DEMO = "import sys; from linkwatch.dev import run_dev; sys.exit(run_dev(view=False{args}))"


def in_dir(tmp_path: Path) -> dict[str, str]:
    """The environment, with the demo's logs and state under the test's own directory."""
    return {**os.environ, "TMPDIR": str(tmp_path)}


def triggers_of(summary: str) -> dict[str, int]:
    return {kind: int(count) for kind, count in re.findall(r"(dropoff|dead_end)=(\d+)", summary)}


def children_left(output: str) -> list[str]:
    """Processes of this run still alive: its broker (by its port) and its worker (by pid)."""
    port = re.search(r"^broker +kafka://127\.0\.0\.1:(\d+)", output, re.MULTILINE)
    pid = re.search(r"^worker +pid (\d+)", output, re.MULTILINE)
    assert port is not None, output
    assert pid is not None, output
    pgrep = shutil.which("pgrep")
    assert pgrep is not None
    found = subprocess.run(
        [pgrep, "-af", "tansu|linkwatch.worker"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return [
        line for line in found if f"127.0.0.1:{port[1]}" in line or line.split(" ", 1)[0] == pid[1]
    ]


def test_dev_shows_dropoffs_and_dead_ends_and_stops_cleanly(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-c", DEMO.format(args=", duration=75")],
        env=in_dir(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert any(line.startswith("metrics  http://127.0.0.1:") for line in lines)
    assert lines[-1].startswith("stopped: "), demo.stdout
    triggers = triggers_of(lines[-1])
    assert triggers["dropoff"] >= 1, lines[-1]
    assert triggers["dead_end"] >= 1, lines[-1]
    # A newcomer sees drop-offs in the first summary, not only at the end.
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) >= 10
    assert triggers_of(progress[0])["dropoff"] >= 1, progress[0]
    assert children_left(demo.stdout) == []


def test_ctrl_c_in_a_terminal_stops_everything_within_seconds(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole foreground process group: the broker and worker too."""
    demo = subprocess.Popen(
        [sys.executable, "-c", DEMO.format(args="")],
        env=in_dir(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, like a terminal's job
    )
    assert demo.stdout is not None
    seen = []
    try:
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("["):  # traffic flows and the worker answers
                break
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=20)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    output = "".join(seen) + rest
    assert demo.returncode == 0, output
    assert output.splitlines()[-1].startswith("stopped: "), output
    assert children_left(output) == []
