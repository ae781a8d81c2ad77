"""Commands of the search: ``study``, ``study-validate``, ``study-report`` and ``dashboard``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import EXECUTOR_FLAGS, Quiet, executor_settings, with_flags
from cli.progress import ProgressBar, sigterm_as_interrupt, stderr
from nectargan.errors import NectarGANError
from studies.ranking import DEFAULT_TRIALS, FACTOR
from studies.storage import DEFAULT_STORAGE, HEARTBEAT_S

# A study's detached workers write only to the storage: follow them there, not with `collect` (sweeps only).
StudyDetach = Annotated[bool, typer.Option(
    "--detach", help="Slurm: return once the worker jobs are submitted; follow the study with `nectargan-bench "
    "dashboard STORAGE` or `study-report`, stop its jobs with scancel.")]
# A study's executor flags: a sweep's, without shards (a study's parts are its --workers).
STUDY_EXECUTOR_FLAGS = {k: v for k, v in EXECUTOR_FLAGS.items() if k != "shards"} | {"detach": (StudyDetach, False)}


@with_flags(where=STUDY_EXECUTOR_FLAGS)
def study(
    config: Annotated[str, typer.Argument(help="Study TOML file, or a built-in config name (default, smoke).")],
    storage: Annotated[str, typer.Option(help="sqlite:///FILE.db, journal:FILE.log or postgresql://...")] = (
        DEFAULT_STORAGE
    ),
    study_name: Annotated[str | None, typer.Option(help="Study name (default: the config's study.name).")] = None,
    n_trials: Annotated[int | None, typer.Option(help="Trials to add (default: the config's study.n_trials).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after S seconds.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes sharing the storage.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Trial folders (default: results/studies/<name>).")] = None,
    heartbeat: Annotated[int, typer.Option(min=1, help="Heartbeat interval in seconds (RDB storages).")] = (
        HEARTBEAT_S
    ),
    quiet: Quiet = False,
    where: dict | None = None,
) -> None:
    """Run (or resume) an Optuna study of short training trials; several workers share the storage.

    With --executor slurm or ray the --workers run as cluster jobs or Ray tasks against one storage
    that every node reaches (PostgreSQL, or a journal file on a shared path).

    Example: nectargan-bench study studies/smoke.toml --storage sqlite:///results/studies.db --workers 2
    """
    from studies.config import load_study_config
    from studies.runner import StudyInterrupted, StudyRun, run_study

    loaded = load_study_config(config)
    executor = executor_settings(loaded.executor, loaded.source, **(where or {}))
    run = StudyRun(config_path=config, storage=storage, study_name=study_name, n_trials=n_trials,
                   timeout_s=timeout, workers=workers, out_root=str(out) if out else None, heartbeat_s=heartbeat)
    bar = ProgressBar("trials", quiet=quiet)

    def on_progress(state: dict) -> None:
        bar.start(state["total"])
        bar.update(completed=state["finished"], status=f"best {state['best']}")

    try:
        summary = run_study(run, on_progress=on_progress, executor=executor)
    except StudyInterrupted as exc:
        bar.stop()
        stderr.print(exc.message, highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(130) from None
    finally:
        bar.stop()
    if summary.get("detached"):
        stderr.print(f"Study {summary['study']!r}: its worker jobs are submitted to Slurm (logs in the trial folder's "
                     f"submitit/); watch it: nectargan-bench dashboard {summary['storage']}", highlight=False,
                     soft_wrap=True)
        return
    states = ", ".join(f"{n} {s.lower()}" for s, n in summary["states"].items()) or "none"
    stderr.print(f"Study {summary['study']!r}: added {summary['added']} trials ({states}); "
                 f"{summary['total_trials']} in all; best {summary['best']}. Storage {summary['storage']}. "
                 f"Watch it: nectargan-bench dashboard {summary['storage']}", highlight=False, soft_wrap=True)


def study_report(
    storage: Annotated[str, typer.Argument(help="The study's storage URL.")],
    study_name: Annotated[str, typer.Option("--study", help="Study name.")],
    out: Annotated[Path, typer.Option(help="Folder for trials.csv, report.md, plots and the image grid.")],
) -> None:
    """Write trials.csv, report.md (front against the baseline, importances, pruned/failed), plots and a grid.

    Example: nectargan-bench study-report sqlite:///results/studies.db --study smoke --out results/study-smoke
    """
    from studies.report import write_study_report

    written = write_study_report(storage, study_name, out)
    stderr.print(f"Wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)
    grid = next((p for p in written if p.name == "grid.png"), None)
    if grid is not None:
        stderr.print(f"Image grid: {grid}", highlight=False, soft_wrap=True)


def study_validate(
    storage: Annotated[str, typer.Argument(help="The study's storage URL.")],
    study_name: Annotated[str, typer.Option("--study", help="Study name.")],
    factor: Annotated[float, typer.Option(help="Times the study's budget each chosen trial trains.")] = FACTOR,
    trials: Annotated[int, typer.Option(help="Trials to retrain: the baseline, the front, then random ones.")] = (
        DEFAULT_TRIALS
    ),
    seed: Annotated[int, typer.Option(help="Seed of the random choice of trials.")] = 0,
    config: Annotated[str | None, typer.Option(help="The study's TOML (default: the one it recorded).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for the long runs and validation.md/.csv/.png (default: results/studies/<name>/validate-<k>x).")
    ] = None,
    again: Annotated[bool, typer.Option("--again", help="Retrain trials already validated at this factor.")] = False,
    quiet: Quiet = False,
) -> None:
    """Does a short trial rank like a long one? Retrain some trials for k x the budget; Kendall's tau, Spearman's rho.

    Each long run is stored in the study as it ends (a second call resumes); study-report then writes the
    section "Does a short trial rank like a long one?" with its table and plot.

    Example: nectargan-bench study-validate sqlite:///results/studies.db --study default --factor 10 --trials 8
    """
    from studies.report import load
    from studies.validate import plan_validation, validate_study

    study_obj = load(storage, study_name)
    plan = plan_validation(study_obj, config, factor=factor, n_trials=trials, seed=seed, out_root=out, again=again)
    each = " and ".join(x for x in (f"{plan.seconds:g} s" if plan.seconds else "",
                                    f"{plan.steps} steps" if plan.steps else "") if x)
    numbers = ", ".join(str(t.number) for t in plan.chosen)
    stderr.print(f"Validating study {study_name!r}: trials {numbers}; {len(plan.to_train)} to train for {each} each "
                 f"({factor:g}x the study's budget), one after another"
                 + (f", about {len(plan.to_train) * plan.seconds / 60:.0f} min" if plan.seconds else "") + ".",
                 highlight=False, soft_wrap=True)
    bar = ProgressBar("long runs", quiet=quiet)
    bar.start(len(plan.to_train))

    def on_trial(done: int, trial) -> None:
        bar.update(completed=done, status="" if trial is None else f"trial {trial.number}")

    try:
        with sigterm_as_interrupt():
            validation = validate_study(plan, on_trial=on_trial)
    except KeyboardInterrupt:
        bar.stop()
        stderr.print("Interrupted: the long runs that ended are stored in the study; run the same command again "
                     "to train the rest.", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        bar.stop()
    from studies.report import write_validation_files

    written = write_validation_files(storage, study_name, plan.out_root)
    _print_validation(validation, written, storage, study_name)


def _print_validation(validation, written: list[Path], storage: str, study_name: str) -> None:
    from rich.table import Table

    from studies.ranking import MIN_JUDGED, TAU_GOAL

    short_ranks, long_ranks = validation.short_ranks(), validation.long_ranks()
    table = Table("trial", "short PSNR", "long PSNR", "short rank", "long rank")
    table.add_column("variant", overflow="fold")  # whole on a narrow terminal, over several lines
    for run in validation.runs:
        long = "failed" if run.long_psnr is None else f"{run.long_psnr:.2f}"
        ranks = [f"{r[run.trial]:g}" if run.trial in r else "-" for r in (short_ranks, long_ranks)]
        table.add_row(str(run.trial) + (" (baseline)" if run.baseline else ""), f"{run.short_psnr:.2f}", long, *ranks,
                      run.variant)
    stderr.print(table)
    if validation.tau is None:
        verdict = "no rank correlation: fewer than 3 long runs with distinct PSNR"
    else:
        rho = "?" if validation.rho is None else f"{validation.rho:.2f}"
        if validation.ranks_hold is None:
            judged = f"too few trials to judge the budget by (at least {MIN_JUDGED})"
        elif validation.ranks_hold:
            judged = "the short budget ranks like the long one"
        else:
            judged = f"the budget is too short to rank these generators (goal tau >= {TAU_GOAL:g})"
        verdict = (f"Kendall's tau {validation.tau:.2f}, Spearman's rho {rho} over {len(validation.ranked)} trials: "
                   f"{judged}")
    stderr.print(f"{verdict}. Wrote {', '.join(str(p) for p in written)}; the study's report gets the same section: "
                 f"nectargan-bench study-report {storage} --study {study_name} --out FOLDER", highlight=False,
                 soft_wrap=True)


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a port: use 1 to 65535")
    return value


def dashboard(
    storage: Annotated[str, typer.Argument(help="Storage URL.")] = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=_port, help="Port (1-65535).")] = 8080,
    artifacts: Annotated[Path | None, typer.Option(help="Artifact folder (default: beside the storage).")] = None,
) -> None:
    """Serve optuna-dashboard on a study storage, with the trials' sample images.

    Example: nectargan-bench dashboard sqlite:///results/studies.db --port 8080
    """
    try:
        import optuna_dashboard
    except ImportError:
        raise NectarGANError("optuna-dashboard is not installed: pip install optuna-dashboard") from None
    from studies.storage import artifact_store, open_storage

    opened = open_storage(storage, must_exist=True)
    store = artifact_store(storage, artifacts, create=False)
    stderr.print(f"optuna-dashboard on {storage}: http://{host}:{port}/ (Ctrl-C to stop)",
                 highlight=False, soft_wrap=True)
    optuna_dashboard.run_server(opened, host=host, port=port, artifact_store=store)


COMMANDS = {"study": study, "study-validate": study_validate, "study-report": study_report, "dashboard": dashboard}
