"""The measuring child process: ``python -m bench.child`` serves jobs until its stdin closes.

Each job is one JSON line on stdin (see :mod:`bench.records`). While it works the child prints
progress lines ``NECTARGAN-PROGRESS {...}`` (the phase it entered and the configuration; a finished
group carries its measurements), then one envelope line ``NECTARGAN-ENVELOPE {...}``. A failure in a
configuration (out-of-memory, an exception) ends the job with an envelope naming that configuration,
its phase and what was measured before it; a crash or hang has no envelope, and the launcher writes
one from the last progress line. The same child serves the next job, so torch is imported once.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bench.records import (
    CeilingJob,
    CompileJob,
    Envelope,
    Job,
    MeasureConfig,
    MeasureJob,
    ProgressNote,
    RawMeasurement,
    job_from_json,
)

ENVELOPE_PREFIX = "NECTARGAN-ENVELOPE "
PROGRESS_PREFIX = "NECTARGAN-PROGRESS "


class Progress:
    """Remembers the last phase (for a failure's envelope) and, in a child, reports it to the parent."""

    def __init__(self, emit: Callable[[str], None] | None = None,
                 on_measured: Callable[[list[RawMeasurement]], None] | None = None) -> None:
        self.emit = emit
        self.on_measured = on_measured
        self.last = ProgressNote("start")
        self.measured: list[RawMeasurement] = []

    def __call__(self, phase: str, config: MeasureConfig | None = None,
                 measurements: Iterable[RawMeasurement] = ()) -> None:
        note = ProgressNote(phase, config, list(measurements))
        self.measured += note.measurements
        if phase != "done":
            self.last = note
        if self.emit is not None:
            self.emit(PROGRESS_PREFIX + note.to_json())
        if note.measurements and self.on_measured is not None:
            self.on_measured(note.measurements)


def run_job(job: Job, progress: Progress | None = None) -> Envelope:
    """Run one job in this process and answer with its envelope; a failure names its configuration."""
    import torch


    progress = progress or Progress()
    torch._dynamo.reset()  # a served child compiles many models: start each job with empty code caches
    if job.threads:
        torch.set_num_threads(int(job.threads))
    device = torch.device(job.device)
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = getattr(job, "cpu_mkldnn", True)
    try:
        return _run(job, progress, device)
    finally:
        torch.backends.mkldnn.enabled = mkldnn  # an inline job leaves the caller's setting as it found it


def _run(job: Job, progress: Progress, device: Any) -> Envelope:
    import torch

    from bench import workload
    from bench.timing import others_busy_during
    from bench.variant import VariantSpec

    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as the trainer runs: the fastest convolution algorithms
    try:
        if isinstance(job, CeilingJob):
            ceilings = {}

            def measure() -> None:
                for precision in job.precisions:
                    progress("ceiling")
                    ceilings[precision] = workload.matmul_ceiling(device, precision, job.min_block_s)

            _, others = others_busy_during(measure)
            workload.release(device)  # the next job in this child starts with an empty cache
            return Envelope("ok", ceilings=ceilings, threads=torch.get_num_threads(),
                            ceiling_others=others if device.type == "cpu" else None)
        spec = VariantSpec(**job.variant)
        if isinstance(job, CompileJob):
            raws = workload.first_calls(spec, job.configs, device, progress)
            return Envelope("ok", raws, threads=torch.get_num_threads())
        assert isinstance(job, MeasureJob)
        groups: dict[tuple, list[MeasureConfig]] = {}
        for cfg in job.configs:
            groups.setdefault(cfg.group, []).append(cfg)
        for group in groups.values():
            workload.measure_group(spec, group, device, job.blocks, job.min_block_s, progress)
        if job.max_batch:
            largest: dict[tuple, int] = {}
            for raw in progress.measured:
                cfg = raw.config
                probe = (cfg.task, cfg.precision, cfg.layout)
                if probe not in largest:
                    progress("max-batch", cfg)
                    largest[probe] = workload.max_batch(spec, cfg, device, int(job.max_batch))
                raw.max_batch = largest[probe]
        return Envelope("ok", progress.measured, threads=torch.get_num_threads())
    except Exception as exc:  # the configuration in progress failed; what finished before it is kept
        envelope = describe_exception(exc)
        envelope.measurements = progress.measured
        envelope.failed_config, envelope.phase = progress.last.config, progress.last.phase
        return envelope


def describe_exception(exc: BaseException) -> Envelope:
    """An exception as an envelope: ``oom`` for out-of-memory, else ``error`` with its message."""
    name = type(exc).__name__
    status = "oom" if name == "OutOfMemoryError" else "error"
    message = " ".join(str(exc).split())[:300]
    return Envelope(status, error=f"{name}: {message}", traceback=traceback.format_exc()[-2000:])


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def serve(lines: Iterable[str], emit: Callable[[str], None]) -> int:
    """Serve jobs, one JSON line each, until ``lines`` ends; answer each with progress and an envelope."""
    _freeze_imports()
    for line in lines:
        if not line.strip():
            continue
        try:
            envelope = run_job(job_from_json(line), Progress(emit))
        except Exception as exc:  # a job that cannot even be read still gets an answer
            envelope = describe_exception(exc)
        emit(ENVELOPE_PREFIX + envelope.to_json())
    return 0


def _freeze_imports() -> None:
    """Import what every job needs, then move those objects out of the garbage collector's sight
    (``gc.freeze``): the collection before each CPU memory figure then takes microseconds, not 0.2 s."""
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


def main() -> int:
    """Serve jobs from stdin until it closes (``python -m bench.child``)."""
    return serve(sys.stdin, _emit)


# Modules a fork server imports once, so that each forked child starts without importing them (torch and
# dynamo alone take seconds). Importing them starts no thread pool and initialises no CUDA.
PRELOAD = ["torch", "torch._dynamo", "bench.child", "bench.workload"]


def _own_resource_tracker() -> None:
    """Forget the fork server's (the parent's) resource tracker: a tracker of this child's own starts on
    first use, in its session, so semaphores left by a killed child are cleaned up with it instead of being
    reported as leaked when the sweep exits. (Private attributes; without them nothing changes.)"""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is not None and hasattr(tracker, "_fd") and hasattr(tracker, "_pid"):
        tracker._fd = None
        tracker._pid = None


def serve_forked(jobs: Any, lines: Any, env: dict[str, str], stderr_path: str) -> None:
    """A forked child's life (see :class:`bench.launcher.ForkServerLauncher`): its own session, its
    environment, stdout and stderr into a file the parent reads after a crash, jobs read from ``jobs``
    and progress and envelopes sent on ``lines`` (two one-way pipes)."""
    import os

    os.setsid()  # its own process group: the parent kills it with everything it started
    _own_resource_tracker()
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()  # the caller's environment now, not the server's at its start (as a subprocess gets)
    os.environ.update(env)  # before anything reads it: CUDA_VISIBLE_DEVICES, TORCHINDUCTOR_CACHE_DIR

    def received() -> Iterator[str]:
        while True:
            try:
                yield jobs.recv()
            except (EOFError, OSError):
                return

    serve(received(), lines.send)  # then multiprocessing's own exit runs the finalizers (semaphores and all)


if __name__ == "__main__":
    sys.exit(main())
