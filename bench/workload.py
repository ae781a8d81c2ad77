"""Measured workloads of one generator variant (runs inside the measuring child process).

A group shares (task, precision, layout, batch size); its modes (eager, compile, ...) are built with
identical weights, warmed up (the first call of a compiled workload is its cold compile time),
checked against eager fp32 (``max_rel_err``), and then timed interleaved (see :mod:`bench.timing`).
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.profile import MIB
from bench.timing import CudaEventTimer, PerfCounterTimer, measure_interleaved
from bench.variant import VariantSpec

TASKS = ("infer", "train")
MODES = ("eager", "compile", "compile-reduce-overhead", "compile-max-autotune")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
LAYOUTS = ("nchw", "channels_last")
# Largest relative error of the output against eager fp32 that is expected for a precision.
TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2, "bf16": 1e-1, "fp16": 2e-2}
WARMUP_CALLS = 3
OOM_ABOVE_ENV = "NECTARGAN_BENCH_TEST_OOM_ABOVE_BATCH"


@dataclass(frozen=True)
class MeasureConfig:
    task: str
    mode: str
    precision: str
    layout: str
    batch_size: int

    def invalid_reason(self, device: torch.device) -> str | None:
        for name, value, allowed in (("task", self.task, TASKS), ("mode", self.mode, MODES),
                                     ("precision", self.precision, PRECISIONS), ("layout", self.layout, LAYOUTS)):
            if value not in allowed:
                return f"{name}={value!r} is not valid: use one of {', '.join(allowed)}"
        if device.type != "cuda" and self.precision in ("tf32", "fp16"):
            return f"precision={self.precision!r} needs CUDA"
        return None


def _autocast(precision: str, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@dataclass
class Workload:
    config: MeasureConfig
    call: Callable[[], object]
    forward_eval: Callable[[torch.Tensor], torch.Tensor]
    persistent_bytes: int


def _build(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int) -> Workload:
    limit = os.environ.get(OOM_ABOVE_ENV)
    if limit and cfg.batch_size > int(limit):  # test-only hook for the max-batch search
        raise torch.OutOfMemoryError(f"injected out-of-memory above batch {limit} (test hook)")
    torch.manual_seed(seed)
    model = spec.build().to(device)
    fmt = torch.channels_last if cfg.layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    x = torch.rand(cfg.batch_size, spec.in_channels, spec.input_size, spec.input_size, generator=g) * 2 - 1
    x = x.to(device).contiguous(memory_format=fmt)
    out_channels = spec.out_channels or spec.in_channels
    target = (torch.rand(cfg.batch_size, out_channels, spec.input_size, spec.input_size, generator=g) * 2 - 1)
    target = target.to(device).contiguous(memory_format=fmt)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if cfg.mode != "eager":
        mode = {"compile": None, "compile-reduce-overhead": "reduce-overhead",
                "compile-max-autotune": "max-autotune"}[cfg.mode]
        forward = torch.compile(model, mode=mode, dynamic=False)
    persistent = sum(t.numel() * t.element_size() for t in [*model.parameters(), x, target])

    if cfg.task == "infer":
        model.eval()

        def call() -> object:
            with torch.no_grad(), _autocast(cfg.precision, device):
                return forward(x)
    else:
        model.train()
        try:
            optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
        except (RuntimeError, TypeError, ValueError):
            optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        persistent += 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # grads + 2 moments

        def call() -> object:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(cfg.precision, device):
                loss = F.l1_loss(forward(x).float(), target.float())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return loss

    def forward_eval(inp: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        with torch.no_grad(), _autocast(cfg.precision, device):
            out = (forward if cfg.task == "infer" else model)(inp.contiguous(memory_format=fmt)).float()
        model.train(was)
        return out

    return Workload(cfg, call, forward_eval, persistent)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dynamo() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"frames": int(counters["frames"]["total"]), "breaks": int(sum(counters["graph_break"].values()))}


def measure_group(
    spec: VariantSpec, configs: list[MeasureConfig], device: torch.device, flops: dict[str, int],
    ceilings: dict[str, float], blocks: int, min_block_s: float, compile_only: bool = False,
) -> list[dict[str, Any]]:
    """Measure configs that differ only in mode; return one row per config."""
    precision = configs[0].precision
    if device.type == "cuda":
        _set_tf32(precision == "tf32")
    seed = 0
    rows: dict[MeasureConfig, dict[str, Any]] = {c: {} for c in configs}
    workloads: dict[MeasureConfig, Workload] = {}
    for cfg in configs:
        before = _dynamo()
        workload = _build(spec, cfg, device, seed)
        row = rows[cfg]
        if cfg.task == "train" and not compile_only:
            # before any step changes the weights; train rows check precision and layout (eager eval)
            row.update(_error(workload, spec, cfg, device, seed))
        _sync(device)
        start = time.perf_counter()
        workload.call()
        _sync(device)
        first = time.perf_counter() - start
        after = _dynamo()
        if cfg.mode != "eager":
            row["compile_s"] = first
            row["graph_breaks"] = after["breaks"] - before["breaks"]
        if compile_only:
            continue
        if cfg.task == "infer":  # the compiled forward itself, same shape: no recompile
            row.update(_error(workload, spec, cfg, device, seed))
        for _ in range(WARMUP_CALLS):
            workload.call()
        _sync(device)
        workloads[cfg] = workload
    if compile_only:
        return [{**asdict(c), **rows[c]} for c in configs]

    timer = CudaEventTimer(device) if device.type == "cuda" else PerfCounterTimer()
    frames_before = _dynamo()["frames"]
    results = measure_interleaved({c: w.call for c, w in workloads.items()}, timer, blocks, min_block_s)
    recompiles = _dynamo()["frames"] - frames_before
    out_rows = []
    for cfg, measurement in results.items():
        memory = _memory(workloads[cfg], device)
        per_image = flops["flops_train" if cfg.task == "train" else "flops_fwd"]
        median = measurement.median_s
        tflops = per_image * cfg.batch_size / median / 1e12
        ceiling = ceilings.get(cfg.precision)
        row = rows[cfg] | memory | {
            "median_ms": median * 1e3, "iqr_ms": measurement.iqr_s * 1e3, "min_ms": measurement.min_s * 1e3,
            "img_per_s": cfg.batch_size / median, "tflops": tflops,
            "pct_of_peak": 100 * tflops / ceiling if ceiling else None, "noisy": measurement.noisy,
            "blocks": len(measurement.block_s), "calls_per_block": measurement.calls_per_block,
            "measure_s": measurement.total_s, "block_s": measurement.block_s,
            "recompiles": recompiles if cfg.mode != "eager" else 0,
        }
        out_rows.append({**asdict(cfg), **row})
    workloads.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out_rows


def _error(workload: Workload, spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int):
    x, expected = _reference_output(spec, cfg, device, seed)
    with torch.no_grad():
        out = workload.forward_eval(x)
    err = float((out - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    return {"max_rel_err": err, "err_flag": err > TOLERANCE[cfg.precision]}


def _reference_output(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int):
    """Eager fp32 NCHW output of the same weights on a fixed input (TF32 off)."""
    if device.type == "cuda":
        _set_tf32(False)
    torch.manual_seed(seed)
    model = spec.build().to(device).eval()
    g = torch.Generator(device="cpu").manual_seed(seed + 2)
    x = (torch.rand(cfg.batch_size, spec.in_channels, spec.input_size, spec.input_size, generator=g) * 2 - 1)
    x = x.to(device)
    with torch.no_grad():
        out = model(x).float()
    if device.type == "cuda":
        _set_tf32(cfg.precision == "tf32")
    return x, out


def _memory(workload: Workload, device: torch.device) -> dict[str, float]:
    """Peak memory of one call: on CUDA, the call's own peak above what was allocated before it plus
    the workload's persistent tensors; on the CPU, the measuring process's peak resident set."""
    if device.type != "cuda":
        return {"peak_mem_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_reserved_mib": None}
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    workload.call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base + workload.persistent_bytes
    return {"peak_mem_mib": peak / MIB, "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / MIB}


def matmul_ceiling(device: torch.device, precision: str, min_block_s: float = 0.2) -> float:
    """Achieved TFLOP/s of a large square matmul in ``precision``: the device's practical ceiling."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if device.type == "cuda":
        _set_tf32(precision == "tf32")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timer = CudaEventTimer(device) if device.type == "cuda" else PerfCounterTimer()
    for _ in range(2):
        torch.mm(a, b)
    result = measure_interleaved({"mm": lambda: torch.mm(a, b)}, timer, blocks=3, min_block_s=min_block_s)["mm"]
    return 2 * n**3 / result.median_s / 1e12


def max_batch(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, start: int) -> int:
    """The largest batch, halving from ``start``, for which one call of ``cfg`` runs without OOM (0: none)."""
    batch = start
    while batch >= 1:
        try:
            workload = _build(spec, MeasureConfig(cfg.task, cfg.mode, cfg.precision, cfg.layout, batch), device, 0)
            workload.call()
            _sync(device)
            del workload
            return batch
        except torch.OutOfMemoryError:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            batch //= 2
    return 0
