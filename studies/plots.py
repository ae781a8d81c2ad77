"""The study report's plots: Optuna's optimisation history and parameter importances, and the quality
against measured speed of every trial with the front and the baseline."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from nectargan.data.floor import LEARN_MARGIN_DB
from studies.answer import TOLERANCE_DB, Answer, number, speedup
from studies.baseline import is_reference, repeat_of


def objective_names(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get("objectives")
    return list(names) if names else [f"objective_{i}" for i in range(len(study.directions))]


def varying_params(trials: list[FrozenTrial]) -> list[str]:
    names: list[str] = []
    for trial in trials:
        names += [k for k in trial.params if k not in names]
    return [k for k in names if all(k in t.params for t in trials)
            and len({json.dumps(t.params[k]) for t in trials}) > 1]


def searched_study(study: optuna.Study, searched: list[FrozenTrial]) -> optuna.Study:
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(searched)
    return copy


def first_target(study: optuna.Study):
    """None for one objective; else the first objective, negated when maximised (the evaluator minimises)."""
    if len(study.directions) == 1:
        return None
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return lambda t: sign * t.values[0]


def write_plots(study: optuna.Study, answer: Answer, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    if not answer.complete:
        return []
    names = objective_names(study)
    jobs = [("pareto_front", lambda: front_plot(answer))]
    if answer.validation is not None and len(answer.validation.ranked) >= 2:
        jobs.append(("validation", lambda: validation_plot(answer)))
    if len(study.directions) == 1:
        jobs.append(("history", lambda: ovm.plot_optimization_history(study, target_name=names[0])))
    else:
        jobs.append(("history", lambda: ovm.plot_optimization_history(
            study, target=lambda t: t.values[0], target_name=names[0])))
    searched = [t for t in answer.complete if not is_reference(t)]
    varying = varying_params(searched)
    if len(searched) >= 2 and varying:
        jobs.append(("importances", lambda: ovm.plot_param_importances(
            searched_study(study, searched), params=varying, target=first_target(study), target_name=names[0])))
    written = []
    for stem, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator", category=UserWarning)
                axes = make()
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        if axes is None:
            continue
        written.append(save_axes(axes, out / f"{stem}.png"))
    return written


def save_axes(axes, path: Path) -> Path:
    """Write the figure of ``axes`` (one Axes or an array of them) at the report's size, and close it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(7, 4.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def front_plot(answer: Answer):
    """Val PSNR against measured speed: every complete trial, the front joined, the baseline a star. The speed
    is the answer's: the speed-up over the baseline (timed interleaved with it in each trial) when there is a
    baseline, else absolute img/s."""
    import matplotlib.pyplot as plt

    relative = answer.baseline is not None
    points = [(t, speedup(t, answer.baseline) if relative else number(t, "infer_img_per_s"), number(t, "val_psnr"))
              for t in answer.complete]
    points = [(t, s, q) for t, s, q in points if s is not None and q is not None]
    if not points:
        return None
    _figure, axes = plt.subplots()
    front = {t.number for t in answer.front}
    others = [(s, q) for t, s, q in points if t.number not in front and not is_reference(t)]
    if others:
        axes.scatter(*zip(*others, strict=True), color="0.65", s=18, label="trials")
    repeats = [(s, q) for t, s, q in points if repeat_of(t) is not None]
    if repeats:
        axes.scatter(*zip(*repeats, strict=True), marker="x", color="tab:red", s=40, label="baseline, other seeds")
    on_front = sorted(((s, q, t) for t, s, q in points if t.number in front), key=lambda p: p[0])
    if on_front:
        axes.plot([p[0] for p in on_front], [p[1] for p in on_front], "o-", color="tab:blue", label="front")
        for s, q, t in on_front:
            axes.annotate(str(t.number), (s, q), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if answer.baseline is not None:
        s, q = 1.0, number(answer.baseline, "val_psnr")
        if s is not None and q is not None:
            axes.scatter([s], [q], marker="*", s=220, color="tab:red", zorder=5,
                         label=f"baseline (NectarGAN default, trial {answer.baseline.number})")
            shown = axes.get_ylim()  # the points' range: the line is drawn where it falls in it, never stretches it
            axes.axhline(q - TOLERANCE_DB, color="tab:red", lw=0.6, ls=":", label=f"baseline - {TOLERANCE_DB} dB")
            axes.set_ylim(shown)
    if answer.floor is not None and math.isfinite(answer.floor.best_psnr):
        # drawn even when every point is far below it: that is the study's news (nothing learned)
        line = answer.floor.best_psnr + LEARN_MARGIN_DB
        low, high = axes.get_ylim()
        axes.axhline(line, color="0.3", lw=0.8, ls="--",
                     label=f"learned above this (the {answer.floor.best} floor + {LEARN_MARGIN_DB:g} dB)")
        low, high = min(low, line), max(high, line)
        axes.set_ylim(low - 0.06 * (high - low), high + 0.06 * (high - low))
    axes.set_xscale("log")
    axes.set_xlabel("inference speed-up over the baseline (timed interleaved with it; log)" if relative
                    else "inference img/s (measured after training; log)")
    axes.set_ylabel("val PSNR (dB)")
    axes.set_title("Quality against measured speed")
    axes.legend(fontsize=7, loc="best")
    return axes


def validation_plot(answer: Answer):
    """Short-trial against long-trial val PSNR of the retrained trials (study-validate), each labelled with its
    trial number, the baseline a star; the learned line on both axes. Points in the same order on both
    axes mean the short budget ranks like the long one."""
    import matplotlib.pyplot as plt

    validation = answer.validation
    assert validation is not None
    runs = validation.ranked
    _figure, axes = plt.subplots()
    for baseline in (False, True):
        chosen = [r for r in runs if r.baseline == baseline]
        if chosen:
            axes.scatter([r.short_psnr for r in chosen], [r.long_psnr for r in chosen],
                         marker="*" if baseline else "o", s=160 if baseline else 30,
                         color="tab:red" if baseline else "tab:blue", zorder=3,
                         label="baseline (NectarGAN default)" if baseline else "retrained trials")
    for run in runs:
        axes.annotate(str(run.trial), (run.short_psnr, run.long_psnr), textcoords="offset points", xytext=(4, 4),
                      fontsize=7)
    if answer.floor is not None and math.isfinite(answer.floor.best_psnr):
        line = answer.floor.best_psnr + LEARN_MARGIN_DB
        axes.axhline(line, color="0.3", lw=0.8, ls="--", label=f"learned above this ({answer.floor.best} "
                     f"floor + {LEARN_MARGIN_DB:g} dB)")
        axes.axvline(line, color="0.3", lw=0.8, ls="--")
    tau = "?" if validation.tau is None else f"{validation.tau:.2f}"
    rho = "?" if validation.rho is None else f"{validation.rho:.2f}"
    axes.set_xlabel("val PSNR after the study's budget (dB)")
    axes.set_ylabel(f"val PSNR after {validation.factor:g}x the budget (dB)")
    axes.set_title(f"Short against long training: Kendall's tau {tau}, Spearman's rho {rho} ({len(runs)} trials)",
                   fontsize=9)
    axes.legend(fontsize=7, loc="best")
    return axes
