"""Does a short trial rank like a long one? The stored long runs of a study and their rank correlation.

A study ranks generators after a short budget; its answer is only worth reading if the order holds when
they train longer. ``study-validate`` (:mod:`studies.validate`) retrains some of a study's complete trials
for ``factor`` times the study's budget, with the same settings and seeds, and stores each long run as the
study's user attribute ``validation:<factor>x:<trial>`` (a finished trial's own attributes cannot change in
Optuna). This module reads them back and measures the agreement between short-trial and long-trial
validation PSNR with Kendall's tau (tau-b: ties allowed) and Spearman's rho. Low-fidelity proxies in NAS
are judged the same way; ``TAU_GOAL`` is the agreement below which the report says the budget is too short
to rank the generators and names no winner. Nothing here trains or writes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import optuna

ATTR_PREFIX = "validation:"
FACTOR = 10.0  # the default: k times the study's budget
TAU_GOAL = 0.6  # Kendall's tau the ranking must reach to be read as a ranking
MIN_RANKED = 3  # fewer long runs give no correlation
DEFAULT_TRIALS = 8  # the default number of trials to retrain
MIN_JUDGED = 5  # fewer give no verdict: with 3 or 4 runs one swap moves tau by 2/3 or 1/3


@dataclass(frozen=True)
class LongRun:
    """One trial retrained for ``factor`` x the study's budget (same generator, settings and seed)."""

    trial: int
    factor: float
    variant: str
    seed: int
    short_psnr: float
    long_psnr: float | None  # None: the long run failed (``reason``)
    long_ssim: float | None
    short_images: int
    long_images: int
    steps: int
    train_seconds: float
    budget_seconds: float | None
    budget_steps: int | None
    baseline: bool = False
    load_avg_1m: float | None = None
    out: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LongRun | None:
        """The run stored as ``data``, or None for anything else (a foreign or damaged attribute)."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"trial", "factor", "short_psnr", "long_psnr"} <= data.keys():
            return None
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None


def attr_key(factor: float, trial: int) -> str:
    return f"{ATTR_PREFIX}{factor:g}x:{trial:04d}"


def normal_factor(factor: float) -> float:
    """The factor as its key shows it (``:g``), so two factors never share a key yet read as two."""
    return float(f"{factor:g}")


def long_runs(study: optuna.Study) -> dict[float, list[LongRun]]:
    """Every stored long run, by factor, in trial order."""
    runs: dict[float, list[LongRun]] = {}
    for key, value in study.user_attrs.items():
        run = LongRun.from_dict(value) if key.startswith(ATTR_PREFIX) else None
        if run is not None:
            runs.setdefault(float(run.factor), []).append(run)
    return {factor: sorted(found, key=lambda r: r.trial) for factor, found in runs.items()}


@dataclass(frozen=True)
class Validation:
    """The long runs of one factor and how their order agrees with the short trials' order."""

    factor: float
    runs: list[LongRun]
    tau: float | None
    tau_p: float | None
    rho: float | None
    rho_p: float | None

    @property
    def ranked(self) -> list[LongRun]:
        """The runs that ended with a val PSNR (a failed long run is left out of the correlation)."""
        return [r for r in self.runs if r.long_psnr is not None]

    @property
    def ranks_hold(self) -> bool | None:
        """Whether the short budget ranks like the long one (None: fewer than ``MIN_JUDGED`` ranked runs, or
        PSNR all tied)."""
        return None if self.tau is None or len(self.ranked) < MIN_JUDGED else self.tau >= TAU_GOAL

    def short_ranks(self) -> dict[int, float]:
        return _ranks({r.trial: r.short_psnr for r in self.ranked})

    def long_ranks(self) -> dict[int, float]:
        return _ranks({r.trial: r.long_psnr for r in self.ranked if r.long_psnr is not None})


def _ranks(values: dict[int, float]) -> dict[int, float]:
    """1 = highest PSNR; ties share their mean rank."""
    import pandas as pd

    ranked = pd.Series(values).rank(ascending=False, method="average")
    return {int(k): float(v) for k, v in ranked.items()}


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


def rank_agreement(runs: list[LongRun]) -> tuple[float | None, float | None, float | None, float | None]:
    """Kendall's tau-b and Spearman's rho (each with its p-value) between short and long PSNR."""
    runs = [r for r in runs if r.long_psnr is not None]
    if len(runs) < MIN_RANKED:
        return None, None, None, None
    from scipy.stats import kendalltau, spearmanr

    short = [r.short_psnr for r in runs]
    long = [r.long_psnr for r in runs]
    if len(set(short)) < 2 or len(set(long)) < 2:  # a constant side has no order to agree with
        return None, None, None, None
    tau = kendalltau(short, long)
    rho = spearmanr(short, long)
    return finite(tau.statistic), finite(tau.pvalue), finite(rho.statistic), finite(rho.pvalue)


def read_validation(study: optuna.Study, factor: float | None = None) -> Validation | None:
    """The study's validation at ``factor`` (default: the factor with the most long runs, the larger on a tie),
    or None when it has none."""
    runs = long_runs(study)
    if factor is None:
        if not runs:
            return None
        factor = max(runs, key=lambda f: (len(runs[f]), f))
    chosen = runs.get(float(factor))
    if not chosen:
        return None
    return Validation(float(factor), chosen, *rank_agreement(chosen))
