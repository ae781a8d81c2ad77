"""A generator variant as a frozen, hashable spec: the key every measurement is grouped by."""

from __future__ import annotations

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
        """The model's own message when it rejects this variant, else None."""
        from nectargan.models.unet.model import validate_generator_args

        try:
            validate_generator_args(**self.model_kwargs())
        except ValueError as exc:
            return str(exc)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            return f"batch_size={self.batch_size!r} is not valid: it must be an integer >= 1"
        return None

    def build(self, device: Any = None):
        """Construct the generator (on ``device``, e.g. ``'meta'`` for shape-only work)."""
        import torch

        from nectargan.models.unet.model import UnetGenerator

        reason = self.invalid_reason()
        if reason is not None:
            raise NectarGANError(reason)
        with torch.device(device or "cpu"):
            return UnetGenerator(**self.model_kwargs())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
