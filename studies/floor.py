"""A study's floor: the trivial predictors of its dataset (:mod:`nectargan.data.floor`), recorded once.

The driver computes it before it opens the study (so bad data is an error before the storage is
written) and records it as the study's user attribute ``floor`` (a study that predates the floor gets
it when it is resumed); every trial of a study trains on the same data, crop
size, direction and channels, so one floor serves all of them. A report of a study without the
attribute computes it from the dataset its trials trained on (a complete trial's ``config.json``),
writing nothing; where that is gone the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.variant import VariantSpec
from nectargan.data.floor import Floor, trivial_floor
from nectargan.errors import NectarGANError
from nectargan.train import TrainConfig
from studies.baseline import input_size_of
from studies.config import StudyConfig

FLOOR_ATTR = "floor"


def study_floor(config: StudyConfig) -> Floor:
    """The floor of the study's dataset at its crop size, direction and channels (cached with the dataset)."""
    fixed, spec = config.fixed, VariantSpec()
    in_channels = int(fixed.get("in_channels", spec.in_channels))
    return trivial_floor(config.data_path, input_size_of(config), str(fixed.get("direction", TrainConfig().direction)),
                         in_channels, int(fixed.get("out_channels") or in_channels))


def record_floor(study: optuna.Study, floor: Floor, data: str) -> None:
    """Set the study's ``floor`` attribute (``floor`` of dataset ``data``) unless it holds one."""
    if Floor.from_dict(study.user_attrs.get(FLOOR_ATTR)) is None:
        study.set_user_attr(FLOOR_ATTR, floor.to_dict() | {"data": data})


def floor_of(study: optuna.Study) -> tuple[Floor | None, str]:
    """The study's floor and where it came from, or None and why there is none (reads only)."""
    stored = Floor.from_dict(study.user_attrs.get(FLOOR_ATTR))
    if stored is not None:
        data = study.user_attrs[FLOOR_ATTR].get("data")
        return stored, f"recorded when the study was opened{f' (dataset {data})' if data else ''}"
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    for trial in complete:
        out = trial.user_attrs.get("out")
        try:
            settings = json.loads((Path(out) / "config.json").read_text()) if out else None
        except (OSError, ValueError):
            continue
        if not isinstance(settings, dict) or not settings.get("data"):
            continue
        generator = settings.get("generator") or {}
        in_channels = int(generator.get("in_channels", 3))
        try:
            floor = trivial_floor(settings["data"], int(generator.get("input_size", 256)),
                                  str(settings.get("direction", "AtoB")), in_channels,
                                  int(generator.get("out_channels") or in_channels), write_cache=False)
        except (NectarGANError, OSError):
            break
        return floor, (f"not recorded (the study predates it): computed now from {settings['data']}, "
                       f"the dataset trial {trial.number} trained on")
    return None, ("not recorded (the study predates it) and its dataset was not found, so no trial can be "
                  "marked as learned or not")
