"""Where and how a model runs: device names, numeric precisions and torch.compile's counters.

One owner for these facts; the trainer (:mod:`nectargan.train`), the measuring harness (``bench``)
and the studies all import them from here.

Devices, one grammar everywhere: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``
(the first visible GPU), ``cuda:N``, and, where several devices make sense (a sweep with one worker
per GPU), ``cuda:all``.

Precisions: ``fp32`` (TF32 off), ``tf32`` (fp32 tensors, TF32 matmuls and convolutions on CUDA),
``bf16`` and ``fp16`` (autocast; fp16 training needs a GradScaler).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from nectargan.errors import InvalidArgumentError

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
CUDA_ONLY_PRECISIONS: tuple[str, ...] = ("tf32", "fp16")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or cuda:all"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision; None for fp32 and tf32 (no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (disabled for fp32 and tf32)."""
    dtype = autocast_dtype(precision)
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def set_tf32(precision: str) -> None:
    """Turn TF32 matmuls and convolutions on exactly when ``precision`` is ``tf32``."""
    enabled = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def precision_reason(precision: str, device: torch.device | str) -> str | None:
    """Why ``precision`` cannot run on ``device`` (None when it can)."""
    if precision not in PRECISIONS:
        return f"precision={precision!r} is not valid: use one of {', '.join(PRECISIONS)}"
    if torch.device(device).type != "cuda" and precision in CUDA_ONLY_PRECISIONS:
        return f"precision={precision!r} needs CUDA"
    return None


@dataclass(frozen=True)
class Device:
    """A device name, parsed once (see the module docstring for the grammar): what it names, before the
    machine is asked. ``kind`` is ``auto``, ``cpu`` or ``cuda``; ``index`` is N of ``cuda:N``; ``all``
    is ``cuda:all``. Everything else that needs to know what a device string means asks this."""

    kind: str
    index: int | None = None
    all: bool = False

    @classmethod
    def parse(cls, name: object) -> Device:
        """Raises :class:`InvalidArgumentError` for anything outside the grammar."""
        if isinstance(name, Device):
            return name
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"device={name!r} is not valid: use {DEVICE_FORMS}")
        if name in ("auto", "cpu"):
            return cls(name)
        kind, _, index = name.partition(":")
        if kind != "cuda" or (index and index != "all" and not index.isdigit()):
            raise InvalidArgumentError(f"device={name!r} is not valid: use {DEVICE_FORMS}")
        return cls("cuda", int(index) if index.isdigit() else None, index == "all")

    @property
    def label(self) -> str:
        """The name back: ``cpu``, ``cuda``, ``cuda:1``, ``cuda:all``, ``auto``."""
        if self.kind != "cuda":
            return self.kind
        return "cuda:all" if self.all else (f"cuda:{self.index}" if self.index is not None else "cuda")

    @property
    def cuda(self) -> bool:
        """Names a GPU. (``auto`` is decided by :meth:`resolve`.)"""
        return self.kind == "cuda"

    @staticmethod
    def visible() -> str | None:
        """The GPUs this process may see, as the scheduler set them (``CUDA_VISIBLE_DEVICES``; None: all)."""
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    def decided(self) -> Device:
        """``auto`` decided on this machine (``cuda`` when CUDA is available, else ``cpu``); others as they are."""
        if self.kind != "auto":
            return self
        return Device("cuda") if torch.cuda.is_available() else Device("cpu")

    def resolve(self) -> list[str]:
        """The concrete devices on this machine, e.g. ``['cuda:0', 'cuda:1']`` for ``cuda:all``.

        Raises:
            InvalidArgumentError: a CUDA device that is not there.
        """
        if self.kind == "auto":
            return ["cuda:0" if torch.cuda.is_available() else "cpu"]
        if self.kind == "cpu":
            return ["cpu"]
        if not torch.cuda.is_available():
            raise InvalidArgumentError(
                f"device={self.label!r}: CUDA is not available on this machine (torch {torch.__version__}); use "
                "device 'cpu'"
            )
        count = torch.cuda.device_count()
        if self.all:
            return [f"cuda:{i}" for i in range(count)]
        number = self.index or 0
        if number >= count:
            raise InvalidArgumentError(f"device={self.label!r}: only {count} CUDA device(s) are visible")
        return [f"cuda:{number}"]


def resolve_devices(name: str) -> list[str]:
    """A device name (see the module docstring) -> the concrete devices, e.g. ``['cuda:0', 'cuda:1']``.

    Raises:
        InvalidArgumentError: for a malformed name, or a CUDA device that is not there.
    """
    return Device.parse(name).resolve()


def default_precision(device: Device | str) -> str:
    """What runs fastest by default: bf16 on a GPU that has it, fp32 elsewhere (train and sweeps alike)."""
    parsed = Device.parse(device).decided()
    if not parsed.cuda:
        return "fp32"
    # a GPU this machine does not have (a cluster's driver): assume bf16, as every GPU since Ampere has it
    return "bf16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "fp32"


def default_layouts(device: Device | str) -> list[str]:
    """Memory layouts measured by default: both on a GPU (channels_last usually wins there), NCHW on the CPU."""
    return ["nchw", "channels_last"] if Device.parse(device).decided().cuda else ["nchw"]


def resolve_device(name: str) -> torch.device:
    """One device: like :func:`resolve_devices`, but ``cuda:all`` is refused."""
    if name == "cuda:all":
        raise InvalidArgumentError(f"device={name!r} names several devices here; use auto, cpu, cuda or cuda:N")
    return torch.device(resolve_devices(name)[0])


def dynamo_counts() -> dict[str, int]:
    """Frames compiled so far and graph breaks seen, from torch._dynamo's counters.

    The difference of two readings around a region is what that region compiled: a frame compiled
    after warm-up is a recompile.
    """
    from torch._dynamo.utils import counters

    return {
        "frames": int(counters["frames"]["total"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }
