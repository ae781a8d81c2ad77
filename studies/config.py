"""Study configs: TOML files that define a search space, objectives, constraints and a budget.

The sections and their keys (``studies/smoke.toml`` and ``studies/default.toml`` are complete
examples; a key left out takes :class:`StudyConfig`'s default, written there only)::

    description = "..."
    [study]        name, objectives (several: a multi-objective study with a Pareto front),
                   sampler (tpe: multivariate, grouped | nsga2 | gp | random),
                   pruner (median | hyperband | none; none with several objectives), seed, n_trials,
                   baseline (trial 0 is NectarGAN's default generator, see studies.baseline),
                   baseline_seeds (the baseline's trials, each with its own seed: PSNR's noise; default 3)
    [data]         path; task, size, count, seed: built from scikit-image's photos when missing and task is given
    [budget]       per trial: steps and/or seconds, eval_every, trial_timeout_s (a trial still running then
                   is pruned with the reason), infer_blocks and infer_min_block_s (studies.speed)
    [space]        a list is categorical, e.g. n_downs = [3, 4]; a table is a range,
                   e.g. lr = { low = 1e-4, high = 1e-3, log = true }
    [fixed]        settings held constant, e.g. input_size = 64
    [constraints]  Optuna constraints (max_params, max_gflops, max_peak_mem_mib): a trial over a limit is infeasible
    [executor]     where the workers run (bench.executors)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.executors import EXECUTOR_KEYS, ExecutorError, executor_config
from bench.tomlfile import check_keys, number, parse_toml, read_toml, section
from nectargan.errors import NectarGANError, did_you_mean

# name -> direction. img_per_s is training throughput; infer_img_per_s the trained generator's
# no-grad forward, timed after training on the study's device (studies.speed).
OBJECTIVES: dict[str, str] = {
    "val_l1": "minimize", "val_psnr": "maximize", "val_ssim": "maximize",
    "img_per_s": "maximize", "infer_img_per_s": "maximize", "gflops": "minimize", "params": "minimize",
}
ARCH_PARAMS = {"n_downs": int, "features": int, "block_type": str, "upconv_type": str, "use_dropout_layers": int}
TRAIN_PARAMS = {"lr": float, "beta1": float, "lambda_l1": float, "batch_size": int}
SEARCHABLE = ARCH_PARAMS | TRAIN_PARAMS
FIXED_PARAMS = SEARCHABLE | {"input_size": int, "in_channels": int, "out_channels": int, "d_layers": int,
                             "d_features": int, "direction": str, "precision": str, "device": str,
                             "compile": bool, "channels_last": bool}
SAMPLERS = ("tpe", "nsga2", "gp", "random")
PRUNERS = ("median", "hyperband", "none")
CONSTRAINTS = {"max_params": "params", "max_gflops": "gflops", "max_peak_mem_mib": "peak_mem_mib"}
SECTIONS = ("description", "study", "data", "budget", "space", "fixed", "constraints", "executor")
STUDY_KEYS = ("name", "objectives", "sampler", "pruner", "seed", "n_trials", "baseline", "baseline_seeds")
DATA_KEYS = ("path", "task", "size", "count", "seed")
BUDGET_KEYS = ("steps", "seconds", "eval_every", "trial_timeout_s", "infer_blocks", "infer_min_block_s")
BUILTIN = Path(__file__).parent


class StudyConfigError(NectarGANError, ValueError):
    """A study config with a bad section, key, type or value."""


@dataclass(frozen=True)
class Range:
    """A numeric range to sample from (``int`` when both ends are integers and ``log`` is off)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.low, bool)


@dataclass(frozen=True)
class StudyConfig:
    """A parsed, checked study config. Its field defaults are the defaults of the keys a TOML file leaves
    out (written here only), with two rules on top: ``pruner`` is ``none`` with several objectives,
    and ``steps`` is unset when the budget gives ``seconds`` alone. ``data_size`` defaults to
    ``[fixed].input_size`` where that is set."""

    name: str
    objectives: list[str] = field(default_factory=lambda: ["val_l1"])
    space: dict[str, list[Any] | Range] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    n_trials: int = 6
    data_path: str = "results/data/denoise-64"
    data_task: str | None = None
    data_size: int = 64
    data_count: int = 200
    data_seed: int = 0
    steps: int | None = 200
    seconds: float | None = None
    eval_every: int = 50
    trial_timeout_s: float | None = None
    infer_blocks: int = 3
    infer_min_block_s: float = 0.1
    baseline: bool = True
    baseline_seeds: int = 3  # the baseline's trials, each with its own seed (studies.baseline): PSNR's noise
    executor: dict[str, Any] = field(default_factory=dict)  # [executor]: where the workers run (bench.executors)
    description: str = ""
    source: str = "<string>"
    sha256: str = ""

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


# The value of a key left out: StudyConfig's own default (see its docstring).
_DEFAULTS = StudyConfig(name="")


def load_study_config(config: str | Path) -> StudyConfig:
    """Read and validate a study config (a path or a built-in config name)."""
    file = read_toml(config, BUILTIN, "study config", StudyConfigError)
    return _config_from(file.data, source=file.source, name=file.name, sha256=file.sha256)


def _table(data: dict, name: str, valid: Any, where: str) -> dict:
    return section(data, name, valid, where, StudyConfigError)


def _number(where: str, value: Any, kind: type = float, minimum: float | None = None) -> Any:
    return number(where, value, StudyConfigError, kind=kind, minimum=minimum)


def parse_study_config(text: str, source: str = "<string>", name: str = "study", sha256: str = "") -> StudyConfig:
    """Parse and validate; every problem is a one-line :class:`StudyConfigError` naming the entry."""
    return _config_from(parse_toml(text, source, "study config", StudyConfigError), source, name, sha256)


def _config_from(data: dict[str, Any], source: str, name: str, sha256: str) -> StudyConfig:
    """The checked config of a parsed TOML table: each section's keys, then each section's values."""
    where = source
    check_keys(where, "", data, SECTIONS, StudyConfigError)
    study = _table(data, "study", STUDY_KEYS, where)
    data_t = _table(data, "data", DATA_KEYS, where)
    budget = _table(data, "budget", BUDGET_KEYS, where)
    space_t = _table(data, "space", SEARCHABLE, where)
    fixed = _table(data, "fixed", FIXED_PARAMS, where)
    constraints_t = _table(data, "constraints", CONSTRAINTS, where)
    executor_t = _table(data, "executor", EXECUTOR_KEYS, where)
    _check_executor(where, executor_t)
    settings = _study_settings(where, study, name)
    space = _space(where, space_t)
    _check_fixed(where, fixed, space)
    constraints = {k: _number(f"{where}: [constraints].{k}", v, minimum=0) for k, v in constraints_t.items()}
    settings |= _budget_settings(where, budget)
    description = data.get("description", _DEFAULTS.description)
    if not isinstance(description, str):
        raise StudyConfigError(f"{where}: description must be a string")
    settings |= _data_settings(where, data_t, fixed)
    return StudyConfig(space=space, fixed=dict(fixed), constraints=constraints, executor=dict(executor_t),
                       description=description, source=source, sha256=sha256, **settings)


def _check_executor(where: str, executor: dict[str, Any]) -> None:
    """[executor]: checked now, applied by the command with its flags on top."""
    try:
        executor_config(executor, where, table_only=True)
    except ExecutorError as exc:
        raise StudyConfigError(str(exc)) from None
    if "shards" in executor:
        raise StudyConfigError(f"{where}: [executor].shards splits a sweep's grid; a study runs as many jobs as "
                               "its workers (--workers)")


def _study_settings(where: str, study: dict[str, Any], default_name: str) -> dict[str, Any]:
    """[study]: name, objectives, sampler, pruner, seed, n_trials, baseline and baseline_seeds, checked."""
    objectives = _objectives(where, study.get("objectives", _DEFAULTS.objectives))
    sampler = study.get("sampler", _DEFAULTS.sampler)
    if sampler not in SAMPLERS:
        raise StudyConfigError(f"{where}: [study].sampler = {sampler!r}{did_you_mean(str(sampler), SAMPLERS)}; "
                               f"valid: {', '.join(SAMPLERS)}")
    pruner = study.get("pruner", _DEFAULTS.pruner if len(objectives) == 1 else "none")
    if pruner not in PRUNERS:
        raise StudyConfigError(f"{where}: [study].pruner = {pruner!r}{did_you_mean(str(pruner), PRUNERS)}; "
                               f"valid: {', '.join(PRUNERS)}")
    if pruner != "none" and len(objectives) > 1:
        raise StudyConfigError(
            f"{where}: [study].pruner = {pruner!r} cannot be used with {len(objectives)} objectives: Optuna "
            "cannot prune a multi-objective study; set pruner = 'none'"
        )
    baseline = study.get("baseline", _DEFAULTS.baseline)
    if not isinstance(baseline, bool):
        raise StudyConfigError(f"{where}: [study].baseline = {baseline!r} must be true or false")
    name = study.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise StudyConfigError(f"{where}: [study].name must be a non-empty string")
    return {
        "name": name, "objectives": objectives, "sampler": sampler, "pruner": pruner, "baseline": baseline,
        "seed": _number(f"{where}: [study].seed", study.get("seed", _DEFAULTS.seed), int),
        "n_trials": _number(f"{where}: [study].n_trials", study.get("n_trials", _DEFAULTS.n_trials), int, 1),
        "baseline_seeds": _number(f"{where}: [study].baseline_seeds",
                                  study.get("baseline_seeds", _DEFAULTS.baseline_seeds), int, 1),
    }


def _objectives(where: str, objectives: Any) -> list[str]:
    """[study].objectives: one name or a non-empty list of distinct known ones."""
    if isinstance(objectives, str):
        objectives = [objectives]
    if not isinstance(objectives, list) or not objectives:
        raise StudyConfigError(f"{where}: [study].objectives must be a non-empty list, e.g. ['val_l1']")
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise StudyConfigError(
                f"{where}: [study].objectives has unknown objective {objective!r}"
                f"{did_you_mean(str(objective), OBJECTIVES)}; valid: {', '.join(OBJECTIVES)}"
            )
    if len(set(objectives)) != len(objectives):
        raise StudyConfigError(f"{where}: [study].objectives lists an objective twice")
    return list(objectives)


def _space(where: str, table: dict[str, Any]) -> dict[str, list[Any] | Range]:
    """[space]: a non-empty list of choices (categorical) or a range table per searched setting."""
    space: dict[str, list[Any] | Range] = {}
    for key, value in table.items():
        entry = f"{where}: [space].{key}"
        if isinstance(value, list):
            if not value:
                raise StudyConfigError(f"{entry} is empty; give at least one value")
            for v in value:
                _check_type(entry, key, v)
                _check_name(entry, key, v)
            space[key] = value
        elif isinstance(value, dict):
            space[key] = _range(entry, key, value)
        else:
            raise StudyConfigError(f"{entry} must be a list (categorical) or a table {{ low = .., high = .. }}")
    return space


def _check_fixed(where: str, fixed: dict[str, Any], space: dict[str, Any]) -> None:
    """[fixed]: each value of its setting's type and known name, and not searched as well."""
    for key, value in fixed.items():
        _check_type(f"{where}: [fixed].{key}", key, value)
        _check_name(f"{where}: [fixed].{key}", key, value)
        if key in space:
            raise StudyConfigError(f"{where}: {key} is both searched ([space]) and fixed ([fixed]); keep one")


def _budget_settings(where: str, budget: dict[str, Any]) -> dict[str, Any]:
    """[budget]: steps and/or seconds per trial, eval_every, the trial time limit and the inference timing."""
    steps = budget.get("steps", _DEFAULTS.steps if "seconds" not in budget else None)
    seconds = budget.get("seconds", _DEFAULTS.seconds)
    if steps is not None:
        _number(f"{where}: [budget].steps", steps, int, 1)
    if seconds is not None:
        _number(f"{where}: [budget].seconds", seconds, float, 0.001)
    eval_every = _number(f"{where}: [budget].eval_every", budget.get("eval_every", _DEFAULTS.eval_every), int, 1)
    timeout = budget.get("trial_timeout_s", _DEFAULTS.trial_timeout_s)
    if timeout is not None:
        _number(f"{where}: [budget].trial_timeout_s", timeout, float, 0.001)
    infer_blocks = _number(f"{where}: [budget].infer_blocks", budget.get("infer_blocks", _DEFAULTS.infer_blocks),
                           int, 1)
    infer_min_block_s = number(f"{where}: [budget].infer_min_block_s",
                               budget.get("infer_min_block_s", _DEFAULTS.infer_min_block_s),
                               StudyConfigError, above=0)
    return {"steps": steps, "seconds": seconds, "eval_every": eval_every, "trial_timeout_s": timeout,
            "infer_blocks": infer_blocks, "infer_min_block_s": float(infer_min_block_s)}


def _data_settings(where: str, table: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """[data]: the dataset folder, and the task, size, count and seed to build it with when it is missing."""
    task = table.get("task", _DEFAULTS.data_task)
    from nectargan.data.samples import TASKS

    if task is not None and task not in TASKS:
        raise StudyConfigError(f"{where}: [data].task = {task!r}{did_you_mean(str(task), TASKS)}; "
                               f"valid: {', '.join(TASKS)}")
    path = table.get("path", _DEFAULTS.data_path)
    if not isinstance(path, str) or not path:
        raise StudyConfigError(f"{where}: [data].path must be a folder path")
    size = table.get("size", fixed.get("input_size", _DEFAULTS.data_size))
    return {
        "data_path": path, "data_task": task,
        "data_size": _number(f"{where}: [data].size", size, int, 32),
        "data_count": _number(f"{where}: [data].count", table.get("count", _DEFAULTS.data_count), int, 3),
        "data_seed": _number(f"{where}: [data].seed", table.get("seed", _DEFAULTS.data_seed), int),
    }


def _check_type(where: str, key: str, value: Any) -> None:
    want = FIXED_PARAMS[key]
    if want is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
    if not ok:
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[want]
        raise StudyConfigError(f"{where} has {value!r} ({type(value).__name__}); it must be {kind}")


def _check_name(where: str, key: str, value: Any) -> None:
    """Block and upsampling names must be known (a typo would prune every trial that drew it)."""
    if key == "block_type":
        from nectargan.models.unet.blocks import list_blocks

        known = list_blocks()
    elif key == "upconv_type":
        from nectargan.models.unet.blocks import UPCONV_TYPES

        known = list(UPCONV_TYPES)
    else:
        return
    if value not in known:
        raise StudyConfigError(f"{where} has unknown name {value!r}{did_you_mean(str(value), known)}; "
                               f"known: {', '.join(known)}")


def _range(where: str, key: str, table: dict) -> Range:
    check_keys(where, "", table, ("low", "high", "log", "step"), StudyConfigError)
    if FIXED_PARAMS[key] is str:
        raise StudyConfigError(f"{where} is a name, not a number: give a list of choices")
    if "low" not in table or "high" not in table:
        raise StudyConfigError(f"{where} needs both low and high")
    kind = FIXED_PARAMS[key]
    low = _number(f"{where}.low", table["low"], kind)
    high = _number(f"{where}.high", table["high"], kind)
    if not low < high:
        raise StudyConfigError(f"{where}: low = {low} must be below high = {high} (the range is empty or inverted)")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise StudyConfigError(f"{where}.log must be true or false")
    if log and low <= 0:
        raise StudyConfigError(f"{where}: a log range needs low > 0, got {low}")
    step = table.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, kind, 0)
        if log:
            raise StudyConfigError(f"{where}: step and log cannot be combined (Optuna)")
    return Range(low, high, log, step)
