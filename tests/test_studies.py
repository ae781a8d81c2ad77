"""Optuna studies: configs, trials with attributes and artifacts, resuming, workers on SQLite and journal,
a killed worker's trial retried on PostgreSQL, reports, and optuna-dashboard as a real client. (Several
workers on PostgreSQL, the baseline among them: tests/test_cluster.py.)"""

from __future__ import annotations

import csv
import json
import os
import re
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

from nectargan.data.floor import Floor, trivial_floor
from nectargan.models import load_generator
from studies.config import OBJECTIVES, StudyConfigError, parse_study_config
from studies.objective import constraint_values
from studies.report import write_study_report
from studies.runner import StudyRun, run_study
from studies.storage import open_storage

NUMERIC = ("params", "gflops", "train_img_per_s", "peak_mem_mib", "val_l1", "val_psnr", "val_ssim", "train_seconds",
           "infer_img_per_s", "infer_ms")
ROOT = Path(__file__).resolve().parents[1]
# Rounds of three processes opening an empty PostgreSQL database at once (10 by hand: NECTARGAN_RACE_ROUNDS=10).
RACE_ROUNDS = int(os.environ.get("NECTARGAN_RACE_ROUNDS", 3))
FAST_TIMING = "infer_blocks = 3\ninfer_min_block_s = 0.005"


def _config(tmp_path: Path, data: Path, extra: str = "", budget: str = f"steps = 12\neval_every = 6\n{FAST_TIMING}",
            name: str = "t", objectives: str = '["val_l1"]', baseline: bool = False, pruner: str = "median",
            constraints: str = "", baseline_seeds: int = 1) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[study]
name = "{name}"
objectives = {objectives}
pruner = "{pruner}"
seed = 0
n_trials = 3
baseline = {str(baseline).lower()}
baseline_seeds = {baseline_seeds}
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
{constraints}
""")
    return str(path)


def _measured(trial: optuna.trial.FrozenTrial) -> None:
    """infer_img_per_s is the harness's Measurement of this trial: batch / median of its timed blocks."""
    import statistics

    blocks = trial.user_attrs["infer_block_s"]
    calls = trial.user_attrs["infer_calls_per_block"]
    assert len(blocks) == 3 and all(b > 0 for b in blocks) and calls >= 1
    per_call = statistics.median(b / calls for b in blocks)
    assert trial.user_attrs["infer_img_per_s"] == pytest.approx(trial.user_attrs["infer_batch_size"] / per_call)
    assert trial.user_attrs["infer_mode"] == "eager" and trial.user_attrs["device"].startswith("cpu: ")


def test_study_with_attributes_artifacts_weights_and_resume(tmp_path, sample_dataset):
    storage = f"sqlite:///{tmp_path}/studies.db"
    run = StudyRun(config_path=_config(tmp_path, sample_dataset), storage=storage, out_root=str(tmp_path / "out"),
                   n_trials=2)
    summary = run_study(run)
    assert summary["added"] == 2 and summary["total_trials"] == 2
    study = optuna.load_study(study_name="t", storage=storage)
    assert all(t.state.is_finished() for t in study.trials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        for key in NUMERIC:
            assert isinstance(trial.user_attrs[key], int | float), key
        assert trial.user_attrs["variant"].startswith("UnetBlock-Transposed-d3-")
        assert trial.user_attrs["val_l1"] == trial.value
        assert trial.user_attrs["budget_bound"] == "steps" and trial.user_attrs["steps"] == 12
        assert trial.user_attrs["settings"]["lr"] == trial.params["lr"]
        _measured(trial)
        folder = Path(trial.user_attrs["out"])
        assert Path(trial.user_attrs["weights"]) == folder / "netG.pth.tar"
        assert load_generator(trial.user_attrs["weights"], input_size=64).features == trial.params["features"]
        assert not (folder / "netD.pth.tar").exists()  # the study keeps the generator only
        artifact = tmp_path / "studies-artifacts" / trial.user_attrs["sample_artifact_id"]
        assert artifact.stat().st_size > 0
        assert optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)[0].mimetype == "image/png"
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.user_attrs["reason"]
    run_study(StudyRun(config_path=run.config_path, storage=storage, out_root=run.out_root, n_trials=1))
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 3  # the same study, resumed

    report = tmp_path / "report"
    written = write_study_report(storage, "t", report)
    assert {p.name for p in written} >= {"trials.csv", "report.md", "history.png", "pareto_front.png"}
    text = (report / "report.md").read_text()
    assert "## Best trials" in text and "val_l1 (minimize)" in text
    assert "No baseline trial completed" in text and "off ([study].baseline = false)" in text
    assert "The step budget ended every complete trial (3)" in text


def test_baseline_is_trial_zero_of_a_multi_objective_study_with_front_paragraph_and_grid(tmp_path, sample_dataset):
    """The default form: PSNR against measured inference speed, NectarGAN's default generator as trial 0 and
    again as trial 1 with another seed."""
    config = _config(tmp_path, sample_dataset, name="m", objectives='["val_psnr", "infer_img_per_s"]',
                     baseline=True, pruner="none", budget=f"seconds = 1\neval_every = 1000\n{FAST_TIMING}",
                     constraints="[constraints]\nmax_params = 1e6", baseline_seeds=2)
    Path(config).write_text(Path(config).read_text().replace("input_size = 64", "input_size = 32"))  # quicker
    storage = f"sqlite:///{tmp_path}/m.db"
    summary = run_study(StudyRun(config_path=config, storage=storage, out_root=str(tmp_path / "out")))
    assert summary["added"] == 3
    study = optuna.load_study(study_name="m", storage=storage)
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] is True and baseline.state == optuna.trial.TrialState.COMPLETE
    # 32 px allows n_downs 3 (32 = 2**(3+2)); features 64 lies outside the space's [4, 8]: set, not suggested
    assert baseline.user_attrs["variant"] == "UnetBlock-Transposed-d3-f64-32px"
    assert baseline.user_attrs["settings"] == {
        "n_downs": 3, "features": 64, "block_type": "UnetBlock", "upconv_type": "Transposed",
        "use_dropout_layers": 3, "lr": 2e-4, "beta1": 0.5, "lambda_l1": 100.0, "batch_size": 4}
    assert baseline.params == {"n_downs": 3, "lr": 2e-4}  # the baseline values the space can hold
    assert baseline.constraints["max_params"] > 0  # over the limit, recorded, and still trained
    assert [t.number for t in study.trials if t.user_attrs.get("baseline")] == [0]
    repeat = study.trials[1]  # the baseline again (its generator and settings), another seed: PSNR's noise
    assert repeat.user_attrs["baseline_repeat"] == 1 and repeat.state == optuna.trial.TrialState.COMPLETE
    assert {k: repeat.user_attrs[k] for k in ("variant", "settings")} == {
        k: baseline.user_attrs[k] for k in ("variant", "settings")}
    assert (baseline.user_attrs["seed"], repeat.user_attrs["seed"]) == (0, 1)
    for trial in study.trials[2:]:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        _measured(trial)
        assert trial.user_attrs["infer_speedup_vs_baseline"] > 0  # timed interleaved with the baseline's
        assert trial.values[1] == trial.user_attrs["infer_img_per_s"]
    _measured(baseline)

    report = tmp_path / "r"
    written = write_study_report(storage, "m", report)
    text = (report / "report.md").read_text()
    assert "## Pareto front" in text and re.search(r"\| 0 \(baseline\) +\| UnetBlock-Transposed-d3-f64-32px", text)
    assert "| 1.00x " in text and " M " in text and "| +0.00 " in text  # rounded: speed-up, params in M, dB
    assert "Baseline (NectarGAN's default generator at this size, trial 0)" in text
    assert "The speed-up is the one the answer and the front plot use" in text
    assert "The time budget ended every complete trial (3)" in text
    assert "Device: cpu: " in text and "1-minute load average when timed" in text
    assert study.user_attrs["env"]["cpu_count"] >= 1 and study.user_attrs["budget"] == {"steps": None, "seconds": 1}
    floor = Floor.from_dict(study.user_attrs["floor"])  # recorded by the driver, from the study's dataset
    assert floor == trivial_floor(sample_dataset, 32)
    best = study.trials[2]
    spread = abs(baseline.user_attrs["val_psnr"] - repeat.user_attrs["val_psnr"])
    assert "Trained with 2 seeds (trials 0, 1), the baseline reaches " in text
    assert f"a spread of {spread:.2f} dB" in text and "## Baseline over seeds" in text
    untrained = not floor.learned(baseline.user_attrs["val_psnr"]) and not floor.learned(best.user_attrs["val_psnr"])
    assert ("ranks untrained generators and names no winner" in text) == untrained  # 1 s of training: untrained
    if not untrained:
        assert "Best quality: `UnetBlock-Transposed-d3-f" in text and "than the baseline at" in text
    assert "## Floor" in text and f"| mean target | {floor.mean_psnr:.2f} " in text
    assert " of 3 complete trials did not learn (did not beat the better trivial predictor" in text
    with open(report / "trials.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert len(header) == len(set(header)) and "value_val_psnr" in header and "val_psnr" in header
    grid = report / "grid.png"
    assert grid in written and (report / "pareto_front.png").exists()
    from PIL import Image

    with Image.open(grid) as image:  # 4 val images (x2 to 128 px) under a header; input, baseline, ..., target
        assert 30 <= image.height - 4 * 128 <= 80 and image.width in (4 * 128, 5 * 128)  # labels wrap in the header
    (meta,) = optuna.artifacts.get_all_artifact_meta(study, storage=study._storage)
    assert meta.filename == "grid.png" and meta.mimetype == "image/png"
    write_study_report(storage, "m", report)  # the same grid is not uploaded twice
    assert len(optuna.artifacts.get_all_artifact_meta(study, storage=study._storage)) == 1


def test_invalid_architectures_and_constraints_are_pruned_before_training(tmp_path, sample_dataset):
    config = _config(tmp_path, sample_dataset, name="c", extra="[constraints]\nmax_params = 100000\n")
    config_text = Path(config).read_text().replace("n_downs = [3]", "n_downs = [3, 5]")  # 5 needs 128 px
    Path(config).write_text(config_text)
    storage = f"sqlite:///{tmp_path}/c.db"
    run_study(StudyRun(config_path=config, storage=storage, out_root=str(tmp_path / "out"), n_trials=4))
    study = optuna.load_study(study_name="c", storage=storage)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.PRUNED}  # invalid, or over max_params
    reasons = {t.params["n_downs"]: t.user_attrs["reason"] for t in study.trials}
    assert "invalid: input_size=64 is not valid for n_downs=5" in reasons[5]
    assert reasons[3].startswith("constraint: params")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing trained


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


def _two_workers(storage: str, tmp_path: Path, data: Path, name: str, baseline: bool = False,
                 n_trials: int = 4) -> list:
    budget = "seconds = 1\neval_every = 1000" if baseline else "steps = 12\neval_every = 6"
    budget += f"\n{FAST_TIMING}"
    config = _config(tmp_path, data, name=name, baseline=baseline, budget=budget)
    run = StudyRun(config_path=config, storage=storage, study_name=name, n_trials=n_trials, workers=2,
                   out_root=str(tmp_path / f"out-{name}"))
    run_study(run)
    return optuna.load_study(study_name=name, storage=open_storage(storage)).trials


def _baseline_ran_once(trials: list, out: Path) -> None:
    """Trial 0 is the baseline, trained by one worker only: one folder per trial number, no duplicate."""
    assert all(t.state.is_finished() for t in trials)
    assert [t.number for t in trials if t.user_attrs.get("baseline")] == [0]
    assert trials[0].state == optuna.trial.TrialState.COMPLETE, trials[0].user_attrs.get("reason")
    folders = sorted(p.name[:len("trial-0000")] for p in out.iterdir())
    assert folders == sorted(f"trial-{t.number:04d}" for t in trials if "out" in t.user_attrs)
    assert folders.count("trial-0000") == 1


def test_two_workers_on_a_journal_file(tmp_path, sample_dataset):
    trials = _two_workers(f"journal:{tmp_path}/studies.log", tmp_path, sample_dataset, "j")
    assert len(trials) == 4
    assert all(t.state.is_finished() for t in trials)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)


def test_baseline_runs_once_with_two_workers_on_sqlite(tmp_path, sample_dataset):
    trials = _two_workers(f"sqlite:///{tmp_path}/two.db", tmp_path, sample_dataset, "two", baseline=True,
                          n_trials=3)
    assert len(trials) == 3
    _baseline_ran_once(trials, tmp_path / "out-two")


def test_waiting_trials_are_handed_out_once_on_sqlite(tmp_path):
    """SQLite has no row locks: without the lock file two takers can both get one waiting trial."""
    import threading

    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path}/race.db"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    for i in range(60):
        study.enqueue_trial({"x": i})
    barrier, taken = threading.Barrier(2), []

    def taker() -> None:
        storage = open_storage(url)
        study_id = storage.get_study_id_from_name("race")
        barrier.wait()
        mine = []
        while waiting := storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            mine += [t.number for t in waiting[:1] if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)]
        taken.append(mine)

    threads = [threading.Thread(target=taker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken[0] + taken[1]) == list(range(60))  # each once, none twice


def test_duplicate_baseline_prunes_itself(tmp_path, sample_dataset):
    """A second baseline trial (two machines resuming at once, say) finds the first and stops before training."""
    from studies.baseline import BASELINE_ATTR

    storage = f"sqlite:///{tmp_path}/dup.db"
    config = _config(tmp_path, sample_dataset, name="dup", baseline=True)
    study = optuna.create_study(study_name="dup", storage=storage, directions=["minimize"])
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={BASELINE_ATTR: True}))
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    run_study(StudyRun(config_path=config, storage=storage, n_trials=1, out_root=str(tmp_path / "out")))
    trials = optuna.load_study(study_name="dup", storage=storage).trials
    assert len(trials) == 2 and trials[1].state == optuna.trial.TrialState.PRUNED
    assert trials[1].user_attrs["reason"] == "duplicate baseline: trial 0 is this study's baseline"
    assert not (tmp_path / "out").exists()


def test_the_baseline_and_its_repeats_are_enqueued_once_each_and_a_failed_one_again():
    from studies.baseline import enqueue_baseline, repeat_of

    config = parse_study_config("[study]\nbaseline_seeds = 3\n[space]\nfeatures = [4, 8]\n[fixed]\ninput_size = 64\n")
    study = optuna.create_study()
    assert enqueue_baseline(study, config) and not enqueue_baseline(study, config)  # all three wait: no more
    roles = [(t.user_attrs.get("baseline"), repeat_of(t), t.state.name) for t in study.get_trials()]
    assert roles == [(True, None, "WAITING"), (None, 1, "WAITING"), (None, 2, "WAITING")]
    study.tell(study.ask(), 1.0)  # the baseline completes
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # repeat 1 fails (Ctrl-C, a lost worker)
    assert enqueue_baseline(study, config) and not enqueue_baseline(study, config)
    assert [repeat_of(t) for t in study.get_trials() if t.state.name == "WAITING"] == [2, 1]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell by hand, as Ctrl-C leaves a trial
def test_interrupted_baseline_is_enqueued_again_once(tmp_path, sample_dataset):
    from studies.baseline import BASELINE_ATTR
    from studies.runner import open_study

    storage = f"sqlite:///{tmp_path}/again.db"
    run = StudyRun(config_path=_config(tmp_path, sample_dataset, name="again", baseline=True), storage=storage)
    study = open_study(run, run.config(), 0)
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "WAITING")]  # enqueued on creation
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # as Ctrl-C leaves it
    for _ in range(2):  # resumed twice: one new baseline, not two (a complete one is never repeated)
        study = open_study(run, run.config(), 0)
    assert [(t.number, t.state.name, t.user_attrs.get(BASELINE_ATTR)) for t in study.trials] == [
        (0, "FAIL", True), (1, "WAITING", True)]


def test_baseline_settings_scale_to_the_image_size():
    from studies.baseline import baseline_settings
    from studies.config import parse_study_config

    def settings(text: str) -> dict | None:
        return baseline_settings(parse_study_config(text))

    base = settings("[fixed]\ninput_size = 256\n")
    assert base is not None and (base["n_downs"], base["features"], base["use_dropout_layers"]) == (6, 64, 3)
    assert (base["lr"], base["beta1"], base["lambda_l1"], base["batch_size"]) == (2e-4, 0.5, 100.0, 1)
    assert settings("[fixed]\ninput_size = 512\n")["n_downs"] == 6  # NectarGAN's depth, not more
    assert settings("[fixed]\ninput_size = 96\n")["n_downs"] == 3  # 96 is a multiple of 32, not of 64
    assert settings("[fixed]\ninput_size = 48\n") is None
    assert settings("[fixed]\ninput_size = 64\n[space]\nbatch_size = [8, 4]\n")["batch_size"] == 8


def _kill_mid_trial_and_retry(storage: str, tmp_path: Path, data: Path, name: str) -> None:
    config = _config(tmp_path, data, name=name, budget="seconds = 2\nsteps = 100000\neval_every = 100000")
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


def test_killed_worker_trial_fails_and_is_retried_postgresql(tmp_path, sample_dataset, postgres_url):
    _kill_mid_trial_and_retry(postgres_url, tmp_path, sample_dataset, f"pgk-{uuid.uuid4().hex[:8]}")


def test_workers_opening_an_empty_postgresql_at_once_never_race(postgres_url):
    """Three processes open one empty database at the same instant, in rounds on fresh databases: the
    first creates Optuna's schema under the database's advisory lock, the others wait and find it."""
    import sqlalchemy
    from conftest import POSTGRES_ADMIN

    code = ("import sys, time; from studies.storage import open_storage; "
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); open_storage(sys.argv[1])")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    base = postgres_url.rsplit("/", 1)[1]
    failures = []
    try:
        for round_ in range(RACE_ROUNDS):
            name = f"{base}_r{round_}"
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
            url = postgres_url.rsplit("/", 1)[0] + "/" + name
            start = time.time() + 1.0  # every process opens at this instant, after its imports
            procs = [subprocess.Popen([sys.executable, "-c", code, url, str(start)], cwd=ROOT,
                                      stderr=subprocess.PIPE, text=True) for _ in range(3)]
            failures += [p.communicate(timeout=60)[1].strip()[-300:] for p in procs if p.wait(timeout=60)]
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    finally:
        admin.dispose()
    assert failures == [], failures


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
        ("[executor]\nkind = 'slurm'\nshards = 4\n", r"\[executor\]\.shards splits a sweep's grid; a study runs as"),
        ("[executor]\nkind = 'ray'\npartition = 'gpu'\n", r"\[executor\]\.partition is a slurm setting, but the "
         r"executor is 'ray'"),
        ("[study]\nobjectives = ['val_l1', 'params']\npruner = 'median'\n", r"cannot prune a multi-objective"),
        ("[study]\nsampler = 'tpee'\n", r"did you mean 'tpe'"),
        ("[studdy]\nname = 'x'\n", r"unknown top-level key 'studdy' \(did you mean 'study'\?\)"),
        ("[constraints]\nmax_param = 1\n", r"did you mean 'max_params'"),
        ("[space]\nn_downs = [3]\n[fixed]\nn_downs = 3\n", r"n_downs is both searched"),
        ("[data]\ntask = 'edges'\n", r"\[data\]\.task = 'edges'"),
        ("[budget]\nsteps = 0\n", r"\[budget\]\.steps = 0 must be >= 1"),
        ("[study]\nbaseline_seeds = 0\n", r"\[study\]\.baseline_seeds = 0 must be >= 1"),
        ("[space]\nblock_type = ['UnetBlock', 'ResBlock']\n",
         r"unknown name 'ResBlock'.*known: UnetBlock, ResidualUnetBlock"),
        ("[study\n", r"is not valid TOML"),
    ],
)
def test_bad_configs_are_one_line_errors(text, pattern):
    with pytest.raises(StudyConfigError, match=pattern) as info:
        parse_study_config(text, source="bad.toml")
    assert "\n" not in str(info.value)


def test_a_bad_dataset_is_one_line_before_the_storage_is_written(tmp_path, sample_dataset, capsys):
    import shutil

    from PIL import Image

    from cli import main

    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    Image.new("RGB", (64, 64)).save(data / "val" / "square.png")  # not A|B side by side
    storage = f"sqlite:///{tmp_path}/bad.db"
    assert main(["study", _config(tmp_path, data, baseline=True), "--storage", storage, "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "square.png is 64x64" in err and err.count("\n") == 0
    assert optuna.get_all_study_summaries(open_storage(storage)) == []  # no study, no baseline enqueued


def test_builtin_configs_parse():
    from studies.config import load_study_config

    for name in ("default", "smoke"):
        config = load_study_config(name)
        assert config.objectives == ["val_psnr", "infer_img_per_s"] and config.space and config.baseline
        assert config.seconds and config.steps is None  # a time budget: faster generators see more images


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


def test_inference_speed_is_the_timers_measurement():
    """infer_img_per_s comes from the harness's blocked timer (here a fake clock), not from FLOPs."""
    from nectargan.models import UnetGenerator
    from nectargan.train import TrainConfig, resolve
    from studies.speed import inference_attrs, measure_inference

    class FakeClock:
        """20 ms a call for the first workload seen (the trial's), 50 ms for the second (the baseline's)."""

        def __init__(self):
            self.per_call: dict = {}

        def time(self, fn, calls):
            fn()
            if fn not in self.per_call:
                self.per_call[fn] = (0.02, 0.05)[len(self.per_call)]
            return calls * self.per_call[fn]

    models = {"trial": UnetGenerator(64, features=4, n_downs=3), "baseline": UnetGenerator(64, features=8, n_downs=3)}
    run = resolve(TrainConfig(data="x", steps=1, device="cpu"))
    measured = measure_inference(models, 4, 64, 3, run, blocks=3, min_block_s=0.1, timer=FakeClock())
    attrs = inference_attrs(measured["trial"], 4, "eager", measured["baseline"])
    assert attrs["infer_img_per_s"] == pytest.approx(4 / 0.02)
    assert attrs["infer_speedup_vs_baseline"] == pytest.approx(2.5)
    assert attrs["infer_block_s"] == pytest.approx([0.1] * 3) and attrs["infer_calls_per_block"] == 5


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def _ctrl_c_in_torch_save(*args, **kwargs):
    """torch.save's zip writer raises a RuntimeError of its own when Ctrl-C lands inside it."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None


@pytest.mark.parametrize("interrupted", [_ctrl_c, _ctrl_c_in_torch_save])
def test_ctrl_c_marks_the_trial_and_ends_in_one_line(tmp_path, sample_dataset, monkeypatch, capfd, interrupted):
    import studies.objective
    from cli import main

    monkeypatch.setattr(studies.objective, "fit", interrupted)
    storage = f"sqlite:///{tmp_path}/i.db"
    config = _config(tmp_path, sample_dataset, name="i")
    assert main(["study", config, "--storage", storage, "--quiet", "--out", str(tmp_path / "out")]) == 130
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("Interrupted. Study 'i' keeps 0 finished trials") and "continue with the same command" in err
    (trial,) = optuna.load_study(study_name="i", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["reason"] == "interrupted (Ctrl-C)"
    assert "trial 0 marked FAIL (reason: interrupted (Ctrl-C))" in err


def test_changed_categorical_space_is_refused_before_writing(tmp_path, sample_dataset, capsys):
    from cli import main

    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(
        params={"features": 4}, distributions={"features": optuna.distributions.CategoricalDistribution([4, 8])},
        value=0.3))
    config = _config(tmp_path, sample_dataset, name="s").replace("features = [4, 8]", "features = [4, 16]")
    Path(config).write_text(Path(config).read_text().replace("features = [4, 8]", "features = [4, 16]"))
    assert main(["study", config, "--storage", storage, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("Error: ")
    assert "[space].features is now the choices [4, 16], but study 's' searched features over the choices [4, 8]" in err
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 1  # nothing written
    assert not (tmp_path / "out").exists()


def test_read_only_commands_create_nothing_and_refuse_bad_input(tmp_path, capsys):
    from cli import main

    missing = tmp_path / "missing.db"
    for args in (["study-report", f"sqlite:///{missing}", "--study", "x", "--out", str(tmp_path / "r")],
                 ["dashboard", f"sqlite:///{missing}"],
                 ["study-report", f"journal:{tmp_path}/missing.log", "--study", "x", "--out", str(tmp_path / "r")]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("Error: storage file ") and "does not exist" in err and err.count("\n") == 0
    assert not missing.exists() and not (tmp_path / "r").exists() and not (tmp_path / "missing.log").exists()
    assert not (tmp_path / "missing-artifacts").exists()

    assert main(["dashboard", f"sqlite:///{missing}", "--port", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "'--port': -1 is not a port: use 1 to 65535" in err and err.count("\n") == 0

    storage = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="s", storage=storage)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.jsonl").write_text("{}\n")
    (sweep / "report.md").write_text("the sweep's report\n")
    assert main(["study-report", storage, "--study", "s", "--out", str(sweep)]) == 1
    err = capsys.readouterr().err.strip()
    assert "holds a sweep run (results.jsonl)" in err and err.count("\n") == 0
    assert (sweep / "report.md").read_text() == "the sweep's report\n" and not (sweep / "trials.csv").exists()


def _synthetic(storage: str, name: str, objectives: list[str], trials: list[dict],
               budget: dict | None = None) -> optuna.Study:
    """A study as the runner leaves it, without training: trials from (params, values, user_attrs)."""
    directions = [OBJECTIVES[o] for o in objectives]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("budget", budget or {"steps": 100, "seconds": None})
    dists = {"n_downs": optuna.distributions.CategoricalDistribution([3]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)}
    for t in trials:
        study.add_trial(optuna.trial.create_trial(
            params=t["params"], distributions={k: dists[k] for k in t["params"]}, values=t["values"],
            user_attrs=t["attrs"]))
    return study


def test_report_columns_importances_and_budget_warning(tmp_path):
    """Unique trials.csv columns; importances over varied parameters, with a caveat; the step-budget warning."""
    storage = f"sqlite:///{tmp_path}/syn.db"
    trials = []
    for i in range(4):
        lr = 1e-4 * (i + 1)
        attrs = {"val_l1": 0.3 - 0.01 * i, "params": 1000 * (i + 1), "val_psnr": 12.0 + i, "val_ssim": 0.1,
                 "train_img_per_s": 10.0 * (i + 1) ** 2, "budget_bound": "steps", "images": 400,
                 "infer_img_per_s": 100.0 * (i + 1), "variant": f"v{i}"}
        trials.append({"params": {"n_downs": 3, "lr": lr}, "values": [attrs["val_l1"], attrs["params"]],
                       "attrs": attrs})
    _synthetic(storage, "syn", ["val_l1", "params"], trials)
    write_study_report(storage, "syn", tmp_path / "r")
    with open(tmp_path / "r" / "trials.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert len(header) == len(set(header)), header
    assert {"value_val_l1", "val_l1", "value_params", "params", "param_lr", "param_n_downs"} <= set(header)
    text = (tmp_path / "r" / "report.md").read_text()
    importances = text.split("## Parameter importances", 1)[1].split("##", 1)[0]
    assert "Only 4 searched trials completed" in importances
    assert "| lr " in importances and "| n_downs " not in importances  # n_downs never varied
    assert "Left out (never varied): n_downs" in importances
    assert "were compared under a step budget" in text and "(10 to 160 img/s, 16.0x)" in text


FLOOR = Floor(mean_psnr=14.0, mean_ssim=0.37, copy_psnr=4.0, copy_ssim=0.18, copy_note=None, size=64, val_images=20,
              train_images=160)


def _psnr_study(storage: str, name: str, psnrs: list[float], floor: Floor | None = FLOOR,
               extra: dict[int, dict] | None = None) -> optuna.Study:
    """Trial 0 the baseline, then searched trials, at these val PSNRs (``extra``: more user attributes by trial
    number); the study's floor as the driver records it."""
    trials = []
    for i, psnr in enumerate(psnrs):
        attrs = {"val_psnr": psnr, "val_ssim": 0.2, "infer_img_per_s": 100.0 * (i + 1), "images": 400,
                 "infer_speedup_vs_baseline": float(i + 1),
                 "budget_bound": "seconds", "variant": f"v{i}", **({"baseline": True} if i == 0 else {}),
                 **(extra or {}).get(i, {})}
        trials.append({"params": {"lr": 1e-4 * (i + 1)}, "values": [psnr, attrs["infer_img_per_s"]], "attrs": attrs})
    study = _synthetic(storage, name, ["val_psnr", "infer_img_per_s"], trials, budget={"steps": None, "seconds": 4})
    if floor is not None:
        study.set_user_attr("floor", floor.to_dict())
    return study


def test_trials_below_the_floor_are_marked_and_counted_and_no_winner_is_named(tmp_path):
    """Mean target 14 dB: a trial learned at 15 dB and above. Baseline 12.7, best 14.9: nothing learned."""
    storage = f"sqlite:///{tmp_path}/floor.db"
    _psnr_study(storage, "untrained", [12.7, 13.5, 14.9])
    write_study_report(storage, "untrained", tmp_path / "u")
    text = (tmp_path / "u" / "report.md").read_text()
    answer = text.split("## Answer", 1)[1].split("##", 1)[0]
    assert ("3 of 3 complete trials did not learn (did not beat the better trivial predictor, the mean target at "
            "14.00 dB, by 1 dB): trials 0, 1, 2.") in answer
    assert "ranks untrained generators and names no winner" in answer
    assert "Best quality:" not in answer and "On the front" not in answer
    floor_section = text.split("## Floor", 1)[1].split("##", 1)[0]
    assert "| copy input  | 4.00 " in floor_section and "| mean target | 14.00 " in floor_section
    assert "0 of 3 complete trials did, 3 did not" in floor_section
    assert "| v2        | 14.90      | +2.20            | +0.90           | no  " in text  # the front's row
    with open(tmp_path / "u" / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["learned"] for r in rows] == ["False"] * 3 and float(rows[2]["db_over_floor"]) == pytest.approx(0.9)

    _psnr_study(storage, "one-learned", [12.7, 13.5, 15.5])  # 1.5 dB over the floor: it learned; the baseline not
    write_study_report(storage, "one-learned", tmp_path / "l")
    text = (tmp_path / "l" / "report.md").read_text()
    assert "2 of 3 complete trials did not learn" in text and "trials 0, 1." in text
    assert "Best quality: `v2` (trial 2) is 3.0x faster than the baseline at 2.8 dB higher PSNR" in text
    assert "speed timed interleaved with the baseline's)" in text  # which speed-up the answer uses
    assert "The baseline did not learn" in text
    assert "trial 2 still has a lower SSIM than a trivial predictor's (0.370)" in text  # 0.2: a hint, still learned
    assert "| v2        | 15.50      | +2.80            | +1.50           | yes " in text

    _psnr_study(storage, "old", [12.7, 15.5], floor=None)  # predates the floor, its dataset unknown
    write_study_report(storage, "old", tmp_path / "o")
    text = (tmp_path / "o" / "report.md").read_text()
    assert "The floor was not recorded (the study predates it) and its dataset was not found" in text
    assert "Best quality: `v1` (trial 1)" in text


def test_the_baselines_spread_over_seeds_decides_what_is_better(tmp_path):
    """Baseline 15.2 dB, its repeats 15.0 and 15.6 (spread 0.6 dB): 15.5 dB is not better, 16.5 dB is."""
    storage = f"sqlite:///{tmp_path}/seeds.db"
    # trials 1 and 2 are the baseline's repeats, not searched trials; trial 3 the fastest within 0.5 dB
    _psnr_study(storage, "seeds", [15.2, 15.0, 15.6, 15.5, 16.5], extra={
        1: {"baseline_repeat": 1, "seed": 1}, 2: {"baseline_repeat": 2, "seed": 2},
        3: {"infer_speedup_vs_baseline": 9.0}})
    write_study_report(storage, "seeds", tmp_path / "s")
    text = (tmp_path / "s" / "report.md").read_text()
    assert ("Trained with 3 seeds (trials 0, 1, 2), the baseline reaches 15.00 to 15.60 dB PSNR, a spread of "
            "0.60 dB") in text
    assert "Best quality: `v4` (trial 4) is 5.0x faster than the baseline at 1.3 dB higher PSNR (beyond the " \
           "baseline's seed spread of 0.60 dB)" in text
    assert "`v3` (trial 3) is 9.0x faster than the baseline at 0.3 dB higher PSNR (within the baseline's seed " \
           "spread of 0.60 dB: not better)" in text
    assert "a trial with higher PSNR than the baseline by more than its seed spread (0.60 dB): yes" in text
    seeds = text.split("## Baseline over seeds", 1)[1].split("##", 1)[0]
    assert seeds.count("| yes ") == 3 and "over 0.60 dB" in seeds
    assert "Over 2 searched trials; the baseline and its repeats are left out" in text


@pytest.mark.parametrize(("change", "message"), [
    (('objectives = ["val_psnr"]', 'objectives = ["val_ssim"]'), "optimises ['val_psnr'], not ['val_ssim']"),
    (("input_size = 64", "input_size = 32"), "was run with [fixed] input_size = 64, this config says input_size = 32"),
    (("steps = 12", "steps = 24"), "was run with the budget {'steps': 12, 'seconds': None}, this config says"),
])
def test_a_config_that_would_mix_trials_into_a_study_is_refused(tmp_path, sample_dataset, capsys, change, message):
    """Objectives with the same directions (PSNR, SSIM), another [fixed] value or another budget would rank
    trials of two kinds as one study: refused in one line before anything is written."""
    from cli import main
    from studies.config import load_study_config
    from studies.runner import open_study

    storage = f"sqlite:///{tmp_path}/s.db"
    config = _config(tmp_path, sample_dataset, name="s", objectives='["val_psnr"]')
    open_study(StudyRun(config_path=config, storage=storage), load_study_config(config), seed=0)
    text = Path(config).read_text()
    assert change[0] in text
    Path(config).write_text(text.replace(change[0], change[1]))
    assert main(["study", config, "--storage", storage, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("Error: study 's' in ") and message in err, err
    assert "choose another study name (--study-name)" in err
    assert optuna.load_study(study_name="s", storage=storage).trials == []  # nothing written
    assert not (tmp_path / "out").exists()


def test_fixed_settings_no_generator_can_take_are_refused_before_any_trial(tmp_path, sample_dataset, capsys):
    from cli import main

    config = _config(tmp_path, sample_dataset, name="s60")
    Path(config).write_text(Path(config).read_text().replace("input_size = 64", "input_size = 60"))
    storage = tmp_path / "s.db"
    assert main(["study", config, "--storage", f"sqlite:///{storage}", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no generator of" in err and "[space] fits its fixed settings" in err
    assert "input_size=60 is not valid for n_downs=3" in err and "multiple of 32" in err
    assert not storage.exists() and not (tmp_path / "out").exists()


def test_read_only_commands_on_a_missing_or_empty_postgresql_database_say_so(tmp_path, postgres_url, capsys):
    import sqlalchemy

    from cli import main

    missing = postgres_url + "_missing"
    for args in (["study-report", missing, "--study", "x", "--out", str(tmp_path / "r")], ["dashboard", missing]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        name = missing.rsplit("/", 1)[1]
        assert err.count("\n") == 0 and f"database '{name}' does not exist on 127.0.0.1:5432" in err
    report = ["study-report", postgres_url, "--study", "x", "--out", str(tmp_path / "r")]
    for args in (report, ["dashboard", postgres_url]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("Error: no study there: ") and "holds no Optuna tables" in err
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:
        assert sqlalchemy.inspect(connection).get_table_names() == []  # a read-only command created nothing
    engine.dispose()
    assert not (tmp_path / "r").exists()


def test_a_command_counts_only_the_trials_it_added(tmp_path, sample_dataset):
    """Three commands adding a trial each to one study at once each said "added 2 trials": the summary counts
    the trials tagged with this invocation's run id, not what other commands added meanwhile."""
    import dataclasses

    from studies.runner import RUN_ATTR, _summary

    storage = f"sqlite:///{tmp_path}/s.db"
    config = _config(tmp_path, sample_dataset, name="own", budget=f"steps = 2\neval_every = 2\n{FAST_TIMING}")
    summary = run_study(StudyRun(config_path=config, storage=storage, n_trials=1, out_root=str(tmp_path / "out")))
    assert summary["added"] == 1
    study = optuna.load_study(study_name="own", storage=storage)
    (mine,) = study.trials
    assert mine.user_attrs[RUN_ATTR]  # tagged, also when run here rather than on a cluster
    other = optuna.trial.create_trial(params={}, distributions={}, values=[0.1], user_attrs={RUN_ATTR: "other"})
    study.add_trial(other)  # another command's trial, added while this one ran
    run = StudyRun(config_path=config, storage=storage, run_id=mine.user_attrs[RUN_ATTR])
    assert _summary(run, study, before=set())["added"] == 1
    assert _summary(dataclasses.replace(run, run_id="other"), study, before=set())["added"] == 1


def test_grid_labels_wrap_inside_their_column():
    from studies.image_grid import _wrap

    def width(text: str) -> float:
        return 6.0 * len(text)  # a 6-pixel-per-character font

    assert _wrap("best PSNR & fastest t12\n11.44 dB 1008 img/s", width, 60) == [
        "best PSNR", "& fastest", "t12", "11.44 dB", "1008 img/s"]
    assert all(width(line) <= 60 for line in _wrap("averyveryverylongword t1", width, 60))


def test_the_busy_warning_counts_the_studys_own_load(tmp_path):
    """On 2 CPUs the study's own training reads about 2: 2.4 is not busy, 3.3 is (one more process)."""
    storage = f"sqlite:///{tmp_path}/load.db"
    for name, load, busy in (("own", 2.4, False), ("shared", 3.3, True)):
        study = _psnr_study(storage, name, [16.0, 17.0], extra={1: {"load_avg_1m": load}})
        study.set_user_attr("env", {"cpu_count": 2})
        write_study_report(storage, name, tmp_path / name)
        text = (tmp_path / name / "report.md").read_text()
        assert ("Warning: the machine was busy: 1-minute load average up to 3.3 on 2 CPUs" in text) is busy


def test_a_study_is_not_continued_on_another_dataset(tmp_path, sample_dataset, capsys):
    """The floor records the dataset it was measured on: the same config pointed at a copy elsewhere (say the
    smoke study after its data changed) is refused in one line, nothing written."""
    import shutil

    from cli import main
    from studies.config import load_study_config
    from studies.floor import record_floor, study_floor
    from studies.runner import open_study

    storage = f"sqlite:///{tmp_path}/d.db"
    config = _config(tmp_path, sample_dataset, name="d", objectives='["val_psnr"]')
    loaded = load_study_config(config)
    study = open_study(StudyRun(config_path=config, storage=storage), loaded, seed=0)
    record_floor(study, study_floor(loaded), loaded.data_path)
    other = tmp_path / "other-data"
    shutil.copytree(sample_dataset, other)
    Path(config).write_text(Path(config).read_text().replace(f'path = "{sample_dataset}"', f'path = "{other}"'))
    assert main(["study", config, "--storage", storage, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert f"trained on the dataset '{sample_dataset}', this config says '{other}'" in err, err
    assert optuna.load_study(study_name="d", storage=storage).trials == []
