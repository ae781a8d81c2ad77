"""Optuna studies: configs, trials with attributes and artifacts, resuming, workers on journal and
PostgreSQL, a killed worker's trial retried, reports, and optuna-dashboard as a real client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest

from studies.config import StudyConfigError, parse_study_config
from studies.objective import constraint_values
from studies.report import write_study_report
from studies.runner import StudyRun, run_study
from studies.storage import open_storage

NUMERIC = ("params", "gflops", "train_img_per_s", "peak_mem_mib", "val_l1", "val_psnr", "val_ssim", "train_seconds")
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _config(tmp_path: Path, data: Path, extra: str = "", budget: str = "steps = 12\neval_every = 6",
            name: str = "t") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[study]
name = "{name}"
objectives = ["val_l1"]
seed = 0
n_trials = 3
[data]
path = "{data}"
[budget]
{budget}
[space]
n_downs = [3]
features = [4, 8]
lr = {{ low = 1e-4, high = 1e-3, log = true }}
[fixed]
input_size = 64
batch_size = 4
d_features = 8
{extra}
""")
    return str(path)


def test_three_trial_study_with_attributes_artifacts_and_resume(tmp_path, sample_dataset):
    storage = f"sqlite:///{tmp_path}/studies.db"
    run = StudyRun(config_path=_config(tmp_path, sample_dataset), storage=storage, out_root=str(tmp_path / "out"))
    summary = run_study(run)
    assert summary["added"] == 3 and summary["total_trials"] == 3
    study = optuna.load_study(study_name="t", storage=storage)
    assert all(t.state.is_finished() for t in study.trials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        for key in NUMERIC:
            assert isinstance(trial.user_attrs[key], int | float), key
        assert trial.user_attrs["variant"].startswith("UnetBlock-Transposed-d3-")
        assert trial.user_attrs["val_l1"] == trial.value
        artifact = tmp_path / "studies-artifacts" / trial.user_attrs["sample_artifact_id"]
        assert artifact.stat().st_size > 0
        assert optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)[0].mimetype == "image/png"
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.user_attrs["reason"]
    run_study(run)  # the same command again adds to the same study
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 6

    report = tmp_path / "report"
    written = write_study_report(storage, "t", report)
    assert {p.name for p in written} >= {"trials.csv", "report.md", "history.png"}
    text = (report / "report.md").read_text()
    assert "## Best trials" in text and "val_l1 (minimize)" in text


def test_invalid_architectures_and_constraints_are_pruned_before_training(tmp_path, sample_dataset):
    config = _config(tmp_path, sample_dataset, name="c", extra="[constraints]\nmax_params = 100000\n")
    config_text = Path(config).read_text().replace("n_downs = [3]", "n_downs = [5]")  # 5 needs 128 px
    Path(config).write_text(config_text)
    storage = f"sqlite:///{tmp_path}/c.db"
    run_study(StudyRun(config_path=config, storage=storage, out_root=str(tmp_path / "out"), n_trials=2))
    study = optuna.load_study(study_name="c", storage=storage)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.PRUNED}
    assert all("invalid: input_size=64 is not valid for n_downs=5" in t.user_attrs["reason"] for t in study.trials)


def test_static_constraint_prunes_and_reaches_optuna(tmp_path, sample_dataset):
    config = _config(tmp_path, sample_dataset, name="limit", extra="[constraints]\nmax_params = 1000\n")
    storage = f"sqlite:///{tmp_path}/limit.db"
    run_study(StudyRun(config_path=config, storage=storage, out_root=str(tmp_path / "out"), n_trials=1))
    (trial,) = optuna.load_study(study_name="limit", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["reason"].startswith("constraint: params")
    assert trial.constraints["max_params"] > 0  # handed to Optuna via Trial.set_constraint
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing trained


def test_constraint_values_follow_optuna_convention():
    attrs = {"params": 200.0, "gflops": 0.5}
    limits = {"max_params": 100.0, "max_gflops": 1.0, "max_peak_mem_mib": 10.0}
    assert constraint_values(attrs, limits) == {"max_params": 100.0, "max_gflops": -0.5}


def test_out_of_memory_prunes_with_reason_oom(tmp_path, sample_dataset, monkeypatch):
    import torch

    import studies.objective

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("injected out-of-memory (test fault)")

    monkeypatch.setattr(studies.objective, "fit", out_of_memory)
    storage = f"sqlite:///{tmp_path}/o.db"
    run_study(StudyRun(config_path=_config(tmp_path, sample_dataset, name="o"), storage=storage, n_trials=2,
                       out_root=str(tmp_path / "out")))
    trials = optuna.load_study(study_name="o", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(t.user_attrs["reason"] == "oom" for t in trials)


def test_multi_objective_study_reports_a_pareto_front(tmp_path, sample_dataset):
    config = _config(tmp_path, sample_dataset, name="m")
    text = Path(config).read_text().replace('objectives = ["val_l1"]',
                                            'objectives = ["val_l1", "gflops"]\nsampler = "nsga2"\npruner = "none"')
    Path(config).write_text(text)
    storage = f"sqlite:///{tmp_path}/m.db"
    run_study(StudyRun(config_path=config, storage=storage, n_trials=2, out_root=str(tmp_path / "out")))
    write_study_report(storage, "m", tmp_path / "r")
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Pareto front" in report and (tmp_path / "r" / "pareto_front.png").exists()


def _two_workers(storage: str, tmp_path: Path, data: Path, name: str) -> list:
    run = StudyRun(config_path=_config(tmp_path, data, name=name), storage=storage, study_name=name,
                   n_trials=4, workers=2, out_root=str(tmp_path / f"out-{name}"))
    run_study(run)
    return optuna.load_study(study_name=name, storage=open_storage(storage)).trials


def test_two_workers_on_a_journal_file(tmp_path, sample_dataset):
    trials = _two_workers(f"journal:{tmp_path}/studies.log", tmp_path, sample_dataset, "j")
    assert len(trials) == 4
    assert all(t.state.is_finished() for t in trials)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)


def _postgres_or_skip() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432 (CI and developer machines have one)")


def test_two_workers_on_postgresql(tmp_path, sample_dataset):
    _postgres_or_skip()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        trials = _two_workers(POSTGRES, tmp_path, sample_dataset, name)
        assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)


def _kill_mid_trial_and_retry(storage: str, tmp_path: Path, data: Path, name: str) -> None:
    config = _config(tmp_path, data, name=name, budget="seconds = 6\nsteps = 100000\neval_every = 100000")
    cmd = [sys.executable, "-m", "cli", "study", config, "--storage", storage, "--study-name", name,
           "--n-trials", "1", "--heartbeat", "1", "--quiet", "--out", str(tmp_path / "out-killed")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    running = None
    while time.monotonic() < deadline and running is None:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
            running = next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                            and "params" in t.user_attrs), None)
        except KeyError:
            pass
        time.sleep(0.2)
    assert running is not None, "no trial started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(3.5)  # past the grace period: the heartbeat is stale
    run_study(StudyRun(config_path=config, storage=storage, study_name=name, n_trials=1, heartbeat_s=1, grace_s=2,
                       out_root=str(tmp_path / "out-retry")))
    trials = optuna.load_study(study_name=name, storage=storage).trials
    killed = trials[running.number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == running.number]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)


def test_killed_worker_trial_fails_and_is_retried_sqlite(tmp_path, sample_dataset):
    _kill_mid_trial_and_retry(f"sqlite:///{tmp_path}/k.db", tmp_path, sample_dataset, "k")


def test_killed_worker_trial_fails_and_is_retried_postgresql(tmp_path, sample_dataset):
    _postgres_or_skip()
    name = f"pgk-{uuid.uuid4().hex[:8]}"
    try:
        _kill_mid_trial_and_retry(POSTGRES, tmp_path, sample_dataset, name)
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/d.db"
    study = optuna.create_study(study_name="dash", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "dashboard", storage, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        studies = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                time.sleep(0.3)
        assert studies and studies[0]["study_name"] == "dash"
        study_id = studies[0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=5) as response:
            detail = json.load(response)
        assert len(detail["trials"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("[space]\nn_down = [3]\n", r"unknown key \[space\]\.n_down \(did you mean 'n_downs'\?\)"),
        ("[space]\nfeatures = []\n", r"\[space\]\.features is empty"),
        ("[space]\nlr = { low = 1e-3, high = 1e-4 }\n", r"\[space\]\.lr: low = 0\.001 must be below high"),
        ("[space]\nlr = { low = 0.0, high = 1e-4, log = true }\n", r"a log range needs low > 0"),
        ("[space]\nlr = { low = 1e-4 }\n", r"needs both low and high"),
        ("[space]\nblock_type = { low = 1, high = 2 }\n", r"is a name, not a number"),
        ("[space]\nfeatures = ['8']\n", r"\[space\]\.features has '8' \(str\); it must be an integer"),
        ("[study]\nobjectives = ['val_l2']\n", r"unknown objective 'val_l2' \(did you mean 'val_l1'\?\)"),
        ("[study]\nobjectives = ['val_l1', 'params']\npruner = 'median'\n", r"cannot prune a multi-objective"),
        ("[study]\nsampler = 'tpee'\n", r"did you mean 'tpe'"),
        ("[studdy]\nname = 'x'\n", r"unknown top-level key 'studdy' \(did you mean 'study'\?\)"),
        ("[constraints]\nmax_param = 1\n", r"did you mean 'max_params'"),
        ("[space]\nn_downs = [3]\n[fixed]\nn_downs = 3\n", r"n_downs is both searched"),
        ("[data]\ntask = 'edges'\n", r"\[data\]\.task = 'edges'"),
        ("[budget]\nsteps = 0\n", r"\[budget\]\.steps = 0 must be >= 1"),
        ("[space]\nblock_type = ['UnetBlock', 'ResBlock']\n",
         r"unknown name 'ResBlock'.*known: UnetBlock, ResidualUnetBlock"),
        ("[study\n", r"is not valid TOML"),
    ],
)
def test_bad_configs_are_one_line_errors(text, pattern):
    with pytest.raises(StudyConfigError, match=pattern) as info:
        parse_study_config(text, source="bad.toml")
    assert "\n" not in str(info.value)


def test_builtin_configs_parse():
    from studies.config import load_study_config

    for name in ("default", "smoke"):
        config = load_study_config(name)
        assert config.objectives and config.space and config.steps


def test_bad_config_from_the_command_line(tmp_path, capsys):
    from cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[space]\nn_down = [3]\n")
    assert main(["study", str(bad), "--storage", f"sqlite:///{tmp_path}/x.db"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "did you mean 'n_downs'" in err and err.count("\n") == 0
    assert main(["study", "smoke", "--storage", "redis://nowhere"]) == 1
    assert "storage 'redis://nowhere' is not valid" in capsys.readouterr().err


def test_fixed_device_that_is_not_there_is_a_config_error(tmp_path, sample_dataset):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    from nectargan.errors import NectarGANError

    config = _config(tmp_path, sample_dataset, name="dev", extra='device = "cuda"\n')
    with pytest.raises(NectarGANError, match="CUDA is not available"):
        run_study(StudyRun(config_path=config, storage=f"sqlite:///{tmp_path}/dev.db"))
    assert not (tmp_path / "dev.db").exists()
