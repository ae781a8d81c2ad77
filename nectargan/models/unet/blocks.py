"""UNet blocks and the block registry (NectarGAN's drop-in block system).

A block serves both directions of the UNet. Its constructor signature is the contract every block,
built-in or registered by a user, must follow::

    Block(in_channels, out_channels, upconv_type, activation, norm,
          down=True, bias=True, use_dropout=False)

and it must change the spatial size by exactly 2 (halve when ``down``, double otherwise).

Built-in blocks register themselves on import under their class names; configs and the CLI refer to
blocks by these names, never by import path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar, overload

import torch
from torch import nn

from nectargan.errors import InvalidArgumentError, did_you_mean

UPCONV_TYPES: tuple[str, ...] = ("Transposed", "Bilinear")
ACTIVATIONS: tuple[str | None, ...] = ("leaky", "relu", "tanh", None)
NORMS: tuple[str | None, ...] = ("instance", None)

_REGISTRY: dict[str, type[nn.Module]] = {}
BlockT = TypeVar("BlockT", bound=type[nn.Module])


@overload
def register_block(cls: BlockT, *, name: str | None = None, overwrite: bool = False) -> BlockT: ...
@overload
def register_block(
    cls: None = None, *, name: str | None = None, overwrite: bool = False
) -> Callable[[BlockT], BlockT]: ...
def register_block(cls=None, *, name=None, overwrite=False):
    """Register a block class under ``name`` (default: the class name).

    Use as ``@register_block`` or ``@register_block(name="MyBlock")``. Registering a different class
    under a taken name raises unless ``overwrite=True``.
    """

    def add(block_cls: BlockT) -> BlockT:
        if not (isinstance(block_cls, type) and issubclass(block_cls, nn.Module)):
            raise InvalidArgumentError(
                f"register_block: {_describe(block_cls)} is not valid: a block must be an nn.Module subclass"
            )
        _check_signature(block_cls, "register_block")
        key = name or block_cls.__name__
        known = _REGISTRY.get(key)
        if known is not None and known is not block_cls and not overwrite:
            raise InvalidArgumentError(
                f"register_block: name {key!r} is already taken by {known.__module__}."
                f"{known.__qualname__}; pass overwrite=True or choose another name"
            )
        _REGISTRY[key] = block_cls
        return block_cls

    return add if cls is None else add(cls)


def list_blocks() -> list[str]:
    """Names of the registered blocks, in registration order."""
    return list(_REGISTRY)


def get_block(name: str) -> type[nn.Module]:
    """The block class registered as ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"block_type={name!r} is not valid: known blocks are "
            f"{', '.join(repr(n) for n in _REGISTRY)}{did_you_mean(name, _REGISTRY)}"
        ) from None


def resolve_block(block_type: str | type[nn.Module]) -> type[nn.Module]:
    """Accept a registered name or an nn.Module subclass taking the block arguments; return the class."""
    if isinstance(block_type, str):
        return get_block(block_type)
    if isinstance(block_type, type) and issubclass(block_type, nn.Module):
        _check_signature(block_type, "block_type")
        return block_type
    hint = " (pass the class, not an instance)" if isinstance(block_type, nn.Module) else ""
    raise InvalidArgumentError(
        f"block_type={_describe(block_type)} is not valid{hint}: pass an nn.Module subclass or one of the "
        f"registered names {', '.join(repr(n) for n in _REGISTRY)}"
    )


_BLOCK_ARGS = {"upconv_type": "Transposed", "activation": None, "norm": None, "down": True, "bias": True,
               "use_dropout": False}


def _describe(value: object) -> str:
    if isinstance(value, nn.Module):
        return f"<{type(value).__name__} instance>"
    return value.__name__ if isinstance(value, type) else repr(value)


def _check_signature(block_cls: type[nn.Module], what: str) -> None:
    """A block must accept (in_channels, out_channels, upconv_type, activation, norm, down, bias, use_dropout)."""
    try:
        inspect.signature(block_cls).bind(1, 1, **_BLOCK_ARGS)
    except TypeError as exc:
        raise InvalidArgumentError(
            f"{what}={block_cls.__name__} is not valid: a block must accept (in_channels, out_channels, "
            f"upconv_type, activation, norm, down=True, bias=True, use_dropout=False) ({exc})"
        ) from None
    except ValueError:  # no introspectable signature (some C types): let construction decide
        return


def block_name(block_cls: type[nn.Module]) -> str:
    """The registry name of ``block_cls`` (its class name when it is not registered)."""
    for key, value in _REGISTRY.items():
        if value is block_cls:
            return key
    return block_cls.__name__


def _resample_layers(
    in_channels: int, out_channels: int, upconv_type: str, down: bool, bias: bool
) -> list[nn.Module]:
    """The layers that change the spatial size by 2; the only ones with weights."""
    if down:
        return [
            nn.Conv2d(
                in_channels, out_channels, kernel_size=4, stride=2, padding=1,
                bias=bias, padding_mode="reflect",
            )
        ]
    if upconv_type == "Transposed":
        return [nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)]
    if upconv_type == "Bilinear":
        # NectarGAN gives this 3x3 conv a bias whatever `bias` says; kept for checkpoint parity.
        return [
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.ReflectionPad2d(1),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=0),
        ]
    raise InvalidArgumentError(
        f"upconv_type={upconv_type!r} is not valid: use one of "
        f"{', '.join(repr(u) for u in UPCONV_TYPES)}{did_you_mean(upconv_type, UPCONV_TYPES)}"
    )


def _norm_layer(norm: str | None, channels: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    if norm is None:
        return nn.Identity()
    raise InvalidArgumentError(f"norm={norm!r} is not valid: use one of {', '.join(map(repr, NORMS))}")


def _activation_layer(activation: str | None) -> nn.Module:
    if activation == "leaky":
        return nn.LeakyReLU(0.2)
    if activation == "relu":
        return nn.ReLU()
    if activation == "tanh":
        return nn.Tanh()
    if activation is None:
        return nn.Identity()
    raise InvalidArgumentError(
        f"activation={activation!r} is not valid: use one of {', '.join(map(repr, ACTIVATIONS))}"
    )


@register_block
class UnetBlock(nn.Module):
    """Resample -> [InstanceNorm] -> [activation], then Dropout(0.5) when ``use_dropout``.

    Down: 4x4 stride-2 conv with reflect padding. Up: a 4x4 stride-2 transposed conv
    (``'Transposed'``) or bilinear x2 -> reflection pad -> 3x3 conv (``'Bilinear'``).
    The layers live in the Sequential ``conv`` so state_dict keys equal NectarGAN's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        upconv_type: str,
        activation: str | None,
        norm: str | None,
        down: bool = True,
        bias: bool = True,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Sequential(
            *_resample_layers(in_channels, out_channels, upconv_type, down, bias),
            _norm_layer(norm, out_channels),
            _activation_layer(activation),
        )
        self.use_dropout = use_dropout
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.dropout(x) if self.use_dropout else x


@register_block
class ResidualUnetBlock(UnetBlock):
    """A UnetBlock plus a shortcut: ``conv(x) + residual(x)``, then dropout.

    The shortcut is a 1x1 stride-2 conv + ReLU going down, a 1x1 stride-2 transposed conv + ReLU going
    up with a channel change, and otherwise a parameter-free nearest x2 upsample. NectarGAN used an
    Identity there, which only worked when the map was 1x1 and broadcasting hid the size mismatch
    (input_size == 2**(n_downs+2)); nearest x2 of a 1x1 map is that same broadcast, so results at
    that size are unchanged and every other valid size now works.

    As in NectarGAN, the shortcut is added after the block's activation, so a residual ``final_up``
    can return values outside Tanh's [-1, 1]; this is kept for checkpoint and output parity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        upconv_type: str,
        activation: str | None,
        norm: str | None,
        down: bool = True,
        bias: bool = True,
        use_dropout: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, upconv_type, activation, norm,
            down=down, bias=bias, use_dropout=use_dropout,
        )
        if down:
            shortcut: list[nn.Module] = [
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=2),
                nn.ReLU(inplace=True),
            ]
        elif in_channels != out_channels:
            shortcut = [
                nn.ConvTranspose2d(in_channels, out_channels, kernel_size=1, stride=2, output_padding=1),
                nn.ReLU(inplace=True),
            ]
        else:
            shortcut = [nn.Upsample(scale_factor=2, mode="nearest")]
        self.residual = nn.Sequential(*shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) + self.residual(x)
        return self.dropout(x) if self.use_dropout else x
