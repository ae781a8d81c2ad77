"""A layer-by-layer summary of a generator: channels, output shape and parameters per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.variant import VariantSpec


@dataclass(frozen=True)
class LayerRow:
    """One top-level layer of the generator."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    output_shape: tuple[int, ...]
    params: int


def _top_level_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            layers.extend((f"{name}[{i}]", block) for i, block in enumerate(child))
        else:
            layers.append((name, child))
    return layers


def layer_summary(spec: VariantSpec) -> list[LayerRow]:
    """Summarise ``spec``'s generator; shapes come from a forward pass on the meta device (no compute)."""
    model = spec.build(device="meta").eval()
    channel_pairs = _channel_pairs(model.channel_map)
    shapes: dict[str, tuple[int, ...]] = {}
    layers = _top_level_layers(model)
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, key=name: shapes.__setitem__(key, tuple(out.shape))
        )
        for name, module in layers
    ]
    try:
        with torch.no_grad():
            model(torch.empty(spec.batch_size, spec.in_channels, spec.input_size, spec.input_size,
                              device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return [
        LayerRow(
            name=name,
            kind=("down" if name.startswith(("initial_down", "downs", "bottleneck")) else "up"),
            in_channels=channel_pairs[name][0],
            out_channels=channel_pairs[name][1],
            output_shape=shapes[name],
            params=sum(p.numel() for p in module.parameters()),
        )
        for name, module in layers
    ]


def _channel_pairs(channel_map: dict) -> dict[str, tuple[int, int]]:
    pairs = {"initial_down": channel_map["initial_down"], "bottleneck": channel_map["bottleneck"]}
    pairs |= {f"downs[{i}]": p for i, p in enumerate(channel_map["downs"])}
    pairs |= {f"ups[{i}]": p for i, p in enumerate(channel_map["ups"])}
    pairs["final_up"] = channel_map["final_up"]
    return pairs
