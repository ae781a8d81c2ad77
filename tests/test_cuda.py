"""CUDA checks on a real GPU: measured sweeps over every task x mode x precision x layout, CUDA graphs
called many times, device names, a real out-of-memory, the largest-batch search, the trainer's fast
path and a study. Every test is marked ``cuda`` and skipped without a CUDA device.

Run them with ``python -m pytest -m cuda tests/test_cuda.py`` (``scripts/gpu-check.sh`` does, on a
bare GPU host). Sized for about 3 minutes on one H100: the models are tiny (64-128 px), timing
blocks short, and compiling dominates. The out-of-memory sweep runs first, alone on the GPU; then the
precision matrix (40 compiled configurations) starts in the background as five
``python -m cli sweep`` processes, and the in-process tests run while it compiles (compiling is CPU
work; the tiny models leave the GPU nearly idle, and no test here judges a timing). Its results are
checked at the end of the module.

Each matrix sweep compiles 8 configurations (infer/train x nchw/channels_last x compile/
compile-reduce-overhead) in one measuring job; the child resets torch._dynamo before each group, so
no job reaches dynamo's recompile limit (past it, "compiled" rows would silently run eagerly).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cli import main

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_check import toml_value  # noqa: E402 - the GPU check's own TOML writer (scripts/ is not a package)

MIB = 2**20
FAST = ["--quiet", "--min-block-s", "0.02", "--blocks", "3"]
# Largest max_rel_err (output against eager fp32) expected for each precision; err_flag is True above it.
TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2, "bf16": 1e-1, "fp16": 2e-2}
TASKS = ("infer", "train")
MODES = ("eager", "compile", "compile-reduce-overhead")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
LAYOUTS = ("nchw", "channels_last")
TINY = {"n_downs": [3], "features": [8], "input_size": [64], "batch_size": [4]}
# One sweep per precision of the default blocks, and the residual/bilinear blocks in bf16.
MATRIX = {p: ("UnetBlock", "Transposed", p) for p in PRECISIONS} | {
    "residual-bf16": ("ResidualUnetBlock", "Bilinear", "bf16")
}
# Limits that must fit inside whatever runs the tests: the GPU check's pytest phase passes its cap.
CHILD_TIMEOUT_S = float(os.environ.get("NECTARGAN_CUDA_CHILD_TIMEOUT_S", 300))  # [measure] timeout_s per child
MATRIX_TIMEOUT_S = CHILD_TIMEOUT_S + 60
# NECTARGAN_CUDA_QUICK=1 (the GPU check's quick subset): the background matrix is not started.
QUICK = os.environ.get("NECTARGAN_CUDA_QUICK") == "1"


# --- helpers ---------------------------------------------------------------------------------------------------


def _grid(path: Path, axes: dict[str, list], include: list[dict] | None = None, **measure: Any) -> Path:
    """Write a grid: ``[grid]`` axes (always some: a grid of only ``include`` entries also yields the
    all-defaults variant), optional ``include`` entries, and a ``[measure]`` table."""
    lines = ["[grid]", *(f"{k} = {toml_value(v)}" for k, v in axes.items())]
    if include:
        lines.append(f"include = {toml_value(include)}")
    lines += ["", "[measure]", *(f"{k} = {toml_value(v)}" for k, v in measure.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def _measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["kind"] == "measure"]


def _sweep(out: Path, grid: Path, *flags: str) -> int:
    return main(["sweep", str(grid), "--out", str(out), *FAST, *flags])


def _where(row: dict) -> str:
    return f"{row['variant']} {row['task']}/{row['mode']}/{row['precision']}/{row['layout']} on {row['device']}"


def _total_memory() -> int:
    return torch.cuda.get_device_properties(0).total_memory


def _saved_conv_bytes(n_downs: int, features: int, input_size: int) -> int:
    """A lower bound on what one fp32 training image keeps for backward: every convolution's output
    (each is saved by the norm or activation after it, and all are alive at the end of the forward)."""
    from torch import nn

    from nectargan.models.unet.model import UnetGenerator

    total = 0

    def count(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * 4

    with torch.device("meta"):
        model = UnetGenerator(input_size=input_size, features=features, n_downs=n_downs).train()
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                module.register_forward_hook(count)
        model(torch.zeros(1, 3, input_size, input_size))
    return total


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class BackgroundSweeps:
    """Sweeps started as ``python -m cli sweep`` processes; :meth:`result` waits for one of them."""

    def __init__(self, root: Path, grids: dict[str, Path], env: dict[str, str]) -> None:
        self.root = root
        self.deadline = time.monotonic() + MATRIX_TIMEOUT_S
        self.procs: dict[str, subprocess.Popen] = {}
        for name, grid in grids.items():
            with open(root / f"{name}.log", "w") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "cli", "sweep", str(grid), "--out", str(root / name), *FAST],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )

    def result(self, name: str) -> tuple[int, Path, str]:
        """(exit code, run folder, log) of one sweep, once it has finished."""
        proc = self.procs[name]
        try:
            code = proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            code = -1
        log = (self.root / f"{name}.log").read_text(errors="replace")
        if code == -1:
            pytest.fail(f"sweep {name} still running after {MATRIX_TIMEOUT_S} s; its log ends: {log[-2000:]}")
        return code, self.root / name, log

    def stop(self) -> None:
        """Kill what is still running (each sweep and its measuring children, by process id)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                for pid in [*reversed(_descendants(proc.pid)), proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()


# --- a real out-of-memory and the largest-batch search (alone on the GPU: runs first) --------------------------

# Wide and small: 266 M parameters, and training activations 80x its input, so the batch that cannot fit
# still builds on the host in seconds; its first layers alone (about 2 x 0.5 x the card) run out.
BIG = {"n_downs": 3, "features": 256, "input_size": 64}
MID = {"n_downs": 4, "features": 32, "input_size": 128, "batch_size": 4}
MAX_BATCH = 4096


@pytest.fixture(scope="module")
def oom_run(tmp_path_factory) -> tuple[int, list[dict], int]:
    """A variant whose batch cannot fit, then a mid one, eager train fp32, with ``--max-batch 4096``."""
    root = tmp_path_factory.mktemp("oom")
    per_image = _saved_conv_bytes(**BIG)
    batch = math.ceil(2 * _total_memory() / per_image)  # the saved activations alone are twice the card
    grid = _grid(root / "oom.toml", {**{k: [v] for k, v in BIG.items()}, "batch_size": [batch]}, include=[MID],
                 device="cuda", task=["train"], mode=["eager"], precision=["fp32"], layout=["nchw"],
                 timeout_s=CHILD_TIMEOUT_S)
    code = _sweep(root / "run", grid, "--max-batch", str(MAX_BATCH))
    return code, _rows(root / "run"), batch


def test_out_of_memory_is_a_row_and_the_next_variant_measures(oom_run):
    code, rows, batch = oom_run
    assert code == 0  # oom rows are expected; only error/timeout rows fail a sweep
    measured = _measured(rows)
    big = [r for r in measured if r["batch_size"] == batch]
    mid = [r for r in measured if r["batch_size"] == MID["batch_size"]]
    assert len(big) == 1 and len(mid) == 1, [_where(r) for r in measured]
    assert big[0]["status"] == "oom", f"{_where(big[0])}: {big[0]['status']} {big[0].get('reason')}"
    assert "out of memory" in big[0]["reason"].lower()
    assert mid[0]["status"] == "ok", f"{_where(mid[0])}: {mid[0]['status']} {mid[0].get('reason')}"
    assert mid[0]["img_per_s"] > 0
    assert measured.index(big[0]) < measured.index(mid[0])  # measured after the out-of-memory, in a fresh child


def test_max_batch_is_a_power_of_two_fraction_of_the_start(oom_run):
    _code, rows, _batch = oom_run
    (row,) = [r for r in _measured(rows) if r["batch_size"] == MID["batch_size"]]
    largest = row["max_batch"]
    assert isinstance(largest, int) and 1 <= largest <= MAX_BATCH, largest
    assert MAX_BATCH % largest == 0 and largest & (largest - 1) == 0, largest  # 4096 / 2**k
    assert largest >= row["batch_size"]  # the requested batch ran
    if MAX_BATCH * _saved_conv_bytes(**{k: MID[k] for k in ("n_downs", "features", "input_size")}) > _total_memory():
        assert largest < MAX_BATCH


# --- the precision matrix, compiled in the background while the in-process tests run ---------------------------


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Start the matrix sweeps (they finish while other tests run); kill leftovers at the end."""
    if QUICK:
        yield None
        return
    root = tmp_path_factory.mktemp("matrix")
    grids = {
        name: _grid(root / f"{name}.toml", {**TINY, "block_type": [block], "upconv_type": [upconv]},
                    device="cuda", task=list(TASKS), mode=list(MODES), precision=[precision], layout=list(LAYOUTS),
                    timeout_s=CHILD_TIMEOUT_S)
        for name, (block, upconv, precision) in MATRIX.items()
    }
    # Share the cores: each sweep's Inductor compiles with a few worker processes, not one per core.
    threads = max(2, (os.cpu_count() or 8) // 4)
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": str(threads)}
    sweeps = BackgroundSweeps(root, grids, env)
    yield sweeps
    sweeps.stop()


# --- CUDA graphs called many times ------------------------------------------------------------------------------


@pytest.mark.parametrize("modes", [("eager", "compile", "compile-reduce-overhead"), ("eager",)],
                         ids=["gan_step_every_mode", "gan_step_eager"])
def test_gan_step_with_energy(tmp_path, modes):
    """The whole pix2pix step on a GPU: eager, compiled, CUDA graphs and NectarGAN's loop; NVML energy."""
    grid = _grid(tmp_path / "g.toml", TINY, task=["gan_train"], precision=["bf16"], layout=["nchw"],
                 mode=[*modes, "nectargan"], d_features=16, timeout_s=CHILD_TIMEOUT_S)
    assert _sweep(tmp_path / "run", grid, "--device", "cuda") == 0
    rows = {(r["mode"], r["batch_size"]): r for r in _measured(_rows(tmp_path / "run"))}
    assert set(rows) == {*((m, 4) for m in modes), ("nectargan", 4), ("nectargan", 1)}
    for r in rows.values():
        assert r["status"] == "ok", (_where(r), r["reason"])
        assert r["img_per_s"] > 0 and r["tflops"] > 0 and r["recompiles"] == 0 and not r["err_flag"]
        # NVML reads the energy of the GPU found by UUID: a positive figure, a sane power
        assert r["joules_per_img"] is None or (r["joules_per_img"] > 0 and 0 < r["avg_power_w"] < 2000)
    assert rows[("nectargan", 4)]["precision"] == "fp32"  # the baseline is NectarGAN's own fp32 loop


@pytest.mark.usefixtures("matrix")
def test_cuda_graphs_called_many_times_match_eager():
    """reduce-overhead replays one CUDA graph into the same output buffer: a caller keeps an output only by
    cloning it before the next call (reading it after the next replay is torch's documented hazard; the
    harness never keeps outputs). Fifty calls on different inputs, each clone checked against eager."""
    from torch._dynamo.utils import counters

    from nectargan.models.unet.model import UnetGenerator
    from nectargan.runtime import dynamo_counts, set_tf32

    torch._dynamo.reset()
    counters.clear()
    set_tf32("fp32")
    device = torch.device("cuda:0")
    model = UnetGenerator(input_size=64, features=8, n_downs=3).to(device).eval()
    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = [(torch.rand(4, 3, 64, 64, generator=g) * 2 - 1).to(device) for _ in range(50)]
    kept = []
    with torch.no_grad():
        kept.append(compiled(inputs[0]).clone())
        frames = dynamo_counts()["frames"]
        for x in inputs[1:]:
            kept.append(compiled(x).clone())
        torch.cuda.synchronize()
        expected = [model(x) for x in inputs]
    for i, (got, want) in enumerate(zip(kept, expected, strict=True)):
        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
        assert err < TOLERANCE["fp32"], f"call {i}: max relative error {err:.3g} against eager"
    assert all(not torch.equal(kept[i], kept[i + 1]) for i in range(len(kept) - 1))  # no stale buffer cloned
    assert dynamo_counts()["frames"] == frames  # 49 calls, no recompile
    assert counters["inductor"]["cudagraph_skips"] == 0  # CUDA graphs were really used


# --- device names -----------------------------------------------------------------------------------------------


def _eager_grid(path: Path, variants: int = 1) -> Path:
    return _grid(path, {"n_downs": [3], "features": [4 * (i + 1) for i in range(variants)], "input_size": [64],
                        "batch_size": [2]},
                 task=["infer"], mode=["eager"], precision=["bf16"], layout=["nchw"], timeout_s=CHILD_TIMEOUT_S)


@pytest.mark.usefixtures("matrix")
def test_device_cuda_0_labels_the_rows(tmp_path):
    code = _sweep(tmp_path / "run", _eager_grid(tmp_path / "g.toml"), "--device", "cuda:0")
    assert code == 0
    measured = _measured(_rows(tmp_path / "run"))
    assert measured and all(r["status"] == "ok" for r in measured), [(_where(r), r["reason"]) for r in measured]
    assert {r["device"] for r in measured} == {"cuda:0"}


@pytest.mark.usefixtures("matrix")
def test_device_cuda_all_gives_one_label_per_visible_gpu(tmp_path):
    count = torch.cuda.device_count()
    code = _sweep(tmp_path / "run", _eager_grid(tmp_path / "g.toml", variants=2 * count), "--device", "cuda:all")
    assert code == 0
    measured = _measured(_rows(tmp_path / "run"))
    assert len(measured) == 2 * count and all(r["status"] == "ok" for r in measured)
    assert {r["device"] for r in measured} == {f"cuda:{i}" for i in range(count)}


@pytest.mark.usefixtures("matrix")
def test_sweep_in_a_subprocess_with_one_visible_gpu(tmp_path):
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"  # our cuda:0
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "sweep", str(_eager_grid(tmp_path / "g.toml")), "--device", "cuda",
         "--out", str(out), *FAST],
        cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible}, capture_output=True, text=True,
        timeout=2 * CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = _measured(_rows(out))
    assert measured and all(r["status"] == "ok" for r in measured)
    assert {r["device"] for r in measured} == {"cuda:0"}
    env = json.loads((out / "env.json").read_text())
    assert env["gpu"] == torch.cuda.get_device_name(0)
    assert env["gpu_count"] == 1


# --- the trainer's fast path and a study ------------------------------------------------------------------------


@pytest.mark.usefixtures("matrix")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_fast_path(tmp_path, sample_dataset, precision):
    """bf16 (fp16: one GradScaler per network), channels_last, three compiled graphs, preloaded data."""
    from torch._dynamo.utils import counters

    from nectargan.models import load_generator
    from nectargan.train import TrainConfig, fit

    torch._dynamo.reset()
    counters.clear()  # count only this run's compilations (the counters are per process)
    out = tmp_path / "train"
    summary = fit(TrainConfig(
        data=str(sample_dataset), out=str(out), generator={"input_size": 64, "n_downs": 3, "features": 16},
        batch_size=8, steps=30, device="cuda", precision=precision, channels_last=True, compile=True, preload=True,
        eval_every=15,
    ))
    assert summary["steps"] == 30 and summary["device"].startswith("cuda")
    assert summary["precision"] == precision and summary["compile"] and summary["preload"]
    assert summary["recompiles_after_warmup"] == 0
    assert summary["graph_breaks"] == 0
    assert summary["img_per_s"] > 0 and summary["peak_mem_mib"] > 0
    with open(out / "metrics.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    losses = [float(r[k]) for r in records for k in ("loss_d", "loss_g_gan", "loss_g_l1") if r[k]]
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses), losses
    evaluated = [r for r in records if r["val_l1"]]
    assert [int(r["step"]) for r in evaluated] == [0, 15, 30]
    assert all(math.isfinite(float(r[k])) for r in evaluated for k in ("val_l1", "val_psnr", "val_ssim"))
    generator = load_generator(out / "netG.pth.tar", input_size=64)
    assert (generator.n_downs, generator.features) == (3, 16)


@pytest.mark.usefixtures("matrix")
def test_two_trial_study_on_cuda(tmp_path, sample_dataset):
    import optuna

    from studies.runner import StudyRun, run_study

    torch._dynamo.reset()
    config = tmp_path / "cuda.toml"
    config.write_text(f"""
[study]
name = "cuda"
objectives = ["val_l1"]
sampler = "random"
pruner = "none"
seed = 0
n_trials = 2

[data]
path = {json.dumps(str(sample_dataset))}

[budget]
steps = 20
eval_every = 10
trial_timeout_s = 240

[space]
n_downs = [3]
features = [8, 16]

[fixed]
device = "cuda"
input_size = 64
batch_size = 8
d_features = 16
""")
    storage = f"sqlite:///{tmp_path}/studies.db"
    summary = run_study(StudyRun(config_path=str(config), storage=storage, out_root=str(tmp_path / "trials")))
    assert summary["added"] == 2
    trials = optuna.load_study(study_name="cuda", storage=storage).trials
    assert len(trials) == 2 and all(t.state.is_finished() for t in trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, [(t.state.name, t.user_attrs.get("reason")) for t in trials]
    for trial in complete:
        assert trial.user_attrs["train_img_per_s"] > 0
        assert trial.user_attrs["peak_mem_mib"] > 0


# --- the matrix's results ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MATRIX))
def test_measured_matrix(matrix, name):
    """Every (task, mode, layout) of one precision on cuda: ok, accurate, no recompile, sane memory."""
    code, out, log = matrix.result(name)
    assert code == 0, log[-3000:]
    rows = _rows(out)
    params = {r["variant"]: r["params"] for r in rows if r["kind"] == "static" and r["status"] == "ok"}
    measured = _measured(rows)
    _block, _upconv, precision = MATRIX[name]
    assert {(r["task"], r["mode"], r["layout"]) for r in measured} == set(itertools.product(TASKS, MODES, LAYOUTS))
    assert len(measured) == len(TASKS) * len(MODES) * len(LAYOUTS)
    total_mib = _total_memory() / MIB
    for r in measured:
        where = _where(r)
        assert r["status"] == "ok", f"{where}: {r['status']} {r.get('reason')}"
        assert r["precision"] == precision and r["device"] == "cuda:0", where
        assert r["img_per_s"] > 0 and r["median_ms"] > 0, where
        assert r["max_rel_err"] is not None and r["max_rel_err"] <= TOLERANCE[precision], (where, r["max_rel_err"])
        assert r["err_flag"] is False, where
        assert r["recompiles"] == 0, where
        weights_mib = (r.get("params") or params[r["variant"]]) * 4 / MIB
        assert weights_mib < r["peak_mem_mib"] < total_mib, (where, r["peak_mem_mib"])
        if r["mode"] != "eager":
            assert r["compile_s"] > 0 and r["compile_warm_s"] > 0, where
            assert r["graph_breaks"] == 0, where
    env = json.loads((out / "env.json").read_text())
    assert env["matmul_ceiling_tflops"]["cuda:0"][precision] > 0


def test_matrix_covers_every_task_mode_precision_layout(matrix):
    seen = set()
    for name, (block, _upconv, _precision) in MATRIX.items():
        code, out, _log = matrix.result(name)
        if code == 0 and block == "UnetBlock":
            seen |= {(r["task"], r["mode"], r["precision"], r["layout"])
                     for r in _measured(_rows(out)) if r["status"] == "ok"}
    assert seen == set(itertools.product(TASKS, MODES, PRECISIONS, LAYOUTS))
