"""Energy and clocks around timed blocks: NVML on CUDA, RAPL (Linux powercap) on the CPU, else nothing.

A meter is a cumulative energy counter in joules, read before and after each timed block of a
configuration (:class:`EnergyTimer`), so interleaved configurations each get their own joules. Where
no counter can be read (no NVML, no permission, no RAPL in a VM) the figures stay empty, never zero.

* CUDA: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded). The NVML device
  is found by the CUDA device's UUID, not its index, so ``CUDA_VISIBLE_DEVICES`` cannot point the
  meter at another GPU. With it: the SM clock before and after the blocks, NVML's throttle reasons
  seen during them, and whether another process used the GPU.
* CPU: the package domains of ``/sys/class/powercap/*rapl*:N/energy_uj``, each wrapping at its
  ``max_energy_range_uj``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

POWERCAP = Path("/sys/class/powercap")
NVML_CLOCK_SM = 1


class EnergyMeter(Protocol):
    def joules(self) -> float | None:
        """The cumulative energy counter in joules (wraps already unrolled), or None when unreadable."""
        ...

    def sm_clock_mhz(self) -> int | None: ...

    def throttle_reasons(self) -> int | None: ...

    def shared(self) -> bool | None:
        """Whether another process has a context on the device."""
        ...


class _Wrapping:
    """Unrolls an integer counter that wraps at ``limit``: the total grows monotonically (exact integers,
    since a 64-bit counter near its top has no exact float)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.last: int | None = None
        self.total = 0

    def update(self, raw: int) -> int:
        if self.last is not None:
            self.total += raw - self.last if raw >= self.last else raw + self.limit - self.last
        self.last = raw
        return self.total


class RaplMeter:
    """The sum of the CPU package domains of Linux's powercap RAPL interface."""

    def __init__(self, domains: list[Path]) -> None:
        self.domains = domains
        self.counters = [_Wrapping(int((d / "max_energy_range_uj").read_text())) for d in domains]

    @classmethod
    def find(cls, root: Path = POWERCAP) -> RaplMeter | None:
        domains = sorted(p for p in root.glob("*rapl*:*") if p.name.count(":") == 1)
        readable = [d for d in domains if _readable(d / "energy_uj") and _readable(d / "max_energy_range_uj")]
        if not readable:
            return None
        meter = cls(readable)
        return meter if meter.joules() is not None else None

    def joules(self) -> float | None:
        try:
            return sum(c.update(int((d / "energy_uj").read_text())) for d, c in
                       zip(self.domains, self.counters, strict=True)) / 1e6
        except (OSError, ValueError):
            return None

    def sm_clock_mhz(self) -> int | None:
        return None

    def throttle_reasons(self) -> int | None:
        return None

    def shared(self) -> bool | None:
        return None


def _readable(path: Path) -> bool:
    try:
        path.read_text()
        return True
    except (OSError, ValueError):
        return False


class NvmlMeter:
    """One GPU through NVML, found by UUID. ``nvml`` is the ``pynvml`` module (a fake in tests)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml = nvml
        self.handle = handle
        self.counter = _Wrapping(2**64)  # NVML's counter is an unsigned 64-bit number of millijoules

    @classmethod
    def find(cls, uuid: str, nvml: Any = None) -> NvmlMeter | None:
        """The meter of the GPU with this UUID (``GPU-...``), or None when NVML cannot give its energy."""
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                return None
        try:
            nvml.nvmlInit()
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            meter = cls(nvml, handle)
            return meter if meter.joules() is not None else None
        except Exception:  # NVMLError: no driver, no permission, not supported
            return None

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.nvml, name)(self.handle, *args)
        except Exception:  # NVMLError_NotSupported, NoPermission, ...
            return None

    def joules(self) -> float | None:
        millijoules = self._call("nvmlDeviceGetTotalEnergyConsumption")
        return None if millijoules is None else self.counter.update(int(millijoules)) / 1e3

    def sm_clock_mhz(self) -> int | None:
        return self._call("nvmlDeviceGetClockInfo", NVML_CLOCK_SM)

    def throttle_reasons(self) -> int | None:
        for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            if hasattr(self.nvml, name):
                return self._call(name)
        return None

    def shared(self) -> bool | None:
        processes = self._call("nvmlDeviceGetComputeRunningProcesses")
        if processes is None:
            return None
        return any(getattr(p, "pid", None) not in (None, os.getpid()) for p in processes)


def open_meter(device: Any) -> EnergyMeter | None:
    """The meter for a torch device: NVML by the GPU's UUID on CUDA, RAPL on the CPU; None when unreadable."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        return NvmlMeter.find(str(uuid)) if uuid is not None else None
    return RaplMeter.find()


@dataclass
class EnergyReading:
    """What a meter saw over one configuration's timed blocks."""

    joules: float = 0.0
    blocks: int = 0
    clock_before_mhz: int | None = None
    clock_after_mhz: int | None = None
    throttle_reasons: int = 0
    shared: bool = False
    complete: bool = True  # False when a reading failed: the joules are then not reported


@dataclass
class EnergyTimer:
    """Wraps a block timer: reads the meter around each timed block of the current configuration.

    ``on_phase`` (pass it to :func:`bench.timing.measure_interleaved`) says which configuration the next
    block belongs to; calibration blocks are not counted, and blocks dropped by a re-calibration neither.
    """

    timer: Any
    meter: EnergyMeter
    readings: dict[Hashable, EnergyReading] = field(default_factory=dict)
    current: Hashable | None = None

    def on_phase(self, phase: str, key: Hashable) -> None:
        self.current = key if phase == "block" else None
        if phase == "calibrate":  # (re-)calibrating: blocks timed before it are dropped, and their readings
            self.readings.pop(key, None)

    def time(self, fn: Callable[[], object], calls: int) -> float:
        if self.current is None:
            return self.timer.time(fn, calls)
        reading = self.readings.setdefault(self.current, EnergyReading())
        if reading.blocks == 0:
            reading.clock_before_mhz = self.meter.sm_clock_mhz()
        before = self.meter.joules()
        seconds = self.timer.time(fn, calls)
        after = self.meter.joules()
        if before is None or after is None:
            reading.complete = False
        else:
            reading.joules += after - before
        reading.blocks += 1
        reading.clock_after_mhz = self.meter.sm_clock_mhz()
        reading.throttle_reasons |= self.meter.throttle_reasons() or 0
        reading.shared = reading.shared or bool(self.meter.shared())
        return seconds
