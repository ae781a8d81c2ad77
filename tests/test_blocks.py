"""The block registry and the blocks themselves, parametrised over every registered block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nectargan.models import UnetGenerator, get_block, list_blocks, register_block
from nectargan.models.unet import blocks as blocks_module
from nectargan.models.unet.blocks import ResidualUnetBlock, UnetBlock, block_name


@pytest.fixture
def clean_registry():
    saved = dict(blocks_module._REGISTRY)
    yield
    blocks_module._REGISTRY.clear()
    blocks_module._REGISTRY.update(saved)


def test_builtin_names_map_to_classes():
    assert list_blocks()[:2] == ["UnetBlock", "ResidualUnetBlock"]
    assert get_block("UnetBlock") is UnetBlock
    assert get_block("ResidualUnetBlock") is ResidualUnetBlock
    assert block_name(ResidualUnetBlock) == "ResidualUnetBlock"


def test_unknown_name_lists_known_blocks():
    with pytest.raises(ValueError, match=r"block_type='Residual' .*'UnetBlock', 'ResidualUnetBlock'"):
        get_block("Residual")


def test_user_block_registers_and_builds_a_generator(clean_registry):
    @register_block(name="PlainBlock")
    class PlainBlock(UnetBlock):
        """A user block: UnetBlock with an extra learnable output scale."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return super().forward(x) * self.scale

    assert "PlainBlock" in list_blocks()
    model = UnetGenerator(32, features=4, n_downs=3, block_type="PlainBlock")
    assert isinstance(model.final_up, PlainBlock)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_name_clash_needs_overwrite(clean_registry):
    class Other(UnetBlock):
        pass

    with pytest.raises(ValueError, match="'UnetBlock' is already taken"):
        register_block(Other, name="UnetBlock")
    register_block(Other, name="UnetBlock", overwrite=True)
    assert get_block("UnetBlock") is Other


def test_register_rejects_non_modules(clean_registry):
    with pytest.raises(ValueError, match=r"nn\.Module subclass"):
        register_block(int)


@pytest.mark.parametrize("name", ["UnetBlock", "ResidualUnetBlock"])
@pytest.mark.parametrize("upconv_type", ["Transposed", "Bilinear"])
@pytest.mark.parametrize("down", [True, False])
def test_block_resamples_by_two(name, upconv_type, down):
    block = get_block(name)(8, 4, upconv_type, "relu", "instance", down=down)
    y = block(torch.randn(2, 8, 16, 16))
    assert y.shape == ((2, 4, 8, 8) if down else (2, 4, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"activation": "gelu"}, r"activation='gelu'"),
        ({"norm": "batch"}, r"norm='batch'"),
        ({"upconv_type": "Nearest", "down": False}, r"upconv_type='Nearest'"),
    ],
)
def test_block_rejects_bad_names(kwargs, pattern):
    args = {"upconv_type": "Transposed", "activation": "relu", "norm": None} | kwargs
    with pytest.raises(ValueError, match=pattern):
        UnetBlock(4, 4, **args)


def test_block_classes_must_take_the_block_arguments(clean_registry):
    with pytest.raises(ValueError, match=r"block_type=Conv2d is not valid: a block must accept"):
        UnetGenerator(32, n_downs=3, block_type=nn.Conv2d)

    class TwoArgs(nn.Module):
        def __init__(self, a, b):
            super().__init__()

    with pytest.raises(ValueError, match=r"register_block=TwoArgs is not valid"):
        register_block(TwoArgs)
    with pytest.raises(ValueError, match=r"<UnetBlock instance> is not valid \(pass the class, not an instance\)"):
        UnetGenerator(32, n_downs=3, block_type=UnetBlock(4, 4, "Transposed", None, None))
