"""``study-validate``: retrain some of a study's trials for k times its budget and store the long runs.

Which trials: the baseline, the front (the trials the answer reads), then complete trials drawn at random
(seeded) until ``n_trials`` are chosen (default 8; every complete trial when the study has fewer). Each is
retrained with the study's config, its own settings (checked against the ones it recorded) and its own
seed, for ``factor`` times the study's budget (seconds and steps alike); evaluation, data and device are
the study's. Each long run is stored in the study (:mod:`studies.ranking`) as soon as it ends, so an
interrupted validation resumes where it stopped: a trial already validated at this factor is not trained
again (one that failed is tried again). The runs go one after another in this process with torch's
threads for this machine, as a study with one worker trains; a study run with ``--workers K`` trained
each trial on 1/K of the threads, so its long runs see more than k times its images.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nectargan.errors import NectarGANError
from nectargan.train import NonFiniteLossError, fit
from studies.answer import analyse, number
from studies.baseline import is_baseline, is_reference, repeat_of
from studies.config import StudyConfig, load_study_config
from studies.objective import effective_settings, trained_params, trial_train_config, variant_of
from studies.ranking import (
    DEFAULT_TRIALS,
    FACTOR,
    MIN_RANKED,
    LongRun,
    Validation,
    attr_key,
    finite,
    normal_factor,
    read_validation,
)


class ValidationError(NectarGANError):
    """A study that cannot be validated as asked (one line: what and what would do)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``validate_study`` will do: the chosen trials, those still to train, and the long budget."""

    study: optuna.Study
    config: StudyConfig
    factor: float
    chosen: list[FrozenTrial]
    to_train: list[FrozenTrial]
    out_root: Path

    @property
    def seconds(self) -> float | None:
        return None if self.config.seconds is None else self.config.seconds * self.factor

    @property
    def steps(self) -> int | None:
        return None if self.config.steps is None else round(self.config.steps * self.factor)


def choose_trials(study: optuna.Study, n_trials: int = DEFAULT_TRIALS, seed: int = 0) -> list[FrozenTrial]:
    """``n_trials`` complete trials (all when fewer), in trial order: the baseline, the front by PSNR (highest
    first) leaving a quarter of the places (at least one) to random trials, then random ones (seeded): the
    front alone is often one architecture at several learning rates, the random ones span the study's range.
    The baseline's repeats are left out: the same generator again, their order against the baseline is seed
    noise, not a ranking of generators."""
    answer = analyse(study)
    ranked = [t for t in answer.complete if number(t, "val_psnr") is not None and repeat_of(t) is None]
    by_psnr = sorted((t for t in answer.front if t in ranked), key=lambda t: -(number(t, "val_psnr") or 0.0))
    baseline = [t for t in ranked if is_baseline(t)]
    others = len(ranked) - len(baseline)
    front_places = max(0, n_trials - len(baseline) - max(1, n_trials // 4)) if others > n_trials else n_trials
    chosen: dict[int, FrozenTrial] = {t.number: t for t in baseline[:n_trials]}
    for trial in by_psnr:
        if len(chosen) < min(n_trials, len(baseline) + front_places):
            chosen.setdefault(trial.number, trial)
    rest = [t for t in ranked if t.number not in chosen]
    random.Random(seed).shuffle(rest)
    for trial in rest[:max(0, n_trials - len(chosen))]:
        chosen[trial.number] = trial
    return sorted(chosen.values(), key=lambda t: t.number)


def _config_of(study: optuna.Study, config_path: str | None) -> StudyConfig:
    """The study's config (the one it recorded unless ``config_path`` is given), refused when it is not the one
    the study ran with."""
    recorded = study.user_attrs.get("config")
    path = config_path or recorded
    if not path:
        raise ValidationError(f"study {study.study_name!r} recorded no config: pass --config with its study TOML")
    config = load_study_config(path)
    ran_with = study.user_attrs.get("config_sha256")
    if ran_with and config.sha256 and ran_with != config.sha256:
        raise ValidationError(
            f"config {path!r} is not the one study {study.study_name!r} ran with (sha256 {config.sha256[:12]} against "
            f"{ran_with[:12]}): pass --config with the study's own TOML ({recorded or 'unknown'} when it ran)")
    return config


def plan_validation(study: optuna.Study, config_path: str | None = None, factor: float = FACTOR,
                    n_trials: int = DEFAULT_TRIALS, seed: int = 0, out_root: str | Path | None = None,
                    again: bool = False) -> Plan:
    """Check the request and choose the trials; nothing is trained or written."""
    if not (math.isfinite(factor) and factor > 1):
        raise ValidationError(f"factor={factor!r} is not valid: use a number > 1 (times the study's budget)")
    factor = normal_factor(factor)
    if n_trials < MIN_RANKED:
        raise ValidationError(f"trials={n_trials!r} is not valid: use {MIN_RANKED} or more (a rank correlation "
                              "needs them)")
    config = _config_of(study, config_path)
    chosen = choose_trials(study, n_trials, seed)
    if len(chosen) < MIN_RANKED:
        raise ValidationError(f"study {study.study_name!r} has {len(chosen)} complete trials with a val PSNR (the "
                              f"baseline's repeats aside); a rank correlation needs {MIN_RANKED} or more: run more "
                              "trials first")
    for trial in chosen:
        _check_trial(trial, config)
    _check_data(study, config)
    stored = read_validation(study, factor)
    done = set() if again or stored is None else {r.trial for r in stored.runs if r.long_psnr is not None}
    root = Path(out_root) if out_root else Path("results/studies") / study.study_name / f"validate-{factor:g}x"
    return Plan(study, config, factor, chosen, [t for t in chosen if t.number not in done], root)


def _check_trial(trial: FrozenTrial, config: StudyConfig) -> None:
    """The trial's recorded settings and seed are the ones the config gives it again."""
    params = trained_params(trial, config)
    recorded = trial.user_attrs.get("settings")
    rebuilt = effective_settings(config, params)
    if isinstance(recorded, dict) and recorded != rebuilt:
        wrong = ", ".join(f"{k}: {recorded.get(k)!r} -> {rebuilt[k]!r}" for k in sorted(rebuilt)
                          if recorded.get(k) != rebuilt[k])
        raise ValidationError(f"trial {trial.number} recorded other settings than the config and this version's "
                              f"defaults give ({wrong}); pass --config with the study's own TOML")
    seed = config.seed + trial.number  # the rule of studies.objective.trial_train_config
    recorded_seed = trial.user_attrs.get("seed")
    if isinstance(recorded_seed, int) and recorded_seed != seed:
        raise ValidationError(f"trial {trial.number} trained with seed {recorded_seed}, its config gives {seed}")


def _check_data(study: optuna.Study, config: StudyConfig) -> None:
    """The dataset is there (built again when the config says how) and is the one the study's floor was
    measured on: a long run on other data would not be comparable."""
    from studies.floor import FLOOR_ATTR, study_floor
    from studies.runner import ensure_data

    ensure_data(config)
    recorded = study.user_attrs.get(FLOOR_ATTR)
    if not isinstance(recorded, dict):
        return
    now = study_floor(config).to_dict()
    keys = ("val_images", "train_images", "mean_psnr", "copy_psnr")
    if any(recorded.get(k) is not None and now.get(k) is not None and abs(recorded[k] - now[k]) > 1e-6
           for k in keys):
        raise ValidationError(f"the dataset {config.data_path!r} is not the one study {study.study_name!r} trained on "
                              "(its trivial predictors score differently): restore that dataset first")


def validate_study(plan: Plan, on_trial: Callable[[int, FrozenTrial | None], None] | None = None) -> Validation:
    """Train ``plan.to_train`` one after another, storing each long run when it ends; return the validation.

    ``on_trial(done, next_trial)`` is called before each run and at the end (``next_trial`` None).
    """
    config = dataclasses.replace(plan.config, seconds=plan.seconds, steps=plan.steps)
    for done, trial in enumerate(plan.to_train):
        if on_trial is not None:
            on_trial(done, trial)
        run = _train_long(plan, config, trial)
        plan.study.set_user_attr(attr_key(plan.factor, trial.number), run.to_dict())
    if on_trial is not None:
        on_trial(len(plan.to_train), None)
    validation = read_validation(plan.study, plan.factor)
    assert validation is not None  # every chosen trial is stored by now
    return validation


def _train_long(plan: Plan, config: StudyConfig, trial: FrozenTrial) -> LongRun:
    params = trained_params(trial, plan.config)
    spec = variant_of(plan.config, params)
    out = plan.out_root / f"trial-{trial.number:04d}"
    if out.exists():  # an interrupted earlier run of this trial: start it again
        import shutil

        shutil.rmtree(out)
    train = dataclasses.replace(trial_train_config(config, params, spec, trial.number, out), save_checkpoints=False)
    try:
        summary: dict[str, Any] = fit(train)
    except NonFiniteLossError as exc:  # a result, not an error: the long run diverged
        summary = {"val_psnr": None, "val_ssim": None, "images": 0, "steps": 0, "train_seconds": 0.0,
                   "reason": str(exc)}
    if finite(summary["val_psnr"]) is None and not summary.get("reason"):
        summary["reason"] = f"val PSNR is {summary['val_psnr']}"
    return LongRun(
        trial=trial.number, factor=plan.factor, variant=str(trial.user_attrs.get("variant", spec.name)),
        seed=train.seed, short_psnr=float(number(trial, "val_psnr") or 0.0),
        long_psnr=finite(summary["val_psnr"]), long_ssim=finite(summary["val_ssim"]),
        short_images=int(trial.user_attrs.get("images", 0)), long_images=int(summary["images"]),
        steps=int(summary["steps"]), train_seconds=float(summary["train_seconds"]),
        budget_seconds=plan.seconds, budget_steps=plan.steps, baseline=is_reference(trial),
        load_avg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, out=str(out),
        reason=summary.get("reason", ""),
    )

