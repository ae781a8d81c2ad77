"""Executors beyond one machine: settings and refusals, Slurm through submitit's local executor, Ray on
a local cluster with fake GPUs and a killed worker, study workers on PostgreSQL with one killed.

The tests that run jobs through an engine carry the ``cluster`` marker: ``make test-cluster`` runs them
(``.ci/run`` does, after the README's ``make test``, which leaves them out to stay under 5 minutes)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest

from bench.grid import parse_grid
from cli import main
from studies.storage import open_storage

GRID = """
[grid]
n_downs = [3]
features = [4, 8]
upconv_type = ["Transposed", "Bilinear"]
input_size = [32]
"""
LOCAL_SLURM = '[executor]\nkind = "slurm"\ncluster = "local"\ntime_min = 5\n'
STATIC = ("params", "macs", "flops_fwd", "flops_train", "activations", "conv_macs_fvcore")


def _grid(tmp_path: Path, extra: str = "", name: str = "g") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(GRID + extra)
    return str(path)


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


def _rows(directory: Path) -> dict[str, dict]:
    lines = (directory / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a row was written twice"
    return {r["key"]: r for r in rows}


# --- settings and refusals: one line, non-zero, nothing written ---------------------------------------------


@pytest.mark.parametrize(
    ("extra", "args", "pattern"),
    [
        ("", ["--executor", "slurmm"], "kind 'slurmm' is not valid (did you mean 'slurm'?); use local, slurm, ray"),
        ("", ["--executor", "slurm", "--address", "auto"], "address is a ray setting, but the executor is 'slurm'"),
        ("", ["--detach"], "detach is a slurm setting, but the executor is 'local'"),
        ("", ["--executor", "ray", "--shard", "1/2"], "the executor splits the grid itself"),
        ("", ["--executor", "slurm"], "needs Slurm's sbatch on this machine"),
        ("", ["--executor", "slurm", "--max-retries", "-1"], "max_retries = -1 must be >= 0"),
        ("", ["--executor", "slurm", "--sbatch", "constraint=h100"], "'constraint=h100' is not an sbatch option"),
        (LOCAL_SLURM, ["--shards", "9"], "shards=9 is more than the grid's 4 variant(s); use at most 4"),
        (LOCAL_SLURM, ["--device", "cuda:1", "--launcher", "inline"], "device 'cuda:1' names GPUs of this machine"),
        (LOCAL_SLURM, ["--device", "cuda", "--gpus-per-task", "0"], "with gpus_per_task = 0: each task would find"),
        ('[executor]\npartition = "gpu"\n', [], "partition is a slurm setting, but the executor is 'local'"),
        ('[executor]\nparition = "gpu"\n', [], "unknown key [executor].parition (did you mean 'partition'?)"),
        ('[executor]\nkind = "ray"\npartition = "gpu"\n', [],
         "partition is a slurm setting, but the executor is 'ray'"),
    ],
)
def test_bad_executor_settings_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, extra, args, pattern):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no sbatch here, whatever the machine has
    out = tmp_path / "out"
    static = [] if "--device" in args else ["--static-only"]
    line = _one_error_line(*_run(["sweep", _grid(tmp_path, extra), *static, "--out", out, *args], capsys))
    assert pattern in line
    assert not out.exists()


def test_a_missing_engine_names_the_extra_to_install(tmp_path, capsys, monkeypatch):
    from bench import executors

    monkeypatch.setitem(executors.EXTRAS, "ray", ("no_such_module_ray", "ray"))
    line = _one_error_line(*_run(["sweep", _grid(tmp_path), "--static-only", "--out", tmp_path / "o",
                                  "--executor", "ray"], capsys))
    assert "needs no_such_module_ray, which is not installed: pip install 'nectargan-bench[ray]'" in line


@pytest.mark.parametrize("kind", ["slurm", "ray"])
def test_cluster_studies_refuse_sqlite_before_anything_is_written(tmp_path, capsys, sample_dataset, kind):
    from test_studies import _config

    db = tmp_path / "s.db"
    line = _one_error_line(*_run(["study", _config(tmp_path, sample_dataset), "--storage", f"sqlite:///{db}",
                                  "--executor", kind, "--workers", "3"], capsys))
    assert "is a SQLite file, which workers on several machines cannot share" in line
    assert "postgresql://USER@HOST/DB or journal:/shared/path/study.log" in line
    assert not db.exists() and not (tmp_path / "out").exists()


# --- Slurm through submitit's local executor -----------------------------------------------------------------


@pytest.mark.cluster
def test_slurm_job_array_of_two_shards_merges_to_the_local_rows(tmp_path, capsys):
    pytest.importorskip("submitit")
    grid = _grid(tmp_path, '[executor]\ncluster = "local"\ntime_min = 5\n')  # Slurm settings; the flag picks Slurm
    assert main(["sweep", _grid(tmp_path, name="plain"), "--static-only", "--out", str(tmp_path / "local"), "-q"]) == 0
    cluster = tmp_path / "cluster"
    code, err = _run(["sweep", grid, "--static-only", "--executor", "slurm", "--shards", "2", "--out", cluster, "-q"],
                     capsys)
    assert code == 0, err
    local, merged = _rows(tmp_path / "local"), _rows(cluster)
    assert merged.keys() == local.keys() and len(merged) == 4
    for key, row in merged.items():
        assert row["status"] == "ok" and {c: row[c] for c in STATIC} == {c: local[key][c] for c in STATIC}
    state = json.loads((cluster / "executor.json").read_text())
    assert state["shards"] == 2 and sorted(state["jobs"]) == ["1", "2"]
    for index in (1, 2):  # each array task wrote its own shard folder, as an ordinary run
        shard = cluster / "shards" / f"shard{index}of2"
        assert json.loads((shard / "env.json").read_text())["shard"] == f"{index}/2"
        assert len(_rows(shard)) == 2
    assert json.loads((cluster / "env.json").read_text())["executor"]["kind"] == "slurm"
    assert (cluster / "report.md").is_file() and (cluster / "results.csv").is_file()

    before = (cluster / "results.jsonl").read_bytes()
    slurm = ["sweep", grid, "--executor", "slurm", "--out", cluster]
    line = _one_error_line(*_run([*slurm, "--static-only"], capsys))
    assert "is not empty; resume that run (--resume)" in line
    line = _one_error_line(*_run(["sweep", str(tmp_path / "plain.toml"), "--static-only", "--out", cluster, "--resume"],
                                 capsys))
    assert "is a sweep sent to Slurm (it holds executor.json): resume it with --executor slurm" in line
    line = _one_error_line(*_run([*slurm, "--resume", "--launcher", "inline"], capsys))
    assert "was started static only; resume it the same way" in line
    assert (cluster / "results.jsonl").read_bytes() == before  # nothing lost
    code, err = _run([*slurm, "--static-only", "--resume", "-q"], capsys)
    assert code == 0 and "(0 submitted)" in err, err  # every shard complete: nothing sent again
    code, err = _run(["collect", cluster], capsys)
    assert code == 0 and "4 of 4 variants finished in 2 shards; rows: 4 ok" in err, err
    assert _rows(cluster).keys() == local.keys()


def test_collect_names_unfinished_shards(tmp_path, capsys):
    pytest.importorskip("submitit")
    from bench.executors import executor_config
    from bench.executors import slurm as slurm_engine
    from bench.executors.jobs import SweepShard, shard_folder

    grid = parse_grid(GRID, source="g.toml", sha256="x")
    directory = tmp_path / "run"
    directory.mkdir()
    config = executor_config(kind="slurm", cluster="local", shards=2)
    slurm_engine.write_state(directory, slurm_engine._state(grid, None, config, 2, None))
    SweepShard(grid, str(shard_folder(directory, 1, 2)), 1, 2, None)()  # shard 1 ran; shard 2 never did
    code, err = _run(["collect", directory], capsys)
    assert code == 1 and "2 of 4 variants finished in 2 shards" in err, err
    assert "1 shard(s) unfinished (shard 2: 0/2 variants, no job)" in err
    assert len(_rows(directory)) == 2  # what there is, merged


# --- Ray on a local cluster with fake GPUs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import remote_faults

    ray.cloudpickle.register_pickle_by_value(remote_faults)
    ray.init(num_cpus=3, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.mark.cluster
def test_ray_sweep_gives_each_task_its_gpu_and_retries_a_killed_worker(tmp_path, ray_cluster):
    from remote_faults import kill_once_factory

    from bench.executors import executor_config
    from bench.executors.ray import RayPlan
    from bench.sweep import run_plan

    grid = parse_grid(GRID)
    victim = grid.variants()[1].name
    marker = tmp_path / "killed"
    config = executor_config(kind="ray", gpus_per_task=1, max_retries=2)
    plan = RayPlan(None, config, factory=kill_once_factory(str(marker), victim))
    assert len(plan.devices()) == 2  # two fake GPUs, one task on each at a time
    result = run_plan(grid, tmp_path / "run", plan)
    rows = _rows(tmp_path / "run")  # every row exactly once, written by this process alone
    assert len(rows) == 4 and result.counts == {"ok": 4}
    assert all(r["status"] == "ok" for r in rows.values())
    assert marker.exists(), "the victim's first worker was not killed"
    assert any(r["variant"] == victim for r in rows.values())  # its retry produced the row
    assert {r["visible_gpus"] for r in rows.values()} <= {"0", "1"}  # one GPU each, never both, never none
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["executor"]["kind"] == "ray" and env["executor"]["max_retries"] == 2


# --- study workers on PostgreSQL, one killed ---------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("kind", ["slurm", "ray"])
def test_study_workers_on_postgresql_end_with_n_trials_after_one_is_killed(kind, tmp_path, sample_dataset, request,
                                                                          postgres_url):
    """3 workers, 3 trials (the first NectarGAN's baseline); one worker is killed mid-trial and restarted by
    its engine: its trial is failed as lost, the run still ends with exactly 3 trials that ran to their end."""
    pytest.importorskip("submitit" if kind == "slurm" else "ray")
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    from test_studies import _config

    from bench.executors import executor_config
    from studies.runner import ENDED_ATTR, LOST, RAN_ON_ATTR, StudyRun, run_study

    name = f"cluster-{kind}-{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, sample_dataset, name=name, baseline=True,
                     budget="seconds = 1\nsteps = 100000\neval_every = 100000")
    run = StudyRun(config_path=config, storage=postgres_url, study_name=name, n_trials=3, workers=3,
                   out_root=str(tmp_path / "out"))
    executor = executor_config(kind=kind, cluster="local" if kind == "slurm" else None, gpus_per_task=0,
                               cpus_per_task=1, max_retries=2, time_min=5 if kind == "slurm" else None)
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(summary=run_study(run, executor=executor)), daemon=True)
    driver.start()
    try:
        victim = _kill_a_running_trial(name, driver, postgres_url)
        driver.join(timeout=240)
        assert not driver.is_alive(), "the study did not finish"
        assert "summary" in outcome, "run_study raised (see the captured log)"
        trials = optuna.load_study(study_name=name, storage=open_storage(postgres_url)).trials
        states = [t.state for t in trials]
        assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
        ended = [t for t in trials if t.user_attrs.get(ENDED_ATTR)]
        assert len(ended) == 3  # exactly N trials ran to their end
        baselines = [t for t in ended if t.user_attrs.get("baseline")]  # trained once, by one of 3 workers
        assert len(baselines) == 1 and baselines[0].state == optuna.trial.TrialState.COMPLETE
        killed = trials[victim]
        assert killed.state == optuna.trial.TrialState.FAIL and ENDED_ATTR not in killed.user_attrs
        assert killed.user_attrs.get("reason") == LOST  # failed at once by its worker's restart
        worker = killed.user_attrs["worker"]
        assert any(t.user_attrs.get("worker") == worker and t.user_attrs[RAN_ON_ATTR]["pid"]
                   != killed.user_attrs[RAN_ON_ATTR]["pid"] for t in ended)  # the worker ran again, elsewhere
    finally:
        driver.join(timeout=5)


def _kill_a_running_trial(name: str, driver: threading.Thread, url: str) -> int:
    """SIGKILL the worker process of the first trial seen RUNNING (mid-training); its number. The storage
    is opened as the harness opens it (under the schema lock): the driver may be creating the schema."""
    storage = open_storage(url)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert driver.is_alive(), "the study ended before a trial was seen running"
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:
            trials = []
        running = next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                        and "params" in t.user_attrs and "ran_on" in t.user_attrs), None)
        if running is not None:
            os.kill(int(running.user_attrs["ran_on"]["pid"]), signal.SIGKILL)
            return running.number
        time.sleep(0.2)
    raise AssertionError("no trial was seen running")


def test_a_ray_address_where_nothing_answers_is_one_line_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray")
    started = time.monotonic()
    code, err = _run(["sweep", _grid(tmp_path), "--static-only", "--executor", "ray", "--address", "127.0.0.1:1",
                      "--out", tmp_path / "run"], capsys)
    assert code == 1 and time.monotonic() - started < 30
    line = _one_error_line(code, err)
    assert "cannot connect to Ray at address '127.0.0.1:1': nothing answers on 127.0.0.1:1" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("resources", "gpus"), [({"CPU": 2.0}, 0), ({"CPU": 8.0, "GPU": 2.0}, 1)])
def test_a_study_on_ray_with_device_auto_asks_for_a_gpu_only_where_the_cluster_has_one(monkeypatch, tmp_path,
                                                                                       sample_dataset, resources, gpus):
    pytest.importorskip("ray")
    from test_studies import _config

    from bench.executors import executor_config
    from bench.executors import ray as ray_engine
    from studies.cluster import gpus_per_worker
    from studies.config import load_study_config

    monkeypatch.setattr(ray_engine, "connect", lambda config: None)
    monkeypatch.setattr(ray_engine, "_resources", lambda: resources)
    config = load_study_config(_config(tmp_path, sample_dataset))
    assert "device" not in config.fixed  # auto
    assert gpus_per_worker(config, executor_config(kind="ray")) == gpus
    assert gpus_per_worker(config, executor_config(kind="ray", gpus_per_task=0)) == 0  # the setting wins
    with pytest.raises(Exception, match=r"--gpus-per-task 0 .* study \[fixed\] device = \"cpu\""):
        ray_engine.capacity(executor_config(kind="ray"), 1 + int(resources.get("GPU", 0)))


def test_submitits_repeated_sacct_warnings_become_one_line_of_ours(tmp_path, caplog):
    pytest.importorskip("submitit")
    import logging

    from bench.executors import executor_config
    from bench.executors import slurm as slurm_engine

    slurm_engine.make_executor(executor_config(kind="slurm", cluster="local"), tmp_path, "t", 0)
    logger = logging.getLogger("submitit")
    slurm_engine.SACCT_WARNINGS.seen = 0
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for call in range(1, 6):  # as submitit words it on each poll while accounting is off
            logger.warning(f"Call #{call} - Bypassing sacct error Command '['sacct', '-o']' returned non-zero exit "
                           "status 1., status may be inaccurate.")
        logger.warning("another submitit warning")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[1] == "another submitit warning"
    assert messages[0].startswith("Slurm's sacct does not answer (Command '['sacct', '-o']' returned")
    assert messages[0].endswith("job states may be inaccurate until it does (said once)")


def test_a_job_sacct_cannot_see_is_live_while_squeue_lists_it(tmp_path, monkeypatch):
    """Accounting off: submitit says UNKNOWN for every job, so --resume resubmitted shards whose jobs were still
    running (6 jobs for 2 shards). squeue, the controller's own view, decides then."""
    pytest.importorskip("submitit")
    from types import SimpleNamespace

    from bench.executors import slurm as slurm_engine

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"  # lists job 7 as running, knows no other
    squeue.write_text('#!/bin/sh\n[ "$3" = "7" ] && echo RUNNING\nexit 0\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm_engine, "_job", lambda cluster, logs, job_id: SimpleNamespace(state="UNKNOWN"))
    assert slurm_engine._live("slurm", tmp_path, "7") == "RUNNING (squeue)"
    assert slurm_engine._live("slurm", tmp_path, "8") is None  # not listed: ended, may be resubmitted
    states = slurm_engine.job_states(tmp_path, {"jobs": {"1": ["7"], "2": ["8"]}, "executor": {"cluster": "slurm"}})
    assert states == {"1": "job 7 RUNNING (squeue)", "2": "job 8 UNKNOWN"}
