"""Static profile: SPEC's numbers, the three conv counts agreeing, and disagreements flagged."""

from __future__ import annotations

import pytest

from bench import profile as profile_module
from bench.profile import conv_macs_analytic, module_depth, module_table, profile_static
from bench.variant import VariantSpec
from nectargan.models import UnetBlock, register_block
from nectargan.models.unet import blocks as blocks_module

SPEC_TABLE = [
    ("UnetBlock", "Transposed", 54_404_675, 12_096_372_736, 6_048_186_368),
    ("UnetBlock", "Bilinear", 39_150_979, 22_173_188_096, 11_086_594_048),
    ("ResidualUnetBlock", "Transposed", 57_547_782, 12_851_871_744, None),
    ("ResidualUnetBlock", "Bilinear", 42_294_086, 22_928_687_104, None),
]


@pytest.mark.parametrize(("block", "upconv", "params", "flops", "conv_macs"), SPEC_TABLE)
def test_spec_reference_numbers(block, upconv, params, flops, conv_macs):
    p = profile_static(VariantSpec(block_type=block, upconv_type=upconv))
    assert p.params == params
    assert p.flops_fwd == flops
    assert p.counts_agree and p.warnings == []
    assert p.conv_macs_analytic == p.conv_macs_fvcore == p.conv_flops_counter // 2 == flops // 2
    if conv_macs is not None:
        assert p.conv_macs_analytic == conv_macs
    assert p.flops_train > 2 * p.flops_fwd  # backward costs about twice the forward
    assert p.param_mib == pytest.approx(params * 4 / 2**20)
    assert p.activations > 0 and p.macs >= p.conv_macs_fvcore
    if (block, upconv) == ("UnetBlock", "Transposed"):
        assert p.macs == 6_060_064_768  # fvcore adds InstanceNorm (SPEC)
    assert "aten::pad" in p.fvcore_unsupported


@pytest.mark.parametrize(
    "spec",
    [
        VariantSpec(n_downs=3, features=4, input_size=96, block_type=b, upconv_type=u, in_channels=c, out_channels=o)
        for b in ("UnetBlock", "ResidualUnetBlock")
        for u in ("Transposed", "Bilinear")
        for c, o in ((1, 3), (3, 1))
    ]
    + [VariantSpec(n_downs=5, features=3, input_size=256, block_type="ResidualUnetBlock")],
)
def test_closed_form_agrees_with_both_counters(spec):
    p = profile_static(spec)
    assert p.counts_agree, p.warnings
    assert p.conv_macs_analytic == conv_macs_analytic(spec) == p.conv_macs_fvcore


def test_disagreement_is_flagged_not_hidden(monkeypatch):
    monkeypatch.setattr(profile_module, "conv_macs_analytic", lambda spec: 1)
    p = profile_static(VariantSpec(n_downs=3, features=4, input_size=32))
    assert not p.counts_agree
    assert any("analytic 1 MACs != fvcore" in w for w in p.warnings)


def test_user_block_has_no_closed_form(monkeypatch):
    saved = dict(blocks_module._REGISTRY)
    try:
        @register_block(name="TestOnlyBlock")
        class TestOnlyBlock(UnetBlock):
            pass

        p = profile_static(VariantSpec(n_downs=3, features=4, input_size=32, block_type="TestOnlyBlock"))
    finally:
        blocks_module._REGISTRY.clear()
        blocks_module._REGISTRY.update(saved)
    assert p.conv_macs_analytic is None and p.counts_agree
    assert any("no closed form" in w for w in p.warnings)


def test_module_depth():
    lists = {"downs", "ups"}
    assert module_depth("downs.0", lists) == 1
    assert module_depth("downs.0.conv", lists) == 2
    assert module_depth("downs.0.conv.0", lists) == 3
    assert module_depth("initial_down.conv.0", lists) == 3


def test_module_table_sums_to_the_total():
    rows, counts = module_table(VariantSpec(n_downs=3, features=4, input_size=32), max_depth=1)
    assert [r.name for r in rows][:2] == ["initial_down", "downs.0"] and rows[-1].name == "final_up"
    assert sum(r.macs for r in rows) == counts.total
    assert rows[-1].output_shape == (1, 3, 32, 32)
