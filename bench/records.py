"""Typed records between the sweep (parent) and its measuring child, and the measured row they become.

The parent sends one *job* (:class:`CeilingJob`, :class:`MeasureJob` or :class:`CompileJob`) and the
child answers with one :class:`Envelope`: a status, the raw measurements (block times, first-call
time, memory in bytes, dynamo counts, output error) and an error text. Both travel as JSON with a
``kind`` tag. Derived figures (median, img/s, TFLOP/s, % of peak, noisy, error flag) are computed in
one place, :func:`bench.rows.measured_figures`, from the raw ones; the results store keeps flat JSON rows.

This module does not import torch, so the parent can plan and record without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

TASKS: tuple[str, ...] = ("infer", "train", "gan_train")
# "nectargan": NectarGAN's own training loop (bench.nectargan_loop), the baseline of every speed-up
MODES: tuple[str, ...] = ("eager", "compile", "compile-reduce-overhead", "compile-max-autotune", "nectargan")
BASELINE_MODE = "nectargan"
BASELINE_TASKS: tuple[str, ...] = ("train", "gan_train")
LAYOUTS: tuple[str, ...] = ("nchw", "channels_last")
# torch.compile's ``mode`` argument for each of our modes (eager is not compiled).
COMPILE_MODES: dict[str, str | None] = {
    "compile": None, "compile-reduce-overhead": "reduce-overhead", "compile-max-autotune": "max-autotune",
}
# Largest relative error of the output against eager fp32 that is expected for a precision.
TOLERANCE: dict[str, float] = {"fp32": 1e-3, "tf32": 2e-2, "bf16": 1e-1, "fp16": 2e-2}
MIB = 2**20
# Other processes busier than this many cores during a CPU measurement: the row is flagged cpu_shared
CPU_SHARED_CORES = 0.25
# NVML clock throttle reasons that slow the chip down: SW power cap, HW slowdown, SW/HW thermal, power brake
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80

Status = Literal["ok", "oom", "error", "timeout"]


@dataclass(frozen=True)
class MeasureConfig:
    """What is measured of a variant: task, mode, precision, memory layout and batch size; for the
    whole GAN step (``gan_train``) also the PatchGAN discriminator's ``d_layers`` and ``d_features``."""

    task: str
    mode: str
    precision: str
    layout: str
    batch_size: int
    d_layers: int | None = None
    d_features: int | None = None

    @property
    def group(self) -> tuple:
        """Configs that differ only in mode share a group: built alike and timed interleaved."""
        return (self.task, self.precision, self.layout, self.batch_size, self.d_layers, self.d_features)

    @property
    def compiled(self) -> bool:
        return self.mode in COMPILE_MODES

    @property
    def baseline(self) -> bool:
        return self.mode == BASELINE_MODE

    @property
    def checks_step(self) -> bool:
        """A compiled training step: its check compares a compiled step with an eager one, compiling again,
        so the child runs it after the group's timing and reports it apart (see bench.workload)."""
        return self.compiled and self.task != "infer"

    @property
    def label(self) -> str:
        """``train/compile/fp32/nchw`` (with ``/b1`` etc. only where it says something)."""
        return f"{self.task}/{self.mode}/{self.precision}/{self.layout}"


@dataclass(frozen=True)
class CeilingJob:
    """Measure the matmul ceiling (TFLOP/s) of each precision on a device, with the sweep's block length."""

    device: str
    precisions: list[str]
    threads: int | None = None
    min_block_s: float = 0.2


@dataclass(frozen=True)
class MeasureJob:
    """Measure every config of one variant: warm-up, output error, interleaved timing, memory."""

    device: str
    variant: dict[str, Any]
    configs: list[MeasureConfig]
    blocks: int = 5
    min_block_s: float = 0.2
    threads: int | None = None
    max_batch: int | None = None
    cpu_mkldnn: bool = True


@dataclass(frozen=True)
class CompileJob:
    """Only the first call of each compiled config: the warm compile time, with a filled cache."""

    device: str
    variant: dict[str, Any]
    configs: list[MeasureConfig]
    threads: int | None = None
    cpu_mkldnn: bool = True


Job = CeilingJob | MeasureJob | CompileJob
_JOB_KINDS: dict[str, type] = {"ceiling": CeilingJob, "measure": MeasureJob, "compile": CompileJob}


def job_to_json(job: Job) -> str:
    kind = next(k for k, t in _JOB_KINDS.items() if isinstance(job, t))
    return json.dumps({"kind": kind, **asdict(job)})


def job_from_json(text: str) -> Job:
    data = json.loads(text)
    cls = _JOB_KINDS[data.pop("kind")]
    if "configs" in data:
        data["configs"] = [MeasureConfig(**c) for c in data["configs"]]
    return cls(**data)


@dataclass
class RawMeasurement:
    """What the child measured of one config, in SI units; nothing derived."""

    config: MeasureConfig
    block_s: list[float] = field(default_factory=list)
    calls_per_block: int = 1
    first_call_s: float | None = None  # the cold compile for a compiled mode
    graph_breaks: int | None = None
    recompiles: int | None = None  # frames compiled during the timed blocks
    max_rel_err: float | None = None
    peak_mem_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    max_batch: int | None = None
    energy_j: float | None = None  # over the timed blocks; None where no meter could be read
    sm_clock_before_mhz: int | None = None
    sm_clock_after_mhz: int | None = None
    throttle_reasons: int | None = None  # NVML's bitmask, OR-ed over the blocks
    gpu_shared: bool | None = None
    cpu_others: float | None = None  # CPU: cores busy with other processes during the blocks (/proc/stat)
    timed_with: list[str] = field(default_factory=list)  # the other modes timed in the same blocks (A B A B ...)
    check: str = ""  # what max_rel_err compares (see bench.workload)
    threads: int | None = None  # the child's torch threads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RawMeasurement:
        return cls(**(data | {"config": MeasureConfig(**data["config"])}))


@dataclass
class Envelope:
    """The child's answer. A child that crashed or hung gets one from the launcher instead.

    On a failure, ``failed_config`` and ``phase`` say which configuration was running and where
    (``build``, ``first-call``, ``check``, ``warmup``, ``calibrate``, ``block``, ``memory``, ...);
    ``measurements`` holds what finished before it.
    """

    status: Status
    measurements: list[RawMeasurement] = field(default_factory=list)
    error: str = ""
    ceilings: dict[str, float] = field(default_factory=dict)
    ceiling_others: float | None = None  # other processes' busy cores while the CPU ceiling was measured
    threads: int | None = None
    traceback: str = ""
    failed_config: MeasureConfig | None = None
    phase: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Envelope:
        data = json.loads(text)
        data["measurements"] = [RawMeasurement.from_dict(m) for m in data.get("measurements", [])]
        if data.get("failed_config"):
            data["failed_config"] = MeasureConfig(**data["failed_config"])
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def failure(cls, status: Status, error: str) -> Envelope:
        return cls(status=status, error=" ".join(error.split()))

    def measurement(self, config: MeasureConfig) -> RawMeasurement | None:
        return next((m for m in self.measurements if m.config == config), None)


@dataclass
class ProgressNote:
    """One progress line from the child: the phase it entered and the config it works on; a finished
    group of configs carries its measurements, so they survive a later crash of the child."""

    phase: str
    config: MeasureConfig | None = None
    measurements: list[RawMeasurement] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ProgressNote:
        data = json.loads(text)
        return cls(data["phase"], MeasureConfig(**data["config"]) if data.get("config") else None,
                   [RawMeasurement.from_dict(m) for m in data.get("measurements", [])])

    def where(self) -> str:
        """``phase 'block' of train/compile/fp32/nchw`` (for reasons in rows)."""
        return f"phase {self.phase!r}" + (f" of {self.config.label}" if self.config else "")
