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
    """Make measured sweeps run children with a fault plan (``tests/faults.py``) instead of ``bench.child``:
    forked by the fork server (the CPU default), or as a ``python tests/faults.py`` subprocess."""
    import functools
    import json
    import sys
    from pathlib import Path

    import faults

    import bench.launcher
    import bench.options

    def use(plan: dict, launcher: str = "forkserver") -> None:
        script = Path(__file__).with_name("faults.py")
        monkeypatch.setattr(bench.launcher, "CHILD_COMMAND", [sys.executable, str(script), json.dumps(plan)])
        forked = functools.partial(faults.serve_forked, json.dumps(plan))
        monkeypatch.setattr(bench.launcher, "FORKED_CHILD_MAIN", forked)
        monkeypatch.setattr(bench.options, "DEFAULT_CPU_LAUNCHER", launcher)

    return use


@pytest.fixture
def warm_fork_server():
    """The measuring children's fork server already running, as it is for every child of a sweep but the
    first: a test with short phase limits then never counts the server's own start (importing torch, seconds
    on a busy 2-core machine) against its first child's ``start`` phase."""
    from bench.launcher import fork_context

    process = fork_context().Process(target=int)
    process.start()
    process.join()


COMPILED_GRID = """
description = "one tiny variant: a compiled forward, the GAN step eager and in NectarGAN's loop"
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
    """A measured sweep that compiles a forward once (the slow part of the suite, so it is shared), then is
    resumed for the GAN step, eager and in NectarGAN's loop, into the same folder: its exit codes and folder.

    The GAN step is not compiled here: Inductor's cold compile of its six graphs takes minutes on a
    2-core CPU. Its compiled structure is tested with AOT autograd (tests/test_train.py) and its
    Inductor compile by the GPU check (tests/test_cuda.py)."""
    from cli import main

    root = tmp_path_factory.mktemp("compiled")
    grid = root / "compiled.toml"
    grid.write_text(COMPILED_GRID)
    out = root / "run"
    common = ["--out", str(out), "--quiet", "--min-block-s", "0.05", "--blocks", "3"]
    first = main(["sweep", str(grid), *common, "--task", "infer"])
    second = main(["sweep", str(grid), *common, "--resume", "--task", "gan_train", "--mode", "eager",
                   "--mode", "nectargan"])
    return max(first, second), out


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_url():
    """A new, empty PostgreSQL database of this test's own (dropped at the end), so no test depends on
    what an earlier run left in a shared one; skipped where no server answers on 127.0.0.1:5432."""
    import socket
    import uuid

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432 (CI and developer machines have one)")
    import sqlalchemy

    admin = sqlalchemy.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"nectargan_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
