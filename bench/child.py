"""The measuring child process: ``python -m bench.child`` reads one job (JSON, see
:mod:`bench.records`) on stdin and prints one envelope line ``NECTARGAN-ENVELOPE {...}`` on stdout.

An out-of-memory becomes ``status = oom`` (with what was measured before it), any other exception
``error`` with its message; a crash or hang has no envelope, and the launcher writes one instead.
"""

from __future__ import annotations

import sys
import traceback

from bench.records import CeilingJob, CompileJob, Envelope, Job, MeasureConfig, MeasureJob, job_from_json

ENVELOPE_PREFIX = "NECTARGAN-ENVELOPE "


def run_job(job: Job) -> Envelope:
    """Run one job in this process and answer with its envelope (an out-of-memory is a status)."""
    import torch

    from bench import workload
    from bench.variant import VariantSpec

    if job.threads:
        torch.set_num_threads(int(job.threads))
    device = torch.device(job.device)
    if isinstance(job, CeilingJob):
        ceilings = {p: workload.matmul_ceiling(device, p) for p in job.precisions}
        return Envelope("ok", ceilings=ceilings, threads=torch.get_num_threads())
    spec = VariantSpec(**job.variant)
    if isinstance(job, CompileJob):
        return Envelope("ok", workload.first_calls(spec, job.configs, device), threads=torch.get_num_threads())

    assert isinstance(job, MeasureJob)
    groups: dict[tuple, list[MeasureConfig]] = {}
    for cfg in job.configs:
        groups.setdefault(cfg.group, []).append(cfg)
    measured = []
    try:
        for group in groups.values():
            measured += workload.measure_group(spec, group, device, job.blocks, job.min_block_s)
    except torch.OutOfMemoryError as exc:
        return Envelope("oom", measured, error=" ".join(str(exc).split())[:300])
    if job.max_batch:
        largest: dict[tuple, int] = {}
        for raw in measured:
            cfg = raw.config
            probe = (cfg.task, cfg.precision, cfg.layout)
            if probe not in largest:
                largest[probe] = workload.max_batch(spec, cfg, device, int(job.max_batch))
            raw.max_batch = largest[probe]
    return Envelope("ok", measured, threads=torch.get_num_threads())


def describe_exception(exc: BaseException) -> Envelope:
    """An exception as an envelope: ``oom`` for out-of-memory, else ``error`` with its message."""
    name = type(exc).__name__
    status = "oom" if name == "OutOfMemoryError" else "error"
    message = " ".join(str(exc).split())[:300]
    return Envelope(status, error=f"{name}: {message}", traceback=traceback.format_exc()[-2000:])


def main() -> int:
    try:
        envelope = run_job(job_from_json(sys.stdin.read()))
    except Exception as exc:  # every failure becomes an envelope the parent can record
        envelope = describe_exception(exc)
    sys.stdout.write(ENVELOPE_PREFIX + envelope.to_json() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
