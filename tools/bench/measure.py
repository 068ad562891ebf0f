"""Run one command in a fresh process and measure it: wall time, peak RSS, exit status, output tail.

Why one process per measurement: ``getrusage(RUSAGE_CHILDREN)`` reports the largest peak RSS of *all*
children waited for so far, so deltas across several children say nothing about the second one. Each tool
run is therefore its own process, and its peak RSS is read from ``/usr/bin/time -v`` (GNU time waits for
exactly that process), or — where GNU time is missing — from ``os.wait4`` on that process, which returns
the same per-process rusage. The command runs in its own session so a timeout kills the whole tree,
including a Python grandchild under ``/usr/bin/time``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GNU_TIME = "/usr/bin/time"


@dataclass
class Measured:
    """What one process did. ``peak_rss_mib`` is None where neither GNU time nor wait4 could tell."""

    returncode: int
    wall_s: float
    peak_rss_mib: float | None
    timed_out: bool
    output_tail: str
    rss_source: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def failure_line(self) -> str:
        """The last meaningful output line: what a table cell can say about a failure."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        lines = [line.strip() for line in self.output_tail.splitlines() if line.strip()]
        errors = [line for line in lines if re.search(r"(Error|error|Exception|failed|Fail)", line)]
        return (errors or lines or [f"exit status {self.returncode}"])[-1][:300]


def _gnu_time_usable() -> bool:
    return os.access(GNU_TIME, os.X_OK) and shutil.which(GNU_TIME) is not None


def _parse_gnu_time(text: str) -> float | None:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return int(match.group(1)) / 1024 if match else None


def run_measured(
    command: list[str], *, cwd: Path, log_path: Path, timeout_s: float, env: dict[str, str] | None = None
) -> Measured:
    """Run ``command`` alone; its stdout+stderr go to ``log_path`` (the tail is kept in the result)."""
    use_gnu = _gnu_time_usable()
    with tempfile.NamedTemporaryFile("r", suffix=".time", delete=False) as handle:
        time_file = Path(handle.name)
    full = [GNU_TIME, "-v", "-o", str(time_file), *command] if use_gnu else command
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("running: %s", " ".join(command))
    timed_out = False
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(full, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        rusage = None
        deadline = start + timeout_s
        while True:
            pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                pid, status, rusage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    peak, source = None, "none"
    if use_gnu:
        peak, source = _parse_gnu_time(time_file.read_text(errors="replace")), "/usr/bin/time -v"
    if peak is None and rusage is not None and not use_gnu:
        peak, source = rusage.ru_maxrss / 1024, "wait4 ru_maxrss"
    time_file.unlink(missing_ok=True)
    tail = log_path.read_text(errors="replace")[-4000:]
    return Measured(process.returncode, wall, peak, timed_out, tail, source)
