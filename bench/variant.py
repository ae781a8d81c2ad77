"""A generator variant as a frozen, hashable spec: the key every measurement is grouped by."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from nectargan.errors import NectarGANError


@dataclass(frozen=True)
class VariantSpec:
    """The architecture and input shape of one UnetGenerator variant (defaults: NectarGAN's)."""

    n_downs: int = 6
    features: int = 64
    block_type: str = "UnetBlock"
    upconv_type: str = "Transposed"
    input_size: int = 256
    in_channels: int = 3
    out_channels: int | None = None
    use_dropout_layers: int = 3
    batch_size: int = 1

    def __post_init__(self) -> None:
        # out_channels equal to in_channels is the default model: one variant, one key.
        if self.out_channels is not None and self.out_channels == self.in_channels:
            object.__setattr__(self, "out_channels", None)

    @property
    def key(self) -> str:
        """A canonical string of every field: the identity of this variant in a results store."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def name(self) -> str:
        """A short, stable label such as ``UnetBlock-Transposed-d6-f64-256px``."""
        parts = [self.block_type, self.upconv_type, f"d{self.n_downs}", f"f{self.features}"]
        parts.append(f"{self.input_size}px")
        if self.in_channels != 3 or self.out_channels not in (None, self.in_channels):
            parts.append(f"c{self.in_channels}to{self.out_channels or self.in_channels}")
        if self.use_dropout_layers != 3:
            parts.append(f"drop{self.use_dropout_layers}")
        if self.batch_size != 1:
            parts.append(f"b{self.batch_size}")
        return "-".join(parts)

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~nectargan.models.unet.model.UnetGenerator`."""
        return {
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "features": self.features,
            "n_downs": self.n_downs,
            "use_dropout_layers": self.use_dropout_layers,
            "block_type": self.block_type,
            "upconv_type": self.upconv_type,
            "out_channels": self.out_channels,
        }

    def invalid_reason(self) -> str | None:
        """Why this variant cannot be profiled here, else None: the model's own message when it rejects
        the arguments, or :meth:`resource_reason` when its weights alone exceed this machine's memory."""
        return self.arguments_reason() or self.resource_reason()

    def arguments_reason(self) -> str | None:
        """Why the model rejects these arguments (or the batch size is not valid), else None; cheap."""
        from nectargan.models.unet.model import validate_generator_args

        try:
            validate_generator_args(**self.model_kwargs())
        except ValueError as exc:
            return str(exc)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            return f"batch_size={self.batch_size!r} is not valid: it must be an integer >= 1"
        return None

    def param_count(self) -> int:
        """The generator's parameters, counted on the meta device (nothing is allocated; cached)."""
        from nectargan.models.unet.blocks import get_block

        return _param_count(self, get_block(self.block_type))

    def resource_reason(self, use: str = "weights") -> str | None:
        """Why this machine cannot hold the variant's fp32 ``weights`` (or ``"training"``: x4 for the
        gradients and Adam's moments), with the parameter count and the GiB needed and available; else
        None. A block that cannot even be built on the meta device is left to fail where it is used."""
        from nectargan.train.config import memory_reason

        try:
            params = self.param_count()
        except Exception:
            return None
        return memory_reason(self.name, params, use)

    def build(self, device: Any = None):
        """Construct the generator (on ``device``, e.g. ``'meta'`` for shape-only work).

        Raises :class:`NectarGANError` for an invalid variant; off the meta device also for one whose
        weights this machine cannot hold (:meth:`resource_reason`).
        """
        meta = str(device) == "meta"
        reason = self.arguments_reason() or (None if meta else self.resource_reason())
        if reason is not None:
            raise NectarGANError(reason)
        return self.build_unchecked(device)

    def build_unchecked(self, device: Any = None):
        """Construct the generator without this spec's checks (the model still validates its arguments)."""
        import torch

        from nectargan.models.unet.model import UnetGenerator

        with torch.device(device or "cpu"):
            return UnetGenerator(**self.model_kwargs())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=4096)
def _param_count(spec: VariantSpec, block: type) -> int:  # the block class too: a name can be re-registered
    return sum(p.numel() for p in spec.build_unchecked(device="meta").parameters())
