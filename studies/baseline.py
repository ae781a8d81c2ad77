"""NectarGAN's default generator as every study's trial 0, so each searched trial has a reference.

The baseline is NectarGAN's default generator (``VariantSpec``'s defaults: features 64, UnetBlock,
Transposed, 3 dropout layers) scaled to the study's image size: the largest ``n_downs`` up to the
default 6 that the size allows (``input_size`` must be a multiple of ``2**(n_downs + 2)``), dropout
capped at ``n_downs + 1``. It trains with NectarGAN's training defaults (``TrainConfig``'s lr, beta1,
lambda_l1), the study's batch size (``[fixed]``, else the first choice of ``[space]``), the study's
other fixed settings (discriminator, device, precision) and the same per-trial budget.

Its values may lie outside ``[space]`` (features 64 is rarely searched at 64 px). Optuna's
``suggest_categorical`` rejects an enqueued value that is not among the choices, so the baseline is
enqueued with only the values the space can hold (those are suggested, so samplers see them); the
rest are set directly and recorded in the user attribute ``baseline_settings``. Constraints and the
pruner never stop it.

Exactly once: the baseline is enqueued by the process that creates the study (creation is atomic in
every Optuna storage), waiting trials are handed out under a lock on SQLite (see
:mod:`studies.storage`), and a baseline trial that finds another baseline trial already running
(with a lower number) or complete prunes itself as a duplicate.

Its repeats: ``[study].baseline_seeds`` - 1 more trials of the same generator and settings, each
trained with its own seed (the trial's: the study's seed + its number), enqueued right after it and
marked with the user attribute ``baseline_repeat`` (1, 2, ...), so the report can give the noise of
PSNR between seeds. Each repeat runs exactly once by the same rules as the baseline; they are not
searched trials.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from bench.variant import VariantSpec
from nectargan.train import TrainConfig
from studies.config import Range, StudyConfig
from studies.space import contains

BASELINE_ATTR = "baseline"
REPEAT_ATTR = "baseline_repeat"  # k = 1, 2, ...: the baseline again, with another seed
MAX_ATTEMPTS = 3  # baseline trials a study may enqueue in all (each resume adds one while none completed)
ARCH_KEYS = ("n_downs", "features", "block_type", "upconv_type", "use_dropout_layers")


def baseline_n_downs(input_size: int, most: int | None = None) -> int | None:
    """The largest ``n_downs`` in 3..``most`` (default NectarGAN's 6) valid for ``input_size``, else None."""
    most = VariantSpec().n_downs if most is None else most
    for n_downs in range(most, 2, -1):
        if input_size % 2 ** (n_downs + 2) == 0:
            return n_downs
    return None


def study_batch_size(config: StudyConfig) -> int:
    """The study's batch size: fixed, else the first choice (or low end) of the space, else TrainConfig's."""
    if "batch_size" in config.fixed:
        return int(config.fixed["batch_size"])
    choice = config.space.get("batch_size")
    if isinstance(choice, Range):
        return int(choice.low)
    if choice:
        return int(choice[0])
    return TrainConfig().batch_size


def input_size_of(config: StudyConfig) -> int:
    return int(config.fixed.get("input_size", VariantSpec().input_size))


def baseline_settings(config: StudyConfig) -> dict[str, Any] | None:
    """The baseline's searchable settings (architecture and training), or None when no generator fits."""
    n_downs = baseline_n_downs(input_size_of(config))
    if n_downs is None:
        return None
    default, train = VariantSpec(), TrainConfig()
    return {
        "n_downs": n_downs, "features": default.features, "block_type": default.block_type,
        "upconv_type": default.upconv_type, "use_dropout_layers": min(default.use_dropout_layers, n_downs + 1),
        "lr": train.lr, "beta1": train.beta1, "lambda_l1": train.lambda_l1, "batch_size": study_batch_size(config),
    }


def why_no_baseline(config: StudyConfig) -> str:
    return (f"input_size={input_size_of(config)} allows no generator (it must be a multiple of 32, "
            "2**(n_downs+2) with n_downs >= 3)")


def enqueueable(config: StudyConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """The baseline's values that the study's space can hold (Optuna suggests these)."""
    return {k: v for k, v in settings.items() if k in config.space and contains(config.space[k], v)}


def is_baseline(trial: optuna.trial.FrozenTrial | optuna.Trial) -> bool:
    return trial.user_attrs.get(BASELINE_ATTR) is True


def repeat_of(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int | None:
    """k when the trial is the baseline's k-th repeat (another seed), else None."""
    k = trial.user_attrs.get(REPEAT_ATTR)
    return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else None


def is_reference(trial: optuna.trial.FrozenTrial | optuna.Trial) -> bool:
    """The baseline or one of its repeats: NectarGAN's default generator, not a searched trial."""
    return is_baseline(trial) or repeat_of(trial) is not None


def _role(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int | None:
    """0 for the baseline, k for its k-th repeat, None for a searched trial."""
    return 0 if is_baseline(trial) else repeat_of(trial)


def baseline_trials(study: optuna.Study, role: int = 0) -> list[optuna.trial.FrozenTrial]:
    """The baseline's trials (``role`` 0) or those of its ``role``-th repeat."""
    return [t for t in study.get_trials(deepcopy=False) if _role(t) == role]


def enqueue_baseline(study: optuna.Study, config: StudyConfig) -> bool:
    """Enqueue the baseline and each of its repeats unless the study has it complete, running or waiting
    (or tried it too often).

    Call it when the study is created; on a resumed study it re-enqueues a baseline or repeat that failed
    or was interrupted. Returns whether a trial was enqueued.
    """
    settings = baseline_settings(config)
    if settings is None:
        return False
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    enqueued = False
    for role in range(max(1, config.baseline_seeds)):
        existing = baseline_trials(study, role)
        if any(t.state in live for t in existing) or len(existing) >= MAX_ATTEMPTS:
            continue
        study.enqueue_trial(enqueueable(config, settings),
                            user_attrs={BASELINE_ATTR: True} if role == 0 else {REPEAT_ATTR: role})
        enqueued = True
    return enqueued


def duplicate_of(trial: optuna.Trial) -> int | None:
    """The number of another trial of the same role (the baseline, or the same repeat) that makes this one
    a duplicate, else None.

    A complete one always wins; of two running ones the lower number does.
    """
    for other in baseline_trials(trial.study, _role(trial) or 0):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return other.number
        if other.state == TrialState.RUNNING and other.number < trial.number:
            return other.number
    return None
