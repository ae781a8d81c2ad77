"""UnetGenerator: SPEC's numbers, channel maps, shapes, dropout, validation and the residual fix."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from nectargan.models import ResidualUnetBlock, UnetBlock, UnetGenerator, build_channel_map, min_input_size


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("block_type", "upconv_type", "expected"),
    [
        (UnetBlock, "Transposed", 54_404_675),
        (UnetBlock, "Bilinear", 39_150_979),
        (ResidualUnetBlock, "Transposed", 57_547_782),
        (ResidualUnetBlock, "Bilinear", 42_294_086),
    ],
)
def test_parameter_counts_match_spec(block_type, upconv_type, expected):
    with torch.device("meta"):
        model = UnetGenerator(256, block_type=block_type, upconv_type=upconv_type)
    assert n_params(model) == expected


def test_default_channel_map_matches_spec():
    with torch.device("meta"):
        model = UnetGenerator(256)
    assert model.channel_map == {
        "initial_down": (3, 64),
        "downs": [(64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (512, 512)],
        "bottleneck": (512, 512),
        "ups": [(512, 512), (1024, 512), (1024, 512), (1024, 512), (1024, 256), (512, 128), (256, 64)],
        "final_up": (128, 3),
    }


@pytest.mark.parametrize(("features", "n_downs"), [(8, 3), (16, 5), (32, 7), (1, 4)])
def test_channel_map_rules(features, n_downs):
    cm = build_channel_map(in_channels=3, features=features, n_downs=n_downs)
    cap = 8 * features
    assert len(cm["downs"]) == n_downs and len(cm["ups"]) == n_downs + 1
    chain = [cm["initial_down"], *cm["downs"]]
    for (_, prev_out), (nxt_in, nxt_out) in itertools.pairwise(chain):
        assert nxt_in == prev_out and nxt_out == min(2 * prev_out, cap)
    assert cm["bottleneck"] == (cap, cap) and cm["ups"][0] == (cap, cap)
    # each later up takes the previous up's output plus the mirrored skip
    skips = [out for _, out in reversed(chain)]
    ups = [*cm["ups"], cm["final_up"]]
    for i in range(1, len(ups)):
        assert ups[i][0] == ups[i - 1][1] + skips[i - 1]
    assert cm["final_up"] == (2 * features, 3)


def test_out_channels_changes_only_the_final_layer():
    base = build_channel_map(3, 16, 4)
    colour = build_channel_map(1, 16, 4, out_channels=3)
    assert colour["final_up"] == (32, 3)
    assert colour["ups"] == base["ups"] and colour["initial_down"] == (1, 16)
    model = UnetGenerator(64, in_channels=1, features=4, n_downs=4, out_channels=3)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)


_CHANNELS = [(3, 3), (1, 1), (1, 3), (3, 1)]
_GRID = list(
    itertools.product(range(3, 8), [UnetBlock, ResidualUnetBlock], ["Transposed", "Bilinear"], [1, 2])
)


@pytest.mark.parametrize(
    ("n_downs", "block_type", "upconv_type", "multiple", "channels"),
    [(*case, _CHANNELS[i % len(_CHANNELS)]) for i, case in enumerate(_GRID)],
)
def test_forward_shapes_over_the_grid(n_downs, block_type, upconv_type, multiple, channels):
    in_ch, out_ch = channels
    size = min_input_size(n_downs) * multiple
    model = UnetGenerator(
        size, in_channels=in_ch, features=2, n_downs=n_downs, block_type=block_type,
        upconv_type=upconv_type, out_channels=out_ch,
    ).eval()
    with torch.no_grad():
        y = model(torch.randn(1, in_ch, size, size))
    assert y.shape == (1, out_ch, size, size)
    assert torch.isfinite(y).all()
    if block_type is UnetBlock:
        assert y.abs().max() <= 1.0  # tanh output; residual blocks may leave [-1, 1] (kept from NectarGAN)


@pytest.mark.parametrize("features", [1, 3, 8, 16])
@pytest.mark.parametrize("block_type", ["UnetBlock", "ResidualUnetBlock"])
def test_forward_over_features(features, block_type):
    model = UnetGenerator(32, features=features, n_downs=3, block_type=block_type).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("block_type", [UnetBlock, ResidualUnetBlock])
@pytest.mark.parametrize("upconv_type", ["Transposed", "Bilinear"])
def test_backward_reaches_every_parameter(block_type, upconv_type):
    model = UnetGenerator(64, features=4, n_downs=3, block_type=block_type, upconv_type=upconv_type)
    model.train()
    x, target = torch.randn(2, 3, 64, 64), torch.rand(2, 3, 64, 64) * 2 - 1
    nn.functional.l1_loss(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_dropout_only_on_the_first_k_up_layers(k):
    model = UnetGenerator(32, features=4, n_downs=3, use_dropout_layers=k).train()
    called: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout):
            module.register_forward_hook(lambda m, i, o, name=name: called.append(name))
    model(torch.randn(1, 3, 32, 32))
    assert called == [f"ups.{i}.dropout" for i in range(k)]
    assert [up.use_dropout for up in model.ups] == [i < k for i in range(len(model.ups))]
    # dropout is active in train mode only: eval is deterministic
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_downs": 2}, r"n_downs=2 .*>= 3"),
        ({"n_downs": 3.0}, r"n_downs=3\.0 .*integer"),
        ({"features": 0}, r"features=0 .*>= 1"),
        ({"in_channels": 0}, r"in_channels=0 .*>= 1"),
        ({"out_channels": 0}, r"out_channels=0 .*>= 1"),
        ({"use_dropout_layers": -1}, r"use_dropout_layers=-1 .*between 0 and 7"),
        ({"use_dropout_layers": 8}, r"use_dropout_layers=8 .*between 0 and 7"),
        ({"upconv_type": "bilinear"}, r"upconv_type='bilinear' .*'Transposed', 'Bilinear'.*did you mean 'Bilinear'"),
        ({"block_type": "ResUnetBlock"}, r"block_type='ResUnetBlock' .*'UnetBlock', 'ResidualUnetBlock'"),
        ({"block_type": 42}, r"block_type=42 .*nn.Module subclass"),
        ({"input_size": 384}, r"input_size=384 .*n_downs=6.*multiple of 256"),
        ({"input_size": 128}, r"input_size=128 .*multiple of 256"),
        ({"input_size": True}, r"input_size=True .*integer"),
    ],
)
def test_validation_errors_name_the_argument(kwargs, pattern):
    args = {"input_size": 256} | kwargs
    with pytest.raises(ValueError, match=pattern):
        UnetGenerator(**args)


def test_valid_non_power_of_two_multiple_builds_and_runs():
    model = UnetGenerator(96, features=2, n_downs=3).eval()  # 3 x 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 3, 96, 96)


def test_weight_init_follows_nectargan():
    model = UnetGenerator(256, features=16)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs if m.bias is not None)


class _OriginalResidualBlock(ResidualUnetBlock):
    """NectarGAN's shortcut: Identity when going up without a channel change (the defect)."""

    def __init__(self, in_channels, out_channels, upconv_type, activation, norm, down=True, bias=True,
                 use_dropout=False):
        super().__init__(in_channels, out_channels, upconv_type, activation, norm, down, bias, use_dropout)
        if not down and in_channels == out_channels:
            self.residual = nn.Sequential(nn.Identity())


@pytest.mark.parametrize("upconv_type", ["Transposed", "Bilinear"])
@pytest.mark.parametrize("n_downs", [3, 4])
def test_residual_fix_equals_original_broadcast_at_minimum_size(n_downs, upconv_type):
    size = min_input_size(n_downs)
    fixed = UnetGenerator(size, features=4, n_downs=n_downs, block_type=ResidualUnetBlock,
                          upconv_type=upconv_type).eval()
    original = UnetGenerator(size, features=4, n_downs=n_downs, block_type=_OriginalResidualBlock,
                             upconv_type=upconv_type).eval()
    original.load_state_dict(fixed.state_dict(), strict=True)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.equal(fixed(x), original(x))
    # one size up, the original cannot add a 2x2 shortcut to a 4x4 map; the fix can
    big = torch.randn(1, 3, 2 * size, 2 * size)
    original_big = UnetGenerator(2 * size, features=4, n_downs=n_downs, block_type=_OriginalResidualBlock,
                                 upconv_type=upconv_type).eval()
    with pytest.raises(RuntimeError), torch.no_grad():
        original_big(big)
    fixed_big = UnetGenerator(2 * size, features=4, n_downs=n_downs, block_type=ResidualUnetBlock,
                              upconv_type=upconv_type).eval()
    with torch.no_grad():
        assert fixed_big(big).shape == big.shape


def test_residual_final_up_without_channel_change_works():
    # features=1 with 2 input channels makes final_up (2 -> 2): an Identity shortcut in NectarGAN
    model = UnetGenerator(64, in_channels=2, features=1, n_downs=3, block_type=ResidualUnetBlock).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 64, 64)).shape == (1, 2, 64, 64)


def test_nectargan_attribute_names_and_registration_order():
    model = UnetGenerator(32, features=4, n_downs=3, block_type=ResidualUnetBlock, upconv_type="Bilinear")
    assert [name for name, _ in model.named_children()] == ["initial_down", "downs", "bottleneck", "ups", "final_up"]
    keys = list(model.state_dict())
    assert keys[:4] == ["initial_down.conv.0.weight", "initial_down.conv.0.bias",
                        "initial_down.residual.0.weight", "initial_down.residual.0.bias"]
    assert "ups.1.conv.2.weight" in keys and "ups.1.conv.2.bias" in keys  # Bilinear conv sits at index 2
    assert not any(".residual." in k for k in keys if k.startswith("ups.0."))  # parameter-free shortcut
    assert model.n_down == model.n_downs == 3
