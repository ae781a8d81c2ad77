"""Study reports: trials.csv, report.md (best trials or the Pareto front, importances, pruned and failed
trials with reasons) and PNG plots from Optuna's matplotlib visualisation."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd

from nectargan.errors import NectarGANError
from studies.storage import open_storage

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def load(storage_url: str, name: str) -> optuna.Study:
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise NectarGANError(
            f"study {name!r} is not in {storage_url}; studies there: {', '.join(names) or 'none'}"
        ) from None


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    frame = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs", "duration"))
    names = _objective_names(study)
    values = {"value": names[0]} if "value" in frame else {f"values_{i}": n for i, n in enumerate(names)}
    frame = frame.rename(columns=lambda c: c.replace("user_attrs_", "")).rename(columns=values)
    if "duration" in frame:
        frame["duration_s"] = frame.pop("duration").dt.total_seconds()
    return frame


def _objective_names(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get("objectives")
    return list(names) if names else [f"objective_{i}" for i in range(len(study.directions))]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "_none_"
    frame = pd.DataFrame(rows)
    return frame.map(_fmt).to_markdown(index=False, disable_numparse=True)


def write_study_report(storage_url: str, name: str, out: Path) -> list[Path]:
    """Write trials.csv, report.md and plots for study ``name`` into ``out``; return the paths."""
    study = load(storage_url, name)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    frame = trials_frame(study)
    frame.to_csv(out / "trials.csv", index=False)
    written.append(out / "trials.csv")
    objectives = _objective_names(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    lines = [f"# Study `{name}`", "", f"Storage `{storage_url}`; {len(study.trials)} trials: "
             + ", ".join(f"{n} {s.name.lower()}" for s in optuna.trial.TrialState
                         if (n := sum(1 for t in study.trials if t.state == s))) + ".",
             "Objectives: " + ", ".join(f"{o} ({d.name.lower()})" for o, d in zip(objectives, study.directions,
                                                                                   strict=True)) + ".", ""]

    def row(trial: optuna.trial.FrozenTrial) -> dict:
        values = dict(zip(objectives, trial.values or [], strict=False))
        attrs = {k: trial.user_attrs.get(k) for k in ("variant", "params", "gflops", "train_img_per_s")}
        return {"trial": trial.number, **values, **attrs, **trial.params}

    if complete:
        if len(study.directions) == 1:
            reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
            best = sorted(complete, key=lambda t: t.value, reverse=reverse)[:10]
            lines += ["## Best trials", "", _table([row(t) for t in best]), ""]
        else:
            lines += ["## Pareto front", "", _table([row(t) for t in study.best_trials]), ""]
    if len(complete) >= 2 and study.trials[0].params:
        try:
            with warnings.catch_warnings():  # the target is already sign-corrected (see _first_target)
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator", category=UserWarning)
                importances = optuna.importance.get_param_importances(study, target=_first_target(study))
            lines += ["## Parameter importances (Optuna's default evaluator, first objective)", "",
                      _table([{"parameter": k, "importance": v} for k, v in importances.items()]), ""]
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            lines += ["## Parameter importances", "", f"_not available: {exc}_", ""]
    for state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL):
        trials = [t for t in study.trials if t.state == state]
        if trials:
            lines += [f"## {state.name.title()} trials", "", _table([
                {"trial": t.number, "variant": t.user_attrs.get("variant", ""),
                 "reason": str(t.user_attrs.get("reason", t.system_attrs.get("fail_reason", "")))
                 .replace("|", "\\|")} for t in trials]), ""]
    plots = _plots(study, out)
    written += plots
    if plots:
        lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.insert(1, out / "report.md")
    return written


def _first_target(study: optuna.Study):
    """None for one objective; else the first objective, negated when maximised (the evaluator minimises)."""
    if len(study.directions) == 1:
        return None
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return lambda t: sign * t.values[0]


def _plots(study: optuna.Study, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return []
    names = _objective_names(study)
    jobs = []
    if len(study.directions) == 1:
        jobs.append(("history", lambda: ovm.plot_optimization_history(study, target_name=names[0])))
    else:
        jobs.append(("history", lambda: ovm.plot_optimization_history(
            study, target=lambda t: t.values[0], target_name=names[0])))
        jobs.append(("pareto_front", lambda: ovm.plot_pareto_front(study, target_names=names)))
    if len(complete) >= 2 and study.trials[0].params:
        jobs.append(("importances", lambda: ovm.plot_param_importances(
            study, target=_first_target(study), target_name=names[0])))
    written = []
    for stem, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator", category=UserWarning)
                axes = make()
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(7, 4.5)
        figure.tight_layout()
        path = out / f"{stem}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
