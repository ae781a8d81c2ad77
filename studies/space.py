"""A config's ``[space]`` as Optuna distributions: suggesting, membership, and the check against a stored study.

Optuna keeps, per study, the distribution each parameter was first suggested with; a categorical
parameter cannot change its choices later (``suggest_categorical`` raises inside the trial, which
then fails). :func:`check_against_study` compares the config with what the study holds before
anything is written, so a changed space is one clear error instead of a failed trial.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from nectargan.errors import NectarGANError
from studies.config import Range, StudyConfig

Space = dict[str, list[Any] | Range]


def distribution(choice: list[Any] | Range) -> BaseDistribution:
    """The Optuna distribution :func:`suggest` asks for ``choice`` with."""
    if isinstance(choice, Range):
        if choice.is_int:
            return IntDistribution(int(choice.low), int(choice.high), log=choice.log, step=int(choice.step or 1))
        return FloatDistribution(float(choice.low), float(choice.high), log=choice.log, step=choice.step)
    return CategoricalDistribution(choice)


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Ask the trial for every parameter of ``space``, in the config's order."""
    params: dict[str, Any] = {}
    for name, choice in space.items():
        if isinstance(choice, Range):
            if choice.is_int:
                params[name] = trial.suggest_int(name, int(choice.low), int(choice.high), log=choice.log,
                                                 step=int(choice.step or 1))
            else:
                params[name] = trial.suggest_float(name, float(choice.low), float(choice.high), log=choice.log,
                                                   step=choice.step)
        else:
            params[name] = trial.suggest_categorical(name, choice)
    return params


def contains(choice: list[Any] | Range, value: Any) -> bool:
    """Whether ``value`` is one ``choice`` can produce (same type for choices: 64 is not 64.0 or True)."""
    if isinstance(choice, Range):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if choice.is_int and not isinstance(value, int):
            return False
        if not choice.low <= value <= choice.high:
            return False
        if choice.step:
            steps = (value - choice.low) / choice.step
            return math.isclose(steps, round(steps), abs_tol=1e-9)
        return True
    return any(type(c) is type(value) and c == value for c in choice)


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"the choices {list(dist.choices)}"
    scale = " (log)" if getattr(dist, "log", False) else ""
    kind = "integers" if isinstance(dist, IntDistribution) else "numbers"
    return f"{kind} {dist.low:g}..{dist.high:g}{scale}"


def check_against_study(study: optuna.Study, space: Space, where: str) -> None:
    """Raise a one-line :class:`NectarGANError` when ``space`` cannot continue ``study``; write nothing.

    Each parameter is compared with the distribution the study first stored for it (Optuna's own
    rule: same kind, same log setting, and for a list the very same choices in the same order).
    """
    stored: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            stored.setdefault(name, dist)
    for name, choice in space.items():
        if name not in stored:
            continue
        new = distribution(choice)
        try:
            check_distribution_compatibility(stored[name], new)
        except ValueError:
            raise NectarGANError(
                f"{where}: [space].{name} is now {_describe(new)}, but study {study.study_name!r} searched "
                f"{name} over {_describe(stored[name])}; Optuna cannot change that within a study: restore "
                f"[space].{name} or choose another study name (--study-name)"
            ) from None


MAX_ARCHITECTURES = 4096  # combinations tried by check_architectures_fit; a larger space is assumed to hold one


def _values(choice: list[Any] | Range) -> list[Any]:
    """The values of one choice to try: every choice of a list or small integer range, else its two ends."""
    if isinstance(choice, list):
        return choice
    if choice.is_int and not choice.log:
        values = list(range(int(choice.low), int(choice.high) + 1, int(choice.step or 1)))
        if len(values) <= 64:
            return values
    return [choice.low, choice.high]


def check_architectures_fit(config: StudyConfig) -> None:
    """Refuse, before any trial, a study in which no generator the space can draw is valid (``[fixed]
    input_size = 60``: every trial, the baseline included, would be pruned), with the model's own reason."""
    from itertools import islice, product

    from bench.variant import VariantSpec

    fields = [f for f in VariantSpec.field_names() if f != "batch_size"]
    searched = [f for f in fields if f in config.space]
    fixed = {f: config.fixed[f] for f in fields if f in config.fixed}
    combos = product(*(_values(config.space[f]) for f in searched))
    first_reason = None
    for combo in islice(combos, MAX_ARCHITECTURES):
        spec = VariantSpec(**fixed, **dict(zip(searched, combo, strict=True)))
        reason = spec.arguments_reason()
        if reason is None:
            return
        first_reason = first_reason or reason
    if next(combos, None) is not None or first_reason is None:
        return  # more combinations than were tried: some may fit
    raise NectarGANError(f"no generator of {config.source}'s [space] fits its fixed settings, so every trial would "
                         f"be pruned: {first_reason}")
