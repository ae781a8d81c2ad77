import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The shipped dataset builder's output: 64 px edges2photo, 60 pairs (48/6/6)."""
    from nectargan.data.samples import build_sample_dataset

    root = tmp_path_factory.mktemp("edges64")
    build_sample_dataset(root, "edges2photo", size=64, count=60, seed=0)
    return root


@pytest.fixture
def fault_child(monkeypatch):
    """Make measured sweeps launch ``tests/faults.py`` with a fault plan instead of ``bench.child``."""
    import json
    import sys
    from pathlib import Path

    import bench.launcher

    def use(plan: dict) -> None:
        script = Path(__file__).with_name("faults.py")
        monkeypatch.setattr(bench.launcher, "CHILD_COMMAND", [sys.executable, str(script), json.dumps(plan)])

    return use


COMPILED_GRID = """
description = "one tiny variant: a compiled forward and a compiled GAN step, eager, and NectarGAN's loop"
[grid]
n_downs = [3]
features = [8]
input_size = [64]
batch_size = [8]
[measure]
task = ["infer", "gan_train"]
mode = ["eager", "compile", "nectargan"]
d_features = 8
"""


@pytest.fixture(scope="session")
def compiled_sweep(tmp_path_factory):
    """A measured sweep that compiles a forward and the whole GAN step once (the slow part of the suite,
    so it is shared; the G-only train step compiles the same forward and backward graphs): its exit code
    and run folder."""
    from cli import main

    root = tmp_path_factory.mktemp("compiled")
    grid = root / "compiled.toml"
    grid.write_text(COMPILED_GRID)
    out = root / "run"
    code = main(["sweep", str(grid), "--out", str(out), "--quiet", "--min-block-s", "0.05", "--blocks", "3"])
    return code, out
