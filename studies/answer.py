"""The study's answer to "which generator gives the best images for its cost?", read off its trials.

Quality is the validation PSNR (and SSIM beside it); cost is the trained generator's measured
inference speed (``infer_img_per_s``). Every complete trial is compared with the baseline (NectarGAN's
default generator, trial 0): dB of PSNR and SSIM against it, and its speed-up over it, taken from the
timing interleaved with the baseline's architecture in the same trial (robust to load drifting between
trials), else from the two trials' own figures. The front is the study's Pareto front when the study
has several objectives, else the trials no other trial beats on both PSNR and speed. Nothing here
measures anything: it only reads trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studies.baseline import is_baseline

TOLERANCE_DB = 0.5  # "as good as the baseline" for the fastest-trial question
GOAL_SPEEDUP = 2.0
SPEED_SPREAD_WARNING = 2.0  # train img/s max/min above which a step budget is called unfair


@dataclass
class Answer:
    baseline: FrozenTrial | None
    complete: list[FrozenTrial]
    front: list[FrozenTrial]
    best_quality: FrozenTrial | None = None
    fastest_close: FrozenTrial | None = None
    sentences: list[str] = field(default_factory=list)
    budget: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    goal_quality: bool | None = None
    goal_speed: bool | None = None


def number(trial: FrozenTrial, key: str) -> float | None:
    value = trial.user_attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def speedup(trial: FrozenTrial, baseline: FrozenTrial | None) -> float | None:
    """Inference speed-up over the baseline (1.0 for the baseline itself)."""
    if baseline is None:
        return None
    if trial.number == baseline.number:
        return 1.0
    interleaved = number(trial, "infer_speedup_vs_baseline")
    if interleaved is not None:
        return interleaved
    mine, theirs = number(trial, "infer_img_per_s"), number(baseline, "infer_img_per_s")
    return mine / theirs if mine is not None and theirs else None


def deltas(trial: FrozenTrial, baseline: FrozenTrial | None) -> dict[str, float | None]:
    """PSNR (dB) and SSIM against the baseline, and the speed-up over it."""
    result: dict[str, float | None] = {"d_psnr_db": None, "d_ssim": None, "speedup": speedup(trial, baseline)}
    if baseline is None:
        return result
    for key, name in (("val_psnr", "d_psnr_db"), ("val_ssim", "d_ssim")):
        mine, theirs = number(trial, key), number(baseline, key)
        if mine is not None and theirs is not None:
            result[name] = mine - theirs
    return result


def _feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def quality_speed_front(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that no other trial matches or beats on both PSNR and inference speed (one strictly)."""
    points = [(t, number(t, "val_psnr"), number(t, "infer_img_per_s")) for t in trials]
    points = [(t, q, s) for t, q, s in points if q is not None and s is not None]
    return [t for t, q, s in points
            if not any(q2 >= q and s2 >= s and (q2 > q or s2 > s) for _, q2, s2 in points)]


def front_of(study: optuna.Study, complete: list[FrozenTrial]) -> list[FrozenTrial]:
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    return sorted(quality_speed_front([t for t in complete if _feasible(t)]), key=lambda t: t.number)


def analyse(study: optuna.Study) -> Answer:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    baselines = [t for t in complete if is_baseline(t)]
    baseline = baselines[0] if baselines else None
    answer = Answer(baseline=baseline, complete=complete, front=front_of(study, complete))
    _budget(study, answer)
    searched = [t for t in complete if not is_baseline(t) and _feasible(t) and number(t, "val_psnr") is not None]
    if baseline is None:
        reason = study.user_attrs.get("baseline")
        answer.sentences.append(
            "No baseline trial completed in this study" + (f" (baseline: {reason})" if isinstance(reason, str)
                                                             and reason != "trial 0" else "")
            + ", so nothing is compared with NectarGAN's default."
        )
        return answer
    base_psnr = number(baseline, "val_psnr")
    answer.sentences.append(
        f"Baseline (NectarGAN's default generator at this size, trial {baseline.number}): "
        f"`{baseline.user_attrs.get('variant', '?')}` reaches {_db(base_psnr)} PSNR and SSIM "
        f"{_g(number(baseline, 'val_ssim'), 3)} at {_g(number(baseline, 'infer_img_per_s'), 3)} img/s "
        f"inference (batch {baseline.user_attrs.get('infer_batch_size', '?')}, "
        f"{baseline.user_attrs.get('infer_mode', '?')}); it trained on "
        f"{baseline.user_attrs.get('images', '?')} images."
    )
    if not searched or base_psnr is None:
        answer.sentences.append("No searched trial completed, so there is nothing to compare yet.")
        return answer
    answer.best_quality = max(searched, key=lambda t: number(t, "val_psnr") or -math.inf)
    close = [t for t in searched if (number(t, "val_psnr") or -math.inf) >= base_psnr - TOLERANCE_DB
             and speedup(t, baseline) is not None]
    answer.fastest_close = max(close, key=lambda t: speedup(t, baseline) or 0.0) if close else None
    best = answer.best_quality
    answer.sentences.append(f"Best quality: {_compare(best, baseline)}")
    if answer.fastest_close is None:
        answer.sentences.append(f"No searched trial comes within {TOLERANCE_DB} dB of the baseline's PSNR or above it.")
    elif answer.fastest_close.number != best.number:
        answer.sentences.append(f"Fastest trial no more than {TOLERANCE_DB} dB below the baseline's PSNR: "
                                f"{_compare(answer.fastest_close, baseline)}")
    else:
        answer.sentences.append(f"It is also the fastest trial no more than {TOLERANCE_DB} dB below the baseline.")
    front = [t for t in answer.front if not is_baseline(t)]
    answer.goal_quality = any((number(t, "val_psnr") or -math.inf) > base_psnr for t in front)
    answer.goal_speed = any((number(t, "val_psnr") or -math.inf) >= base_psnr - TOLERANCE_DB
                            and (speedup(t, baseline) or 0.0) >= GOAL_SPEEDUP for t in front)
    answer.sentences.append(
        f"On the front: a trial with higher PSNR than the baseline: {'yes' if answer.goal_quality else 'no'}; "
        f"one at least {GOAL_SPEEDUP:g}x faster within {TOLERANCE_DB} dB of it: "
        f"{'yes' if answer.goal_speed else 'no'}."
    )
    return answer


def _compare(trial: FrozenTrial, baseline: FrozenTrial) -> str:
    d = deltas(trial, baseline)
    d_psnr, ratio = d["d_psnr_db"], d["speedup"]
    if d_psnr is None:
        quality = "unknown PSNR"
    elif abs(d_psnr) < 0.05:
        quality = "the same PSNR"
    else:
        quality = f"{abs(d_psnr):.1f} dB {'higher' if d_psnr > 0 else 'lower'} PSNR"
    if ratio is None:
        speed = "at an unknown speed"
    elif ratio >= 1:
        speed = f"is {ratio:.1f}x faster than the baseline"
    else:
        speed = f"is {1 / ratio:.1f}x slower than the baseline"
    interleaved = ratio is not None and number(trial, "infer_speedup_vs_baseline") is not None
    timing = "; speed timed interleaved with the baseline's" if interleaved else ""
    ssim = f", SSIM {d['d_ssim']:+.3f}" if d["d_ssim"] is not None else ""
    return (f"`{trial.user_attrs.get('variant', '?')}` (trial {trial.number}) {speed} at {quality} "
            f"({_db(number(trial, 'val_psnr'))}{ssim}; {trial.user_attrs.get('images', '?')} training images"
            f"{timing}).")


def _budget(study: optuna.Study, answer: Answer) -> None:
    """Which budget bounded the trials, and whether a step budget compared very different speeds."""
    budget = study.user_attrs.get("budget") or {}
    steps, seconds = budget.get("steps"), budget.get("seconds")
    bounds = [t.user_attrs.get("budget_bound") for t in answer.complete]
    by_steps, by_seconds = bounds.count("steps"), bounds.count("seconds")
    limits = " and ".join(x for x in (f"{steps} steps" if steps else "", f"{seconds:g} s" if seconds else "") if x)
    if limits:
        answer.budget.append(f"Budget per trial: {limits} of training, whichever ends first.")
    if by_steps and by_seconds:
        answer.budget.append(f"The step budget ended {by_steps} complete trials, the time budget {by_seconds}.")
    elif by_steps or by_seconds:
        answer.budget.append(f"The {'step' if by_steps else 'time'} budget ended every complete trial "
                             f"({by_steps or by_seconds}).")
    images = [number(t, "images") for t in answer.complete]
    images = [i for i in images if i is not None]
    if by_seconds and images and min(images) < max(images):
        answer.budget.append(f"Under a time budget faster generators train on more images "
                             f"({min(images):.0f} to {max(images):.0f} here).")
    elif by_seconds and images:
        answer.budget.append(f"Every complete trial trained on {min(images):.0f} images in its time budget.")
    loads = [x for t in answer.complete if (x := number(t, "load_avg_1m")) is not None]
    cpus = (study.user_attrs.get("env") or {}).get("cpu_count")
    if loads and isinstance(cpus, int) and max(loads) > cpus:
        answer.warnings.append(
            f"Warning: the machine was busy: 1-minute load average up to {max(loads):.1f} on {cpus} CPUs while "
            "trials ran. Under a time budget a trial that trained while it was busy saw fewer images, and its "
            "absolute timings are noisy; the interleaved speed-ups hold better. Rerun on an idle machine for "
            "figures to quote."
        )
    speeds = [s for t in answer.complete if (s := number(t, "train_img_per_s"))]
    if by_steps and len(speeds) >= 2 and max(speeds) / min(speeds) > SPEED_SPREAD_WARNING:
        answer.warnings.append(
            f"Warning: trials of very different training speed ({min(speeds):.3g} to {max(speeds):.3g} img/s, "
            f"{max(speeds) / min(speeds):.1f}x) were compared under a step budget: each saw the same images, "
            "but the slow ones took far longer; set [budget].seconds for an equal-time comparison."
        )


def _g(value: float | None, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}g}"


def _db(value: float | None) -> str:
    return "? dB" if value is None else f"{value:.2f} dB"


def row_extras(trial: FrozenTrial, baseline: FrozenTrial | None) -> dict[str, Any]:
    d = deltas(trial, baseline)
    return {"d_psnr_db": d["d_psnr_db"], "d_ssim": d["d_ssim"], "speedup_x": d["speedup"]}
