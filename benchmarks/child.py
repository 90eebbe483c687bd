"""A child process measured as one benchmark figure: its wall time and its own peak memory."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def run_child(name: str, command: list[str], log: Path, env: dict | None = None) -> tuple[float, float]:
    """Run ``command`` with its output in ``log``; (wall seconds, peak resident GB of the child).
    A failed child stops the benchmark, naming its log."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the benchmark's
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {log}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux
