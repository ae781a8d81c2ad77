"""pix2pix training of a UnetGenerator against a PatchGAN discriminator (``fit``)."""

from nectargan.runtime import resolve_device
from nectargan.train.config import TrainConfig, resolve
from nectargan.train.loop import NonFiniteLossError, TrainingInterrupted, evaluate, fit
from nectargan.train.run_folder import METRIC_COLUMNS
from nectargan.train.step import Pix2PixStep

__all__ = [
    "METRIC_COLUMNS", "NonFiniteLossError", "Pix2PixStep", "TrainConfig", "TrainingInterrupted", "evaluate", "fit",
    "resolve", "resolve_device",
]
