"""The PatchGAN discriminator: SPEC's sizes, receptive fields and parameter counts."""

from __future__ import annotations

import pytest
import torch

from nectargan.models import Discriminator


@pytest.mark.parametrize(
    ("n_layers", "patches", "field", "params"),
    [(3, 62, 34, 665_665), (4, 30, 70, 2_766_913)],
)
def test_output_size_receptive_field_and_params_at_256(n_layers, patches, field, params):
    d = Discriminator(n_layers=n_layers)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = d(x, torch.randn_like(x))
    assert out.shape == (1, 1, patches, patches)
    assert d.output_size(256) == patches
    assert d.receptive_field() == field
    assert sum(p.numel() for p in d.parameters()) == params


@pytest.mark.parametrize(("size", "n_layers", "in_channels"), [(64, 3, 1), (96, 2, 3), (128, 5, 3), (32, 1, 2)])
def test_output_size_predicts_forward(size, n_layers, in_channels):
    d = Discriminator(in_channels=in_channels, base_channels=8, n_layers=n_layers)
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        out = d(x, x)
    assert out.shape == (2, 1, d.output_size(size), d.output_size(size))


def test_keys_follow_nectargan_layout():
    keys = list(Discriminator(n_layers=3).state_dict())
    assert keys == ["model.0.weight", "model.0.bias", "model.2.conv.0.weight", "model.3.conv.0.weight",
                    "model.4.weight", "model.4.bias"]


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"n_layers": 0}, "n_layers=0"), ({"base_channels": 0}, "base_channels=0"),
    ({"in_channels": "3"}, "in_channels='3'"), ({"max_channels": -1}, "max_channels=-1"),
    ({"base_channels": 64, "max_channels": 32}, "max_channels=32 .*>= 64"),
])
def test_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Discriminator(**kwargs)


def test_too_small_input_is_reported():
    with pytest.raises(ValueError, match="input_size=8 is too small"):
        Discriminator(n_layers=4).output_size(8)
