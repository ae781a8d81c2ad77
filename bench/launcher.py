"""Launchers: run a measuring job in a spawned child process with a timeout (the default), or inline
in this process (tests, debugging). Both answer with the same envelope: ``status`` (ok / oom / error /
timeout), ``rows`` and ``error``. A child that crashes or hangs becomes a status; the parent never dies
with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

from bench.child import ENVELOPE_PREFIX, run_job


def run_inline(job: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    try:
        return run_job(job)
    except Exception as exc:
        return {"status": "error", "rows": [], "error": f"{type(exc).__name__}: {exc}"}


def run_subprocess(job: dict[str, Any], timeout_s: float | None = None,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """``python -m bench.child`` in its own session; killed with its children at the timeout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, **(env or {})},
    )
    try:
        out, err = proc.communicate(json.dumps(job), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "timeout", "rows": [], "error": f"no answer within {timeout_s:g} s; the child was killed"}
    for line in reversed(out.splitlines()):
        if line.startswith(ENVELOPE_PREFIX):
            return json.loads(line[len(ENVELOPE_PREFIX):])
    tail = " ".join(err.strip().splitlines()[-3:])[-300:]
    return {"status": "error", "rows": [], "error": f"the child exited with code {proc.returncode} and no result"
            + (f": {tail}" if tail else "")}


LAUNCHERS = {"subprocess": run_subprocess, "inline": run_inline}
