"""One Optuna trial: suggest a variant and training settings, check it, train it, time it, report back.

A trial is pruned before training when the model rejects the architecture (reason: the model's own
message) or a static constraint (parameters, GFLOPs) is exceeded; it is pruned during training by
the pruner (on the first objective, reported at every evaluation) or by the per-trial time limit;
CUDA out-of-memory prunes it with reason ``oom`` after freeing the memory; a NaN or infinite loss
fails it with the reason; Ctrl-C fails it with reason ``interrupted``.

After training, the generator's inference speed is measured on the study's device (see
:mod:`studies.speed`), interleaved with the baseline architecture's. Every complete trial carries
numeric user attributes (``params``, ``gflops``, ``train_img_per_s``, ``peak_mem_mib``, ``val_l1``,
``val_psnr``, ``val_ssim``, ``train_seconds``, ``steps``, ``images``, ``infer_img_per_s`` and the
other ``infer_*`` figures), ``variant``, ``budget_bound`` (``steps`` or ``seconds``: which budget
ended training), ``out`` (its folder) and ``weights`` (its generator, NectarGAN's checkpoint format);
``settings`` (every searchable setting as trained: searched, fixed or default); a trial that did not
complete carries ``reason``; ``seed`` is the training seed. The baseline trial (see :mod:`studies.baseline`)
carries ``baseline = True``, its repeats ``baseline_repeat = k``; they train and are timed alike.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.variant import VariantSpec
from nectargan.errors import InvalidArgumentError
from nectargan.models import load_generator, save_checkpoint
from nectargan.train import NonFiniteLossError, TrainConfig, fit, resolve
from studies import baseline as baseline_mod
from studies.config import CONSTRAINTS, SEARCHABLE, StudyConfig
from studies.space import suggest
from studies.speed import inference_attrs, inference_mode, measure_inference

STATIC_CONSTRAINTS = ("max_params", "max_gflops")
INTERRUPTED = "interrupted (Ctrl-C)"
__all__ = ["constraint_values", "run_trial", "suggest", "trained_params", "trial_train_config", "variant_of"]


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
        seed=config.seed + number, save_checkpoints=True, **chosen,
    )


class _Reporter:
    """Training events -> trial.report / should_prune, and the per-trial time limit."""

    def __init__(self, trial: optuna.Trial, config: StudyConfig, started: float, prune: bool = True):
        self.trial = trial
        self.config = config
        self.started = started
        self.metric = config.objectives[0]
        self.prune = prune

    def on_eval(self, record: dict[str, Any]) -> None:
        self._check_time(record["step"])
        value = record.get(self.metric)
        if record["step"] == 0 or value is None or self.config.multi_objective:
            return
        self.trial.report(float(value), record["step"])
        if self.prune and self.trial.should_prune():
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
    try:
        return _run_trial(trial, config, out_root, artifacts)
    except (KeyboardInterrupt, Exception) as exc:
        if not _interrupted(exc):
            raise
        # Optuna marks the trial FAIL; say why (a lost storage leaves the FAIL state alone)
        with contextlib.suppress(Exception):
            trial.set_user_attr("reason", INTERRUPTED)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt from exc


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C itself, or an error raised while handling it (torch.save's zip writer does that)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__context__
    return False


def trained_params(trial: optuna.trial.FrozenTrial, config: StudyConfig) -> dict[str, Any]:
    """The settings a finished trial trained with on top of ``[fixed]``: the baseline's for the baseline and its
    repeats (the same rule as when it ran), else its searched parameters."""
    if baseline_mod.is_reference(trial):
        settings = baseline_mod.baseline_settings(config)
        if settings is None:
            raise InvalidArgumentError(f"trial {trial.number} is a baseline trial, but the config has no baseline: "
                                       f"{baseline_mod.why_no_baseline(config)}")
        return settings
    return dict(trial.params)


def _settings(trial: optuna.Trial, config: StudyConfig) -> tuple[dict[str, Any], bool]:
    """The trial's searched settings and whether it is the baseline or one of its repeats (a duplicate is
    pruned)."""
    if not baseline_mod.is_reference(trial):
        return suggest(trial, config.space), False
    duplicate = baseline_mod.duplicate_of(trial)
    repeat = baseline_mod.repeat_of(trial)
    if duplicate is not None:
        what = "baseline" if repeat is None else f"baseline repeat {repeat}"
        _prune(trial, f"duplicate {what}: trial {duplicate} is this study's {what}")
    settings = baseline_mod.baseline_settings(config)
    if settings is None:
        _prune(trial, f"no baseline: {baseline_mod.why_no_baseline(config)}")
    in_space = {k: config.space[k] for k in baseline_mod.enqueueable(config, settings)}
    suggested = suggest(trial, in_space)  # the enqueued values come back; samplers see them as params
    wrong = {k: v for k, v in suggested.items() if v != settings[k]}
    if wrong:
        _prune(trial, f"baseline trial holds other values than the baseline's: {wrong}")
    return settings, True  # over [fixed] too: the baseline is NectarGAN's generator and training defaults


def effective_settings(config: StudyConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Every searchable setting as the trial trains it: searched, fixed, else the owner's default."""
    spec, train = VariantSpec(), TrainConfig()
    settings = config.fixed | params
    return {k: settings.get(k, getattr(spec, k, None) if k in baseline_mod.ARCH_KEYS else getattr(train, k))
            for k in SEARCHABLE}


def _run_trial(trial: optuna.Trial, config: StudyConfig, out_root: Path,
               artifacts: optuna.artifacts.FileSystemArtifactStore | None) -> float | list[float]:
    params, reference = _settings(trial, config)
    spec = variant_of(config, params)
    trial.set_user_attr("variant", spec.name)
    trial.set_user_attr("settings", effective_settings(config, params))
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
    if over and not reference:  # the baseline (and its repeats) is the reference: recorded as infeasible, never pruned
        return _prune(trial, "constraint: " + ", ".join(over))

    out = out_root / f"trial-{trial.number:04d}-{uuid.uuid4().hex[:8]}"
    train_config = trial_train_config(config, params, spec, trial.number, out)
    trial.set_user_attr("out", str(out))
    trial.set_user_attr("seed", train_config.seed)  # the baseline's repeats differ in it alone
    started = time.perf_counter()
    try:
        summary = fit(train_config, callbacks=[_Reporter(trial, config, started, prune=not reference)])
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
    bound = "steps" if config.steps is not None and summary["steps"] >= config.steps else "seconds"
    figures = {
        "train_img_per_s": summary["img_per_s"], "peak_mem_mib": summary["peak_mem_mib"],
        "val_l1": summary["val_l1"], "val_psnr": summary["val_psnr"], "val_ssim": summary["val_ssim"],
        "train_seconds": summary["train_seconds"],
    }
    attrs: dict[str, Any] = {key: float(value) for key, value in figures.items()} | {
        "steps": int(summary["steps"]), "images": int(summary["images"]), "budget_bound": bound,
        "weights": str(out / "netG.pth.tar"),
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    _record_constraints(trial, config, ("max_peak_mem_mib",))
    generator = _keep_generator_only(out, spec)
    infer = _time_inference(generator, spec, train_config, config, reference)
    for key, value in infer.items():
        trial.set_user_attr(key, value)
    samples = sorted((out / "samples").glob("step_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if artifacts is not None and samples:
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=artifacts, file_path=str(samples[-1]), study_or_trial=trial, mimetype="image/png"
        )
        trial.set_user_attr("sample_artifact_id", artifact_id)
    figures = {"val_l1": summary["val_l1"], "val_psnr": summary["val_psnr"], "val_ssim": summary["val_ssim"],
               "img_per_s": summary["img_per_s"], "infer_img_per_s": infer["infer_img_per_s"], "gflops": gflops,
               "params": float(n_params)}
    values = [float(figures[o]) for o in config.objectives]
    for name, value in zip(config.objectives, values, strict=True):
        if math.isnan(value):
            trial.set_user_attr("reason", f"{name} is NaN")
            raise NonFiniteLossError(f"{name} is NaN")
    return values[0] if len(values) == 1 else values


def _keep_generator_only(out: Path, spec: VariantSpec) -> torch.nn.Module:
    """Load the trained generator; keep its weights alone (no optimizer state, no discriminator) on disk."""
    path = out / "netG.pth.tar"
    generator = load_generator(path, input_size=spec.input_size, use_dropout_layers=spec.use_dropout_layers)
    save_checkpoint(path, generator)
    (out / "netD.pth.tar").unlink(missing_ok=True)
    return generator


def _time_inference(generator: torch.nn.Module, spec: VariantSpec, train_config: TrainConfig, config: StudyConfig,
                    is_baseline: bool) -> dict[str, Any]:
    """Time the trained generator, interleaved with the baseline architecture unless this is the baseline."""
    run = resolve(train_config)
    models = {"trial": generator}
    settings = baseline_mod.baseline_settings(config) if config.baseline and not is_baseline else None
    if settings is not None:
        reference = _reference_model(variant_of(config, {k: settings[k] for k in baseline_mod.ARCH_KEYS}))
        if reference is not None:
            models["baseline"] = reference
    measured = measure_inference(models, train_config.batch_size, spec.input_size, spec.in_channels, run,
                                 blocks=config.infer_blocks, min_block_s=config.infer_min_block_s)
    attrs = inference_attrs(measured["trial"], train_config.batch_size, inference_mode(run.device),
                            measured.get("baseline"))
    if hasattr(os, "getloadavg"):  # how busy the machine was: timings on a shared machine drift with it
        attrs["load_avg_1m"] = os.getloadavg()[0]
    attrs["device"] = _device_name(run.device)
    return attrs


@functools.cache
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(device)}"
    from bench.env import collect_env

    return f"cpu: {collect_env()['cpu']}, {torch.get_num_threads()} threads"


_REFERENCES: dict[VariantSpec, torch.nn.Module] = {}


def _reference_model(spec: VariantSpec) -> torch.nn.Module | None:
    """The baseline architecture with seeded weights, built once per worker (speed needs no trained weights)."""
    if spec not in _REFERENCES:
        if spec.invalid_reason() is not None:
            return None
        _REFERENCES.clear()
        torch.manual_seed(0)
        _REFERENCES[spec] = spec.build()
    return _REFERENCES[spec]


def _prune(trial: optuna.Trial, reason: str):
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
