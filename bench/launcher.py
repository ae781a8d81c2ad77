"""Launchers run a measuring job and always answer with an :class:`~bench.records.Envelope`.

* :class:`SubprocessLauncher` (the default): ``python -m bench.child`` in its own session. The child
  is kept and serves the next job (torch is imported once per sweep, not once per variant) until a job
  fails; then it is replaced, so a crashed or poisoned process never measures again. The child
  reports each phase it enters; a phase that makes no progress within its limit (long for building,
  compiling and checking, short for warm-up and timed blocks) is a hang: the child is killed with its
  children and the envelope says where it hung. A child that dies gets an envelope naming the signal,
  the last lines it printed (glibc's ``double free or corruption``, say) and the phase. A GPU is chosen
  with ``CUDA_VISIBLE_DEVICES``, so the child sees its device as ``cuda:0``.
* :class:`ForkServerLauncher` (the default on a CPU where fork is available): the same, but each child
  is forked from a server that has imported torch once, so a replacement child starts in under a second.
* :class:`InlineLauncher` (tests, debugging): the job runs in this process. Its environment is
  applied for the call and restored afterwards, under a lock so that worker threads never see each
  other's; it uses the device by its index, since ``CUDA_VISIBLE_DEVICES`` means nothing once CUDA is
  initialised. It cannot stop a hang or survive a crash.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from bench.child import (
    ENVELOPE_PREFIX,
    PRELOAD,
    PROGRESS_PREFIX,
    Progress,
    describe_exception,
    run_job,
    serve_forked,
)
from bench.records import Envelope, Job, ProgressNote, RawMeasurement, job_to_json
from nectargan.errors import NectarGANError
from nectargan.runtime import Device

# The measuring child's command line, and the function a forked child runs (tests point both at
# wrappers that inject faults; the forked one must be picklable by reference).
CHILD_COMMAND = [sys.executable, "-m", "bench.child"]
FORKED_CHILD_MAIN: Callable[..., None] = serve_forked
# Phases that only repeat calls already made once: a hang there is detected by the short limit.
OnMeasured = Callable[[list[RawMeasurement]], None]
SHORT_PHASES = frozenset({"warmup", "calibrate", "block", "memory"})
STDERR_LINES = 20


@dataclass(frozen=True)
class PhaseLimits:
    """Seconds without progress before a child counts as hung: ``long_s`` for starting, building,
    compiling and checking; ``short_s`` for warm-up, calibration, timed blocks and the memory call."""

    long_s: float | None = None
    short_s: float | None = None

    def limit(self, phase: str) -> float | None:
        if phase in SHORT_PHASES and self.short_s is not None:
            return self.short_s if self.long_s is None else min(self.short_s, self.long_s)
        return self.long_s


class Launcher(Protocol):
    def place(self, device: str) -> tuple[str, dict[str, str]]:
        """(the device name the job uses, the environment that selects it) for a device of this host."""
        ...

    def launch(self, job: Job, env: dict[str, str], limits: PhaseLimits, fresh: bool = False,
               on_measured: OnMeasured | None = None) -> Envelope:
        """Run ``job``; ``fresh`` asks for a process that has run nothing before (a warm compile).
        ``on_measured`` hears each group's measurements as soon as the child reports them."""
        ...

    def close(self) -> None:
        """Stop whatever the launcher keeps running, at once: a job still running is killed."""
        ...


def _physical_gpu(index: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` entry of visible GPU ``index`` (this process may see a subset)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return str(index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise NectarGANError(f"device 'cuda:{index}' is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return entries[index]


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "an unknown cause"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class _Child:
    """One ``bench.child`` process: a line reader for stdout, the last lines of stderr."""

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _wait(self, timeout: float) -> int | None:
        """The exit status (negative: the signal), waiting up to ``timeout``; None if still running."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _last_stderr(self) -> list[str]:
        time.sleep(0.05)  # let the stderr reader drain the last lines
        return list(self.stderr)

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            list(CHILD_COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1, start_new_session=True, env={**os.environ, **env},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip():
                self.stderr.append(line.strip())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job: Job, limits: PhaseLimits, on_measured: OnMeasured | None = None) -> Envelope:
        note = ProgressNote("start")
        measured = []
        try:
            self._send(job_to_json(job))
        except (BrokenPipeError, OSError):
            return self._died(note, measured)
        deadline = _deadline(limits.limit(note.phase))
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                line = self.lines.get(timeout=wait)
            except queue.Empty:
                self.kill()
                limit = limits.limit(note.phase)
                return _failed("timeout", f"no progress for {limit:g} s in {note.where()}; the child was killed",
                               note, measured)
            if line is None:
                return self._died(note, measured)
            if line.startswith(PROGRESS_PREFIX):
                update = ProgressNote.from_json(line[len(PROGRESS_PREFIX):])
                measured += update.measurements
                if update.measurements and on_measured is not None:
                    on_measured(update.measurements)
                if update.phase != "done":
                    note = update
                deadline = _deadline(limits.limit(note.phase))
            elif line.startswith(ENVELOPE_PREFIX):
                return Envelope.from_json(line[len(ENVELOPE_PREFIX):])

    def _died(self, note: ProgressNote, measured: list) -> Envelope:
        code = self._wait(10)
        if code is None:
            self.kill()
            code = self._wait(0)
        said = " | ".join(self._last_stderr()[-3:])[-300:]
        detail = f" ({said})" if said else ""
        hint = ""
        if code is not None and code < 0 and not self.env.get("CUDA_VISIBLE_DEVICES"):
            hint = "; on the CPU see README 'Known issues' (--no-cpu-mkldnn)"
        return _failed("error", f"the measuring child died of {_signal_name(code)}{detail} in {note.where()}{hint}",
                       note, measured)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._wait(10)

    def _close_input(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()

    def close(self) -> None:
        self._close_input()
        if self._wait(10) is None:
            self.kill()


class _ForkedChild(_Child):
    """A child forked by the fork server (:class:`ForkServerLauncher`): jobs and progress over a pipe,
    stdout and stderr into a file (read for a crash's last words), killed by its own process group."""

    def __init__(self, env: dict[str, str]) -> None:
        import multiprocessing
        import tempfile

        self.env = env
        context = fork_context()
        handle, self._stderr_path = tempfile.mkstemp(prefix="nectargan-child-", suffix=".log")
        os.close(handle)
        # two one-way pipes: closing the job pipe's end is the child's EOF even while a thread here is
        # blocked reading the other (a duplex socket closed under a blocked reader would not be)
        jobs_in, self._jobs = context.Pipe(duplex=False)
        self._conn, lines_out = context.Pipe(duplex=False)
        self.proc: multiprocessing.process.BaseProcess = context.Process(
            target=FORKED_CHILD_MAIN, args=(jobs_in, lines_out, {**os.environ, **env}, self._stderr_path), daemon=False)
        self.proc.start()
        jobs_in.close()
        lines_out.close()
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                self.lines.put(self._conn.recv())
            except (EOFError, OSError):
                break
        self.lines.put(None)

    def _send(self, line: str) -> None:
        self._jobs.send(line)

    def _wait(self, timeout: float) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode

    def _last_stderr(self) -> list[str]:
        try:
            with open(self._stderr_path, errors="replace") as handle:
                return [line.strip() for line in handle.readlines()[-STDERR_LINES:] if line.strip()]
        except OSError:
            return []

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the child's session: with anything it started
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, AttributeError):
                self.proc.kill()  # killed before its setsid
        self._wait(10)
        self._cleanup()

    def _close_input(self) -> None:
        with contextlib.suppress(OSError):
            self._jobs.close()

    def close(self) -> None:
        super().close()
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._stderr_path)


_FORK_SERVER_LOCK = threading.Lock()
_FORK_SERVER: Any = None


def fork_context(preload: tuple[str, ...] = ()) -> Any:
    """The multiprocessing context for processes that must start fast: ``forkserver``, its server
    preloaded with torch, dynamo, the measuring code and ``preload`` (modules of the caller's layer, such
    as the study objective; effective only for the call that starts the server), started once per process
    on first use and living as long as it; or ``spawn`` where fork is unavailable."""
    global _FORK_SERVER
    import multiprocessing

    with _FORK_SERVER_LOCK:
        if _FORK_SERVER is None:
            if not fork_server_available():
                return multiprocessing.get_context("spawn")
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([*PRELOAD, *preload])
            _FORK_SERVER = context
        return _FORK_SERVER


def fork_server_available() -> bool:
    import multiprocessing

    return "forkserver" in multiprocessing.get_all_start_methods()


def _deadline(limit: float | None) -> float | None:
    return None if limit is None else time.monotonic() + limit


def _failed(status: str, error: str, note: ProgressNote, measured: list) -> Envelope:
    envelope = Envelope.failure(status, error)  # type: ignore[arg-type]
    envelope.failed_config, envelope.phase, envelope.measurements = note.config, note.phase, list(measured)
    return envelope


class SubprocessLauncher:
    """Jobs in ``bench.child`` processes, one kept per environment while it stays healthy.

    Whatever ends the caller (Ctrl-C, SIGTERM turned into an exception, an error) kills the child that
    is running a job, with its process group, before it propagates: no child outlives its sweep.
    """

    child_type: type[_Child] = _Child

    def __init__(self) -> None:
        self._children: dict[tuple, _Child] = {}
        self._busy: set[_Child] = set()
        self._lock = threading.Lock()

    def place(self, device: str) -> tuple[str, dict[str, str]]:
        parsed = Device.parse(device)
        if parsed.cuda:
            return "cuda:0", {"CUDA_VISIBLE_DEVICES": _physical_gpu(parsed.index or 0)}
        return device, {}

    def launch(self, job: Job, env: dict[str, str], limits: PhaseLimits, fresh: bool = False,
               on_measured: OnMeasured | None = None) -> Envelope:
        key = tuple(sorted(env.items()))
        child = None
        if not fresh:
            with self._lock:
                child = self._children.pop(key, None)
        if child is None or not child.alive():
            child = self.child_type(env)
        with self._lock:
            self._busy.add(child)
        try:
            envelope = child.run(job, limits, on_measured)
        except BaseException:
            child.kill()
            raise
        finally:
            with self._lock:
                self._busy.discard(child)
        if envelope.status == "ok" and child.alive() and not fresh:
            with self._lock:
                self._children[key] = child
        elif envelope.status == "ok" and child.alive():
            child.close()  # a healthy one-job child ends by itself (and releases what it holds)
        else:
            child.kill()  # never measure again in a process that failed
        return envelope

    def close(self) -> None:
        with self._lock:
            idle, self._children = list(self._children.values()), {}
            busy, self._busy = list(self._busy), set()
        for child in busy:
            child.kill()
        for child in idle:
            child.close()


class ForkServerLauncher(SubprocessLauncher):
    """Like :class:`SubprocessLauncher`, but each child is forked from a server that imported torch,
    dynamo and the measuring code once: a child starts in well under a second instead of seconds.

    Each child is still its own process, in its own session, killed with its group and replaced after
    any failure. The server initialises no CUDA (forking after CUDA is initialised is unsafe), and the
    child applies its environment (``CUDA_VISIBLE_DEVICES``, the Inductor cache) before any use.
    Linux and other POSIX systems only; :class:`SubprocessLauncher` is the portable fallback.
    """

    child_type = _ForkedChild


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

    def launch(self, job: Job, env: dict[str, str], limits: PhaseLimits, fresh: bool = False,
               on_measured: OnMeasured | None = None) -> Envelope:
        if "CUDA_VISIBLE_DEVICES" in env:
            raise NectarGANError("launcher 'inline' cannot select a GPU through CUDA_VISIBLE_DEVICES once CUDA is "
                                 "initialised; give the device by index or use launcher 'subprocess'")
        import torch

        with _INLINE_LOCK, _applied(env):
            threads = torch.get_num_threads()
            try:
                return run_job(job, Progress(on_measured=on_measured))
            except Exception as exc:
                return describe_exception(exc)
            finally:
                torch.set_num_threads(threads)

    def close(self) -> None:
        return None


LAUNCHERS: dict[str, type[Launcher]] = {"forkserver": ForkServerLauncher, "subprocess": SubprocessLauncher,
                                        "inline": InlineLauncher}
