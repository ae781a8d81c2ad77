"""Launchers run a measuring job and always answer with an :class:`~bench.records.Envelope`.

* :class:`SubprocessLauncher` (the default): ``python -m bench.child`` in its own session, killed
  with its children at the timeout. A crash or a hang becomes a status; the parent never dies with it.
  A GPU is chosen with ``CUDA_VISIBLE_DEVICES``, so the child sees its device as ``cuda:0``.
* :class:`InlineLauncher` (tests, debugging): the job runs in this process. Its environment is
  applied for the call and restored afterwards, under a lock so that worker threads never see each
  other's; it uses the device by its index, since ``CUDA_VISIBLE_DEVICES`` means nothing once CUDA is
  initialised. It cannot stop a hang (no timeout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Protocol

from bench.child import ENVELOPE_PREFIX, describe_exception, run_job
from bench.records import Envelope, Job, job_to_json
from nectargan.errors import NectarGANError

# The measuring child's command line (tests point it at a wrapper that injects faults).
CHILD_COMMAND = [sys.executable, "-m", "bench.child"]


class Launcher(Protocol):
    def place(self, device: str) -> tuple[str, dict[str, str]]:
        """(the device name the job uses, the environment that selects it) for a device of this host."""
        ...

    def launch(self, job: Job, env: dict[str, str], timeout_s: float | None) -> Envelope: ...


def _physical_gpu(index: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` entry of visible GPU ``index`` (this process may see a subset)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return str(index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise NectarGANError(f"device 'cuda:{index}' is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return entries[index]


class SubprocessLauncher:
    """Each job in a fresh ``python -m bench.child`` (see the module docstring)."""

    def place(self, device: str) -> tuple[str, dict[str, str]]:
        if device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            return "cuda:0", {"CUDA_VISIBLE_DEVICES": _physical_gpu(index)}
        return device, {}

    def launch(self, job: Job, env: dict[str, str], timeout_s: float | None) -> Envelope:
        proc = subprocess.Popen(
            list(CHILD_COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env={**os.environ, **env},
        )
        try:
            out, err = proc.communicate(job_to_json(job), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Envelope.failure("timeout", f"no answer within {timeout_s:g} s; the child was killed")
        for line in reversed(out.splitlines()):
            if line.startswith(ENVELOPE_PREFIX):
                return Envelope.from_json(line[len(ENVELOPE_PREFIX):])
        tail = " ".join(err.strip().splitlines()[-3:])[-300:]
        return Envelope.failure("error", f"the child exited with code {proc.returncode} and no result"
                                + (f": {tail}" if tail else ""))


_INLINE_LOCK = threading.Lock()


@contextlib.contextmanager
def _applied(env: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class InlineLauncher:
    """Each job in this process, one at a time (see the module docstring)."""

    def place(self, device: str) -> tuple[str, dict[str, str]]:
        return device, {}

    def launch(self, job: Job, env: dict[str, str], timeout_s: float | None) -> Envelope:
        if "CUDA_VISIBLE_DEVICES" in env:
            raise NectarGANError("launcher 'inline' cannot select a GPU through CUDA_VISIBLE_DEVICES once CUDA is "
                                 "initialised; give the device by index or use launcher 'subprocess'")
        import torch

        with _INLINE_LOCK, _applied(env):
            threads = torch.get_num_threads()
            try:
                return run_job(job)
            except Exception as exc:
                return describe_exception(exc)
            finally:
                torch.set_num_threads(threads)


LAUNCHERS: dict[str, type[Launcher]] = {"subprocess": SubprocessLauncher, "inline": InlineLauncher}
