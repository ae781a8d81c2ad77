"""Study reports: the answer against the baseline, the front, importances, pruned and failed trials.

``write_study_report`` writes into its folder:

* ``trials.csv``: one row per trial; ``db_over_floor`` and ``learned`` (complete trials, when the floor is
  known), objective values as ``value_<objective>``, parameters as
  ``param_<name>``, user attributes under their own names (lists and tables as JSON), so every
  column name is unique;
* ``report.md``: the answer (a generated paragraph: the baseline, how many trials did not learn, the
  best quality, the fastest trial within 0.5 dB of the baseline; no winner when neither the baseline
  nor the best trial learned), the budget and whether it was fair, the floor (the dataset's trivial
  predictors), the Pareto front (or the best trials) with the baseline's row and each trial's dB and
  speed-up against it, dB over the floor and whether it learned; when ``study-validate`` has run, whether
  a short trial ranks like a long one (its table, Kendall's tau and Spearman's rho); parameter importances
  (searched trials only, parameters that varied, with a caveat under 10 trials), pruned and failed
  trials with their reasons, and the plots;
* ``pareto_front.png`` (quality against measured inference speed, the front joined, the baseline
  marked), Optuna's ``history.png`` and ``importances.png``;
* ``validation.csv`` and ``validation.png`` (short against long val PSNR) when ``study-validate`` has run;
* ``grid.png``: input | baseline | best quality | fastest within 0.5 dB | target for a few val
  images, also uploaded as an artifact of the study (optuna-dashboard shows it).

It only reads the storage, except for that artifact (uploaded again only when the grid changed).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from nectargan.data.floor import COPY, LEARN_MARGIN_DB, MEAN, Floor
from nectargan.errors import NectarGANError
from studies.answer import TOLERANCE_DB, Answer, analyse, f2, learned, number, row_extras
from studies.baseline import is_baseline, is_reference, repeat_of
from studies.config import TRAIN_PARAMS
from studies.plots import (
    first_target,
    objective_names,
    save_axes,
    searched_study,
    validation_plot,
    varying_params,
    write_plots,
)
from studies.ranking import MIN_JUDGED, MIN_RANKED, TAU_GOAL
from studies.storage import StorageError, artifact_store, open_storage

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
MIN_TRIALS_FOR_IMPORTANCE = 10
ROW_ATTRS = ("params", "gflops", "infer_img_per_s", "train_img_per_s", "images")


def load(storage_url: str, name: str) -> optuna.Study:
    """The study ``name``; a missing storage file or study is a one-line error (nothing is created)."""
    storage = open_storage(storage_url, must_exist=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise NectarGANError(
            f"study {name!r} is not in {storage_url}; studies there: {', '.join(names) or 'none'}"
        ) from None
    except Exception as exc:  # sqlalchemy's errors for a file that is not an Optuna database
        raise StorageError(f"storage {storage_url!r} holds no Optuna studies: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]}") from None


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict | tuple):
        return json.dumps(value)
    return value


def trials_frame(study: optuna.Study, floor: Floor | None = None) -> pd.DataFrame:
    """One row per trial; every column name unique (see the module docstring). With the study's ``floor``,
    ``db_over_floor`` and ``learned`` follow ``baseline`` (empty for trials that did not complete)."""
    names = objective_names(study)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name,
                               "baseline": is_baseline(trial)}
        if floor is not None:
            complete = trial.state == TrialState.COMPLETE
            row["db_over_floor"] = floor.margin(number(trial, "val_psnr")) if complete else None
            row["learned"] = learned(trial, floor) if complete else None
        values = trial.values or [None] * len(names)
        row |= {f"value_{n}": v for n, v in zip(names, values, strict=False)}
        row |= {f"param_{k}": v for k, v in trial.params.items()}
        for key, value in trial.user_attrs.items():
            if key == "baseline":
                continue
            row[key if key not in row else f"attr_{key}"] = _cell(value)
        row |= {f"constraint_{k}": v for k, v in trial.constraints.items()}
        row["duration_s"] = trial.duration.total_seconds() if trial.duration else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = ["number", "state", "baseline", "db_over_floor", "learned", *[f"value_{n}" for n in names]]
    groups = [first, sorted(c for c in frame if c.startswith("param_"))]
    rest = sorted(c for c in frame if c not in groups[0] and c not in groups[1])
    return frame[[c for c in [*first, *groups[1], *rest] if c in frame]]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# How the report's tables show these columns (trials.csv keeps every digit): dB to 2 decimals, parameters in
# millions, speeds to one decimal.
COLUMN_FORMATS: dict[str, Callable[[float], str]] = {
    "val_psnr": "{:.2f}".format, "dB vs baseline": "{:+.2f}".format,
    "dB over floor": "{:+.2f}".format, "val_ssim": "{:.3f}".format,
    "SSIM vs baseline": "{:+.3f}".format, "infer_img_per_s": "{:,.1f}".format, "train_img_per_s": "{:,.1f}".format,
    "speed-up": "{:.2f}x".format, "gflops": "{:.3g}".format, "params": lambda v: f"{v / 1e6:.2f} M",
    "short_psnr": "{:.2f}".format, "long_psnr": "{:.2f}".format, "gain_db": "{:+.2f}".format,
    "short_rank": "{:g}".format, "long_rank": "{:g}".format,
}


def _shown(column: str, value: Any) -> str:
    form = COLUMN_FORMATS.get(column)
    if form is None or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return _fmt(value)
    return form(value)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "_none_"
    frame = pd.DataFrame(rows).astype(object)
    shown = pd.DataFrame({c: [_shown(c, v) for v in frame[c]] for c in frame.columns})
    return shown.to_markdown(index=False, disable_numparse=True)


def _training_settings(trial: FrozenTrial) -> dict[str, Any]:
    """The training settings (the variant's name holds the architecture)."""
    settings = trial.user_attrs.get("settings")
    settings = dict(settings) if isinstance(settings, dict) else dict(trial.params)
    return {k: settings.get(k) for k in TRAIN_PARAMS}


def _yes_no(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"


def _row(trial: FrozenTrial, objectives: list[str], baseline: FrozenTrial | None,
         floor: Floor | None = None) -> dict[str, Any]:
    repeat = repeat_of(trial)
    label = (f"{trial.number} (baseline)" if is_baseline(trial) else
             f"{trial.number} (baseline repeat {repeat})" if repeat is not None else str(trial.number))
    extras = row_extras(trial, baseline, floor)
    row = {"trial": label, "variant": trial.user_attrs.get("variant", ""),
           "val_psnr": number(trial, "val_psnr"), "dB vs baseline": extras["d_psnr_db"]}
    if floor is not None:
        row |= {"dB over floor": extras["db_over_floor"], "learned": _yes_no(extras["learned"])}
    row |= {"val_ssim": number(trial, "val_ssim"), "SSIM vs baseline": extras["d_ssim"],
            "infer_img_per_s": number(trial, "infer_img_per_s"), "speed-up": extras["speedup_x"]}
    values = dict(zip(objectives, trial.values or [], strict=False))
    row |= {k: v for k, v in values.items() if k not in row}  # objectives not shown above (val_l1, ...)
    row |= {k: trial.user_attrs.get(k) for k in ROW_ATTRS if k not in row}
    return row | _training_settings(trial)


def _check_out(out: Path) -> None:
    if (out / "results.jsonl").exists():
        raise NectarGANError(f"{out} holds a sweep run (results.jsonl); its report.md would be overwritten: "
                             "choose another --out folder for the study report")
    if out.exists() and not out.is_dir():
        raise NectarGANError(f"--out {out} is a file; give a folder")


def write_study_report(storage_url: str, name: str, out: Path) -> list[Path]:
    """Write the report of study ``name`` into ``out`` (see the module docstring); return the paths."""
    _check_out(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load(storage_url, name)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    answer = analyse(study)
    trials_frame(study, answer.floor).to_csv(out / "trials.csv", index=False)
    written.append(out / "trials.csv")
    objectives = objective_names(study)
    trials = study.get_trials(deepcopy=False)
    description = study.user_attrs.get("description")
    said = [f"> {' '.join(description.split())}", ""] if isinstance(description, str) and description else []
    lines = [f"# Study `{name}`", "", *said,
             f"Storage `{storage_url}`; {len(trials)} trials: "
             + ", ".join(f"{n} {s.name.lower()}" for s in TrialState
                         if (n := sum(1 for t in trials if t.state == s))) + ".",
             "Objectives: " + ", ".join(f"{o} ({d.name.lower()})" for o, d in zip(objectives, study.directions,
                                                                                   strict=True)) + ".", ""]
    lines += ["## Answer", "", " ".join(answer.sentences), ""]
    if answer.budget:
        lines += [" ".join(answer.budget), ""]
    lines += [item for w in answer.warnings for item in (f"**{w}**", "")]
    lines += _floor_section(answer)
    lines += _seeds_section(answer)
    lines += validation_section(answer)
    if answer.validation is not None:
        validation_frame(answer).to_csv(out / "validation.csv", index=False)
        written.append(out / "validation.csv")
    lines += _device_note(answer)
    rows_of = [answer.baseline] if answer.baseline is not None else []
    if answer.complete:
        if len(study.directions) == 1:
            reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
            best = sorted(answer.complete, key=lambda t: t.value, reverse=reverse)[:10]
            shown = rows_of + [t for t in best if not is_baseline(t)]
            rows = [_row(t, objectives, answer.baseline, answer.floor) for t in shown]
            lines += ["## Best trials", "", _table(rows), ""]
        shown = rows_of + [t for t in answer.front if not is_baseline(t)]
        front_name = "Pareto front" if len(study.directions) > 1 else "Quality-speed front (PSNR against infer img/s)"
        lines += [f"## {front_name}", "", "The baseline's row first (marked), then the front; dB and speed-up are "
                  "against the baseline. The speed-up is the one the answer and the front plot use: inference timed "
                  "interleaved with the baseline's architecture in the same trial (`infer_img_per_s`, absolute, "
                  "drifts with the machine's load between trials).", "",
                  _table([_row(t, objectives, answer.baseline, answer.floor) for t in shown]), ""]
    lines += _importances(study, answer)
    for state in (TrialState.PRUNED, TrialState.FAIL):
        failed = [t for t in trials if t.state == state]
        if failed:
            lines += [f"## {'Pruned' if state == TrialState.PRUNED else 'Failed'} trials", "", _table([
                {"trial": t.number, "variant": t.user_attrs.get("variant", ""),
                 "reason": str(t.user_attrs.get("reason", t.system_attrs.get("fail_reason", "")))
                 .replace("|", "\\|")} for t in failed]), ""]
    grid, notes = _grid(study, storage_url, answer, out)
    if grid is not None or notes:
        lines += ["## Images", "", *([f"![grid]({grid.name})", ""] if grid else []),
                  *[f"- {note}" for note in notes], ""]
    plots = write_plots(study, answer, out)
    if plots:
        lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(out / "report.md")
    return written + plots + ([grid] if grid else [])


def _floor_section(answer: Answer) -> list[str]:
    """The trivial predictors every trial must beat, and how many did (studies.floor)."""
    floor = answer.floor
    lines = ["## Floor", ""]
    if floor is None:
        return [*lines, f"The floor was {answer.floor_source}.", ""]
    n, total = len(answer.not_learned), len(answer.complete)
    lines += [f"What a generator must beat to have learned anything: two trivial predictors scored on the val split "
              f"({floor.val_images} images at {floor.size} px) with the trainer's own PSNR and SSIM; the mean target "
              f"is the per-pixel mean of the {floor.train_images} training targets. A trial learned when its val PSNR "
              f"is at least {LEARN_MARGIN_DB:g} dB above the better of the two (the {floor.best}, "
              f"{floor.best_psnr:.2f} dB): {total - n} of {total} complete trials did, {n} did not (the `learned` "
              f"and `dB over floor` columns below). The floor was {answer.floor_source}.", ""]
    rows = [{"predictor": COPY, "val_psnr": floor.copy_psnr, "val_ssim": floor.copy_ssim,
             "note": "" if floor.copy_psnr is not None else f"left out: {floor.copy_note}"},
            {"predictor": MEAN, "val_psnr": floor.mean_psnr, "val_ssim": floor.mean_ssim, "note": ""}]
    for row in rows:
        row["note"] = "; ".join(x for x in (row["note"], "the floor" if row["predictor"] == floor.best else "") if x)
    return [*lines, _table(rows), ""]


def validation_frame(answer: Answer) -> pd.DataFrame:
    """One row per long run (studies.ranking.LongRun's fields) with its short and long rank."""
    validation = answer.validation
    assert validation is not None
    short_ranks, long_ranks = validation.short_ranks(), validation.long_ranks()
    return pd.DataFrame([run.to_dict() | {"short_rank": short_ranks.get(run.trial),
                                          "long_rank": long_ranks.get(run.trial)} for run in validation.runs])


def write_validation_files(storage_url: str, name: str, out: Path) -> list[Path]:
    """study-validate's own output: validation.md (the report's section), validation.csv and validation.png."""
    import matplotlib

    matplotlib.use("Agg")
    study = load(storage_url, name)
    answer = analyse(study)
    if answer.validation is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    validation_frame(answer).to_csv(out / "validation.csv", index=False)
    written = [out / "validation.csv"]
    if len(answer.validation.ranked) >= 2:
        written.append(save_axes(validation_plot(answer), out / "validation.png"))
    section = validation_section(answer)
    plot = ["![validation](validation.png)", ""] if len(written) > 1 else []
    (out / "validation.md").write_text("\n".join([f"# Study `{name}`", "", *section, *plot]), encoding="utf-8")
    return [*written, out / "validation.md"]


def validation_section(answer: Answer) -> list[str]:
    """study-validate's long runs: short against long PSNR, their ranks, and the rank agreement."""
    validation = answer.validation
    if validation is None:
        return []
    front = {t.number for t in answer.front}
    short_ranks, long_ranks = validation.short_ranks(), validation.long_ranks()
    rows = []
    for run in validation.runs:
        role = "baseline" if run.baseline else ("front" if run.trial in front else "random")
        gain = None if run.long_psnr is None else run.long_psnr - run.short_psnr
        rows.append({"trial": run.trial, "variant": run.variant, "role": role, "seed": run.seed,
                     "short_psnr": run.short_psnr, "long_psnr": run.long_psnr, "gain_db": gain,
                     "short_rank": short_ranks.get(run.trial), "long_rank": long_ranks.get(run.trial),
                     "short_images": run.short_images, "long_images": run.long_images,
                     **({"long_learned": _yes_no(answer.floor.learned(run.long_psnr))} if answer.floor else {}),
                     **({"note": run.reason} if run.reason else {})})
    budget = validation.runs[0]
    length = " and ".join(x for x in (f"{budget.budget_seconds:g} s" if budget.budget_seconds else "",
                                      f"{budget.budget_steps} steps" if budget.budget_steps else "") if x)
    if validation.tau is None:
        verdict = f"Too few long runs with distinct PSNR for a rank correlation ({MIN_RANKED} are needed)"
    else:
        if validation.ranks_hold is None:
            judged = f"too few to judge the budget by ({MIN_JUDGED} are needed)"
        elif validation.ranks_hold:
            judged = "the short budget ranks these generators like the long one"
        else:
            judged = "the short budget does not rank these generators like the long one"
        verdict = (f"Kendall's tau {validation.tau:.2f} (p = {_p(validation.tau_p)}), Spearman's rho "
                   f"{f2(validation.rho)} (p = {_p(validation.rho_p)}): {judged} (the goal is tau >= {TAU_GOAL:g})")
    failed = [r.trial for r in validation.runs if r.long_psnr is None]
    lines = ["## Does a short trial rank like a long one?", "",
             f"`nectargan-bench study-validate` retrained {len(validation.runs)} trials (the baseline when there is "
             f"one, the front, then random others) for {validation.factor:g}x the study's budget ({length}), each "
             f"with its own generator, settings and seed, one after another on the study's device. {verdict}."
             + (f" Left out of the correlation (the long run failed): trial{'s' if len(failed) > 1 else ''} "
                f"{', '.join(map(str, failed))}." if failed else ""), "", _table(rows), ""]
    loads = [r.load_avg_1m for r in validation.runs if r.load_avg_1m is not None]
    if loads:
        lines += [f"1-minute load average at the end of each long run: {min(loads):.1f} to {max(loads):.1f}.", ""]
    return lines


def _p(value: float | None) -> str:
    return "?" if value is None else f"{value:.2g}"



def _seeds_section(answer: Answer) -> list[str]:
    """The baseline's runs with their seeds, and the spread of their PSNR (PSNR's noise between seeds)."""
    runs = answer.baseline_runs
    if len(runs) < 2 or answer.spread_db is None:
        return []
    rows = [{"trial": t.number, "seed": t.user_attrs.get("seed"), "val_psnr": number(t, "val_psnr"),
             "val_ssim": number(t, "val_ssim"), "images": t.user_attrs.get("images"),
             **({"learned": _yes_no(learned(t, answer.floor))} if answer.floor is not None else {})} for t in runs]
    return ["## Baseline over seeds", "",
            f"The baseline trained {len(runs)} times, the same generator and settings with another seed each: its "
            f"val PSNR spreads over {answer.spread_db:.2f} dB. That is the noise of the quality figure: a trial is "
            "called better than the baseline only when its PSNR is higher by more than the spread.", "",
            _table(rows), ""]


def _device_note(answer: Answer) -> list[str]:
    timed = [t for t in answer.complete if number(t, "infer_img_per_s") is not None]
    if not timed:
        return []
    modes = sorted({str(t.user_attrs.get("infer_mode")) for t in timed})
    noisy = [t.number for t in timed if t.user_attrs.get("infer_noisy")]
    text = (f"Inference speed: the trained generator's no-grad forward at the trial's batch size ({', '.join(modes)}), "
            "timed after training with the harness's blocked timer (median of the blocks); the speed-up over the "
            "baseline comes from blocks interleaved with the baseline's architecture in the same trial, so it "
            "holds better than the absolute img/s when the machine's load changes between trials.")
    if noisy:
        text += f" Noisy timings (IQR > 10 % of the median): trials {', '.join(map(str, noisy))}."
    devices = sorted({str(t.user_attrs["device"]) for t in timed if t.user_attrs.get("device")})
    loads = [x for t in timed if (x := number(t, "load_avg_1m")) is not None]
    machine = []
    if devices:
        machine.append(f"Device: {'; '.join(devices)}.")
    if loads:
        machine.append(f"1-minute load average when timed: {min(loads):.1f} to {max(loads):.1f}.")
    return [text, "", *([" ".join(machine), ""] if machine else [])]


def _importances(study: optuna.Study, answer: Answer) -> list[str]:
    """Importances over the searched trials (not the baseline) and the parameters that varied."""
    searched = [t for t in answer.complete if not is_reference(t)]
    varying = varying_params(searched)
    if len(searched) < 2:
        return []
    if not varying:
        return ["## Parameter importances", "", "_No searched parameter took more than one value._", ""]
    caveat = ""
    if len(searched) < MIN_TRIALS_FOR_IMPORTANCE:
        caveat = (f"_Only {len(searched)} searched trials completed: importances from fewer than "
                  f"{MIN_TRIALS_FOR_IMPORTANCE} trials are noise more than signal; read them as a hint._\n\n")
    constant = sorted({k for t in searched for k in t.params} - set(varying))
    left_out = f" Left out (never varied): {', '.join(constant)}." if constant else ""
    try:
        importances = _param_importances(searched_study(study, searched), varying)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return ["## Parameter importances", "", f"_not available: {exc}_", ""]
    return ["## Parameter importances (Optuna's default evaluator, first objective)", "",
            caveat + f"Over {len(searched)} searched trials; the baseline and its repeats are left out.{left_out}", "",
            _table([{"parameter": k, "importance": v} for k, v in importances.items()]), ""]


def _param_importances(study: optuna.Study, params: list[str]) -> dict[str, float]:
    with warnings.catch_warnings():  # the target is already sign-corrected (see studies.plots.first_target)
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator", category=UserWarning)
        return optuna.importance.get_param_importances(study, target=first_target(study), params=params)


def _grid(study: optuna.Study, storage_url: str, answer: Answer, out: Path) -> tuple[Path | None, list[str]]:
    """The image grid, uploaded as a study artifact when it changed."""
    from studies.image_grid import write_grid

    columns: list[tuple[str, FrozenTrial]] = []
    if answer.baseline is not None:
        columns.append((f"baseline t{answer.baseline.number}\n{_label(answer.baseline)}", answer.baseline))
    best, fast = answer.best_quality, answer.fastest_close
    searched = [t for t in answer.complete if not is_reference(t) and number(t, "val_psnr") is not None]
    if answer.too_short and searched:  # no winner, but show what the short trials' best looks like
        top = max(searched, key=lambda t: number(t, "val_psnr") or -math.inf)
        columns.append((f"top PSNR t{top.number}, no winner\n{_label(top)}", top))
    if best is not None:
        both = fast is not None and fast.number == best.number
        columns.append((f"best PSNR{' & fastest' if both else ''} t{best.number}\n{_label(best)}", best))
    if fast is not None and (best is None or fast.number != best.number):
        columns.append((f"fastest <={TOLERANCE_DB} dB t{fast.number}\n{_label(fast)}", fast))
    if not columns:
        return None, []
    path, notes = write_grid(columns, out / "grid.png")
    if path is not None:
        _upload(study, storage_url, path)
    return path, notes


def _label(trial: FrozenTrial) -> str:
    psnr, speed = number(trial, "val_psnr"), number(trial, "infer_img_per_s")
    if psnr is None:
        return ""
    return f"{psnr:.2f} dB" + (f" {speed:.0f} img/s" if speed and speed >= 100 else f" {speed:.3g} img/s"
                               if speed else "")


def _upload(study: optuna.Study, storage_url: str, path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if study.user_attrs.get("grid_sha256") == digest:
        return
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=artifact_store(storage_url), file_path=str(path), study_or_trial=study,
        mimetype="image/png",
    )
    study.set_user_attr("grid_artifact_id", artifact_id)
    study.set_user_attr("grid_sha256", digest)


