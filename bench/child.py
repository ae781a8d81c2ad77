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
from collections.abc import Callable, Iterable
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
    from bench.variant import VariantSpec

    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as the trainer runs: the fastest convolution algorithms
    try:
        if isinstance(job, CeilingJob):
            ceilings = {}
            for precision in job.precisions:
                progress("ceiling")
                ceilings[precision] = workload.matmul_ceiling(device, precision)
            workload.release(device)  # the next job in this child starts with an empty cache
            return Envelope("ok", ceilings=ceilings, threads=torch.get_num_threads())
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


def main() -> int:
    """Serve jobs, one JSON line each, until stdin closes."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            envelope = run_job(job_from_json(line), Progress(_emit))
        except Exception as exc:  # a job that cannot even be read still gets an answer
            envelope = describe_exception(exc)
        _emit(ENVELOPE_PREFIX + envelope.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
