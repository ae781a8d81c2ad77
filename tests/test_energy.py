"""Energy meters without the hardware: a fake NVML module and a fake powercap tree."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from bench.energy import EnergyTimer, NvmlMeter, RaplMeter
from bench.records import MeasureConfig, RawMeasurement
from bench.rows import measured_figures


class NVMLError(Exception):
    pass


class FakeNvml:
    """The parts of pynvml the meter uses; counters in millijoules."""

    def __init__(self, energy_mj=(1000,), permission=True, other_pid=False, reasons=0):
        self.energy = list(energy_mj)
        self.permission = permission
        self.asked_uuid = None
        self.other_pid = other_pid
        self.reasons = reasons

    def nvmlInit(self):
        return None

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.asked_uuid = uuid
        return "handle"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.permission:
            raise NVMLError("Insufficient Permissions")
        return self.energy.pop(0) if len(self.energy) > 1 else self.energy[0]

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.reasons

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        pids = [os.getpid()] + ([os.getpid() + 1] if self.other_pid else [])
        return [SimpleNamespace(pid=p) for p in pids]


def test_nvml_finds_the_gpu_by_uuid_and_reads_joules():
    nvml = FakeNvml(energy_mj=(5_000, 5_000, 7_500))
    meter = NvmlMeter.find("8a2f1c3e-1111-2222-3333-444455556666", nvml=nvml)
    assert nvml.asked_uuid == "GPU-8a2f1c3e-1111-2222-3333-444455556666"  # by UUID, never by index
    assert meter.joules() == pytest.approx(0.0)  # the first reading in find() set the origin
    assert meter.joules() == pytest.approx(2.5)
    assert meter.sm_clock_mhz() == 1980 and meter.shared() is False


def test_nvml_without_permission_is_empty_not_an_error():
    assert NvmlMeter.find("GPU-x", nvml=FakeNvml(permission=False)) is None


def test_nvml_counter_wrap_is_unrolled():
    top = 2**64
    meter = NvmlMeter.find("GPU-x", nvml=FakeNvml(energy_mj=(top - 1_000, top - 1_000, 500)))
    assert meter.joules() == pytest.approx(0.0)
    assert meter.joules() == pytest.approx(1.5)  # 1,000 mJ to the wrap and 500 after it


def _rapl(tmp_path, energy_uj, limit_uj=1_000_000):
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir(parents=True, exist_ok=True)
    (domain / "energy_uj").write_text(str(energy_uj))
    (domain / "max_energy_range_uj").write_text(str(limit_uj))
    return domain


def test_rapl_package_energy_and_its_wrap(tmp_path):
    domain = _rapl(tmp_path, 900_000)
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain (core): not counted twice
    meter = RaplMeter.find(tmp_path)
    assert meter is not None and meter.domains == [domain]
    (domain / "energy_uj").write_text("100000")  # wrapped at 1 J: 0.1 J to the top, 0.1 J after it
    assert meter.joules() == pytest.approx(0.2)


def test_unreadable_rapl_is_empty(tmp_path):
    assert RaplMeter.find(tmp_path) is None  # nothing there (a VM, a container)
    domain = _rapl(tmp_path, 5)
    (domain / "energy_uj").chmod(0)
    if os.access(domain / "energy_uj", os.R_OK):  # root reads anything: make the file unreadable another way
        (domain / "energy_uj").unlink()
        (domain / "energy_uj").mkdir()
    assert RaplMeter.find(tmp_path) is None


def test_energy_per_image_throttling_and_a_shared_gpu_reach_the_row():
    nvml = FakeNvml(energy_mj=(0, 0, 1_000, 1_000, 3_000), other_pid=True, reasons=0x4)  # SW power cap
    meter = NvmlMeter.find("GPU-x", nvml=nvml)
    timer = EnergyTimer(SimpleNamespace(time=lambda fn, calls: 0.5), meter)
    cfg = MeasureConfig("gan_train", "eager", "bf16", "nchw", 16)
    timer.on_phase("calibrate", cfg)
    timer.time(lambda: None, 1)  # calibration is not counted
    timer.on_phase("block", cfg)
    timer.time(lambda: None, 4)
    timer.time(lambda: None, 4)
    reading = timer.readings[cfg]
    assert reading.joules == pytest.approx(3.0) and reading.blocks == 2 and reading.shared
    timer.on_phase("calibrate", cfg)  # a re-calibration drops the blocks timed before it, and their joules
    assert cfg not in timer.readings
    raw = RawMeasurement(cfg, block_s=[0.5, 0.5], calls_per_block=4, energy_j=reading.joules,
                         sm_clock_before_mhz=reading.clock_before_mhz, sm_clock_after_mhz=reading.clock_after_mhz,
                         throttle_reasons=reading.throttle_reasons, gpu_shared=reading.shared)
    row = measured_figures(raw, flops_per_image=10**9, ceiling_tflops=None)
    assert row["joules_per_img"] == pytest.approx(3.0 / (2 * 4 * 16))
    assert row["avg_power_w"] == pytest.approx(3.0)
    assert row["throttled"] is True and row["gpu_shared"] is True and row["sm_clock_before_mhz"] == 1980
    empty = measured_figures(RawMeasurement(cfg, block_s=[0.5, 0.5], calls_per_block=4), 10**9, None)
    assert "joules_per_img" not in empty and "throttled" not in empty  # empty, never zero
