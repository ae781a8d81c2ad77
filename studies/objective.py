"""One Optuna trial: suggest a variant and training settings, check it, train it, report back.

A trial is pruned before training when the model rejects the architecture (reason: the model's own
message) or a static constraint (parameters, GFLOPs) is exceeded; it is pruned during training by
the pruner (on the first objective, reported at every evaluation) or by the per-trial time limit;
CUDA out-of-memory prunes it with reason ``oom`` after freeing the memory; a NaN or infinite loss
fails it with the reason. Every trial carries numeric user attributes (``params``, ``gflops``,
``train_img_per_s``, ``peak_mem_mib``, ``val_l1``, ``val_psnr``, ``val_ssim``, ``train_seconds``),
``variant`` and, when it did not complete, ``reason``.
"""

from __future__ import annotations

import gc
import math
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.variant import VariantSpec
from nectargan.train import NonFiniteLossError, TrainConfig, fit
from studies.config import CONSTRAINTS, Range, StudyConfig

STATIC_CONSTRAINTS = ("max_params", "max_gflops")

def suggest(trial: optuna.Trial, space: dict[str, list[Any] | Range]) -> dict[str, Any]:
    """Ask the trial for every searched parameter, in the config's order."""
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


def variant_of(config: StudyConfig, params: dict[str, Any]) -> VariantSpec:
    settings = config.fixed | params
    fields = set(VariantSpec.field_names()) - {"batch_size"}
    return VariantSpec(**{k: v for k, v in settings.items() if k in fields})


def constraint_values(attrs: dict[str, Any], limits: dict[str, float]) -> dict[str, float]:
    """Optuna's convention: a value <= 0 is satisfied. Figures not measured yet are left out."""
    return {
        key: float(attrs[CONSTRAINTS[key]]) - limit
        for key, limit in limits.items()
        if isinstance(attrs.get(CONSTRAINTS[key]), int | float)
    }


def _record_constraints(trial: optuna.Trial, config: StudyConfig, keys: tuple[str, ...]) -> dict[str, float]:
    """Hand the constraint values of ``keys`` to Optuna (``Trial.set_constraint``); return them."""
    limits = {k: v for k, v in config.constraints.items() if k in keys}
    values = constraint_values(trial.user_attrs, limits)
    for key, value in values.items():
        trial.set_constraint(key, value)
    return values


def trial_train_config(config: StudyConfig, params: dict[str, Any], spec: VariantSpec, number: int,
                       out: Path) -> TrainConfig:
    """The trainer's settings for one trial: only what the study sets; the rest are TrainConfig's defaults."""
    settings = config.fixed | params
    chosen = {k: v for k, v in settings.items() if k in TrainConfig.field_names()}
    return TrainConfig(
        data=config.data_path, out=str(out), generator=spec.model_kwargs(), steps=config.steps,
        seconds=config.seconds, eval_every=config.eval_every, log_every=max(1, min(20, config.eval_every)),
        seed=config.seed + number, save_checkpoints=False, **chosen,
    )


class _Reporter:
    """Training events -> trial.report / should_prune, and the per-trial time limit."""

    def __init__(self, trial: optuna.Trial, config: StudyConfig, started: float):
        self.trial = trial
        self.config = config
        self.started = started
        self.metric = config.objectives[0]

    def on_eval(self, record: dict[str, Any]) -> None:
        self._check_time(record["step"])
        value = record.get(self.metric)
        if record["step"] == 0 or value is None or self.config.multi_objective:
            return
        self.trial.report(float(value), record["step"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned by the {self.config.pruner} pruner at step {record['step']} "
                                     f"({self.metric} = {value:.4g})")

    def on_log(self, record: dict[str, Any]) -> None:
        self._check_time(record["step"])

    def _check_time(self, step: int) -> None:
        limit = self.config.trial_timeout_s
        if limit is not None and time.perf_counter() - self.started > limit:
            raise optuna.TrialPruned(f"time limit: still training after {limit:g} s (step {step})")


def run_trial(trial: optuna.Trial, config: StudyConfig, out_root: Path,
              artifacts: optuna.artifacts.FileSystemArtifactStore | None) -> float | list[float]:
    """The objective Optuna calls; see the module docstring."""
    params = suggest(trial, config.space)
    spec = variant_of(config, params)
    trial.set_user_attr("variant", spec.name)
    reason = spec.invalid_reason()
    if reason is not None:
        return _prune(trial, f"invalid: {reason}")
    from bench.profile import flop_counter_counts

    n_params = sum(p.numel() for p in spec.build(device="meta").parameters())
    gflops = flop_counter_counts(spec)[0] / 1e9
    trial.set_user_attr("params", int(n_params))
    trial.set_user_attr("gflops", float(gflops))
    over = [f"{CONSTRAINTS[k]} {trial.user_attrs[CONSTRAINTS[k]]:.4g} > {config.constraints[k]:.4g}"
            for k, value in _record_constraints(trial, config, STATIC_CONSTRAINTS).items() if value > 0]
    if over:
        return _prune(trial, "constraint: " + ", ".join(over))

    train_config = trial_train_config(config, params, spec, trial.number,
                                      out_root / f"trial-{trial.number:04d}-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    try:
        summary = fit(train_config, callbacks=[_Reporter(trial, config, started)])
    except torch.OutOfMemoryError:
        _free_memory()
        return _prune(trial, "oom")
    except NonFiniteLossError as exc:
        trial.set_user_attr("reason", str(exc))
        raise
    except optuna.TrialPruned as exc:
        trial.set_user_attr("reason", str(exc))
        trial.set_user_attr("train_seconds", time.perf_counter() - started)
        raise
    attrs = {
        "train_img_per_s": summary["img_per_s"], "peak_mem_mib": summary["peak_mem_mib"],
        "val_l1": summary["val_l1"], "val_psnr": summary["val_psnr"], "val_ssim": summary["val_ssim"],
        "train_seconds": summary["train_seconds"],
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, float(value))
    _record_constraints(trial, config, ("max_peak_mem_mib",))
    samples = sorted((Path(train_config.out) / "samples").glob("step_*.png"),
                     key=lambda p: int(p.stem.split("_")[1]))
    if artifacts is not None and samples:
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=artifacts, file_path=str(samples[-1]), study_or_trial=trial, mimetype="image/png"
        )
        trial.set_user_attr("sample_artifact_id", artifact_id)
    figures = {"val_l1": summary["val_l1"], "val_psnr": summary["val_psnr"], "val_ssim": summary["val_ssim"],
               "img_per_s": summary["img_per_s"], "gflops": gflops, "params": float(n_params)}
    values = [float(figures[o]) for o in config.objectives]
    for name, value in zip(config.objectives, values, strict=True):
        if math.isnan(value):
            trial.set_user_attr("reason", f"{name} is NaN")
            raise NonFiniteLossError(f"{name} is NaN")
    return values[0] if len(values) == 1 else values


def _prune(trial: optuna.Trial, reason: str):
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
