"""Measured workloads of one generator variant (runs inside the measuring child process).

A group shares (task, precision, layout, batch size); its modes (eager, compile, ...) are built with
identical weights, warmed up (the first call of a compiled workload is its cold compile time),
checked (``max_rel_err``), and then timed interleaved (see :mod:`bench.timing`).

The check: an eager row and a compiled ``infer`` row compare their own no-grad forward with eager fp32
from the same weights. A compiled ``train`` or ``gan_train`` row compares the losses of one step of the
compiled step with one step of its eager twin (same precision, weights and inputs), dropout off in
both: Inductor draws dropout masks with its own generator, so with dropout on no two runs agree. That
check compiles again (dropout off is another graph), so it runs after the timed blocks, where it cannot
warm the cold compile that ``first_call_s`` measures.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.energy import EnergyTimer, open_meter
from bench.nectargan_loop import nectargan_g_step, nectargan_gan_step
from bench.records import COMPILE_MODES, MeasureConfig, RawMeasurement
from bench.timing import default_timer, measure_interleaved, others_busy_during
from bench.timing import synchronize as _sync
from bench.variant import VariantSpec
from nectargan.runtime import autocast, autocast_dtype, dynamo_counts, set_tf32
from nectargan.train.config import Resolved, TrainConfig
from nectargan.train.networks import build_models
from nectargan.train.step import Pix2PixStep, make_adam

WARMUP_CALLS = 3
FORWARD_CHECK = "no-grad forward vs eager fp32"
STEP_CHECK = "one step's losses and output vs an eager step, dropout off"
RSS_SAMPLE_S = 0.0005

# progress(phase, config, measurements): where the child is, so a hang or crash can be attributed.
Progress = Callable[..., None]


def no_progress(phase: str, config: MeasureConfig | None = None, measurements: Iterable[RawMeasurement] = ()) -> None:
    return None


@dataclass
class Workload:
    config: MeasureConfig
    call: Callable[[], object]
    forward_eval: Callable[[torch.Tensor], torch.Tensor]
    persistent_bytes: int
    modules: tuple[torch.nn.Module, ...] = ()


def build_workload(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int) -> Workload:
    """The model(s), inputs and one callable step of ``cfg`` (weights seeded, so every mode starts alike).

    ``infer`` is a no-grad forward; ``train`` is the generator alone: forward, L1 against a random target,
    backward and an Adam step with the trainer's defaults (fused where supported; a GradScaler for fp16);
    ``gan_train`` is the trainer's own :class:`~nectargan.train.step.Pix2PixStep` (G and a PatchGAN D).
    Mode ``nectargan`` runs NectarGAN's own loop instead (:mod:`bench.nectargan_loop`): eager fp32, NCHW.
    """
    torch.manual_seed(seed)
    fmt = _format(cfg)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    out_channels = spec.out_channels or spec.in_channels
    x = torch.rand(cfg.batch_size, spec.in_channels, spec.input_size, spec.input_size, generator=g) * 2 - 1
    target = torch.rand(cfg.batch_size, out_channels, spec.input_size, spec.input_size, generator=g) * 2 - 1
    x = x.to(device).contiguous(memory_format=fmt)
    target = target.to(device).contiguous(memory_format=fmt)
    if cfg.task == "gan_train":
        return _gan_workload(spec, cfg, device, x, target)
    model = spec.build().to(device).to(memory_format=fmt)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if cfg.compiled:
        forward = torch.compile(model, mode=COMPILE_MODES[cfg.mode], dynamic=False)
    persistent = sum(t.numel() * t.element_size() for t in [*model.parameters(), x, target])

    if cfg.task == "infer":
        model.eval()

        def call() -> object:
            with torch.no_grad(), autocast(cfg.precision, device):
                return forward(x)
    elif cfg.baseline:
        model.train()
        call = nectargan_g_step(model, x, target)
        persistent += 3 * _param_bytes(model)  # grads + 2 moments
    else:
        model.train()
        optimizer = make_adam(model.parameters(), TrainConfig(), device)
        scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(cfg.precision) == torch.float16)
        persistent += 3 * _param_bytes(model)  # grads + 2 moments

        def call() -> object:
            optimizer.zero_grad(set_to_none=True)
            with autocast(cfg.precision, device):
                out = forward(x)
                loss = F.l1_loss(out.float(), target.float())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return {"loss": loss.detach(), "output": out.detach()}

    def forward_eval(inp: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        with torch.no_grad(), autocast(cfg.precision, device):
            out = (forward if cfg.task == "infer" else model)(inp.contiguous(memory_format=fmt)).float()
        model.train(was)
        return out

    return Workload(cfg, call, forward_eval, persistent, (model,))


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _gan_workload(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, x: torch.Tensor,
                  target: torch.Tensor) -> Workload:
    """The whole pix2pix step: the trainer's Pix2PixStep, or NectarGAN's loop for the baseline mode."""
    defaults = TrainConfig()
    config = TrainConfig(generator=spec.model_kwargs(), batch_size=cfg.batch_size,
                         d_layers=cfg.d_layers or defaults.d_layers, d_features=cfg.d_features or defaults.d_features)
    run = Resolved(device, cfg.precision, cfg.layout == "channels_last", cfg.compiled)
    generator, discriminator = build_models(config, run)
    generator.train()
    persistent = 4 * (_param_bytes(generator) + _param_bytes(discriminator))  # weights, grads, 2 moments
    persistent += sum(t.numel() * t.element_size() for t in (x, target))
    if cfg.baseline:
        call = nectargan_gan_step(generator, discriminator, x, target, config)
    else:
        step = Pix2PixStep(generator, discriminator, config, run, compile_mode=COMPILE_MODES.get(cfg.mode))

        def call() -> object:
            return step(x, target)

    def forward_eval(inp: torch.Tensor) -> torch.Tensor:
        generator.eval()
        with torch.no_grad(), run.autocast():
            out = generator(inp.contiguous(memory_format=_format(cfg))).float()
        generator.train()
        return out

    return Workload(cfg, call, forward_eval, persistent, (generator, discriminator))


def _format(cfg: MeasureConfig) -> torch.memory_format:
    return torch.channels_last if cfg.layout == "channels_last" else torch.contiguous_format


def _first_call(workload: Workload, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    workload.call()
    _sync(device)
    return time.perf_counter() - start


def measure_group(
    spec: VariantSpec, configs: list[MeasureConfig], device: torch.device, blocks: int, min_block_s: float,
    progress: Progress = no_progress,
) -> list[RawMeasurement]:
    """Measure configs that differ only in mode (one group); one raw measurement per config.

    Each mode is built with the same weights; its first call is timed apart (the cold compile for a
    compiled mode), then after warm-up all modes are timed interleaved. Checks (see the module
    docstring): eager train rows check the eval forward before any step changes the weights; infer rows
    check the compiled forward itself at the measured shape (no recompile); compiled train rows check
    one step against eager after the timed blocks. ``progress`` hears every
    phase entered, and the group's measurements at the end (phase ``done``).
    """
    if device.type == "cuda":
        set_tf32(configs[0].precision)
    torch._dynamo.reset()  # per group: a served child must never reach dynamo's recompile limit (eager fallback)
    raws = {cfg: RawMeasurement(cfg) for cfg in configs}
    workloads: dict[MeasureConfig, Workload] = {}
    warm_s: dict[MeasureConfig, float] = {}
    warm_timer = default_timer(device)
    for cfg in configs:
        raw = raws[cfg]
        progress("build", cfg)
        before = dynamo_counts()
        workload = build_workload(spec, cfg, device, seed=0)
        if cfg.task != "infer" and not cfg.checks_step:  # before any step changes the weights
            progress("check", cfg)
            raw.max_rel_err, raw.check = _rel_error(workload, spec, cfg, device, seed=0), FORWARD_CHECK
        progress("first-call", cfg)
        raw.first_call_s = _first_call(workload, device)
        raw.graph_breaks = dynamo_counts()["graph_breaks"] - before["graph_breaks"]
        if cfg.task == "infer":
            progress("check", cfg)
            raw.max_rel_err, raw.check = _rel_error(workload, spec, cfg, device, seed=0), FORWARD_CHECK
        progress("warmup", cfg)  # timed, so the calls per block need no calibration block of their own
        warm_s[cfg] = min(warm_timer.time(workload.call, 1) for _ in range(WARMUP_CALLS))
        workloads[cfg] = workload

    timer, on_phase, energy = default_timer(device), progress, None
    meter = open_meter(device)
    if meter is not None:
        energy = EnergyTimer(timer, meter)
        timer = energy

        def on_phase(phase: str, cfg: MeasureConfig) -> None:
            energy.on_phase(phase, cfg)
            progress(phase, cfg)

    frames_before = dynamo_counts()["frames"]
    results, others = others_busy_during(lambda: measure_interleaved(
        {c: w.call for c, w in workloads.items()}, timer, blocks, min_block_s, on_phase=on_phase, warm_s=warm_s))
    recompiles = dynamo_counts()["frames"] - frames_before
    if device.type != "cpu":
        others = None
    for cfg, measurement in results.items():
        raw = raws[cfg]
        raw.block_s, raw.calls_per_block = measurement.block_s, measurement.calls_per_block
        raw.recompiles = recompiles
        raw.cpu_others = others
        reading = energy.readings.get(cfg) if energy is not None else None
        if reading is not None:
            raw.energy_j = reading.joules if reading.complete else None
            raw.sm_clock_before_mhz, raw.sm_clock_after_mhz = reading.clock_before_mhz, reading.clock_after_mhz
            if device.type == "cuda":
                raw.throttle_reasons, raw.gpu_shared = reading.throttle_reasons, reading.shared
        raw.timed_with = [c.mode for c in configs if c != cfg]
        raw.threads = torch.get_num_threads()
        progress("memory", cfg)
        raw.peak_mem_bytes, raw.peak_reserved_bytes = _memory(workloads[cfg], device)
    workloads.clear()
    release(device)
    measured = [raws[c] for c in configs]
    progress("done", None, measured)  # the timed figures reach the parent (and disk) before the checks
    for cfg in configs:  # after the timed blocks: this compiles again (see the module docstring)
        if cfg.checks_step:
            progress("check", cfg)
            raws[cfg].max_rel_err, raws[cfg].check = step_error(spec, cfg, device, seed=0), STEP_CHECK
            release(device)
            progress("checked", cfg, [raws[cfg]])
    return measured


def first_calls(spec: VariantSpec, configs: list[MeasureConfig], device: torch.device,
                progress: Progress = no_progress) -> list[RawMeasurement]:
    """Only the first call of each config (the warm compile time when the Inductor cache is filled)."""
    raws = []
    for cfg in configs:
        if device.type == "cuda":
            set_tf32(cfg.precision)
        torch._dynamo.reset()
        progress("build", cfg)
        before = dynamo_counts()
        workload = build_workload(spec, cfg, device, seed=0)
        progress("first-call", cfg)
        first = _first_call(workload, device)
        raws.append(RawMeasurement(cfg, first_call_s=first,
                                   graph_breaks=dynamo_counts()["graph_breaks"] - before["graph_breaks"]))
        del workload
    release(device)
    return raws


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def step_error(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, seed: int) -> float:
    """Largest relative difference between the losses of one step of ``cfg`` (a compiled train or
    gan_train workload) and one step of its eager twin, from the same weights and inputs, dropout off: each
    loss (and, for ``train``, the generator's output) as max |compiled - eager| / max |eager|."""
    outputs = []
    for mode in (cfg.mode, "eager"):
        if device.type == "cuda":
            set_tf32(cfg.precision)
        workload = build_workload(spec, dataclasses.replace(cfg, mode=mode), device, seed)
        for module in workload.modules:
            for layer in module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.0
        out = workload.call()
        outputs.append([torch.as_tensor(v).detach().float().cpu() for v in out.values()])
        del workload, out
    compiled, eager = outputs
    pairs = zip(compiled, eager, strict=True)
    return max(float((c - e).abs().max() / e.abs().max().clamp_min(1e-12)) for c, e in pairs)


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


def _memory(workload: Workload, device: torch.device) -> tuple[int | None, int | None]:
    """(peak bytes, peak reserved bytes) of one call: what the step needs.

    On CUDA: the call's own peak above what was allocated before it, plus the workload's persistent
    tensors (weights, inputs and, for training, gradients and Adam's moments); reserved as the caching
    allocator reports. On the CPU the same definition with resident memory: freed heap is first
    returned to the OS (``malloc_trim``), then the resident set is sampled every 0.5 ms during the call;
    its peak above the resident set before the call, plus the persistent tensors (no reserved figure).
    Where /proc/self/statm cannot be read the CPU figure is left empty.
    """
    if device.type != "cuda":
        return _cpu_peak_bytes(workload), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    workload.call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base + workload.persistent_bytes
    return peak, torch.cuda.max_memory_reserved(device)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def _cpu_peak_bytes(workload: Workload) -> int | None:
    gc.collect()
    _malloc_trim()
    base = _rss_bytes()
    if base is None:
        return None
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes() or 0)
            stop.wait(RSS_SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        workload.call()
    finally:
        stop.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes() or 0)
    return peak[0] - base + workload.persistent_bytes


def matmul_ceiling(device: torch.device, precision: str, min_block_s: float = 0.2) -> float:
    """The device's practical ceiling in ``precision``: TFLOP/s of the faster of a large square matmul
    and a large 3x3 convolution (under autocast, as the models run), timed interleaved.

    The convolution matters on CPUs whose bf16 matmul is slow while oneDNN's bf16 convolutions are
    not: a matmul alone made a bf16 model look faster than "the ceiling".
    """
    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    dtype = autocast_dtype(precision) or torch.float32
    if cuda:
        set_tf32(precision)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    batch, channels, side = (64, 256, 64) if cuda else (8, 64, 32)
    x = torch.randn(batch, channels, side, side, device=device)
    w = torch.randn(channels, channels, 3, 3, device=device)

    def conv() -> object:
        with autocast(precision, device):
            return torch.nn.functional.conv2d(x, w, padding=1)

    work = {"mm": (lambda: torch.mm(a, b), 2 * n**3), "conv": (conv, 2 * batch * side * side * channels**2 * 9)}
    for fn, _flops in work.values():
        fn()
        fn()
    results = measure_interleaved({k: fn for k, (fn, _) in work.items()}, default_timer(device), blocks=3,
                                  min_block_s=min_block_s)
    return max(flops / results[k].median_s / 1e12 for k, (_, flops) in work.items())


def max_batch(spec: VariantSpec, cfg: MeasureConfig, device: torch.device, start: int) -> int:
    """The largest batch, halving from ``start``, for which one call of ``cfg`` runs without OOM (0: none)."""
    batch = start
    while batch >= 1:
        torch._dynamo.reset()  # each batch is a new shape: do not pile up recompiles
        try:
            workload = build_workload(spec, dataclasses.replace(cfg, batch_size=batch), device, 0)
            workload.call()
            _sync(device)
            del workload
            return batch
        except torch.OutOfMemoryError:
            workload = None  # drop the failed attempt's tensors before the next try
            release(device)
            batch //= 2
    return 0
