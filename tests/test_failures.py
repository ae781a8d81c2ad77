"""What a new user runs into (issue 12): busy run folders, failed or interrupted training, huge variants,
bad measure options, and the small things at the edges of the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.variant import VariantSpec
from cli import main
from nectargan.errors import InvalidArgumentError, NectarGANError
from nectargan.train import TrainConfig, fit
from nectargan.train import config as config_module
from nectargan.train import step as step_module

TINY = {"n_downs": 3, "features": 4, "input_size": 32}
TRAIN_ARGS = ["--input-size", "32", "--n-downs", "3", "--features", "4", "--batch-size", "2", "-q"]


def _grid(tmp_path: Path, text: str, name: str = "g") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines() if line]


def _one_line(err: str) -> str:
    err = err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    return err


def _config(data, out=None, **overrides) -> TrainConfig:
    base = {"data": str(data), "out": str(out) if out else None, "generator": dict(TINY), "d_features": 4,
            "batch_size": 2, "steps": 6, "eval_every": 0, "log_every": 2, "seed": 0, "num_workers": 0}
    return TrainConfig(**(base | overrides))


# 6. Two sweeps into one folder --------------------------------------------------------------------------

GATED = """
import os, sys, time, bench.sweep as s
profile, calls = s.static_row, []
def gated(spec):  # the first variant at once, the others once the test says go
    calls.append(spec)
    if len(calls) > 1:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    return profile(spec)
s.static_row = gated
from cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_sweep_into_a_busy_folder_fails_at_once(tmp_path, capsys):
    grid = str(_grid(tmp_path, "[grid]\nn_downs = [3]\nfeatures = [2, 4, 6]\ninput_size = [32]\n"))
    out, go = tmp_path / "run", tmp_path / "go"
    args = ["sweep", grid, "--static-only", "--out", str(out), "-q"]
    first = subprocess.Popen([sys.executable, "-c", GATED, *args], env=os.environ | {"GO": str(go)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 120
        while not ((out / "results.jsonl").exists() and _rows(out)):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ["--resume"]):
            assert main([*args, *extra]) == 1
            err = _one_line(capsys.readouterr().err)
            assert "in use by another sweep" in err and f"PID {first.pid}" in err and str(out) in err
    finally:
        go.touch()
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read().decode()
    keys = [r["key"] for r in _rows(out)]
    assert len(keys) == len(set(keys)) == 3
    assert main([*args, "--resume"]) == 0  # the lock went with the first sweep
    assert len(_rows(out)) == 3


def test_the_run_folder_lock_is_exclusive_and_released(tmp_path):
    from bench.grid import parse_grid
    from bench.rundir import prepare_run_dir

    grid = parse_grid("[grid]\nn_downs = [3]\n")
    first = prepare_run_dir(tmp_path / "run", grid, resume=False, shard_spec=None)
    with first, pytest.raises(NectarGANError, match=rf"in use by another sweep \(PID {os.getpid()}\)"):
        prepare_run_dir(tmp_path / "run", grid, resume=True, shard_spec=None)
    with prepare_run_dir(tmp_path / "run", grid, resume=True, shard_spec=None):
        pass


def test_resume_of_a_missing_folder_is_refused(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["sweep", "smoke", "--static-only", "--out", str(missing), "--resume", "-q"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"nothing to resume in {missing}" in err
    assert not missing.exists()


# 9. Variants too large for the machine ------------------------------------------------------------------

def test_param_count_on_meta_and_the_memory_reason():
    huge = VariantSpec(features=100000)
    assert huge.param_count() == 132_800_015_300_003  # counted without allocating anything
    reason = huge.resource_reason()
    assert "132,800,015,300,003 parameters" in reason and "GiB" in reason
    assert f"{config_module.host_memory_bytes() / 2**30:,.1f} GiB" in reason
    assert huge.invalid_reason() == reason
    assert VariantSpec(**TINY).resource_reason() is None


def test_profile_of_a_huge_variant_is_one_line(capsys):
    started = time.perf_counter()
    assert main(["profile", "--features", "100000"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "132,800,015,300,003 parameters" in err and "GiB" in err
    assert time.perf_counter() - started < 5


def test_a_huge_variant_is_an_invalid_sweep_row(tmp_path):
    grid = _grid(tmp_path, "[grid]\nn_downs = [3]\nfeatures = [4, 100000]\ninput_size = [32]\n")
    out = tmp_path / "run"
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q"]) == 0
    rows = {r["features"]: r for r in _rows(out)}
    assert rows[4]["status"] == "ok"
    assert rows[100000]["status"] == "invalid"
    assert "parameters" in rows[100000]["reason"] and rows[100000]["reason"].count("GiB") == 2


def test_train_of_a_huge_variant_is_one_line(sample_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sample_dataset), "--out", str(out), "--steps", "1",
                 "--features", "100000", "--input-size", "64", "--n-downs", "3"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "parameters" in err and "GiB" in err
    assert not out.exists()


# 7. Failures before the first step leave nothing that blocks a retry ------------------------------------

def test_d_layers_too_deep_for_the_image_is_checked_before_the_folder(sample_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(sample_dataset), "--out", str(out), "--steps", "1", *TRAIN_ARGS]
    assert main([*args, "--d-layers", "5"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "d_layers=5" in err and "input_size=32" in err and "d_layers <= 4" in err
    assert not out.exists()
    assert main([*args, "--d-layers", "4"]) == 0  # the largest that fits, and the retry is not blocked
    assert (out / "netG.pth.tar").exists()


def test_batch_larger_than_the_split_leaves_no_folder(sample_dataset, tmp_path):
    with pytest.raises(InvalidArgumentError, match="batch_size=500 is larger than the training split"):
        fit(_config(sample_dataset, tmp_path / "run", batch_size=500))
    assert not (tmp_path / "run").exists()


def test_a_failing_first_step_removes_what_it_created(sample_dataset, tmp_path, monkeypatch):
    def boom(self, x, y):
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(step_module.Pix2PixStep, "__call__", boom)
        with pytest.raises(RuntimeError, match="boom"):
            fit(_config(sample_dataset, tmp_path / "new"))
        kept = tmp_path / "mine"
        (kept / "notes").mkdir(parents=True)  # a folder the user made: kept, with what they put in it
        with pytest.raises(RuntimeError, match="boom"):
            fit(_config(sample_dataset, kept))
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in kept.iterdir()) == ["notes"]
    assert fit(_config(sample_dataset, tmp_path / "new", steps=1))["steps"] == 1  # the retry runs


def test_training_needs_four_copies_of_the_weights(sample_dataset, tmp_path, monkeypatch):
    from nectargan.models import UnetGenerator
    from nectargan.models.patchgan.model import Discriminator

    params = sum(p.numel() for m in (UnetGenerator(**TINY), Discriminator(3, 4, 3)) for p in m.parameters())
    monkeypatch.setattr(config_module, "host_memory_bytes", lambda: params * 4 * 2)  # weights fit, training not
    assert VariantSpec(**TINY).resource_reason() is None
    with pytest.raises(InvalidArgumentError, match=rf"{params:,} parameters.*Adam") as info:
        fit(_config(sample_dataset, tmp_path / "run"))
    assert "GiB" in str(info.value)
    assert not (tmp_path / "run").exists()


# 10. Ctrl-C during training -----------------------------------------------------------------------------

class _InterruptAt:
    def __init__(self, step: int):
        self.step = step

    def on_log(self, record):
        if record["step"] >= self.step:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_a_checkpoint_and_a_summary(sample_dataset, tmp_path):
    from nectargan.models import load_discriminator, load_generator
    from nectargan.train import TrainingInterrupted

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        fit(_config(sample_dataset, out, steps=20), callbacks=[_InterruptAt(4)])
    assert isinstance(info.value, TrainingInterrupted) and info.value.step == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 4
    assert load_generator(out / "netG.pth.tar", input_size=32).features == 4
    assert load_discriminator(out / "netD.pth.tar").n_layers == 3
    assert {"netG.pth.tar", "netD.pth.tar", "summary.json", "metrics.csv"} <= set(info.value.kept)
    with pytest.raises(InvalidArgumentError, match=r"interrupted at step 4.*new folder"):
        fit(_config(sample_dataset, out))


def test_ctrl_c_before_the_first_step_keeps_nothing(sample_dataset, tmp_path):
    class Early:
        def on_eval(self, record):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        fit(_config(sample_dataset, tmp_path / "run"), callbacks=[Early()])
    assert info.value.step == 0 and info.value.kept == []
    assert not (tmp_path / "run").exists()


def test_ctrl_c_in_the_train_command(sample_dataset, tmp_path, capsys, monkeypatch):
    from cli import train as train_cli

    out = tmp_path / "run"
    args = ["train", "--data", str(sample_dataset), "--out", str(out), "--steps", "20", "--log-every", "2",
            *TRAIN_ARGS]
    def interrupt(self, record):
        if record["step"] >= 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_cli._TrainProgress, "on_log", interrupt)
        assert main(args) == 130
    err = _one_line(capsys.readouterr().err)
    assert "step 4" in err and "netG.pth.tar" in err and str(out) in err and "new --out" in err
    assert json.loads((out / "summary.json").read_text())["interrupted"]
    assert main(args) == 1  # the same command again: told why, in one line
    err = _one_line(capsys.readouterr().err)
    assert "interrupted at step 4" in err and "new" in err


def test_ctrl_c_from_anywhere_in_train_is_one_line(tmp_path, capsys, monkeypatch):
    import nectargan.train

    def interrupted(config, callbacks=()):
        raise KeyboardInterrupt

    monkeypatch.setattr(nectargan.train, "fit", interrupted)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--steps", "1", *TRAIN_ARGS]) == 130
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("Interrupted") and str(tmp_path / "run") in err


# Callbacks ----------------------------------------------------------------------------------------------

def test_a_plain_function_is_a_callback_for_every_event(sample_dataset):
    seen = []
    fit(_config(sample_dataset, steps=2), callbacks=[lambda event, payload: seen.append((event, payload.get("step")))])
    assert [e for e, _ in seen] == ["on_eval", "on_log", "on_eval", "on_end"]
    assert seen[1] == ("on_log", 2)


def test_a_callback_with_nothing_to_call_is_refused(sample_dataset, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"callbacks\[0\].*on_log, on_eval or on_end"):
        fit(_config(sample_dataset, tmp_path / "run"), callbacks=[42])
    assert not (tmp_path / "run").exists()


# 11. Measure options checked before anything runs ------------------------------------------------------

MEASURE_CASES = [
    ("timeout_s", ['[measure]\ntimeout_s = "soon"\n'], "timeout_s"),
    ("threads", ["--threads", "-2"], "threads"),
    ("timeout", ["--timeout", "-5"], "timeout"),
    ("max_batch", ["--max-batch", "0"], "max_batch"),
]


def _measured_sweep(tmp_path, extra):
    text = "[grid]\nn_downs = [3]\nfeatures = [4]\ninput_size = [32]\n"
    flags = [a for a in extra if not a.startswith("[measure]")]
    text += "".join(a for a in extra if a.startswith("[measure]"))
    out = tmp_path / "run"
    code = main(["sweep", str(_grid(tmp_path, text)), "--out", str(out), "--device", "cpu", "-q", *flags])
    return code, out


@pytest.mark.parametrize(("name", "extra", "setting"), MEASURE_CASES, ids=[c[0] for c in MEASURE_CASES])
def test_bad_measure_options_stop_before_anything_runs(tmp_path, capsys, name, extra, setting):
    code, out = _measured_sweep(tmp_path, extra)
    assert code == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("Error: ")
    assert not out.exists()
    if name == "timeout_s":
        assert "g.toml" in err and "[measure].timeout_s" in err


@pytest.mark.parametrize(("name", "extra", "setting"), MEASURE_CASES[1:], ids=[c[0] for c in MEASURE_CASES[1:]])
def test_bad_measure_flags_name_the_setting(tmp_path, capsys, name, extra, setting):
    code, _out = _measured_sweep(tmp_path, extra)
    assert code == 1 and setting in capsys.readouterr().err


# 13. The edges of the command line ----------------------------------------------------------------------

def test_bare_command_shows_the_help(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "Usage: nectargan-bench" in captured.out and "sweep" in captured.out
    assert "Error" not in captured.err and "Error" not in captured.out


def test_report_of_a_file_says_it_is_not_a_folder(tmp_path, capsys):
    file = tmp_path / "results.jsonl"
    file.write_text("")
    assert main(["report", str(file)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "is not a folder" in err and "does not exist" not in err


def test_sweep_summary_counts_variants_and_rows_apart(tmp_path, capsys):
    one = _grid(tmp_path, "[grid]\nn_downs = [3]\nfeatures = [4]\ninput_size = [32]\n", "one")
    assert main(["sweep", str(one), "--static-only", "--out", str(tmp_path / "a"), "-q"]) == 0
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("1 variant (1 row: 1 ok)"), err
    two = _grid(tmp_path, "[grid]\nn_downs = [2, 3]\nfeatures = [4]\ninput_size = [32]\n", "two")
    assert main(["sweep", str(two), "--static-only", "--out", str(tmp_path / "b"), "-q"]) == 0
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("2 variants (2 rows: 1 invalid, 1 ok)"), err
    assert main(["sweep", str(two), "--static-only", "--out", str(tmp_path / "b"), "-q", "--resume"]) == 0
    assert _one_line(capsys.readouterr().err).startswith("2 variants, 2 already done (no new rows)")


def test_quiet_sweep_is_one_line_with_failures_folded_in(tmp_path, capsys):
    from nectargan.models import UnetBlock, register_block
    from nectargan.models.unet import blocks as blocks_module

    saved = dict(blocks_module._REGISTRY)

    @register_block(name="FailingBlock")
    class FailingBlock(UnetBlock):
        def forward(self, x):
            raise RuntimeError("boom")

    try:
        grid = _grid(tmp_path, '[grid]\nn_downs = [3]\ninput_size = [32]\nfeatures = [4]\n'
                               'block_type = ["UnetBlock", "FailingBlock"]\n')
        assert main(["sweep", str(grid), "--static-only", "--out", str(tmp_path / "run"), "-q"]) == 1
    finally:
        blocks_module._REGISTRY.clear()
        blocks_module._REGISTRY.update(saved)
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("Error: 1 row(s) failed") and "2 variants (2 rows: 1 error, 1 ok)" in err
    assert "fvcore skipped" in err


def test_readme_matches_the_fast_path_defaults():
    from nectargan.train.config import resolve

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    run = resolve(TrainConfig(data="x", steps=1, device="cpu"))
    assert not run.compile and not run.channels_last and run.precision == "fp32"
    assert "off on the CPU" in readme
    if torch.cuda.is_available():  # pragma: no cover - CPU in CI
        cuda = resolve(TrainConfig(data="x", steps=1, device="cuda"))
        assert cuda.compile and cuda.channels_last
