"""Read and write checkpoints in NectarGAN's format.

NectarGAN saves ``torch.save({'state_dict': model.state_dict(), 'optimizer': opt.state_dict()})``
to files such as ``epoch200_netG.pth.tar``. These helpers read that format or a bare state_dict,
rebuild a generator or discriminator from the weights' shapes, and write the same format atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nectargan.errors import NectarGANError
from nectargan.models.patchgan.model import Discriminator
from nectargan.models.unet.blocks import ResidualUnetBlock, UnetBlock
from nectargan.models.unet.model import UnetGenerator

StateDict = dict[str, torch.Tensor]

# Wrappers that prefix keys: DataParallel/DDP ('module.') and torch.compile ('_orig_mod.').
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(source: str | os.PathLike[str] | dict[str, Any]) -> StateDict:
    """The model weights in a NectarGAN checkpoint file, a bare state_dict file, or a loaded dict.

    Keys prefixed by DataParallel (``module.``) or torch.compile (``_orig_mod.``) are unwrapped.

    Raises:
        NectarGANError: naming the file when it is missing, unreadable or holds no state_dict.
    """
    where = "checkpoint object"
    if isinstance(source, dict):
        payload: Any = source
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise NectarGANError(f"checkpoint {where} does not exist or is not a file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or foreign files
            raise NectarGANError(
                f"checkpoint {where} could not be read: it is not a torch.save file holding only tensors "
                f"and plain values ({type(exc).__name__})"
            ) from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not (
        isinstance(payload, dict)
        and payload
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())
    ):
        raise NectarGANError(
            f"{where} holds no model weights: expected {{'state_dict': ..., 'optimizer': ...}} "
            "(NectarGAN's format) or a bare state_dict of tensors"
        )
    return {_unwrap(key): value for key, value in payload.items()}


def _unwrap(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def save_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> Path:
    """Write ``{'state_dict', 'optimizer'}`` as NectarGAN does, atomically (temp file + rename).

    A crash while writing leaves any earlier file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {_unwrap(k): v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"state_dict": state_dict, "optimizer": optimizer.state_dict() if optimizer else {}}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def infer_generator_config(state_dict: StateDict) -> dict[str, Any]:
    """Architecture arguments of the UnetGenerator that produced ``state_dict``.

    ``in_channels``, ``out_channels``, ``features``, ``n_downs``, ``block_type`` and ``upconv_type``
    follow from the weights. ``input_size`` and ``use_dropout_layers`` leave no trace in them.
    """
    first = state_dict.get("initial_down.conv.0.weight")
    if first is None or first.ndim != 4:
        raise NectarGANError(
            "the weights are not a UnetGenerator's: 'initial_down.conv.0.weight' is missing"
        )
    down_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"downs\.(\d+)\.", k))}
    bilinear = "final_up.conv.2.weight" in state_dict
    if bilinear:
        out_channels = state_dict["final_up.conv.2.weight"].shape[0]
    elif "final_up.conv.0.weight" in state_dict:
        out_channels = state_dict["final_up.conv.0.weight"].shape[1]  # ConvTranspose2d: (in, out, k, k)
    else:
        raise NectarGANError("the weights are not a UnetGenerator's: final_up's conv is missing")
    residual = any(".residual." in k for k in state_dict)
    return {
        "in_channels": int(first.shape[1]),
        "out_channels": int(out_channels),
        "features": int(first.shape[0]),
        "n_downs": len(down_ids),
        "block_type": ResidualUnetBlock if residual else UnetBlock,
        "upconv_type": "Bilinear" if bilinear else "Transposed",
    }


def load_generator(
    source: str | os.PathLike[str] | dict[str, Any],
    input_size: int | None = None,
    use_dropout_layers: int = 3,
    strict: bool = True,
) -> UnetGenerator:
    """Build a UnetGenerator whose architecture matches the checkpoint, and load its weights.

    ``input_size`` defaults to 256, or to the smallest valid size when the model is deeper.
    """
    state_dict = read_state_dict(source)
    config = infer_generator_config(state_dict)
    if input_size is None:
        input_size = max(256, 2 ** (config["n_downs"] + 2))
    model = UnetGenerator(input_size, use_dropout_layers=use_dropout_layers, **config)
    load_weights(model, state_dict, strict=strict)
    return model


def load_discriminator(
    source: str | os.PathLike[str] | dict[str, Any], max_channels: int = 512, strict: bool = True
) -> Discriminator:
    """Build a Discriminator whose layers match the checkpoint, and load its weights."""
    state_dict = read_state_dict(source)
    first = state_dict.get("model.0.weight")
    if first is None:
        raise NectarGANError("the weights are not a Discriminator's: 'model.0.weight' is missing")
    hidden = {int(m.group(1)) for k in state_dict if (m := re.match(r"model\.(\d+)\.conv\.", k))}
    model = Discriminator(
        in_channels=int(first.shape[1]) // 2,
        base_channels=int(first.shape[0]),
        n_layers=len(hidden) + 1,
        max_channels=max_channels,
    )
    load_weights(model, state_dict, strict=strict)
    return model


def load_weights(
    model: nn.Module, source: str | os.PathLike[str] | dict[str, Any], strict: bool = True
) -> nn.Module:
    """Load a checkpoint (any format :func:`read_state_dict` reads) into ``model``.

    Raises:
        NectarGANError: listing missing, unexpected or mis-shaped keys, instead of torch's long text.
    """
    state_dict = read_state_dict(source)
    own = model.state_dict()
    if strict:
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise NectarGANError(
                f"checkpoint does not fit {type(model).__name__}: "
                f"{len(missing)} missing key(s) {missing[:3]}, "
                f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
            )
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise NectarGANError(
            f"checkpoint does not fit {type(model).__name__}: {len(wrong)} shape mismatch(es), "
            f"first {wrong[0]}"
        )
    model.load_state_dict(state_dict, strict=strict)
    return model
