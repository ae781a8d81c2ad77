"""Timing in the manner of torch.utils.benchmark's ``blocked_autorange``, not a stopwatch.

A workload is first warmed up (compilation and autotuning happen there). Then the number of calls per
block is set so that one block takes at least ``min_block_s`` (default 0.2 s): from the timed warm-up
calls when the caller has them, else by calibrating; a block far shorter than that sets it again.
Short calls are timed in bulk, so timer resolution and launch jitter average out. At least ``blocks`` (default 5)
blocks are timed; a block's time divided by its calls is one sample. The median is the figure (robust
to a stray slow block), the interquartile range its spread; a result is ``noisy`` when IQR/median
exceeds 10 %. Several workloads are measured interleaved (A B A B ...), so a machine that drifts
(thermal, other load) moves all of them alike and their ratios hold.

On CUDA a block is timed with CUDA events around the block (after a synchronise), on the CPU with
``time.perf_counter`` (:func:`default_timer`: the one choice, for sweeps and studies alike; a host clock
read after GPU work needs :func:`synchronize` first). Timers are objects with ``time(fn, calls) -> seconds``,
so tests inject a fake. :func:`others_busy_during` says how busy other processes kept the CPUs meanwhile.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

NOISY_IQR_FRACTION = 0.10
MIN_BLOCK_S = 0.2
MIN_BLOCKS = 5
MAX_CALLS_PER_BLOCK = 1_000_000
K = TypeVar("K")


class BlockTimer(Protocol):
    def time(self, fn: Callable[[], object], calls: int) -> float: ...


class PerfCounterTimer:
    """Wall time of ``calls`` calls with ``time.perf_counter`` (CPU)."""

    def time(self, fn: Callable[[], object], calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - start


class CudaEventTimer:
    """GPU time of ``calls`` calls between two CUDA events; the host waits only at the block's end."""

    def __init__(self, device) -> None:
        import torch

        self.torch = torch
        self.device = device

    def time(self, fn: Callable[[], object], calls: int) -> float:
        cuda = self.torch.cuda
        with cuda.device(self.device):  # events on the measured device's current stream, not device 0's
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            cuda.synchronize(self.device)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
        return start.elapsed_time(end) / 1000.0


def _on_cuda(device: object) -> bool:
    """Whether ``device`` (a torch.device) is a GPU, whose work runs asynchronously to the host."""
    return getattr(device, "type", None) == "cuda"


def default_timer(device: object) -> BlockTimer:
    """CUDA events on a GPU, ``perf_counter`` elsewhere: the one choice of timer, for the sweep and the studies."""
    return CudaEventTimer(device) if _on_cuda(device) else PerfCounterTimer()


def synchronize(device: object) -> None:
    """Wait for the work queued on ``device`` (a GPU's; the CPU has none), so that a host clock read next
    includes it: around a wall-clock reading, and before timed blocks start."""
    if _on_cuda(device):
        import torch

        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    """Raw block times (seconds) of one workload and the calls per block; statistics derive from them."""

    block_s: list[float] = field(default_factory=list)
    calls_per_block: int = 1
    recalibrations: int = 0  # times a block far shorter than asked set the calls per block again

    @property
    def per_call_s(self) -> list[float]:
        return [t / self.calls_per_block for t in self.block_s]

    @property
    def median_s(self) -> float:
        return statistics.median(self.per_call_s)

    @property
    def quartiles_s(self) -> tuple[float, float]:
        """(q1, q3) of the per-call seconds (both the one sample when there is only one)."""
        samples = self.per_call_s
        if len(samples) < 2:
            return (samples[0], samples[0]) if samples else (0.0, 0.0)
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return q1, q3

    @property
    def iqr_s(self) -> float:
        q1, q3 = self.quartiles_s
        return q3 - q1

    @property
    def min_s(self) -> float:
        return min(self.per_call_s)

    @property
    def noisy(self) -> bool:
        return self.iqr_s > NOISY_IQR_FRACTION * self.median_s

    @property
    def total_s(self) -> float:
        return sum(self.block_s)


def calls_for(per_call_s: float, min_block_s: float = MIN_BLOCK_S) -> int:
    """Calls per block so that a block of calls lasting ``per_call_s`` each lasts ``min_block_s`` (10 % over)."""
    return max(1, min(MAX_CALLS_PER_BLOCK, int(min_block_s * 1.1 / max(per_call_s, 1e-9)) + 1))


def calibrate(fn: Callable[[], object], timer: BlockTimer, min_block_s: float = MIN_BLOCK_S) -> int:
    """Calls per block so that a block lasts at least ``min_block_s``.

    A single call is timed twice (the faster counts: the first may still pay a one-off cost), then the
    count jumps to the target (10 % over, at least doubling) and is checked with one block, which
    usually ends it: calibrating costs little more than one block.
    """
    calls = 1
    elapsed = min(timer.time(fn, 1), timer.time(fn, 1))
    while elapsed < min_block_s and calls < MAX_CALLS_PER_BLOCK:
        calls = min(MAX_CALLS_PER_BLOCK, max(2 * calls, int(calls * min_block_s / max(elapsed, 1e-9) * 1.1)))
        elapsed = timer.time(fn, calls)
    return calls


# A timed block shorter than this fraction of ``min_block_s`` means the calls per block were set from a
# stalled call: the count is set again from that block, its samples so far dropped (at most 3 times).
RECALIBRATE_BELOW = 0.5
MAX_RECALIBRATIONS = 3


def measure_interleaved(
    workloads: dict[K, Callable[[], object]],
    timer: BlockTimer,
    blocks: int = MIN_BLOCKS,
    min_block_s: float = MIN_BLOCK_S,
    on_phase: Callable[[str, K], None] | None = None,
    warm_s: dict[K, float] | None = None,
) -> dict[K, Measurement]:
    """Set each warmed-up workload's calls per block, then time ``blocks`` rounds of A B C ... blocks.

    ``warm_s`` (seconds of one warm call, from the warm-up the caller timed) sets the count without
    spending a block on calibration; otherwise :func:`calibrate` does. A block far shorter than
    ``min_block_s`` re-calibrates its workload from that block (see ``RECALIBRATE_BELOW``).
    ``on_phase("calibrate" | "block", name)`` is called before each calibration and each timed block,
    so a caller can tell which workload was running when something hung or crashed.
    """
    results: dict[K, Measurement] = {}
    for name, fn in workloads.items():
        if on_phase:
            on_phase("calibrate", name)
        known = (warm_s or {}).get(name)
        calls = calls_for(known, min_block_s) if known is not None else calibrate(fn, timer, min_block_s)
        results[name] = Measurement(calls_per_block=calls)
    left = dict.fromkeys(workloads, MAX_RECALIBRATIONS)
    wanted = max(1, blocks)
    while any(len(results[name].block_s) < wanted for name in workloads):
        for name, fn in workloads.items():
            measurement = results[name]
            if len(measurement.block_s) >= wanted:
                continue
            if on_phase:
                on_phase("block", name)
            block = timer.time(fn, measurement.calls_per_block)
            calls = measurement.calls_per_block
            if block < RECALIBRATE_BELOW * min_block_s and left[name] and calls < MAX_CALLS_PER_BLOCK:
                left[name] -= 1
                measurement.recalibrations += 1
                measurement.calls_per_block = max(calls + 1, calls_for(block / calls, min_block_s))
                measurement.block_s.clear()  # every sample of a measurement has the same calls per block
                if on_phase:
                    on_phase("calibrate", name)  # what was read of the dropped blocks (energy) is dropped too
                continue
            measurement.block_s.append(block)
    return results


def row_quartiles(block_s: Any, calls_per_block: Any) -> tuple[float, float] | None:
    """(q1, q3) of the per-call seconds of a stored row's timed blocks; None for fewer than 2 blocks (reports
    and compare read rows, where a missing figure is NaN or None)."""
    if not isinstance(block_s, list) or len(block_s) < 2 or not calls_per_block or calls_per_block != calls_per_block:
        return None
    return Measurement(block_s=list(block_s), calls_per_block=int(calls_per_block)).quartiles_s


def others_busy_during(fn: Callable[[], object]) -> tuple[object, float | None]:
    """``fn()`` and the cores other processes kept busy meanwhile (from /proc/stat; None where unreadable)."""
    machine_before, own_before, wall_before = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
    result = fn()
    machine_after = _machine_busy_s()
    if machine_before is None or machine_after is None:
        return result, None
    busy = (machine_after - machine_before) - (_own_cpu_s() - own_before)
    return result, max(0.0, busy / max(time.perf_counter() - wall_before, 1e-9))


def _machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system
