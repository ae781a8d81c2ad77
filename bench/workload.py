"""Measured workloads of one generator variant (runs inside the measuring child process).

A group shares (task, precision, layout, batch size); its modes (eager, compile, ...) are built with
identical weights, warmed up (the first call of a compiled workload is its cold compile time),
checked against eager fp32 (``max_rel_err``), and then timed interleaved (see :mod:`bench.timing`).
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.records import COMPILE_MODES, MeasureConfig, RawMeasurement
from bench.timing import CudaEventTimer, PerfCounterTimer, measure_interleaved
from bench.variant import VariantSpec
from nectargan.runtime import autocast, autocast_dtype, dynamo_counts, set_tf32
from nectargan.train.config import TrainConfig
from nectargan.train.step import make_adam

WARMUP_CALLS = 3


@dataclass
class Workload:
    config: MeasureConfig
    call: Callable[[], object]
    forward_eval: Callable[[torch.Tensor], torch.Tensor]
    persistent_bytes: int


def build_workload(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int) -> Workload:
    """The model, inputs and one callable step of ``cfg`` (weights seeded, so every mode starts alike).

    ``infer`` is a no-grad forward; ``train`` is forward, L1 against a random target, backward and an
    Adam step with the trainer's defaults (fused where supported; a GradScaler for fp16).
    """
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
    if cfg.compiled:
        forward = torch.compile(model, mode=COMPILE_MODES[cfg.mode], dynamic=False)
    persistent = sum(t.numel() * t.element_size() for t in [*model.parameters(), x, target])

    if cfg.task == "infer":
        model.eval()

        def call() -> object:
            with torch.no_grad(), autocast(cfg.precision, device):
                return forward(x)
    else:
        model.train()
        optimizer = make_adam(model.parameters(), TrainConfig(), device)
        scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(cfg.precision) == torch.float16)
        persistent += 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # grads + 2 moments

        def call() -> object:
            optimizer.zero_grad(set_to_none=True)
            with autocast(cfg.precision, device):
                loss = F.l1_loss(forward(x).float(), target.float())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return loss

    def forward_eval(inp: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        with torch.no_grad(), autocast(cfg.precision, device):
            out = (forward if cfg.task == "infer" else model)(inp.contiguous(memory_format=fmt)).float()
        model.train(was)
        return out

    return Workload(cfg, call, forward_eval, persistent)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timer(device: torch.device):
    return CudaEventTimer(device) if device.type == "cuda" else PerfCounterTimer()


def _first_call(workload: Workload, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    workload.call()
    _sync(device)
    return time.perf_counter() - start


def measure_group(
    spec: VariantSpec, configs: list[MeasureConfig], device: torch.device, blocks: int, min_block_s: float,
) -> list[RawMeasurement]:
    """Measure configs that differ only in mode (one group); one raw measurement per config.

    Each mode is built with the same weights; its first call is timed apart (the cold compile for a
    compiled mode), its output checked against eager fp32, then after warm-up all modes are timed
    interleaved. Train rows check the eval forward before any step changes the weights; infer rows
    check the compiled forward itself at the measured shape (no recompile).
    """
    if device.type == "cuda":
        set_tf32(configs[0].precision)
    raws = {cfg: RawMeasurement(cfg) for cfg in configs}
    workloads: dict[MeasureConfig, Workload] = {}
    for cfg in configs:
        raw = raws[cfg]
        before = dynamo_counts()
        workload = build_workload(spec, cfg, device, seed=0)
        if cfg.task == "train":
            raw.max_rel_err = _rel_error(workload, spec, cfg, device, seed=0)
        raw.first_call_s = _first_call(workload, device)
        raw.graph_breaks = dynamo_counts()["graph_breaks"] - before["graph_breaks"]
        if cfg.task == "infer":
            raw.max_rel_err = _rel_error(workload, spec, cfg, device, seed=0)
        for _ in range(WARMUP_CALLS):
            workload.call()
        _sync(device)
        workloads[cfg] = workload

    frames_before = dynamo_counts()["frames"]
    results = measure_interleaved({c: w.call for c, w in workloads.items()}, _timer(device), blocks, min_block_s)
    recompiles = dynamo_counts()["frames"] - frames_before
    for cfg, measurement in results.items():
        raw = raws[cfg]
        raw.block_s, raw.calls_per_block = measurement.block_s, measurement.calls_per_block
        raw.recompiles = recompiles
        raw.peak_mem_bytes, raw.peak_reserved_bytes = _memory(workloads[cfg], device)
    workloads.clear()
    _release(device)
    return [raws[c] for c in configs]


def first_calls(spec: VariantSpec, configs: list[MeasureConfig], device: torch.device) -> list[RawMeasurement]:
    """Only the first call of each config (the warm compile time when the Inductor cache is filled)."""
    raws = []
    for cfg in configs:
        if device.type == "cuda":
            set_tf32(cfg.precision)
        before = dynamo_counts()
        workload = build_workload(spec, cfg, device, seed=0)
        first = _first_call(workload, device)
        raws.append(RawMeasurement(cfg, first_call_s=first,
                                   graph_breaks=dynamo_counts()["graph_breaks"] - before["graph_breaks"]))
        del workload
    _release(device)
    return raws


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rel_error(workload: Workload, spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int) -> float:
    x, expected = _reference_output(spec, cfg, device, seed)
    with torch.no_grad():
        out = workload.forward_eval(x)
    return float((out - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def _reference_output(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int):
    """Eager fp32 NCHW output of the same weights on a fixed input (TF32 off)."""
    if device.type == "cuda":
        set_tf32("fp32")
    torch.manual_seed(seed)
    model = spec.build().to(device).eval()
    g = torch.Generator(device="cpu").manual_seed(seed + 2)
    x = (torch.rand(cfg.batch_size, spec.in_channels, spec.input_size, spec.input_size, generator=g) * 2 - 1)
    x = x.to(device)
    with torch.no_grad():
        out = model(x).float()
    if device.type == "cuda":
        set_tf32(cfg.precision)
    return x, out


def _memory(workload: Workload, device: torch.device) -> tuple[int, int | None]:
    """(peak bytes, peak reserved bytes) of one call.

    On CUDA: the call's own peak above what was allocated before it, plus the workload's persistent
    tensors (weights, inputs, optimizer state); reserved as the caching allocator reports. On the CPU:
    the measuring process's peak resident set (no reserved figure).
    """
    if device.type != "cuda":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    workload.call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base + workload.persistent_bytes
    return peak, torch.cuda.max_memory_reserved(device)


def matmul_ceiling(device: torch.device, precision: str, min_block_s: float = 0.2) -> float:
    """Achieved TFLOP/s of a large square matmul in ``precision``: the device's practical ceiling."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = autocast_dtype(precision) or torch.float32
    if device.type == "cuda":
        set_tf32(precision)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    result = measure_interleaved({"mm": lambda: torch.mm(a, b)}, _timer(device), blocks=3, min_block_s=min_block_s)
    return 2 * n**3 / result["mm"].median_s / 1e12


def max_batch(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, start: int) -> int:
    """The largest batch, halving from ``start``, for which one call of ``cfg`` runs without OOM (0: none)."""
    batch = start
    while batch >= 1:
        try:
            workload = build_workload(spec, MeasureConfig(cfg.task, cfg.mode, cfg.precision, cfg.layout, batch),
                                      device, 0)
            workload.call()
            _sync(device)
            del workload
            return batch
        except torch.OutOfMemoryError:
            _release(device)
            batch //= 2
    return 0
