"""Timing logic with an injected fake clock: exact statistics, calibration and interleaving."""

from __future__ import annotations

import pytest

from bench.timing import NOISY_IQR_FRACTION, Measurement, PerfCounterTimer, calibrate, measure_interleaved


class FakeTimer:
    """Each call of workload ``name`` costs ``costs[name]`` seconds; records the order of blocks."""

    def __init__(self, costs: dict[str, list[float] | float]):
        self.costs = costs
        self.order: list[tuple[str, int]] = []
        self.blocks: dict[str, int] = {}

    def time(self, fn, calls: int) -> float:
        name = fn()
        self.order.append((name, calls))
        cost = self.costs[name]
        if isinstance(cost, list):
            index = self.blocks.get(name, 0)
            self.blocks[name] = index + 1
            cost = cost[min(index, len(cost) - 1)]
        return cost * calls


def test_measurement_statistics_are_exact():
    m = Measurement(block_s=[0.4, 0.2, 0.3, 0.5, 0.1], calls_per_block=10)
    assert m.per_call_s == pytest.approx([0.04, 0.02, 0.03, 0.05, 0.01])
    assert m.median_s == pytest.approx(0.03)
    assert m.iqr_s == pytest.approx(0.04 - 0.02)  # inclusive quartiles of 5 samples
    assert m.min_s == pytest.approx(0.01)
    assert m.noisy  # IQR is 67 % of the median
    steady = Measurement(block_s=[1.0, 1.01, 0.99, 1.0, 1.02], calls_per_block=1)
    assert not steady.noisy and steady.iqr_s < NOISY_IQR_FRACTION * steady.median_s


def test_calibration_reaches_the_minimum_block_time():
    timer = FakeTimer({"a": 0.003})
    calls = calibrate(lambda: "a", timer, min_block_s=0.2)
    assert calls * 0.003 >= 0.2 and (calls // 2) * 0.003 < 0.2 * 1.2


def test_calibration_costs_little_more_than_one_block():
    timer = FakeTimer({"a": 0.003})
    calibrate(lambda: "a", timer, min_block_s=0.2)
    spent = sum(calls * 0.003 for _, calls in timer.order)
    assert spent < 1.5 * 0.2  # harness overhead: it used to time every candidate twice


def test_interleaved_blocks_alternate_and_give_the_right_medians():
    timer = FakeTimer({"eager": 0.01, "compile": 0.005})
    results = measure_interleaved({"eager": lambda: "eager", "compile": lambda: "compile"}, timer, blocks=5,
                                  min_block_s=0.2)
    timed = [name for name, _ in timer.order[-10:]]
    assert timed == ["eager", "compile"] * 5
    assert results["eager"].median_s == pytest.approx(0.01)
    assert results["compile"].median_s == pytest.approx(0.005)
    assert len(results["eager"].block_s) == 5
    assert all(t >= 0.2 for t in results["compile"].block_s)


def test_real_timer_gives_sane_values():
    m = measure_interleaved({"x": lambda: sum(range(1000))}, PerfCounterTimer(), blocks=3, min_block_s=0.01)["x"]
    assert 0 < m.min_s <= m.median_s and m.calls_per_block >= 1 and len(m.block_s) == 3


def test_warm_up_times_set_the_calls_without_a_calibration_block():
    timer = FakeTimer({"a": 0.003})
    (m,) = measure_interleaved({"a": lambda: "a"}, timer, blocks=5, min_block_s=0.2, warm_s={"a": 0.003}).values()
    assert [calls for _, calls in timer.order] == [m.calls_per_block] * 5  # five timed blocks, nothing else
    assert m.calls_per_block * 0.003 >= 0.2 and m.recalibrations == 0


def test_a_block_far_shorter_than_asked_recalibrates_and_drops_its_samples():
    """A stalled warm-up call (0.5 s, then 2.5 ms calls) set one call per block: the first block is far
    shorter than 0.2 s, so the count is set again from it, and every kept sample has the new count."""
    timer = FakeTimer({"a": 0.0025})
    phases = []
    m = measure_interleaved({"a": lambda: "a"}, timer, blocks=5, min_block_s=0.2, warm_s={"a": 0.5},
                            on_phase=lambda phase, name: phases.append(phase))["a"]
    assert m.recalibrations == 1 and m.calls_per_block * 0.0025 >= 0.2
    assert len(m.block_s) == 5 and all(t >= 0.2 for t in m.block_s)
    assert phases == ["calibrate", "block", "calibrate", *["block"] * 5]
