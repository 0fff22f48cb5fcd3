"""A memory figure of a process from /proc (the benches' RSS and peak RSS)."""

from __future__ import annotations

from pathlib import Path


def proc_status_mb(pid: int | str | None, field: str) -> float | None:
    """A kB line (VmRSS, VmHWM, ...) of /proc/<pid>/status in MiB; pid "self" for this
    process; None when the process or the line is not there."""
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None
