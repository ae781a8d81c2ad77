"""Training settings, and how ``auto`` settings resolve on a device."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from nectargan import runtime
from nectargan.errors import InvalidArgumentError

PRECISIONS = ("auto", *runtime.PRECISIONS)
BYTES_PER_FP32 = 4
# fp32 copies of each parameter: a forward needs the weights; training also gradients and Adam's two moments.
WEIGHT_COPIES = {"weights": 1, "training": 4}
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


@dataclass
class TrainConfig:
    """One training run: the owner of every training default (NectarGAN's unless said otherwise).

    ``None`` in the fast-path switches means "on for CUDA, off for CPU" (``preload``: "when the
    split fits"). The command line and the studies pass only what their user set.

    The budget is ``steps`` and/or ``seconds`` (whichever ends first); the learning rate stays at
    ``lr`` for the first ``1 - decay_fraction`` of the budget, then falls linearly to 0 (pix2pix's
    linear policy, on the fraction of the budget spent instead of epochs).
    """

    data: str = ""
    out: str | None = None
    generator: dict[str, Any] = field(default_factory=lambda: {"input_size": 256})
    d_layers: int = 3
    d_features: int = 64
    batch_size: int = 1
    steps: int | None = None
    seconds: float | None = None
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_gan: float = 1.0
    lambda_l1: float = 100.0
    decay_fraction: float = 0.5
    direction: str = "AtoB"
    load_size: int | None = None
    eval_every: int = 200
    log_every: int = 20
    sample_count: int = 4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    preload: bool | None = None
    num_workers: int = 2
    save_checkpoints: bool = True

    def validate(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad setting."""
        if not self.data:
            raise InvalidArgumentError("data is needed: the folder of a pix2pix-format dataset")
        if self.steps is None and self.seconds is None:
            raise InvalidArgumentError("a budget is needed: give steps and/or seconds")
        checks = [
            ("steps", self.steps, self.steps is None or (isinstance(self.steps, int) and self.steps >= 1), ">= 1"),
            ("seconds", self.seconds, self.seconds is None or (_real(self.seconds) and self.seconds > 0), "> 0"),
            ("batch_size", self.batch_size, isinstance(self.batch_size, int) and self.batch_size >= 1, ">= 1"),
            ("lr", self.lr, _real(self.lr) and self.lr > 0, "> 0"),
            ("beta1", self.beta1, _real(self.beta1) and 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", self.beta2, _real(self.beta2) and 0 <= self.beta2 < 1, "in [0, 1)"),
            ("lambda_gan", self.lambda_gan, _real(self.lambda_gan) and self.lambda_gan >= 0, ">= 0"),
            ("lambda_l1", self.lambda_l1, _real(self.lambda_l1) and self.lambda_l1 >= 0, ">= 0"),
            ("decay_fraction", self.decay_fraction, _real(self.decay_fraction) and 0 <= self.decay_fraction <= 1,
             "in [0, 1]"),
            ("eval_every", self.eval_every, isinstance(self.eval_every, int) and self.eval_every >= 0, ">= 0"),
            ("log_every", self.log_every, isinstance(self.log_every, int) and self.log_every >= 1, ">= 1"),
            ("d_layers", self.d_layers, isinstance(self.d_layers, int) and self.d_layers >= 1, ">= 1"),
            ("precision", self.precision, self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("direction", self.direction, self.direction in ("AtoB", "BtoA"), "'AtoB' or 'BtoA'"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise InvalidArgumentError(f"{name}={value!r} is not valid: it must be {rule}")

    def lr_factor(self, progress: float) -> float:
        """Learning-rate multiplier at ``progress`` (0..1 of the budget spent)."""
        start = 1.0 - self.decay_fraction
        if progress <= start or self.decay_fraction == 0:
            return 1.0
        return max(0.0, (1.0 - progress) / self.decay_fraction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Resolved:
    """The concrete device and fast-path settings a run uses (``auto`` decided)."""

    device: torch.device
    precision: str
    channels_last: bool
    compile: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return runtime.autocast_dtype(self.precision)

    def autocast(self):
        """The autocast context of this run's precision (a no-op for fp32 and tf32)."""
        return runtime.autocast(self.precision, self.device)


def resolve(config: TrainConfig) -> Resolved:
    """The concrete device first, then its defaults for what ``config`` leaves to ``auto`` / None: the
    precision and layout a sweep measures by default on it (:func:`nectargan.runtime.default_precision`;
    channels_last where :func:`~nectargan.runtime.default_layouts` includes it), torch.compile on a GPU."""
    device = runtime.resolve_device(config.device)
    cuda = device.type == "cuda"
    precision = config.precision
    if precision == "auto":
        precision = runtime.default_precision(str(device))
    if precision in runtime.CUDA_ONLY_PRECISIONS and not cuda:
        raise InvalidArgumentError(f"precision={precision!r} needs CUDA; on the CPU use fp32 or bf16")
    channels_last = config.channels_last
    if channels_last is None:
        channels_last = "channels_last" in runtime.default_layouts(str(device))
    return Resolved(
        device=device,
        precision=precision,
        channels_last=channels_last,
        compile=cuda if config.compile is None else config.compile,
    )


def host_memory_bytes() -> int:
    """This machine's memory: the physical RAM, or the cgroup's limit when that is lower (a container)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in _CGROUP_LIMITS:
        try:
            limit = int(path.read_text().strip())
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
        total = min(total, limit)
    return total


def device_memory_bytes(device: torch.device) -> int:
    """Memory of ``device``: the GPU's total memory for CUDA, the host's otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return host_memory_bytes()


def gib(n_bytes: float) -> str:
    """``n_bytes`` in GiB, readable at any size (``0.00391 GiB``, ``23.5 GiB``, ``494,718.6 GiB``)."""
    value = n_bytes / 2**30
    return f"{value:,.1f} GiB" if value >= 1 else f"{value:.3g} GiB"


def memory_reason(what: str, params: int, use: str = "weights", device: torch.device | None = None) -> str | None:
    """Why ``params`` fp32 parameters cannot be held for ``use`` on ``device`` (default: this machine), or None.

    ``use`` is ``"weights"`` (a forward: the weights alone) or ``"training"`` (weights, gradients and
    Adam's two moments: 4 copies). Activations come on top, so passing this check is necessary, not
    sufficient; it exists to refuse, with the figures, what could never fit before allocating it.
    """
    copies = WEIGHT_COPIES[use]
    needed = params * BYTES_PER_FP32 * copies
    where = "this machine" if device is None or device.type != "cuda" else str(device)
    available = host_memory_bytes() if device is None else device_memory_bytes(device)
    if needed <= available:
        return None
    held = "of fp32 weights" if copies == 1 else "for fp32 weights, gradients and 2 Adam moments (4 copies)"
    return (f"{what}: {params:,} parameters need {gib(needed)} {held}, more than the {gib(available)} of "
            f"memory {where} has")
