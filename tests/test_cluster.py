"""Executors beyond one machine: settings and refusals (no engine), then real engines started on this machine by
scripts/test-cluster.sh: Slurm with accounting (a job array of shards, detach and collect, a requeued and a
cancelled task, study workers on PostgreSQL with a job cancelled) and a two-node Ray cluster (a sweep across both
nodes, a killed worker, a lost node, study workers with one killed).

The tests that run jobs through an engine carry the ``cluster`` marker: ``make test-cluster`` runs them
(``.ci/run`` does, after the README's ``make test``, which leaves them out to stay under 5 minutes)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
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
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no sbatch here, whatever the machine has
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


# --- the test cluster: real Slurm (with slurmdbd) and a two-node Ray cluster on this machine -------------------
#
# scripts/test-cluster.sh installs (Debian, as root), configures and starts them, once per session; it returns in
# well under a second when they are up. This session stops them at its end when it started them. Where they
# cannot start (not root, no apt-get, no Debian packages), every test here is skipped with the script's one line.

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "test-cluster.sh"
RAY_ADDRESS = "127.0.0.1:6388"  # NECTARGAN_RAY_PORT's default in the script
RAY_NODE2 = "ray-node-2"  # the second Ray node's hostname (its own UTS namespace)
SLURM = ["--executor", "slurm", "--partition", "debug"]
BENCH = str(Path(sys.executable).with_name("nectargan-bench"))
# 48 small variants, 24 per shard: a quarter of a second each to profile on an idle 2-core machine, so a shard
# held after its first row still has several seconds of work left when a requeue or a cancel reaches it (the
# test cluster kills 2 s after SIGTERM, and Slurm's own SIGCONT resumes a held shard meanwhile)
GRID48 = """
[grid]
n_downs = [3, 4]
features = [4, 8, 16]
block_type = ["UnetBlock", "ResidualUnetBlock"]
upconv_type = ["Transposed", "Bilinear"]
input_size = [64, 128]
"""


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def test_cluster():
    """The engines up (see above); the skip reason is the script's own error line."""
    was_up = _script("status", timeout=60).returncode == 0
    started = time.monotonic()
    up = _script("up")
    if up.returncode != 0:
        errors = [line for line in up.stderr.splitlines() if line.startswith("Error:")]
        pytest.skip(errors[-1] if errors else up.stderr.strip()[-300:] or "scripts/test-cluster.sh up failed")
    print(f"\n[test cluster up in {time.monotonic() - started:.0f} s: {up.stdout.strip()}]")
    yield
    if not was_up and not os.environ.get("NECTARGAN_KEEP_TEST_CLUSTER"):
        _script("down", timeout=120)


def _poll(check, what: str, timeout: float = 120.0, every: float = 0.2):
    """``check()``'s first truthy value, polled; an AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def _sacct(job_id: str, duplicates: bool = False) -> list[str]:
    """sacct's states of ``job_id`` (its allocation, not its steps); with ``duplicates`` every run of it."""
    listed = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id,
                             *(["-D"] if duplicates else [])], capture_output=True, text=True, timeout=30)
    return [line.split("|")[1] for line in listed.stdout.splitlines() if "|" in line]  # -X: no steps


def _state_of(job_id: str) -> str:
    states = _sacct(job_id)
    return states[-1] if states else ""


def _completed(job_id: str) -> None:
    """sacct says COMPLETED (a job whose result is written may still be completing for a moment)."""
    _poll(lambda: _state_of(job_id) == "COMPLETED", f"job {job_id} COMPLETED in sacct (now {_state_of(job_id)})",
          timeout=60, every=0.5)


def _jobs(directory: Path) -> dict[str, list[str]]:
    return json.loads((directory / "executor.json").read_text())["jobs"]


def _hold_after_first_row(shard: Path, variants: int) -> int:
    """SIGSTOP the shard's sweep once it has written its first row: a job that is RUNNING with rows still to
    write, for as long as the test needs. Its PID is in the shard's lock file."""
    results = shard / "results.jsonl"

    def first_row() -> int | None:
        lock = shard / ".lock"
        if results.is_file() and results.read_text().count("\n") >= 1 and lock.is_file():
            text = lock.read_text().strip()
            return int(text) if text.isdigit() else None
        return None

    pid = _poll(first_row, f"a first row in {shard}", timeout=150, every=0.05)
    os.kill(pid, signal.SIGSTOP)
    written = results.read_text().count("\n")
    assert written < variants, f"{shard} finished before it could be held ({written} rows)"
    return pid


# --- Slurm ----------------------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_a_sweep_as_a_slurm_job_array_merges_to_the_local_rows(tmp_path, capsys, test_cluster):
    grid = _grid(tmp_path)
    assert main(["sweep", grid, "--static-only", "--out", str(tmp_path / "local"), "-q"]) == 0
    cluster = tmp_path / "cluster"
    code, err = _run(["sweep", grid, "--static-only", *SLURM, "--shards", "2", "--out", cluster], capsys)
    assert code == 0, err
    assert "4 variants in 2 Slurm shards (2 submitted), 4 finished; rows: 4 ok" in err
    assert "sacct" not in err and "Bypassing" not in err  # accounting answers: nothing about it
    local, merged = _rows(tmp_path / "local"), _rows(cluster)
    assert merged.keys() == local.keys() and len(merged) == 4
    for key, row in merged.items():
        assert row["status"] == "ok" and {c: row[c] for c in STATIC} == {c: local[key][c] for c in STATIC}
    jobs = _jobs(cluster)
    assert sorted(jobs) == ["1", "2"] and all(len(ids) == 1 for ids in jobs.values())
    array = {ids[0].split("_")[0] for ids in jobs.values()}
    assert len(array) == 1, "the shards were not one job array"
    for ids in jobs.values():  # each array task ran through Slurm, as its accounting says (once the job has
        _completed(ids[0])      # ended: the command returns as soon as the results are written)
    for index in (1, 2):  # each array task wrote its own shard folder, as an ordinary run
        shard = cluster / "shards" / f"shard{index}of2"
        assert json.loads((shard / "env.json").read_text())["shard"] == f"{index}/2"
        assert len(_rows(shard)) == 2

    before = (cluster / "results.jsonl").read_bytes()
    slurm = ["sweep", grid, *SLURM, "--out", cluster]
    line = _one_error_line(*_run([*slurm, "--static-only"], capsys))
    assert "already holds results; resume that run (--resume)" in line
    line = _one_error_line(*_run(["sweep", grid, "--static-only", "--out", cluster, "--resume"], capsys))
    assert "is a sweep sent to Slurm (it holds executor.json): resume it with --executor slurm" in line
    line = _one_error_line(*_run([*slurm, "--resume", "--launcher", "inline"], capsys))
    assert "was started static only; resume it the same way" in line
    assert (cluster / "results.jsonl").read_bytes() == before  # nothing lost
    code, err = _run([*slurm, "--static-only", "--resume", "-q"], capsys)
    assert code == 0 and "(0 submitted)" in err, err  # every shard complete: nothing sent again
    code, err = _run(["collect", cluster], capsys)
    assert code == 0 and "4 of 4 variants finished in 2 shards; rows: 4 ok" in err, err


@pytest.mark.cluster
def test_detach_collect_while_running_cancel_and_resume_only_that_shard(tmp_path, capsys, test_cluster):
    grid = str(tmp_path / "g48.toml")
    Path(grid).write_text(GRID48)
    run = tmp_path / "run"
    code, err = _run(["sweep", grid, "--static-only", *SLURM, "--shards", "2", "--detach", "--out", run], capsys)
    assert code == 0 and "Submitted 2 shard job(s) of 2 to Slurm" in err, err
    first, second = _jobs(run)["1"][0], _jobs(run)["2"][0]
    pid = _hold_after_first_row(run / "shards" / "shard1of2", 24)
    try:
        code, err = _run(["collect", run], capsys)
        assert code == 1, err
        assert re.search(rf"shard 1: ([1-9]|1[0-9]|2[0-3])/24 variants, job {first} RUNNING", err), err  # sacct's
        subprocess.run(["scancel", first], check=True, timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)  # Slurm sends SIGCONT and SIGTERM too; SIGKILL 2 s later
    _poll(lambda: _state_of(first).startswith("CANCELLED"), f"job {first} cancelled")
    _completed(second)
    code, err = _run(["collect", run], capsys)
    assert code == 1, err
    unfinished = re.search(r"1 shard\(s\) unfinished \(shard 1: ([0-9]+)/24 variants, job (\S+) CANCELLED", err)
    assert unfinished and unfinished.group(2) == first, err
    assert int(unfinished.group(1)) < 24

    code, err = _run(["sweep", grid, "--static-only", *SLURM, "--resume", "--out", run, "-q"], capsys)
    assert code == 0, err
    assert "48 variants in 2 Slurm shards (1 submitted), 48 finished; rows: 48 ok" in err
    jobs = _jobs(run)
    assert len(jobs["1"]) == 2 and jobs["2"] == [second]  # only the cancelled shard ran again
    _completed(jobs["1"][1])
    code, err = _run(["collect", run], capsys)
    assert code == 0 and "48 of 48 variants finished in 2 shards; rows: 48 ok" in err, err
    assert len(_rows(run)) == 48


@pytest.mark.cluster
def test_a_requeued_task_runs_again_and_a_cancelled_one_is_not_resubmitted(tmp_path, test_cluster):
    """The driver waits; one array task is requeued (scontrol requeue) and the other cancelled (scancel), each
    after its first row: the requeued one resumes its shard, every row is written once; the cancelled one is
    reported by its sacct state and not submitted again."""
    from bench.executors import slurm as slurm_engine

    grid = tmp_path / "g48.toml"
    grid.write_text(GRID48)
    run = tmp_path / "run"
    driver = subprocess.Popen([BENCH, "sweep", str(grid), "--static-only", *SLURM, "--shards", "2", "--out", str(run)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _poll(lambda: (run / "executor.json").is_file() and len(_jobs(run)) == 2, "both shards submitted")
        requeued, cancelled = _jobs(run)["1"][0], _jobs(run)["2"][0]
        held = [_hold_after_first_row(run / "shards" / f"shard{i}of2", 24) for i in (1, 2)]
        subprocess.run(["scontrol", "requeue", requeued], check=True, timeout=30)
        subprocess.run(["scancel", cancelled], check=True, timeout=30)
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _out, err = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"shard 2/2: job {cancelled} (CANCELLED" in errors[0], err
    assert "failed after 1 attempt(s)" in errors[0]  # cancelled: not submitted again
    assert "Bypassing" not in err and "sacct" not in err
    assert _jobs(run) == {"1": [requeued], "2": [cancelled]}  # neither was resubmitted by the driver
    _completed(requeued)
    assert "REQUEUED" in _sacct(requeued, duplicates=True)  # its first run, then the one that completed
    shard1 = run / "shards" / "shard1of2"
    assert len(_rows(shard1)) == 24  # the requeued run resumed its shard: each row once
    assert len(json.loads((shard1 / "env.json").read_text()).get("resumes", [])) == 1
    assert len(_rows(run)) < 48 and all(r["status"] == "ok" for r in _rows(run).values())
    # the progress line's job states are the engine's
    line = slurm_engine.jobs_line("slurm", run / "submitit", [requeued, cancelled])
    assert line == "jobs: 1 done, 1 cancelled"


@pytest.mark.cluster
def test_study_workers_as_slurm_jobs_end_with_n_trials_after_one_job_is_cancelled(tmp_path, sample_dataset,
                                                                                 postgres_url, test_cluster):
    """3 workers, 3 trials (the first NectarGAN's baseline) as Slurm jobs on PostgreSQL; the job of a worker whose
    trial is running is cancelled: submitted again while the command waits, it fails its lost trial and runs what
    it owes, so exactly 3 trials run to their end, none twice, none left RUNNING."""
    from test_studies import _config

    from bench.executors import executor_config
    from studies.runner import ENDED_ATTR, LOST, RAN_ON_ATTR, StudyRun, run_study

    name = f"cluster-slurm-{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, sample_dataset, name=name, baseline=True,
                     budget="seconds = 4\nsteps = 100000\neval_every = 100000")
    run = StudyRun(config_path=config, storage=postgres_url, study_name=name, n_trials=3, workers=3,
                   out_root=str(tmp_path / "out"))
    executor = executor_config(kind="slurm", partition="debug", gpus_per_task=0, cpus_per_task=1, max_retries=2,
                               time_min=10)
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(summary=run_study(run, executor=executor)), daemon=True)
    driver.start()
    try:
        victim, job = _cancel_a_running_trials_job(name, driver, postgres_url)
        driver.join(timeout=300)
        assert not driver.is_alive(), "the study did not finish"
        assert "summary" in outcome, "run_study raised (see the captured log)"
        assert _state_of(job).startswith("CANCELLED")
        trials = optuna.load_study(study_name=name, storage=open_storage(postgres_url)).trials
        states = [t.state for t in trials]
        assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
        ended = [t for t in trials if t.user_attrs.get(ENDED_ATTR)]
        assert len(ended) == 3  # exactly N trials ran to their end
        baselines = [t for t in ended if t.user_attrs.get("baseline")]  # trained once, by one of 3 workers
        assert len(baselines) == 1 and baselines[0].state == optuna.trial.TrialState.COMPLETE
        killed = trials[victim]
        assert killed.state == optuna.trial.TrialState.FAIL and ENDED_ATTR not in killed.user_attrs
        assert killed.user_attrs.get("reason") == LOST  # failed at once by its worker's next job
        worker = killed.user_attrs["worker"]
        assert any(t.user_attrs.get("worker") == worker and t.user_attrs[RAN_ON_ATTR]["pid"]
                   != killed.user_attrs[RAN_ON_ATTR]["pid"] for t in ended)  # the worker ran again, in a new job
    finally:
        driver.join(timeout=5)


def _first_running_trial(name: str, driver: threading.Thread, url: str, timeout: float):
    """The first trial seen RUNNING mid-training (its worker recorded where it runs). The storage is opened as
    the harness opens it (under the schema lock): the driver may be creating the schema."""
    storage = open_storage(url)

    def running():
        assert driver.is_alive(), "the study ended before a trial was seen running"
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:
            return None
        return next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                     and "params" in t.user_attrs and "ran_on" in t.user_attrs), None)

    return _poll(running, "a trial running", timeout=timeout)


def _cancel_a_running_trials_job(name: str, driver: threading.Thread, url: str) -> tuple[int, str]:
    """scancel the Slurm job of the first trial seen RUNNING (mid-training): the trial's number and the job. The
    job is found from its worker's PID (Slurm's variables in its environment: the node is this machine)."""
    trial = _first_running_trial(name, driver, url, timeout=180)
    pid = int(trial.user_attrs["ran_on"]["pid"])
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    array = environ.get("SLURM_ARRAY_JOB_ID")  # scancel wants an array task by its array name, not its own id
    job = f"{array}_{environ['SLURM_ARRAY_TASK_ID']}" if array else environ["SLURM_JOB_ID"]
    subprocess.run(["scancel", job], check=True, timeout=30)
    _poll(lambda: _state_of(job).startswith("CANCELLED"), f"job {job} cancelled", timeout=30)
    return trial.number, job


# --- Ray: two nodes on this machine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(test_cluster):
    """This process connected to the test cluster's Ray (a head with 1 CPU and 1 GPU, and ray-node-2 alike)."""
    ray = pytest.importorskip("ray")
    import remote_faults

    from bench.executors import executor_config
    from bench.executors.ray import connect

    ray.cloudpickle.register_pickle_by_value(remote_faults)
    connect(executor_config(kind="ray", address=RAY_ADDRESS))
    yield ray
    ray.shutdown()


@pytest.mark.cluster
def test_a_ray_sweep_runs_across_both_nodes(tmp_path, capsys, ray_cluster):
    import socket

    grid = _grid(tmp_path)
    code, err = _run(["sweep", grid, "--static-only", "--executor", "ray", "--address", RAY_ADDRESS,
                      "--gpus-per-task", "1", "--out", tmp_path / "run", "-q"], capsys)
    assert code == 0, err
    rows = _rows(tmp_path / "run")  # every row exactly once, written by this process alone
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    # two tasks in flight, one (logical) GPU on each node: each node ran one at least, and its rows say which
    assert {r["node"] for r in rows.values()} == {socket.gethostname(), RAY_NODE2}
    assert {r["visible_gpus"] for r in rows.values()} == {"0"}  # each task its node's GPU, never none
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["executor"]["kind"] == "ray" and env["executor"]["address"] == RAY_ADDRESS


# --- study workers on Ray, one killed ---------------------------------------------------------------------------


@pytest.mark.cluster
def test_study_workers_on_ray_end_with_n_trials_after_one_is_killed(tmp_path, sample_dataset, ray_cluster,
                                                                   postgres_url):
    """3 workers, 3 trials (the first NectarGAN's baseline); one worker process is killed mid-trial and restarted
    by Ray: its trial is failed as lost, the run still ends with exactly 3 trials that ran to their end."""
    from test_studies import _config

    from bench.executors import executor_config
    from studies.runner import ENDED_ATTR, LOST, RAN_ON_ATTR, StudyRun, run_study

    name = f"cluster-ray-{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, sample_dataset, name=name, baseline=True,
                     budget="seconds = 1\nsteps = 100000\neval_every = 100000")
    run = StudyRun(config_path=config, storage=postgres_url, study_name=name, n_trials=3, workers=3,
                   out_root=str(tmp_path / "out"))
    executor = executor_config(kind="ray", address=RAY_ADDRESS, gpus_per_task=0, cpus_per_task=1, max_retries=2)
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
        killed = trials[victim]
        assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs.get("reason") == LOST
        worker = killed.user_attrs["worker"]
        assert any(t.user_attrs.get("worker") == worker and t.user_attrs[RAN_ON_ATTR]["pid"]
                   != killed.user_attrs[RAN_ON_ATTR]["pid"] for t in ended)  # the worker ran again, elsewhere
    finally:
        driver.join(timeout=5)


def _kill_a_running_trial(name: str, driver: threading.Thread, url: str) -> int:
    """SIGKILL the worker process of the first trial seen RUNNING (mid-training); its number."""
    trial = _first_running_trial(name, driver, url, timeout=120)
    os.kill(int(trial.user_attrs["ran_on"]["pid"]), signal.SIGKILL)
    return trial.number


# --- a lost Ray node (last: the second node stays lost until the next `scripts/test-cluster.sh up`) ----------


@pytest.mark.cluster
def test_a_lost_ray_node_s_task_is_retried_on_the_head_and_each_row_written_once(tmp_path, ray_cluster):
    """The second node's raylet is killed (SIGKILL, as a lost machine) while it holds a task; Ray runs the task
    again on the head; the sweep ends with every row once, the lost variant's row from the head."""
    import socket

    from remote_faults import hold_on_node_factory

    from bench.executors import executor_config
    from bench.executors.ray import RayPlan
    from bench.sweep import run_plan

    grid = parse_grid(GRID)
    marker = tmp_path / "held"
    config = executor_config(kind="ray", address=RAY_ADDRESS, max_retries=3)
    plan = RayPlan(None, config, factory=hold_on_node_factory(str(marker), RAY_NODE2))
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(result=run_plan(grid, tmp_path / "run", plan)),
                              daemon=True)
    driver.start()
    try:
        held = _poll(lambda: marker.is_file() and marker.read_text(), "a task held on the second node", timeout=120)
        killed = _script("kill-ray-node", timeout=30)
        assert killed.returncode == 0, killed.stderr
        driver.join(timeout=180)
        assert not driver.is_alive(), "the sweep did not finish after the node was lost"
        assert outcome["result"].counts == {"ok": 4}
        rows = _rows(tmp_path / "run")  # every row exactly once
        assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
        lost = [r for r in rows.values() if r["variant"] == held]
        assert len(lost) == 1 and lost[0]["node"] == socket.gethostname()  # retried on the head
    finally:
        driver.join(timeout=5)


# --- without an engine ------------------------------------------------------------------------------------------


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


def test_submitits_repeated_sacct_warnings_become_one_line_of_ours(tmp_path, caplog, monkeypatch):
    pytest.importorskip("submitit")
    import logging

    from bench.executors import executor_config
    from bench.executors import slurm as slurm_engine

    slurm_engine.make_executor(executor_config(kind="slurm", cluster="local"), tmp_path, "t", 0)
    logger = logging.getLogger("submitit")
    slurm_engine.SACCT_WARNINGS.seen = 0
    monkeypatch.setattr(slurm_engine.SACCT_WARNINGS, "probe", lambda: None)  # no sacct asked for its reason
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for call in range(1, 6):  # as submitit words it on each poll while accounting is off
            logger.warning(f"Call #{call} - Bypassing sacct error Command '['sacct', '-o']' returned non-zero exit "
                           "status 1., status may be inaccurate.")
        logger.warning("another submitit warning")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[1] == "another submitit warning"
    assert messages[0].startswith("Slurm's sacct does not answer (non-zero exit status 1)")
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
