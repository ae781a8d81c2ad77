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
