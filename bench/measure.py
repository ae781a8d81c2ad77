"""Measured sweeps: throughput, latency, memory and compile cost of each variant, one child per variant.

For each valid variant the parent writes its static row (FLOPs are needed for TFLOP/s), then sends
one job to a launcher: every (task, mode, precision, layout) at the variant's batch size, modes of one
group measured interleaved in the same child. A second, compile-only child then measures the warm
compile time, reusing the on-disk Inductor cache the first child filled (``compile_warm_s``). A child
that runs out of memory, fails, crashes or hangs becomes rows with status ``oom`` / ``error`` /
``timeout`` and the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import ENV_FILE, read_env, write_json_atomic
from bench.grid import Grid
from bench.launcher import LAUNCHERS
from bench.store import JsonlStore, Row
from bench.sweep import SCHEMA_VERSION, prepare_run_dir, select_variants, static_key, static_row
from bench.variant import VariantSpec
from bench.workload import LAYOUTS, MODES, PRECISIONS, TASKS, MeasureConfig
from nectargan.errors import NectarGANError, did_you_mean

MEASURE_KIND = "measure"
DEFAULT_TIMEOUT_S = 1800.0


@dataclass
class MeasureOptions:
    tasks: list[str]
    modes: list[str]
    precisions: list[str]
    layouts: list[str]
    device: str = "cpu"
    threads: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    blocks: int = 5
    min_block_s: float = 0.2
    launcher: str = "subprocess"
    warm_compile: bool = True
    inductor_cache: str | None = None
    max_batch: int | None = None


def _choice_list(name: str, values: Any, allowed: tuple[str, ...]) -> list[str]:
    values = values if isinstance(values, list) else [values]
    for value in values:
        if value not in allowed:
            raise NectarGANError(f"{name} {value!r} is not valid{did_you_mean(str(value), allowed)}; "
                                 f"use {', '.join(allowed)}")
    return list(dict.fromkeys(values))


def resolve_devices(device: str) -> list[str]:
    """``cpu``, ``cuda``, ``cuda:N`` or ``cuda:all`` (one worker per visible GPU) -> device names."""
    import torch

    if device == "cpu":
        return ["cpu"]
    if not device.startswith("cuda"):
        raise NectarGANError(f"--device {device!r} is not valid: use cpu, cuda, cuda:N or cuda:all")
    if not torch.cuda.is_available():
        raise NectarGANError(f"--device {device}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if device == "cuda:all":
        return [f"cuda:{i}" for i in range(count)]
    if device == "cuda":
        return ["cuda:0"]
    try:
        index = int(device.split(":", 1)[1])
    except ValueError:
        raise NectarGANError(f"--device {device!r} is not valid: use cpu, cuda, cuda:N or cuda:all") from None
    if not 0 <= index < count:
        raise NectarGANError(f"--device {device}: only {count} CUDA device(s) are visible")
    return [device]


def measure_options(grid: Grid, device: str = "cpu", **overrides: Any) -> MeasureOptions:
    """Grid ``[measure]`` values, CLI overrides on top, then the per-device defaults."""
    table = dict(grid.measure) | {k: v for k, v in overrides.items() if v not in (None, [], ())}
    cuda = device.startswith("cuda")
    tasks = _choice_list("task", table.get("task", ["infer", "train"]), TASKS)
    modes = _choice_list("mode", table.get("mode", ["eager", "compile"]), MODES)
    precisions = _choice_list("precision", table.get("precision", ["bf16"] if cuda else ["fp32"]), PRECISIONS)
    layouts = _choice_list("layout", table.get("layout", ["nchw", "channels_last"] if cuda else ["nchw"]), LAYOUTS)
    threads = table.get("threads")
    if isinstance(threads, list):
        threads = threads[0]
    timeout = table.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, list):
        timeout = timeout[0]
    keep = {k: table[k] for k in ("blocks", "min_block_s", "launcher", "warm_compile", "inductor_cache",
                                  "max_batch") if k in table}
    return MeasureOptions(tasks, modes, precisions, layouts, device=device,
                          threads=int(threads) if threads else None, timeout_s=float(timeout), **keep)


def measure_key(spec: VariantSpec, cfg: MeasureConfig, device: str) -> str:
    return f"{MEASURE_KIND}|{spec.key}|{cfg.task}|{cfg.mode}|{cfg.precision}|{cfg.layout}|{device}"


def _configs(spec: VariantSpec, options: MeasureOptions) -> list[MeasureConfig]:
    return [MeasureConfig(t, m, p, lay, spec.batch_size)
            for t, p, lay, m in itertools.product(options.tasks, options.precisions, options.layouts, options.modes)]


def _base_row(spec: VariantSpec, cfg: MeasureConfig, device: str, options: MeasureOptions) -> Row:
    return {
        "schema": SCHEMA_VERSION, "kind": MEASURE_KIND, "key": measure_key(spec, cfg, device),
        "variant": spec.name, **spec.to_dict(),
        "out_channels": spec.out_channels if spec.out_channels is not None else spec.in_channels,
        "task": cfg.task, "mode": cfg.mode, "precision": cfg.precision, "layout": cfg.layout,
        "device": device, "threads": options.threads,
    }


def _child_env(device: str, options: MeasureOptions, directory: Path) -> tuple[str, dict[str, str]]:
    env = {"TORCHINDUCTOR_CACHE_DIR": str(Path(options.inductor_cache or directory / "inductor-cache").resolve())}
    if device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        return "cuda:0", env
    return device, env


def _launch(job: dict[str, Any], options: MeasureOptions, env: dict[str, str]) -> dict[str, Any]:
    launcher = LAUNCHERS[options.launcher]
    if options.launcher == "subprocess":
        return launcher(job, timeout_s=options.timeout_s, env=env)
    os.environ.update(env)
    return launcher(job, timeout_s=options.timeout_s)


def measure_ceilings(options: MeasureOptions, directory: Path) -> dict[str, dict[str, float]]:
    """The matmul ceiling (TFLOP/s) per device and precision, measured once per run in a child."""
    ceilings: dict[str, dict[str, float]] = {}
    for device in resolve_devices(options.device)[:1]:
        child_device, env = _child_env(device, options, directory)
        job = {"ceilings_only": True, "device": child_device, "precisions": options.precisions,
               "threads": options.threads}
        envelope = _launch(job, options, env)
        if envelope.get("status") == "ok":
            ceilings[device] = envelope["ceilings"]
    return ceilings


def measure_variant(spec: VariantSpec, options: MeasureOptions, device: str, directory: Path,
                    flops: dict[str, int], ceilings: dict[str, float]) -> list[Row]:
    """All measured rows of one variant on one device (invalid configs become invalid rows)."""
    import torch

    configs = _configs(spec, options)
    rows: list[Row] = []
    runnable = []
    for cfg in configs:
        reason = cfg.invalid_reason(torch.device(device))
        if reason:
            rows.append(_base_row(spec, cfg, device, options) | {"status": "invalid", "reason": reason})
        else:
            runnable.append(cfg)
    if not runnable:
        return rows
    child_device, env = _child_env(device, options, directory)
    job = {"device": child_device, "variant": spec.to_dict(), "configs": [c.__dict__ for c in runnable],
           "flops": flops, "ceilings": ceilings, "blocks": options.blocks, "min_block_s": options.min_block_s,
           "threads": options.threads, "max_batch": options.max_batch}
    envelope = _launch(job, options, env)
    measured = {(r["task"], r["mode"], r["precision"], r["layout"]): r for r in envelope.get("rows", [])}
    warm: dict[tuple, float] = {}
    if envelope.get("status") == "ok" and options.warm_compile and any(c.mode != "eager" for c in runnable):
        compiled = [c.__dict__ for c in runnable if c.mode != "eager"]
        again = _launch(job | {"configs": compiled, "compile_only": True, "max_batch": None}, options, env)
        warm = {(r["task"], r["mode"], r["precision"], r["layout"]): r.get("compile_s")
                for r in again.get("rows", [])}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for cfg in runnable:
        key = (cfg.task, cfg.mode, cfg.precision, cfg.layout)
        row = _base_row(spec, cfg, device, options)
        if key in measured:
            data = {k: v for k, v in measured[key].items() if k not in ("task", "mode", "precision", "layout",
                                                                         "batch_size")}
            row |= {"status": "ok", "reason": "", **data, "compile_warm_s": warm.get(key), "finished_at": now,
                    "threads": envelope.get("threads", options.threads)}
        else:
            row |= {"status": envelope.get("status", "error") if envelope.get("status") != "ok" else "error",
                    "reason": envelope.get("error", "no result for this configuration")}
        rows.append(row)
    return rows


@dataclass
class MeasuredSweepResult:
    directory: Path
    planned: int
    skipped: int
    counts: dict[str, int] = field(default_factory=dict)


def run_measured_sweep(
    grid: Grid, directory: Path, options: MeasureOptions, resume: bool = False,
    shard_spec: tuple[int, int] | None = None, on_start: Callable[[int], None] | None = None,
    on_row: Callable[[VariantSpec, list[Row]], None] | None = None, command: str | None = None,
) -> MeasuredSweepResult:
    """Static and measured rows for every variant, one device worker per device."""
    devices = resolve_devices(options.device)
    variants = select_variants(grid, shard_spec)
    prepare_run_dir(directory, grid, resume, shard_spec, command)
    store = JsonlStore(directory)
    done = store.keys()
    env = read_env(directory) or {}
    ceilings = env.get("matmul_ceiling_tflops") or measure_ceilings(options, directory)
    env["matmul_ceiling_tflops"] = ceilings
    env["measure"] = {k: v for k, v in options.__dict__.items()}
    write_json_atomic(directory / ENV_FILE, env)

    def pending(spec: VariantSpec) -> bool:
        keys = {static_key(spec)}
        if spec.invalid_reason() is None:
            keys |= {measure_key(spec, c, d) for c in _configs(spec, options) for d in devices}
        return not keys <= done

    todo = [spec for spec in variants if pending(spec)]
    result = MeasuredSweepResult(directory, planned=len(variants), skipped=len(variants) - len(todo))
    if on_start:
        on_start(len(todo))
    lock = threading.Lock()
    queue = list(todo)

    def record(rows: list[Row], spec: VariantSpec) -> None:
        with lock:
            for row in rows:
                if row["key"] in done:
                    continue
                store.append(row)
                done.add(row["key"])
                result.counts[row["status"]] = result.counts.get(row["status"], 0) + 1
            if on_row:
                on_row(spec, rows)

    def worker(device: str) -> None:
        while True:
            with lock:
                if not queue:
                    return
                spec = queue.pop(0)
            static = static_row(spec) if static_key(spec) not in done else None
            rows = [static] if static else []
            if spec.invalid_reason() is None:
                flops = _flops(static, store, spec)
                rows += measure_variant(spec, options, device, directory, flops, ceilings.get(device, {}))
            record(rows, spec)

    if len(devices) == 1:
        worker(devices[0])
    else:
        threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in devices]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return result


def _flops(static: Row | None, store: JsonlStore, spec: VariantSpec) -> dict[str, int]:
    if static is None:
        key = static_key(spec)
        static = next((r for r in store.iter_rows() if r["key"] == key), None)
    if static is None or static.get("status") != "ok":
        from bench.profile import flop_counter_counts

        fwd, _conv, train = flop_counter_counts(spec)
        return {"flops_fwd": fwd, "flops_train": train}
    return {"flops_fwd": static["flops_fwd"], "flops_train": static["flops_train"]}
