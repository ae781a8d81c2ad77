"""Where one step spends its time: a ``torch.profiler`` trace of a few warm calls of a measured workload.

The workload is the sweep's own (:func:`bench.workload.build_workload`): the same model, step, precision
and layout as a measured row. Its first call (the compile, for a compiled mode) and a warm-up run before
the profiler starts, so the trace holds steady-state calls only. On CUDA the table lists GPU kernels by
their own device time; on the CPU, operators by their own CPU time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.records import MeasureConfig
from bench.variant import VariantSpec
from nectargan.runtime import Device

WARMUP_CALLS = 3


@dataclass(frozen=True)
class KernelTime:
    name: str
    calls: int
    total_ms: float  # over all traced calls
    share: float  # of the traced time of every kernel (or CPU operator)


@dataclass(frozen=True)
class Trace:
    spec: VariantSpec
    config: MeasureConfig
    device: str
    steps: int
    total_ms: float  # device time of every kernel (CUDA) or self CPU time of every operator, per step
    top: list[KernelTime]


def trace_step(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, steps: int = 5, top: int = 20) -> Trace:
    """Profile ``steps`` warm calls of ``cfg``; the ``top`` kernels (operators on the CPU) by their own time."""
    from torch.profiler import ProfilerActivity, profile

    from bench.timing import synchronize
    from bench.workload import build_workload

    workload = build_workload(spec, cfg, device, seed=0)
    for _ in range(1 + WARMUP_CALLS):  # the first call compiles a compiled mode
        workload.call()
    synchronize(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            workload.call()
        synchronize(device)
    events = prof.key_averages()
    if cuda:
        timed = [(e.key, e.count, _device_us(e)) for e in events
                 if e.device_type == torch.autograd.DeviceType.CUDA and _device_us(e) > 0]
    else:
        timed = [(e.key, e.count, e.self_cpu_time_total) for e in events if e.self_cpu_time_total > 0]
    total_us = sum(us for _, _, us in timed) or 1.0
    timed.sort(key=lambda item: item[2], reverse=True)
    kernels = [KernelTime(name, count, us / 1e3, us / total_us) for name, count, us in timed[:top]]
    return Trace(spec, cfg, str(device), steps, total_us / 1e3 / steps, kernels)


def _device_us(event) -> float:
    """Own device time of a profiler event (the attribute was renamed from ``cuda`` to ``device``)."""
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else getattr(event, "self_cuda_time_total", 0.0))


def trace_markdown(trace: Trace) -> str:
    """``profile.md``: what the trace measured and its top kernels with their share of the step."""
    cfg = trace.config
    what = "GPU kernels by their own device time" if Device.parse(trace.device).cuda else \
        "CPU operators by their own CPU time"
    lines = [
        f"# Where a step of {trace.spec.name} spends its time", "",
        f"{cfg.task}, mode {cfg.mode}, {cfg.precision}, {cfg.layout}, batch {cfg.batch_size}"
        + (f", D {cfg.d_layers} x {cfg.d_features}" if cfg.task == "gan_train" else "")
        + f", on {trace.device}: {trace.steps} warm steps under torch.profiler, after the first call and "
        f"{WARMUP_CALLS} warm-up calls. {what}: {trace.total_ms:.3f} ms per step in all.", "",
        "| # | kernel | calls | ms per step | share |", "|---:|---|---:|---:|---:|",
    ]
    for i, k in enumerate(trace.top, 1):
        name = k.name.replace("|", "\\|")
        name = name if len(name) <= 120 else name[:117] + "..."
        lines.append(f"| {i} | `{name}` | {k.calls} | {k.total_ms / trace.steps:.3f} | {100 * k.share:.1f} % |")
    covered = sum(k.share for k in trace.top)
    lines += ["", f"These {len(trace.top)} cover {100 * covered:.1f} % of the traced time.", ""]
    return "\n".join(lines)
