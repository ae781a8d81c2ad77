"""The GPU check's machinery, rehearsed on this CPU: clean stops, rows kept as they are measured, honest
checks of compiled steps, the trace table, and the phase driver under a budget too small for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from cli import main

ROOT = Path(__file__).resolve().parents[1]
MARK = "NECTARGAN_TEST_MARK"
BUDGET_S = 15  # the rehearsal's budget: the host (about 2 s) fits, the headline's cold compile (about 90 s) does not
GRID = """
[grid]
n_downs = [3]
features = [8]
input_size = [32]
batch_size = [2]

[measure]
task = ["infer", "train"]
mode = ["eager"]
warm_compile = false
min_block_s = 0.05
blocks = 3
"""


def _rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines() if line.strip()]


def _marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def _wait_gone(mark: str, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _env(mark: str, **extra: str) -> dict[str, str]:
    return {**os.environ, MARK: mark, "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.slow
def test_sigterm_stops_a_measured_sweep_keeps_its_rows_and_leaves_no_child(tmp_path):
    """The infer group's row reaches disk while the train group is still to come; SIGTERM then ends the
    sweep and its measuring child, and --resume measures only what is missing."""
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    out, mark = tmp_path / "run", uuid.uuid4().hex
    command = [sys.executable, "-m", "cli", "sweep", str(grid), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(mark), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.jsonl").is_file() and any(r["kind"] == "measure" for r in _rows(out)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the sweep ended before it could be stopped: " + proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        said, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, said
    assert "Interrupted. Finished rows are kept" in said
    assert _wait_gone(mark) == [], "a measuring child outlived its sweep"
    kept = _rows(out)
    measured = [r for r in kept if r["kind"] == "measure"]
    assert [r["task"] for r in measured] == ["infer"] and measured[0]["status"] == "ok"
    assert measured[0]["img_per_s"] > 0 and measured[0]["timed_with"] == ""

    assert main(["sweep", str(grid), "--out", str(out), "--resume", "--quiet"]) == 0
    after = _rows(out)
    assert after[: len(kept)] == kept  # nothing rewritten
    tasks = [r["task"] for r in after if r["kind"] == "measure"]
    assert tasks == ["infer", "train"]  # only the missing train row was measured


def _fake_compile(scale: float):
    """A stand-in for torch.compile that runs the function eagerly and scales what it returns."""

    def compile_(fn, **_kwargs):
        def run(*args, **kwargs):
            out = fn(*args, **kwargs)
            return tuple(o * scale for o in out) if isinstance(out, tuple) else out * scale

        return run

    return compile_


@pytest.mark.parametrize(("scale", "wrong"), [(1.0, False), (1.5, True)])
def test_a_compiled_step_is_checked_against_an_eager_step(tmp_path, monkeypatch, scale, wrong):
    """max_rel_err of a compiled train or gan_train row compares the compiled step with eager from the
    same weights and inputs: a faithful compile gives 0, one that is wrong on purpose is flagged."""
    monkeypatch.setattr(torch, "compile", _fake_compile(scale))
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.replace('["infer", "train"]', '["train", "gan_train"]')
                    .replace('mode = ["eager"]', 'mode = ["eager", "compile"]') + "d_features = 8\n")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "run"), "--launcher", "inline", "-q"]) == 0
    rows = {(r["task"], r["mode"]): r for r in _rows(tmp_path / "run") if r["kind"] == "measure"}
    for task in ("train", "gan_train"):
        row = rows[(task, "compile")]
        assert row["status"] == "ok" and row["err_check"].startswith("one step's losses")
        assert row["timed_with"] == "eager" and rows[(task, "eager")]["timed_with"] == "compile"
        if wrong:
            assert row["max_rel_err"] > 0.3 and row["err_flag"] is True, row["max_rel_err"]
        else:
            assert row["max_rel_err"] == 0.0 and row["err_flag"] is False
    assert rows[("train", "eager")]["err_check"] == "no-grad forward vs eager fp32"


def test_trace_lists_the_top_operators_with_their_share(tmp_path, capsys):
    out = tmp_path / "profile.md"
    code = main(["trace", "--n-downs", "3", "--features", "4", "--input-size", "32", "--batch-size", "2",
                 "--task", "train", "--mode", "eager", "--device", "cpu", "--steps", "2", "--top", "5",
                 "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert text.strip() in capsys.readouterr().out  # printed as well as written
    lines = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(lines) == 5
    shares = [float(line.split("|")[5].strip(" %")) for line in lines]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
    assert "aten::convolution_backward" in text  # a training step spends time in its backward


def test_trace_refuses_a_bad_mode_in_one_line(capsys):
    assert main(["trace", "--mode", "compiled", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: --mode: mode 'compiled' is not valid") and "\n" not in err


@pytest.mark.slow
def test_gpu_check_rehearsal_under_a_small_budget(tmp_path):
    """Part 1 on the CPU with 15 s for host, headline and family: the headline's cold compile does not fit
    its cap, so it is stopped (SIGINT, then SIGKILL) and the family is skipped; the summary says so in
    order, the rows on disk are the rows it reports, and no process of the check is left."""
    out, mark = tmp_path / "check", uuid.uuid4().hex
    env = _env(mark, GPU_CHECK_DEVICE="cpu", GPU_CHECK_BUDGET_S=str(BUDGET_S), GPU_CHECK_PHASES="host,headline,family",
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), PYTHON=sys.executable)
    started = time.monotonic()
    proc = subprocess.run(["bash", "scripts/gpu-check.sh", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr  # not every phase was done
    summary = json.loads((out / "summary.json").read_text())
    phases = summary["phases"]
    assert [p["name"] for p in phases] == ["host", "headline", "family"]
    assert [p["status"] for p in phases] == ["done", "timed_out", "skipped"], proc.stderr
    starts = [p["started_s"] for p in phases]
    assert starts == sorted(starts) and all(p["ended_s"] >= p["started_s"] for p in phases)
    headline = phases[1]
    assert headline["seconds"] <= BUDGET_S + 15 + 5  # its cap, then SIGINT's grace at most
    assert elapsed < BUDGET_S + 15 + 20
    on_disk = sum(r["kind"] == "measure" for r in _rows(out / "headline")) if (out / "headline").exists() else 0
    assert headline["rows"] == on_disk
    assert (out / "versions.txt").read_text().startswith("python ")
    assert "headline timed_out" in (out / "summary.txt").read_text()
    assert _wait_gone(mark) == [], "a process of the check outlived it"


@pytest.mark.parametrize(("setting", "message"), [
    ({"GPU_CHECK_BUDGET_S": "abc"}, "GPU_CHECK_BUDGET_S='abc' is not valid: give seconds > 0"),
    ({"GPU_CHECK_PHASES": "host,headlin"}, "GPU_CHECK_PHASES names headlin, not phases of part 1: host, headline"),
])
def test_gpu_check_refuses_a_bad_setting_in_one_line_and_writes_nothing(tmp_path, setting, message):
    out = tmp_path / "check"
    env = _env(uuid.uuid4().hex, PYTHON=sys.executable, **setting)
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"Error: {message}") and "\n" not in proc.stderr.strip()
    assert not out.exists()
