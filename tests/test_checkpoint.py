"""Checkpoints in NectarGAN's format: save, load, infer the architecture, and clear errors."""

from __future__ import annotations

import pytest
import torch

from nectargan.errors import NectarGANError
from nectargan.models import (
    Discriminator,
    ResidualUnetBlock,
    UnetGenerator,
    infer_generator_config,
    load_discriminator,
    load_generator,
    load_weights,
    read_state_dict,
    save_checkpoint,
)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_in_nectargan_format(tmp_path):
    model = UnetGenerator(64, in_channels=1, features=4, n_downs=4, block_type=ResidualUnetBlock,
                          upconv_type="Bilinear", out_channels=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    model(torch.randn(1, 1, 64, 64)).mean().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "epoch200_netG.pth.tar", model, optimizer)

    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "optimizer"} and raw["optimizer"]["param_groups"][0]["lr"] == 2e-4

    loaded = load_generator(path, input_size=64)
    assert _same_weights(model, loaded)
    assert (loaded.in_channels, loaded.out_channels, loaded.features, loaded.n_downs) == (1, 3, 4, 4)
    assert loaded.block_type is ResidualUnetBlock and loaded.upconv_type == "Bilinear"
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))

    fresh = UnetGenerator(64, in_channels=1, features=4, n_downs=4, block_type=ResidualUnetBlock,
                          upconv_type="Bilinear", out_channels=3)
    fresh.load_state_dict(raw["state_dict"], strict=True)  # plain torch, strict, as NectarGAN users do
    assert _same_weights(model, fresh)


def test_bare_and_wrapped_state_dicts(tmp_path):
    model = UnetGenerator(32, features=4, n_downs=3)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert _same_weights(model, load_generator(tmp_path / "bare.pth", input_size=32))
    compiled_keys = torch.compile(model).state_dict()  # '_orig_mod.' prefixes, nothing compiled yet
    assert all(k.startswith("_orig_mod.") for k in compiled_keys)
    target = UnetGenerator(32, features=4, n_downs=3)
    load_weights(target, dict(compiled_keys))
    assert _same_weights(model, target)
    assert list(read_state_dict({"module." + k: v for k, v in model.state_dict().items()})) == list(
        model.state_dict()
    )


def test_infer_config_default_generator():
    with torch.device("meta"):
        model = UnetGenerator(256)
    config = infer_generator_config(model.state_dict())
    assert config["features"] == 64 and config["n_downs"] == 6 and config["upconv_type"] == "Transposed"
    assert config["in_channels"] == config["out_channels"] == 3


def test_discriminator_round_trip(tmp_path):
    d = Discriminator(in_channels=1, base_channels=8, n_layers=4)
    path = save_checkpoint(tmp_path / "netD.pth.tar", d)
    loaded = load_discriminator(path)
    assert loaded.n_layers == 4 and _same_weights(d, loaded)


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    model = UnetGenerator(32, features=4, n_downs=3)
    path = save_checkpoint(tmp_path / "netG.pth.tar", model)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, UnetGenerator(32, features=8, n_downs=3))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["netG.pth.tar"]  # no temp file left behind


def test_errors_name_the_file(tmp_path):
    with pytest.raises(NectarGANError, match=r"missing\.pth does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(NectarGANError, match=r"corrupt\.pth could not be read"):
        read_state_dict(corrupt)
    torch.save({"epoch": 3}, tmp_path / "no_weights.pth")
    with pytest.raises(NectarGANError, match=r"no_weights\.pth holds no model weights"):
        read_state_dict(tmp_path / "no_weights.pth")


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "netG.pth.tar", UnetGenerator(32, features=4, n_downs=3))
    with pytest.raises(NectarGANError, match="shape mismatch"):
        load_weights(UnetGenerator(32, features=8, n_downs=3), path)
    with pytest.raises(NectarGANError, match="missing key"):
        load_weights(UnetGenerator(64, features=4, n_downs=4), path)
    with pytest.raises(NectarGANError, match="not a UnetGenerator"):
        load_generator(save_checkpoint(tmp_path / "netD.pth.tar", Discriminator()))
