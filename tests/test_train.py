"""pix2pix training: metrics on known cases, a short run that learns, checkpoints, seeding, errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from nectargan.data.floor import Floor, trivial_floor
from nectargan.errors import NectarGANError
from nectargan.losses import discriminator_loss, generator_losses
from nectargan.metrics import image_metrics
from nectargan.models import UnetGenerator, load_discriminator, load_generator
from nectargan.train import METRIC_COLUMNS, NonFiniteLossError, TrainConfig, fit
from nectargan.train import step as step_module

SMALL = {"input_size": 64, "n_downs": 3, "features": 8}


def _config(data, out=None, **overrides) -> TrainConfig:
    base = {"data": str(data), "out": str(out) if out else None, "generator": dict(SMALL), "d_features": 8,
            "batch_size": 4, "steps": 12, "eval_every": 6, "log_every": 3, "seed": 0}
    return TrainConfig(**(base | overrides))


def test_metrics_on_known_cases():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    same = image_metrics(x, x)
    assert torch.equal(same["l1"], torch.zeros(3))
    assert torch.isinf(same["psnr"]).all()
    assert torch.allclose(same["ssim"], torch.ones(3))
    flat = torch.zeros(2, 3, 16, 16)
    offset = image_metrics(flat + 0.1, flat)  # 0.1 in [-1, 1] is 0.05 in [0, 1]
    assert torch.allclose(offset["l1"], torch.full((2,), 0.1))
    assert torch.allclose(offset["psnr"], torch.full((2,), 10 * math.log10(1 / 0.05**2)), atol=1e-4)
    assert (offset["ssim"] < 1).all() and (offset["ssim"] > 0.9).all()


def test_objective_matches_the_spec():
    real, fake = torch.full((1, 1, 4, 4), 3.0), torch.full((1, 1, 4, 4), -2.0)
    expected = 0.5 * (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-2.0)))
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    out, target = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    total, gan, l1 = generator_losses(torch.zeros(1, 1, 4, 4), out, target, lambda_gan=1.0, lambda_l1=100.0)
    assert gan.item() == pytest.approx(math.log(2)) and l1.item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(math.log(2) + 50.0)


def test_short_run_learns_and_writes_everything(sample_dataset, tmp_path):
    out = tmp_path / "run"
    events = {"eval": [], "log": [], "end": []}

    class Recorder:
        def on_eval(self, record):
            events["eval"].append(record)

        def on_log(self, record):
            events["log"].append(record)

        def on_end(self, summary):
            events["end"].append(summary)

    summary = fit(_config(sample_dataset, out, steps=100, eval_every=50, log_every=25), callbacks=[Recorder()])
    assert summary["val_l1"] < summary["initial_val_l1"]  # it learned something
    floor = trivial_floor(sample_dataset, 64)  # the same dataset's trivial predictors, in the summary
    assert Floor.from_dict(summary["floor"]) == floor and summary["floor"]["margin_db"] == 1.0
    assert summary["db_over_floor"] == pytest.approx(summary["val_psnr"] - floor.best_psnr)
    assert summary["learned"] == (summary["db_over_floor"] >= 1.0)
    assert summary["steps"] == 100 and summary["img_per_s"] > 0 and summary["device"] == "cpu"
    assert summary["precision"] == "fp32" and not summary["compile"]

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS
    evaluated = metrics.dropna(subset=["val_l1"])
    assert list(evaluated["step"]) == [0, 50, 100]
    logged = metrics.dropna(subset=["loss_d"])
    assert (logged["img_per_s"] > 0).all() and logged["loss_g_l1"].between(0, 2).all()
    assert logged["lr"].iloc[0] == pytest.approx(2e-4) and logged["lr"].iloc[-1] < 2e-4  # linear decay
    assert [e["step"] for e in events["eval"]] == [0, 50, 100] and len(events["end"]) == 1

    for step in (50, 100):
        assert (out / "samples" / f"step_{step}.png").stat().st_size > 0
    raw = torch.load(out / "netG.pth.tar", weights_only=True)
    assert set(raw) == {"state_dict", "optimizer"}
    strict = UnetGenerator(**SMALL)
    strict.load_state_dict(raw["state_dict"], strict=True)
    assert load_generator(out / "netG.pth.tar", input_size=64).features == 8
    assert load_discriminator(out / "netD.pth.tar").n_layers == 3


def test_two_seeded_runs_give_the_same_losses(sample_dataset, tmp_path):
    a = fit(_config(sample_dataset, tmp_path / "a"))
    b = fit(_config(sample_dataset, tmp_path / "b"))
    columns = ["loss_d", "loss_g_gan", "loss_g_l1", "val_l1"]
    ma = pd.read_csv(tmp_path / "a" / "metrics.csv")[columns]
    mb = pd.read_csv(tmp_path / "b" / "metrics.csv")[columns]
    pd.testing.assert_frame_equal(ma, mb)
    assert a["val_l1"] == b["val_l1"]
    fit(_config(sample_dataset, tmp_path / "c", seed=1))
    c = pd.read_csv(tmp_path / "c" / "metrics.csv")
    assert not c[columns].equals(ma)


def test_loader_path_matches_shapes(sample_dataset):
    summary = fit(_config(sample_dataset, preload=False, num_workers=0, steps=4, eval_every=0))
    assert summary["steps"] == 4 and not summary["preload"] and math.isfinite(summary["val_l1"])


def test_seconds_budget(sample_dataset):
    summary = fit(_config(sample_dataset, steps=None, seconds=1.0, eval_every=0))
    assert summary["steps"] >= 1 and summary["train_seconds"] >= 1.0


def test_colourisation_one_to_three_channels(sample_dataset):
    config = _config(sample_dataset, steps=3, eval_every=0, generator=SMALL | {"in_channels": 1, "out_channels": 3})
    assert fit(config)["steps"] == 3


def test_non_finite_loss_stops_training(sample_dataset, monkeypatch):
    original = step_module.Pix2PixStep.__call__

    def poisoned(self, x, y):
        losses = original(self, x, y)
        return losses | {"loss_d": losses["loss_d"] * float("nan")}

    monkeypatch.setattr(step_module.Pix2PixStep, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite by step 3"):
        fit(_config(sample_dataset))


def test_a_callback_exception_stops_training(sample_dataset):
    class Stop(Exception):
        pass

    class Pruner:
        def on_eval(self, record):
            if record["step"] > 0:
                raise Stop(record["step"])

    with pytest.raises(Stop) as info:
        fit(_config(sample_dataset, steps=100, eval_every=5), callbacks=[Pruner()])
    assert info.value.args == (5,)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"steps": None}, "a budget is needed"),
        ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "cuda:99"}, "device='cuda"),
        ({"batch_size": 500}, "batch_size=500 is larger than the training split"),
        ({"lr": -1.0}, "lr=-1.0 is not valid"),
        ({"precision": "fp8"}, "precision='fp8' is not valid"),
        ({"data": "/nonexistent/data"}, "dataset folder /nonexistent/data does not exist"),
    ],
)
def test_bad_settings(sample_dataset, overrides, pattern):
    data = overrides.pop("data", sample_dataset)
    with pytest.raises(NectarGANError, match=pattern):
        fit(_config(data, **overrides))


def test_existing_run_folder_is_not_overwritten(sample_dataset, tmp_path):
    fit(_config(sample_dataset, tmp_path / "run", steps=2, eval_every=0))
    before = (tmp_path / "run" / "metrics.csv").read_bytes()
    with pytest.raises(NectarGANError, match="already holds a training run"):
        fit(_config(sample_dataset, tmp_path / "run", steps=2))
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == before


def test_fit_counts_only_its_own_graph_breaks_and_the_recompiles_after_warm_up(sample_dataset, monkeypatch):
    """The accounting of compiled runs (the compiled step itself has 0 breaks and 0 recompiles:
    test_the_compiled_gan_step_is_three_graphs_without_breaks_or_recompiles)."""
    from nectargan.train import loop

    counts = {"frames": 100, "graph_breaks": 7}  # what earlier runs in this process left behind

    def dynamo_counts():
        counts["frames"] += 1  # every reading sees one more compiled frame
        return dict(counts)

    monkeypatch.setattr(loop, "dynamo_counts", dynamo_counts)
    summary = fit(_config(sample_dataset, steps=6, eval_every=3))
    assert summary["graph_breaks"] == 0  # the 7 breaks were not this run's
    assert summary["recompiles_after_warmup"] == 1  # frames between the warm-up reading and the end


def test_the_compiled_gan_step_is_three_graphs_without_breaks_or_recompiles(monkeypatch):
    """The GAN step's compiled structure, traced with AOT autograd but no Inductor code generation (a cold
    Inductor compile of this step costs minutes on a 2-core CPU; the GPU check measures that one)."""
    import torch._dynamo

    from nectargan.models import Discriminator
    from nectargan.runtime import dynamo_counts
    from nectargan.train.config import Resolved

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: real_compile(
        fn, backend="aot_eager", dynamic=dynamic))
    torch._dynamo.reset()
    config = TrainConfig()
    batches = [(torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1) for _ in range(3)]

    def losses(compiled: bool) -> list[dict[str, float]]:
        torch.manual_seed(0)
        g, d = UnetGenerator(32, features=4, n_downs=3), Discriminator(base_channels=4, n_layers=2)
        step = step_module.Pix2PixStep(g, d, config, Resolved(torch.device("cpu"), "fp32", False, compiled))
        out = []
        for i, (x, y) in enumerate(batches):
            if i == 1:
                after_first = dynamo_counts()
            out.append({k: float(v) for k, v in step(x, y).items()})
        if compiled:
            now = dynamo_counts()
            assert now["frames"] == after_first["frames"]  # nothing compiled again after the first step
            assert now["graph_breaks"] == 0
        return out

    before = dynamo_counts()
    compiled = losses(True)
    assert dynamo_counts()["frames"] - before["frames"] == 3  # G's forward, D's loss, G's loss
    eager = losses(False)
    for a, b in zip(compiled, eager, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_train_command_prints_the_floor_and_whether_the_run_beat_it(sample_dataset, tmp_path, capsys):
    from cli import main

    assert main(["train", "--data", str(sample_dataset), "--out", str(tmp_path / "r"), "--input-size", "64",
                 "--n-downs", "3", "--features", "4", "--d-features", "8", "--steps", "2", "--batch-size", "4",
                 "--eval-every", "0", "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    floor = trivial_floor(sample_dataset, 64)
    assert f"floor: copy input {floor.copy_psnr:.2f} dB, mean target {floor.mean_psnr:.2f} dB; " in err
    # two steps from random weights cannot beat a constant image by 1 dB
    assert "did not learn: " in err and f"not 1 dB above the {floor.best}'s {floor.best_psnr:.2f} dB" in err
