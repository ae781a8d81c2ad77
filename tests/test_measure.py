"""Measured sweeps on the CPU: sane figures, invalid configs, out-of-memory, hangs, crashes, compile."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.grid import parse_grid
from bench.options import measure_options
from cli import main
from nectargan.errors import NectarGANError

TINY = """
[grid]
n_downs = [3]
features = [4]
block_type = ["UnetBlock", "ResidualUnetBlock"]
input_size = [32]
batch_size = [2]
include = [{ n_downs = 2, input_size = 32 }]
[measure]
task = ["infer", "train"]
mode = ["eager"]
precision = ["fp32", "fp16"]
"""


def _sweep(tmp_path: Path, text: str, *extra: str) -> tuple[int, Path]:
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    out = tmp_path / "run"
    code = main(["sweep", str(grid), "--out", str(out), "--quiet", "--min-block-s", "0.02", "--blocks", "5", *extra])
    return code, out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_measured_sweep_rows_are_sane(tmp_path):
    code, out = _sweep(tmp_path, TINY)
    assert code == 0
    rows = _rows(out)
    measured = [r for r in rows if r["kind"] == "measure"]
    ok = [r for r in measured if r["status"] == "ok"]
    assert len(ok) == 4  # 2 variants x (infer, train) in fp32
    for r in ok:
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] and r["iqr_ms"] >= 0
        assert r["img_per_s"] == pytest.approx(2 / (r["median_ms"] / 1e3))
        assert r["tflops"] > 0 and r["pct_of_peak"] > 0 and r["peak_mem_mib"] > 0
        assert r["blocks"] >= 5 and r["calls_per_block"] >= 1 and len(r["block_s"]) == r["blocks"]
        assert r["max_rel_err"] == 0.0 and r["err_flag"] is False  # eager fp32 is the reference
        assert r["threads"] >= 1
    invalid = [r for r in measured if r["status"] == "invalid"]
    assert len(invalid) == 4 and all(r["reason"] == "precision='fp16' needs CUDA" for r in invalid)
    assert not any(r["variant"].endswith("d2-f64-32px-b2") for r in measured)  # invalid variant not measured
    env = json.loads((out / "env.json").read_text())
    assert env["matmul_ceiling_tflops"]["cpu"]["fp32"] > 0
    assert env["matmul_ceiling_cpu_others"]["cpu"] >= 0  # the load it was measured under, from /proc/stat
    assert all(isinstance(r["ceiling_shared"], bool) for r in ok)
    assert "fp16" not in env["matmul_ceiling_tflops"]["cpu"]  # no ceiling for a precision that cannot run
    # memory is what the step needs (far below the ~400 MiB of the process), and training needs more
    assert all(r["cpu_others"] >= 0 and isinstance(r["cpu_shared"], bool) for r in ok)  # /proc/stat read
    memory = {(r["block_type"], r["task"]): r["peak_mem_mib"] for r in ok}
    for block in ("UnetBlock", "ResidualUnetBlock"):
        assert 0 < memory[(block, "infer")] < memory[(block, "train")] < 100
    frame = pd.read_csv(out / "measurements.csv")
    assert {"median_ms", "iqr_ms", "min_ms", "img_per_s", "tflops", "pct_of_peak", "noisy", "peak_mem_mib",
            "compile_s", "graph_breaks", "recompiles", "max_rel_err"} <= set(frame.columns)
    report = (out / "report.md").read_text()
    assert report.startswith("# Measured sweep: g") and "## Measured" in report
    # one configuration per variant and task: no trivial "best" table; eager fp32 only: no compile or
    # error columns (the error of the reference against itself says nothing)
    assert "## Best configuration" not in report
    assert "compile s" not in report and "max rel err" not in report
    assert "\n\n![throughput_vs_gflops](throughput_vs_gflops.png)" in report  # not glued to the table
    assert (out / "throughput_vs_gflops.png").exists()


def test_out_of_memory_and_a_crash_in_a_subprocess_child_are_rows_and_the_sweep_goes_on(tmp_path, fault_child):
    """The subprocess launcher (CUDA's): an out-of-memory is a row; a child killed by SIGABRT is a row
    with glibc's last words from its stderr; every other configuration is measured."""
    fault_child({"abort": {"name": "Residual", "task": "train"}, "oom": "ResidualUnetBlock"}, launcher="subprocess")
    code, out = _sweep(tmp_path, TINY.replace('precision = ["fp32", "fp16"]', 'precision = ["fp32"]'))
    assert code == 1  # failed rows
    measured = {(r["block_type"], r["task"]): r for r in _rows(out) if r["kind"] == "measure"}
    status = {key: r["status"] for key, r in measured.items()}
    assert status == {("UnetBlock", "infer"): "ok", ("UnetBlock", "train"): "ok",
                      ("ResidualUnetBlock", "infer"): "oom", ("ResidualUnetBlock", "train"): "error"}
    assert "injected out-of-memory" in measured[("ResidualUnetBlock", "infer")]["reason"]
    assert all("died of signal SIGABRT (double free or corruption (out)) in phase 'build'" in r["reason"]
               for r in measured.values() if r["status"] == "error")


def test_a_crash_or_hang_costs_only_its_own_configuration(tmp_path, fault_child, monkeypatch, warm_fork_server):
    """Forked children (the CPU default): an abort, a hang in the timed blocks and a hang while building
    each cost one row; each failure costs one fresh child, started in well under a second."""
    import bench.launcher

    fault_child({"abort": {"name": "-f4-", "layout": "channels_last"},
                 "hang_in_blocks": {"name": "-f6-", "layout": "channels_last"},
                 "hang": {"name": "-f8-", "layout": "channels_last"}})
    started = []
    child = bench.launcher.ForkServerLauncher.child_type
    monkeypatch.setattr(bench.launcher.ForkServerLauncher, "child_type",
                        staticmethod(lambda env: started.append(1) or child(env)))
    text = """
[grid]
n_downs = [3]
features = [4, 6, 8, 10]
input_size = [32]
batch_size = [2]
[measure]
task = ["infer"]
mode = ["eager"]
layout = ["nchw", "channels_last"]
"""
    code, out = _sweep(tmp_path, text, "--timeout", "4", "--block-timeout", "2")
    assert code == 1  # failed rows make the sweep exit non-zero, after finishing the others
    rows = {(r["features"], r["layout"]): r for r in _rows(out) if r["kind"] == "measure"}
    crashed, stuck, hung = rows[(4, "channels_last")], rows[(6, "channels_last")], rows[(8, "channels_last")]
    assert crashed["status"] == "error"
    assert "died of signal SIGABRT (double free or corruption (out)) in phase 'build'" in crashed["reason"]
    assert stuck["status"] == "timeout" and "no progress for 2 s in phase" in stuck["reason"]
    assert "of infer/eager/fp32/channels_last" in stuck["reason"]
    assert hung["status"] == "timeout" and "no progress for 4 s in phase 'build'" in hung["reason"]
    # every other configuration, siblings of the failures included, was measured
    assert all(rows[(f, "nchw")]["status"] == "ok" for f in (4, 6, 8, 10))
    assert rows[(10, "channels_last")]["status"] == "ok"
    # one child for the ceiling and the healthy variants, one more after each failure
    assert len(started) == 4


def test_compiled_rows_have_compile_figures(compiled_sweep):
    code, out = compiled_sweep
    assert code == 0
    rows = {(r["task"], r["mode"], r["batch_size"]): r for r in _rows(out) if r["kind"] == "measure"}
    compiled = rows[("infer", "compile", 8)]
    assert compiled["status"] == "ok"
    assert compiled["compile_s"] > 0 and compiled["compile_warm_s"] > 0
    assert compiled["graph_breaks"] == 0 and compiled["recompiles"] == 0
    assert compiled["max_rel_err"] is not None and compiled["max_rel_err"] < 1e-3 and not compiled["err_flag"]
    assert rows[("infer", "nectargan", 8)]["status"] == "invalid"  # NectarGAN's loop is a training loop
    assert "Compiled over eager" in (out / "report.md").read_text()


def test_gan_step_rows_flops_and_the_nectargan_baseline(compiled_sweep):
    from torch.utils.flop_counter import FlopCounterMode

    from nectargan.models.patchgan.model import Discriminator

    _code, out = compiled_sweep
    rows = _rows(out)
    (static,) = [r for r in rows if r["kind"] == "static"]
    gan = {(r["mode"], r["batch_size"]): r for r in rows if r["kind"] == "measure" and r["task"] == "gan_train"}
    assert set(gan) == {("eager", 8), ("nectargan", 8), ("nectargan", 1)}  # resumed into the same folder
    assert all(r["status"] == "ok" and r["d_layers"] == 3 and r["d_features"] == 8 for r in gan.values())
    # FLOPs of the whole step = the generator's forward + backward + the discriminator's part, counted apart
    with torch.device("meta"):
        d = Discriminator(in_channels=3, base_channels=8, n_layers=3)
        x, y = torch.empty(1, 3, 64, 64), torch.empty(1, 3, 64, 64)
        fake = torch.empty(1, 3, 64, 64, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        d(torch.cat([x, x]), torch.cat([y, fake.detach()])).sum().backward()  # D's step: real and fake
        d.requires_grad_(False)
        d(x, fake).sum().backward()  # G's step: through the frozen D into the fake
    assert gan[("eager", 8)]["flops_per_img"] == static["flops_train"] + counter.get_total_flops()
    assert gan[("eager", 8)]["tflops"] > 0 and gan[("eager", 8)]["pct_of_peak"] > 0
    # ours against NectarGAN's loop in one run: at NectarGAN's default batch 1 its loop is much slower; at
    # the same batch the CPU gives ours little to win (a host sync costs nothing there, and one D call on
    # real and fake together does the same work as two): never slower, within the noise of a shared box
    ours = gan[("eager", 8)]["img_per_s"]
    assert ours > 1.5 * gan[("nectargan", 1)]["img_per_s"]
    assert ours > 0.8 * gan[("nectargan", 8)]["img_per_s"]
    # no energy counter on this machine: empty, never zero
    assert all(r.get("joules_per_img") is None for r in gan.values())
    report = (out / "report.md").read_text()
    assert "## Against NectarGAN's own loop" in report and "## Cost to train" in report


def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out = _sweep(tmp_path, TINY, "--device", "cuda")
    assert code == 1 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err == (f"Error: device='cuda': CUDA is not available on this machine (torch {torch.__version__}); "
                   "use device 'cpu'")


def test_measure_options_validate_and_default_by_device():
    grid = parse_grid("[grid]\nn_downs = [3]\n")
    cpu = measure_options(grid.measure, "cpu")
    assert (cpu.tasks, cpu.modes, cpu.precisions, cpu.layouts) == (["infer", "train"], ["eager", "compile"],
                                                                    ["fp32"], ["nchw"])
    cuda = measure_options(grid.measure, "cuda")
    assert cuda.precisions == ["bf16"] and cuda.layouts == ["nchw", "channels_last"]
    with pytest.raises(NectarGANError, match=r"mode 'compiled' is not valid \(did you mean 'compile'\?\)"):
        measure_options(grid.measure, "cpu", mode=["compiled"])


def test_inline_launcher(tmp_path):
    text = TINY.replace('precision = ["fp32", "fp16"]', 'precision = ["fp32"]')
    code, out = _sweep(tmp_path, text, "--launcher", "inline")
    assert code == 0
    assert sum(1 for r in _rows(out) if r["kind"] == "measure" and r["status"] == "ok") == 4


def test_max_batch_search_halves_until_it_fits(tmp_path, fault_child):
    fault_child({"oom_above_batch": 5})
    text = """
[grid]
n_downs = [3]
features = [4]
input_size = [32]
batch_size = [2]
[measure]
task = ["train"]
mode = ["eager"]
"""
    code, out = _sweep(tmp_path, text, "--max-batch", "32")
    assert code == 0
    (row,) = [r for r in _rows(out) if r["kind"] == "measure"]
    assert row["status"] == "ok" and row["batch_size"] == 2  # the requested batch is kept
    assert row["max_batch"] == 4  # 32 -> 16 -> 8 -> 4 fits under the injected limit of 5


def test_percent_of_peak_is_never_above_100():
    from bench.records import MeasureConfig, RawMeasurement
    from bench.rows import measured_figures

    raw = RawMeasurement(MeasureConfig("infer", "eager", "bf16", "nchw", 2), block_s=[0.1, 0.1, 0.1],
                         calls_per_block=10)
    fast = measured_figures(raw, flops_per_image=10**9, ceiling_tflops=1.0)  # 0.2 TFLOP/s achieved
    assert fast["pct_of_peak"] == pytest.approx(20.0) and fast["above_ceiling"] is False
    slow_ceiling = measured_figures(raw, flops_per_image=10**9, ceiling_tflops=0.0009)
    assert slow_ceiling["pct_of_peak"] is None and slow_ceiling["above_ceiling"] is True
    assert fast["ceiling_shared"] is False  # no load recorded (a GPU, or an older run)
    loaded = measured_figures(raw, flops_per_image=10**9, ceiling_tflops=1.0, ceiling_others=1.4)
    assert loaded["ceiling_shared"] is True and loaded["pct_of_peak"] == pytest.approx(20.0)  # flagged, kept


def _measured_run(directory: Path, per_call_s: list[float]) -> None:
    from bench.store import JsonlStore

    row = {"kind": "measure", "status": "ok", "key": "measure|v|infer|eager|fp32|nchw|cpu", "variant": "v",
           "task": "infer", "mode": "eager", "precision": "fp32", "layout": "nchw", "batch_size": 2,
           "device": "cpu", "calls_per_block": 10, "block_s": [10 * t for t in per_call_s]}
    median = sorted(per_call_s)[len(per_call_s) // 2]
    JsonlStore(directory).append(row | {"median_ms": median * 1e3, "img_per_s": 2 / median})


@pytest.mark.parametrize(("after", "code", "verdict"), [
    ([0.0102, 0.0101, 0.0103, 0.0100, 0.0104], 0, r"\|\s+no\s+\|\s+\|"),  # within the noise: not significant
    ([0.0150, 0.0152, 0.0149, 0.0151, 0.0153], 1, r"\|\s+yes\s+\|\s+\*\*yes\*\*"),  # a third slower
])
def test_compare_measured_rows_with_a_threshold(tmp_path, capsys, after, code, verdict):
    before = [0.0100, 0.0101, 0.0099, 0.0102, 0.0100]
    _measured_run(tmp_path / "a", before)
    _measured_run(tmp_path / "b", after)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"),
                 "--threshold", "0.05"]) == code
    captured = capsys.readouterr()
    assert "## Measured" in captured.out and "1 measurements in both" in captured.out
    assert "img_per_s B/A" in captured.out and re.search(verdict, captured.out)
    if code:
        assert "1 measurement(s) regressed by more than 5% in img/s" in captured.err
    table = pd.read_csv(tmp_path / "c" / "compare_measured.csv")
    assert table.loc[0, "img_per_s_ratio"] == pytest.approx(0.0100 / sorted(after)[2], rel=1e-6)


def test_resume_refuses_options_that_change_the_figures(tmp_path, capsys):
    text = TINY.replace('precision = ["fp32", "fp16"]', 'precision = ["fp32"]').replace(
        'task = ["infer", "train"]', 'task = ["infer"]').replace('include = [{ n_downs = 2, input_size = 32 }]\n', "")
    code, out = _sweep(tmp_path, text, "--launcher", "inline", "--blocks", "2")
    assert code == 0
    capsys.readouterr()
    before = (out / "results.jsonl").read_bytes()
    for flag, value, message in (("--min-block-s", "0.05", "min_block_s=0.02, not 0.05"), ("--blocks", "3",
                                 "blocks=2, not 3"), ("--threads", "1", "threads=None, not 1")):
        args = ["sweep", str(tmp_path / "g.toml"), "--out", str(out), "--quiet", "--resume", "--launcher", "inline",
                "--min-block-s", "0.02", "--blocks", "2", flag, value]
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"was measured with {message}" in err and "not be comparable" in err, err
    assert (out / "results.jsonl").read_bytes() == before  # nothing written
    # (another task or mode is rows of its own, welcome: the compiled_sweep fixture resumes with gan_train)


def test_compare_of_runs_with_no_measurement_in_common_says_so(tmp_path, capsys):
    _measured_run(tmp_path / "a", [0.0100, 0.0101, 0.0099])
    _measured_run(tmp_path / "b", [0.0100, 0.0101, 0.0099])
    rows = [json.loads(line) for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    (tmp_path / "b" / "results.jsonl").write_text(json.dumps(rows[0] | {"key": rows[0]["key"] + "-other"}) + "\n")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"),
                 "--threshold", "0.05"]) == 0
    captured = capsys.readouterr()
    assert "0 measurements in both" in captured.out and "_No measurements in common._" in captured.out
    assert "1 only in A, 1 only in B" in captured.out and "Error" not in captured.err


def test_the_real_onednn_crash_costs_one_row_and_the_workaround_measures_it(tmp_path, warm_fork_server):
    """torch 2.13's oneDNN corrupts the heap in the backward of the residual 1x1 transposed conv under
    channels_last (scripts/repro/onednn_convtranspose_1x1.py); the NCHW sibling must not pay for it."""
    text = """
[grid]
n_downs = [3]
features = [8]
block_type = ["ResidualUnetBlock"]
upconv_type = ["Bilinear"]
input_size = [64]
batch_size = [2]
[measure]
task = ["train"]
mode = ["eager"]
layout = ["nchw", "channels_last"]
"""
    # the corrupted heap sometimes spins instead of aborting: short limits (every phase of this tiny step
    # takes well under a second) turn that into a timeout row within seconds
    code, out = _sweep(tmp_path, text, "--blocks", "2", "--timeout", "6", "--block-timeout", "3")
    rows = {r["layout"]: r for r in _rows(out) if r["kind"] == "measure"}
    assert rows["nchw"]["status"] == "ok"
    crashed = rows["channels_last"]
    # the bug's faces: an abort or segfault, a spin (timeout), or oneDNN's own "could not execute a primitive"
    assert crashed["status"] == "ok" or ("died of" in crashed["reason"] and "phase" in crashed["reason"]) or (
        crashed["status"] == "timeout" and "phase" in crashed["reason"]) or (
        crashed["status"] == "error" and "could not execute a primitive" in crashed["reason"])
    assert code == (0 if crashed["status"] == "ok" else 1)
    assert all(r["cpu_mkldnn"] is True for r in rows.values())


def test_the_mkldnn_workaround_reaches_the_child_and_the_row(tmp_path):
    import torch.backends.mkldnn

    text = TINY.replace('precision = ["fp32", "fp16"]', 'precision = ["fp32"]').replace(
        'block_type = ["UnetBlock", "ResidualUnetBlock"]', 'block_type = ["ResidualUnetBlock"]')
    code, out = _sweep(tmp_path, text, "--blocks", "2", "--no-cpu-mkldnn", "--launcher", "inline")
    rows = [r for r in _rows(out) if r["kind"] == "measure"]
    assert code == 0 and rows and all(r["status"] == "ok" and r["cpu_mkldnn"] is False for r in rows)
    assert torch.backends.mkldnn.enabled  # the inline job restored this process's setting


def test_nectargan_loops_sync_every_loss_and_step_both_networks(monkeypatch):
    """The baseline is NectarGAN's loop: plain Adam, D called twice for its loss, an .item() per loss."""
    from bench.nectargan_loop import nectargan_g_step, nectargan_gan_step
    from nectargan.models import Discriminator, UnetGenerator

    g, d = UnetGenerator(32, features=4, n_downs=3), Discriminator(base_channels=4, n_layers=2)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    calls = {"item": 0, "d": 0}
    item = torch.Tensor.item

    def counted(t):  # a loss read on the host (Adam's own step counters are not losses)
        calls["item"] += t.grad_fn is not None
        return item(t)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    d.register_forward_hook(lambda *_: calls.__setitem__("d", calls["d"] + 1))
    before = [p.detach().clone() for p in (*g.parameters(), *d.parameters())]
    nectargan_gan_step(g, d, x, y)()
    assert calls == {"item": 3, "d": 3}  # D on real, on fake (detached), then on fake for G's loss
    assert all(not torch.equal(b, p) for b, p in zip(before, (*g.parameters(), *d.parameters()), strict=True))
    calls["item"] = 0
    nectargan_g_step(g, x, y)()
    assert calls["item"] == 1


def test_a_busy_cpu_flags_the_row_and_a_too_deep_discriminator_is_invalid_up_front():
    from bench.measure import config_reason
    from bench.records import MeasureConfig, RawMeasurement
    from bench.rows import measured_figures
    from bench.variant import VariantSpec

    raw = RawMeasurement(MeasureConfig("infer", "eager", "fp32", "nchw", 2), block_s=[0.1] * 3, calls_per_block=5)
    assert measured_figures(raw, 10**9, None).get("cpu_shared") is None  # not measured: no flag
    raw.cpu_others = 1.2  # another process kept more than a core busy during the blocks
    assert measured_figures(raw, 10**9, None)["cpu_shared"] is True
    raw.cpu_others = 0.05
    assert measured_figures(raw, 10**9, None)["cpu_shared"] is False
    spec = VariantSpec(n_downs=3, features=4, input_size=32)
    deep = MeasureConfig("gan_train", "eager", "fp32", "nchw", 2, d_layers=6, d_features=8)
    assert "d_layers=6 is too deep for input_size=32" in config_reason(spec, deep, "cpu")
    assert config_reason(spec, MeasureConfig("gan_train", "eager", "fp32", "nchw", 2, 3, 8), "cpu") is None


def test_measure_flags_are_checked_with_static_only_too(tmp_path, capsys):
    code = main(["sweep", "smoke", "--static-only", "--task", "inference", "--out", str(tmp_path / "run")])
    assert code == 1 and "did you mean 'infer'" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_fork_server_children_start_fast_and_a_killed_one_is_reported():
    """The default CPU launcher forks children from a server that imported torch once: a second child
    starts in well under the seconds an import takes, and a child killed mid-job gives an envelope naming
    the signal, with no process left behind."""
    import signal
    import threading
    import time

    from bench.launcher import ForkServerLauncher, PhaseLimits
    from bench.options import default_launcher
    from bench.records import CeilingJob
    from nectargan.runtime import Device

    assert default_launcher(Device("cpu")) == "forkserver" and default_launcher(Device("cuda", 0)) == "subprocess"
    launcher = ForkServerLauncher()
    try:
        assert launcher.launch(CeilingJob("cpu", []), {"NECTARGAN_T": "a"}, PhaseLimits(60, 60)).status == "ok"
        start = time.perf_counter()
        assert launcher.launch(CeilingJob("cpu", []), {"NECTARGAN_T": "b"}, PhaseLimits(60, 60)).status == "ok"
        assert time.perf_counter() - start < 2.0  # a fork, not an import of torch (about 3-10 s here)

        pids: list[int] = []

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 30
            while not launcher._busy and time.monotonic() < deadline:
                time.sleep(0.01)
            for child in list(launcher._busy):
                pids.append(child.proc.pid)
                os.kill(child.proc.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        envelope = launcher.launch(CeilingJob("cpu", ["fp32"]), {"NECTARGAN_T": "c"}, PhaseLimits(60, 60))
        killer.join()
        assert envelope.status == "error" and "died of signal SIGKILL" in envelope.error, envelope.error
        assert len(pids) == 1
        assert not Path(f"/proc/{pids[0]}").exists() or _zombie(pids[0])  # gone (or only awaiting its reaper)
    finally:
        launcher.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_command_line_keeps_the_reports_caveats_on_the_speed_up_over_nectargan():
    from cli.sweep import _baseline_lines

    def row(mode, batch, img_per_s, noisy, timed_with):
        return {"kind": "measure", "status": "ok", "key": f"measure|v|gan_train|{mode}|b{batch}", "variant": "v",
                "task": "gan_train", "mode": mode, "precision": "fp32", "layout": "nchw", "batch_size": batch,
                "device": "cpu", "img_per_s": img_per_s, "noisy": noisy, "timed_with": timed_with}

    quiet = [row("eager", 8, 10.0, False, "nectargan"), row("nectargan", 8, 5.0, False, "eager")]
    (line,) = _baseline_lines(quiet)
    assert "2.00x NectarGAN's loop at that batch" in line and "noisy" not in line and "separately" not in line
    noisy = [row("eager", 8, 10.0, False, ""), row("nectargan", 8, 80.0, True, "")]
    (line,) = _baseline_lines(noisy)
    assert line.endswith("0.12x NectarGAN's loop at that batch (noisy, timed separately)"), line


def test_report_refuses_to_merge_two_runs_of_the_same_measurements(tmp_path, capsys):
    """report A B --out M kept only B's row of a measurement both had (4 rows written instead of 8)."""
    _measured_run(tmp_path / "a", [0.0100, 0.0101, 0.0099])
    _measured_run(tmp_path / "b", [0.0200, 0.0201, 0.0199])
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(1 in common)" in err
    assert "both hold the measurement 'measure|v|infer|eager|fp32|nchw|cpu'" in err
    assert "nectargan-bench compare A B" in err and not (tmp_path / "m").exists()
    other = [json.loads(line) for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    (tmp_path / "b" / "results.jsonl").write_text("".join(
        json.dumps(r | {"key": r["key"].replace("eager", "compile"), "mode": "compile"}) + "\n" for r in other))
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    assert len((tmp_path / "m" / "results.jsonl").read_text().splitlines()) == 2  # both kept


def test_throughput_points_carry_their_interquartile_range_and_an_empty_plot_is_not_written(tmp_path):
    from bench.plots import _img_per_s_spread, plot_measured

    row = {"block_s": [0.10, 0.20, 0.30, 0.40, 0.50], "calls_per_block": 10, "batch_size": 2, "img_per_s": 2 / 0.03}
    (below,), (above,) = _img_per_s_spread(pd.DataFrame([row]))
    assert below == pytest.approx(2 / 0.03 - 2 / 0.04) and above == pytest.approx(2 / 0.02 - 2 / 0.03)
    (none_below,), (none_above,) = _img_per_s_spread(pd.DataFrame([row | {"block_s": [0.3]}]))
    assert none_below == none_above == 0.0  # one block: no spread to show
    # measured rows without their static rows (no FLOPs to place them): no picture rather than empty axes
    measured = pd.DataFrame([row | {"status": "ok", "variant": "v", "flops_per_img": None, "task": "infer",
                                    "mode": "eager", "layout": "nchw", "block_type": None, "upconv_type": None}])
    static = pd.DataFrame(columns=["variant", "flops_fwd"])
    assert plot_measured(measured, static, tmp_path) == [] and not list(tmp_path.glob("*.png"))


def test_the_report_says_when_the_ceiling_was_measured_under_load(tmp_path):
    _measured_run(tmp_path / "a", [0.0100, 0.0101, 0.0099])
    (tmp_path / "a" / "env.json").write_text(json.dumps({"matmul_ceiling_tflops": {"cpu": {"fp32": 0.07}},
                                                         "matmul_ceiling_cpu_others": {"cpu": 1.4}}))
    assert main(["report", str(tmp_path / "a")]) == 0
    text = (tmp_path / "a" / "report.md").read_text()
    assert "measured while other processes kept 1.4 cores busy (cpu)" in text and "`ceiling_shared`" in text
