"""The study's answer to "which generator gives the best images for its cost?", read off its trials.

Quality is the validation PSNR (and SSIM beside it); cost is the trained generator's measured
inference speed (``infer_img_per_s``). Every complete trial is compared with the baseline (NectarGAN's
default generator, trial 0): dB of PSNR and SSIM against it, and its speed-up over it, taken from the
timing interleaved with the baseline's architecture in the same trial (robust to load drifting between
trials), else from the two trials' own figures. The front is the study's Pareto front when the study
has several objectives, else the trials no other trial beats on both PSNR and speed.

Every complete trial is also held against the study's floor (:mod:`studies.floor`): a trial whose val
PSNR does not beat the better trivial predictor (copy the input, the mean training target) by
``LEARN_MARGIN_DB`` did not learn. The answer counts those; when the baseline and the best trial did
not learn, it says the ranking is of untrained generators and names no winner.

When ``study-validate`` has retrained some trials for longer (:mod:`studies.ranking`), the answer reads
their rank agreement: below ``TAU_GOAL`` its first sentence says the budget is too short to rank these
generators and it names no winner; otherwise it says the order holds. Nothing here measures
anything: it only reads trials (and, for a study that predates the floor, its dataset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nectargan.data.floor import LEARN_MARGIN_DB, Floor
from studies.baseline import is_baseline, is_reference, repeat_of
from studies.floor import floor_of
from studies.ranking import FACTOR, MIN_JUDGED, TAU_GOAL, Validation, read_validation

TOLERANCE_DB = 0.5  # "as good as the baseline" for the fastest-trial question
GOAL_SPEEDUP = 2.0
BUSY_EXTRA_LOAD = 1.0  # load average beyond the CPU count (the study's own threads) that makes a machine busy
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
    floor: Floor | None = None
    floor_source: str = ""
    not_learned: list[FrozenTrial] = field(default_factory=list)  # complete trials below the floor + margin
    untrained: bool = False  # the baseline and the best trial did not learn: no winner is named
    baseline_runs: list[FrozenTrial] = field(default_factory=list)  # the baseline and its complete repeats
    spread_db: float | None = None  # their PSNR's max - min: "better than the baseline" needs more than it
    validation: Validation | None = None  # study-validate's long runs and their rank agreement
    too_short: bool = False  # the long runs do not rank like the short ones: no winner is named


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


def learned(trial: FrozenTrial, floor: Floor | None) -> bool | None:
    """Whether the trial's val PSNR beats the floor's better predictor by the margin (None: unknown)."""
    return None if floor is None else floor.learned(number(trial, "val_psnr"), LEARN_MARGIN_DB)


def analyse(study: optuna.Study) -> Answer:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    baselines = [t for t in complete if is_baseline(t)]
    baseline = baselines[0] if baselines else None
    answer = Answer(baseline=baseline, complete=complete, front=front_of(study, complete))
    answer.floor, answer.floor_source = floor_of(study)
    answer.not_learned = [t for t in complete if learned(t, answer.floor) is False]
    _baseline_runs(answer)
    _budget(study, answer)
    answer.validation = read_validation(study)
    if answer.validation is not None and answer.validation.ranks_hold is False:
        answer.too_short = True
        answer.sentences.append(_too_short_sentence(answer.validation))
    searched = [t for t in complete if not is_reference(t) and _feasible(t) and number(t, "val_psnr") is not None]
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
        f"{baseline.user_attrs.get('images', '?')} images{_learn_note(baseline, answer.floor)}."
    )
    answer.sentences += _floor_sentences(answer)
    answer.sentences.append(_seeds_sentence(study, answer))
    if not searched or base_psnr is None:
        answer.sentences.append("No searched trial completed, so there is nothing to compare yet.")
        return answer
    if answer.too_short:
        return answer
    answer.best_quality = max(searched, key=lambda t: number(t, "val_psnr") or -math.inf)
    close = [t for t in searched if (number(t, "val_psnr") or -math.inf) >= base_psnr - TOLERANCE_DB
             and speedup(t, baseline) is not None]
    answer.fastest_close = max(close, key=lambda t: speedup(t, baseline) or 0.0) if close else None
    best = answer.best_quality
    if learned(baseline, answer.floor) is False and learned(best, answer.floor) is False:
        answer.untrained = True
        answer.sentences.append(
            f"Neither the baseline nor the best searched trial (`{best.user_attrs.get('variant', '?')}`, trial "
            f"{best.number}, {_db(number(best, 'val_psnr'))}) learned, so this study ranks untrained generators and "
            "names no winner: its PSNR and speed-up figures compare noise. Give the trials a larger [budget] (or "
            "check the data) before reading the front."
        )
        return answer
    answer.sentences.append(f"Best quality: {_compare(best, answer)}")
    if answer.fastest_close is None:
        answer.sentences.append(f"No searched trial comes within {TOLERANCE_DB} dB of the baseline's PSNR or above it.")
    elif answer.fastest_close.number != best.number:
        answer.sentences.append(f"Fastest trial no more than {TOLERANCE_DB} dB below the baseline's PSNR: "
                                f"{_compare(answer.fastest_close, answer)}")
    else:
        answer.sentences.append(f"It is also the fastest trial no more than {TOLERANCE_DB} dB below the baseline.")
    if learned(baseline, answer.floor) is False:
        answer.sentences.append("The baseline did not learn, so being better than it says little: the floor is "
                                "the comparison that counts.")
    # a trial that did not learn counts for neither goal (beating an untrained generator proves nothing)
    front = [t for t in answer.front if not is_reference(t) and learned(t, answer.floor) is not False]
    beyond = answer.spread_db or 0.0  # higher only counts beyond the baseline's own noise between seeds
    answer.goal_quality = any((number(t, "val_psnr") or -math.inf) > base_psnr + beyond for t in front)
    answer.goal_speed = any((number(t, "val_psnr") or -math.inf) >= base_psnr - TOLERANCE_DB
                            and (speedup(t, baseline) or 0.0) >= GOAL_SPEEDUP for t in front)
    learned_only = " that learned" if answer.floor is not None else ""
    answer.sentences.append(
        f"On the front{learned_only}: a trial with higher PSNR than the baseline"
        f"{f' by more than its seed spread ({answer.spread_db:.2f} dB)' if answer.spread_db is not None else ''}: "
        f"{'yes' if answer.goal_quality else 'no'}; one at least {GOAL_SPEEDUP:g}x faster within {TOLERANCE_DB} dB "
        f"of it: {'yes' if answer.goal_speed else 'no'}."
    )
    answer.sentences.append(_validation_sentence(study, answer.validation))
    return answer


def _baseline_runs(answer: Answer) -> None:
    """The baseline and its complete repeats, and their PSNR's spread (PSNR's noise between seeds)."""
    baseline = answer.baseline
    if baseline is None or number(baseline, "val_psnr") is None:
        return
    answer.baseline_runs = [baseline] + [t for t in answer.complete
                                         if repeat_of(t) is not None and number(t, "val_psnr") is not None]
    if len(answer.baseline_runs) > 1:
        psnrs = [number(t, "val_psnr") or 0.0 for t in answer.baseline_runs]
        answer.spread_db = max(psnrs) - min(psnrs)


def _too_short_sentence(validation: Validation) -> str:
    ranked = validation.ranked
    best = max(ranked, key=lambda r: r.long_psnr or -math.inf)
    return (f"The budget is too short to rank these generators: retrained for {validation.factor:g}x the budget, "
            f"the {len(ranked)} validated trials rank with Kendall's tau {validation.tau:.2f} (Spearman's rho "
            f"{f2(validation.rho)}) between short and long val PSNR, below the {TAU_GOAL:g} this study needs, so "
            f"no winner is named from the short trials (of the long runs, `{best.variant}` (trial {best.trial}) "
            f"reached the highest PSNR, {_db(best.long_psnr)}).")


def _validation_sentence(study: optuna.Study, validation: Validation | None) -> str:
    if validation is None:
        return (f"The ranking is not checked against longer training yet: `nectargan-bench study-validate STORAGE "
                f"--study {study.study_name}` retrains the baseline, the front and random trials for {FACTOR:g}x the "
                "budget.")
    if validation.ranks_hold is None:
        return (f"The {len(validation.ranked)} trials retrained for {validation.factor:g}x the budget are too few to "
                f"judge the budget by ({MIN_JUDGED} or more with distinct PSNR are needed).")
    return (f"The order holds at {validation.factor:g}x the budget: the {len(validation.ranked)} retrained trials "
            f"rank with Kendall's tau {validation.tau:.2f} (Spearman's rho {f2(validation.rho)}), at least "
            f"{TAU_GOAL:g}.")


def _learn_note(trial: FrozenTrial, floor: Floor | None) -> str:
    return "; it did not learn" if learned(trial, floor) is False else ""


def _floor_sentences(answer: Answer) -> list[str]:
    """How many complete trials did not learn, against which floor (or why that is not known)."""
    floor = answer.floor
    if floor is None:
        return [f"The floor was {answer.floor_source}."]
    n, total = len(answer.not_learned), len(answer.complete)
    which = ""
    if answer.not_learned:
        numbers = [str(t.number) for t in answer.not_learned]
        which = f": trial{'s' if n > 1 else ''} {', '.join(numbers[:12])}{', ...' if n > 12 else ''}"
    sentences = [f"{n} of {total} complete trials did not learn (did not beat the better trivial predictor, the "
                 f"{floor.best} at {floor.best_psnr:.2f} dB, by {LEARN_MARGIN_DB:g} dB){which}."]
    ssim_floor = max(x for x in (floor.copy_ssim, floor.mean_ssim) if x is not None)
    below = [t for t in answer.complete if learned(t, floor) and (number(t, "val_ssim") or 0.0) < ssim_floor]
    if below:  # a hint, not a mark: learned is PSNR's verdict alone
        sentences.append(
            f"Of those that did, trial{'s' if len(below) > 1 else ''} {', '.join(str(t.number) for t in below)} "
            f"still {'have' if len(below) > 1 else 'has'} a lower SSIM than a trivial predictor's "
            f"({ssim_floor:.3f}): better in PSNR, not yet in structure.")
    return sentences


def _seeds_sentence(study: optuna.Study, answer: Answer) -> str:
    """The baseline's PSNR over its seeds (trial 0 and its repeats), or why its noise is not known."""
    runs = answer.baseline_runs
    planned = 1 + len({k for t in study.get_trials(deepcopy=False) if (k := repeat_of(t)) is not None})
    if answer.spread_db is None:
        if planned == 1:
            return ("The baseline ran with one seed, so PSNR's noise between seeds is not measured "
                    "([study].baseline_seeds).")
        return (f"Only {len(runs)} of the baseline's {planned} seed runs completed, so PSNR's noise between seeds "
                "is not known yet.")
    psnrs = [number(t, "val_psnr") or 0.0 for t in runs]
    return (f"Trained with {len(runs)} seeds (trials {', '.join(str(t.number) for t in runs)}), the baseline "
            f"reaches {min(psnrs):.2f} to {max(psnrs):.2f} dB PSNR, a spread of {answer.spread_db:.2f} dB: a trial "
            "is better than the baseline only by more than that.")


def _compare(trial: FrozenTrial, answer: Answer) -> str:
    baseline, floor, spread = answer.baseline, answer.floor, answer.spread_db
    d = deltas(trial, baseline)
    d_psnr, ratio = d["d_psnr_db"], d["speedup"]
    if d_psnr is None:
        quality = "unknown PSNR"
    elif abs(d_psnr) < 0.05:
        quality = "the same PSNR"
    else:
        quality = f"{abs(d_psnr):.1f} dB {'higher' if d_psnr > 0 else 'lower'} PSNR"
        if d_psnr > 0 and spread is not None:
            quality += (f" (beyond the baseline's seed spread of {spread:.2f} dB)" if d_psnr > spread else
                        f" (within the baseline's seed spread of {spread:.2f} dB: not better)")
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
            f"{timing}{_learn_note(trial, floor)}).")


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
    # the study's own workers keep about `cpus` threads busy (they share the CPU threads), so the load average
    # reads about `cpus` on an otherwise idle machine; one more busy process than that is "busy"
    if loads and isinstance(cpus, int) and max(loads) > cpus + BUSY_EXTRA_LOAD:
        answer.warnings.append(
            f"Warning: the machine was busy: 1-minute load average up to {max(loads):.1f} on {cpus} CPUs while "
            f"trials ran (the study's own training accounts for about {cpus}). Under a time budget a trial that "
            "trained while it was busy saw fewer images, and its "
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


def row_extras(trial: FrozenTrial, baseline: FrozenTrial | None, floor: Floor | None = None) -> dict[str, Any]:
    """dB and SSIM against the baseline, speed-up over it; dB over the floor's better predictor, and learned."""
    d = deltas(trial, baseline)
    over = floor.margin(number(trial, "val_psnr")) if floor is not None else None
    return {"d_psnr_db": d["d_psnr_db"], "d_ssim": d["d_ssim"], "speedup_x": d["speedup"],
            "db_over_floor": over, "learned": learned(trial, floor)}


def f2(value: float | None) -> str:
    """Two decimals, or ? when unknown."""
    return "?" if value is None else f"{value:.2f}"
