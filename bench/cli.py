"""The ``nectargan-bench`` command line: thin commands over the library.

Data goes to stdout, progress and logs to stderr. Known errors print one ``Error: ...`` line and exit
1 (2 for usage errors); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nectargan import __version__
from nectargan.errors import NectarGANError

try:  # typer >= 0.20 vendors click privately; older releases depend on click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

app = typer.Typer(
    name="nectargan-bench",
    help="Benchmark and search NectarGAN-style UNet generators.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = Console()
stderr = Console(stderr=True)
_state: dict = {"debug": False, "command": None}


class UpconvChoice(StrEnum):
    Transposed = "Transposed"
    Bilinear = "Bilinear"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nectargan-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


def _variant(
    n_downs: int, features: int, block_type: str, upconv_type: UpconvChoice, input_size: int,
    in_channels: int, out_channels: int | None, use_dropout_layers: int,
):
    from bench.variant import VariantSpec

    return VariantSpec(
        n_downs=n_downs, features=features, block_type=block_type, upconv_type=upconv_type.value,
        input_size=input_size, in_channels=in_channels, out_channels=out_channels,
        use_dropout_layers=use_dropout_layers,
    )


@app.command()
def profile(
    n_downs: Annotated[int, typer.Option(help="Down layers between initial_down and the bottleneck.")] = 6,
    features: Annotated[int, typer.Option(help="Channels of the first layer (cap 8x).")] = 64,
    block_type: Annotated[
        str, typer.Option(help="Block name: UnetBlock, ResidualUnetBlock or a registered one.")
    ] = "UnetBlock",
    upconv_type: Annotated[UpconvChoice, typer.Option(help="Upsampling.")] = UpconvChoice.Transposed,
    input_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = 256,
    in_channels: Annotated[int, typer.Option(help="Input image channels.")] = 3,
    out_channels: Annotated[
        int | None, typer.Option(help="Output image channels (default: in-channels).")
    ] = None,
    use_dropout_layers: Annotated[int, typer.Option(help="Up layers with dropout, deepest first.")] = 3,
    depth: Annotated[int, typer.Option(min=1, max=4, help="Module depth of the table (1: layers).")] = 1,
) -> None:
    """Profile one variant: a per-module table of parameters and multiply-adds, then the totals.

    Example: nectargan-bench profile --n-downs 6 --features 64 --block-type UnetBlock --input-size 256
    """
    from bench.profile import module_table, profile_static

    spec = _variant(n_downs, features, block_type, upconv_type, input_size, in_channels, out_channels,
                    use_dropout_layers)
    reason = spec.invalid_reason()
    if reason is not None:
        raise NectarGANError(reason)
    rows, counts = module_table(spec, max_depth=depth)
    table = Table(title=f"UnetGenerator {spec.name} (per image)", title_justify="left")
    width = max(len(r.name) + 2 * (r.depth - 1) for r in rows)
    table.add_column("module", no_wrap=True, min_width=width)
    for column in ["output shape", "params", "MACs (fvcore)", "% MACs"]:
        table.add_column(column, justify="right")
    for row in rows:
        shape = "x".join(map(str, row.output_shape)) if row.output_shape else ""
        share = f"{100 * row.macs / counts.total:.1f}" if counts.total else ""
        table.add_row("  " * (row.depth - 1) + row.name, shape, f"{row.params:,}", f"{row.macs:,}", share)
    stats = profile_static(spec, fv=counts)
    table.add_section()
    table.add_row("total", "", f"{stats.params:,}", f"{stats.macs:,}", "100.0")
    stdout.print(table)
    totals = Table(show_header=False, box=None, pad_edge=False)
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    for label, value in [
        ("parameters", f"{stats.params:,} ({stats.param_mib:,.1f} MiB fp32)"),
        ("MACs, fvcore total", f"{stats.macs:,}"),
        ("FLOPs forward (flop_counter)", f"{stats.flops_fwd:,}"),
        ("FLOPs forward + backward", f"{stats.flops_train:,}"),
        ("conv MACs: closed form", f"{stats.conv_macs_analytic:,}" if stats.conv_macs_analytic else "n/a"),
        ("conv MACs: fvcore", f"{stats.conv_macs_fvcore:,}"),
        ("conv MACs: flop_counter / 2", f"{stats.conv_flops_counter // 2:,}"),
        ("activations (fvcore)", f"{stats.activations:,}"),
        ("conv counts agree", "yes" if stats.counts_agree else "NO: " + "; ".join(stats.warnings)),
    ]:
        totals.add_row(label, value)
    stdout.print(totals)


@app.command()
def sweep(
    grid: Annotated[str, typer.Argument(help="Grid TOML file, or a built-in grid name (default, smoke).")],
    static_only: Annotated[
        bool, typer.Option("--static-only", help="Count parameters, FLOPs and activations; no timing.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: results/runs/<grid>-<timestamp>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished rows.")] = False,
    shard: Annotated[
        str | None, typer.Option(help="Run only part K of N of the grid, as K/N (e.g. 1/2).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; one line at the end.")] = False,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:N or cuda:all (default: the grid's, else cpu).")
    ] = None,
    task: Annotated[list[str] | None, typer.Option(help="infer and/or train (repeat the option).")] = None,
    mode: Annotated[
        list[str] | None, typer.Option(help="eager, compile, compile-reduce-overhead, compile-max-autotune.")
    ] = None,
    precision: Annotated[list[str] | None, typer.Option(help="fp32, tf32, bf16, fp16.")] = None,
    layout: Annotated[list[str] | None, typer.Option(help="nchw, channels_last.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads in the measuring child.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per variant before its child is killed.")] = None,
    blocks: Annotated[int, typer.Option(min=1, help="Timed blocks per measurement.")] = 5,
    min_block_s: Annotated[float, typer.Option(help="Minimum seconds per timed block.")] = 0.2,
    launcher: Annotated[str, typer.Option(help="subprocess (isolated, default) or inline (debugging).")] = (
        "subprocess"
    ),
    max_batch: Annotated[
        int | None, typer.Option(help="Also find the largest batch that fits, halving from N (column max_batch).")
    ] = None,
) -> None:
    """Profile every variant of a grid into a run folder, then write its reports.

    Without --static-only each valid variant is also measured (throughput, latency, memory, compile
    cost) in its own child process, with the grid's [measure] options overridden by these flags.

    Example: nectargan-bench sweep bench/grids/default.toml --static-only --out results/runs/default
    """
    from bench.env import read_env
    from bench.grid import load_grid, parse_shard
    from bench.report import write_reports
    from bench.store import JsonlStore
    from bench.sweep import default_out_dir, run_static_sweep

    loaded = load_grid(grid)
    shard_spec = parse_shard(shard) if shard else None
    options = None
    if not static_only:
        from bench.measure import measure_options, resolve_devices

        if launcher not in ("subprocess", "inline"):
            raise NectarGANError(f"--launcher {launcher!r} is not valid: use subprocess or inline")
        device = device or str(_first(loaded.measure.get("device", "cpu")))
        options = measure_options(loaded, device, task=task, mode=mode, precision=precision, layout=layout,
                                  threads=threads, timeout_s=timeout, blocks=blocks, min_block_s=min_block_s,
                                  launcher=launcher, max_batch=max_batch)
        resolve_devices(device)  # fail before anything is written
    directory = out if out is not None else default_out_dir(loaded)
    if resume and out is None:
        raise NectarGANError("--resume needs --out: the run folder to continue")
    progress = _progress(quiet)
    task = None

    def on_start(total: int) -> None:
        nonlocal task
        if progress is not None and total:
            progress.start()
            task = progress.add_task("profiling", total=total)

    def on_row(spec, row) -> None:
        if progress is not None and task is not None:
            progress.update(task, advance=1, description=f"{spec.name} [{row['status']}]")

    try:
        if options is None:
            result = run_static_sweep(loaded, directory, resume=resume, shard_spec=shard_spec,
                                      on_start=on_start, on_row=on_row, command=_state["command"])
        else:
            from bench.measure import run_measured_sweep

            def on_rows(spec, rows) -> None:
                worst = next((r["status"] for r in rows if r["status"] != "ok"), "ok")
                on_row(spec, {"status": worst})

            result = run_measured_sweep(loaded, directory, options, resume=resume, shard_spec=shard_spec,
                                        on_start=on_start, on_row=on_rows, command=_state["command"])
    except KeyboardInterrupt:
        if progress is not None and task is not None:
            progress.stop()
        stderr.print(f"Interrupted. Finished rows are kept in {directory}/results.jsonl; continue with "
                     f"--out {directory} --resume", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if progress is not None and task is not None:
        progress.stop()
    rows = list(JsonlStore(directory).iter_rows())
    env = read_env(directory)
    written = write_reports(directory, rows, [env] if env else [], title=loaded.name)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items())) or "nothing new"
    skipped = f", {result.skipped} already done" if result.skipped else ""
    unit = "variants" if options is None else "variants; rows"
    stderr.print(f"{result.planned} {unit}: {counts}{skipped}. Wrote {directory}/results.jsonl, "
                 + ", ".join(p.name for p in written), highlight=False, soft_wrap=True)
    _print_unsupported(rows)
    failed = [r for r in rows if r.get("status") in ("error", "timeout")]
    if failed:
        stderr.print(f"Error: {len(failed)} row(s) failed (status error or timeout); see the reason "
                     f"column of {directory}/results.csv", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _first(value):
    return value[0] if isinstance(value, list) else value


def _print_unsupported(rows: list[dict]) -> None:
    from bench.profile import summarise_unsupported

    seen = summarise_unsupported([r.get("fvcore_unsupported") or {} for r in rows if r.get("status") == "ok"])
    if seen:
        ops = ", ".join(f"{op} ({n})" for op, n in sorted(seen.items()))
        stderr.print(f"fvcore skipped these operators in its MACs (variants affected): {ops}",
                     highlight=False, soft_wrap=True)


def _progress(quiet: bool):
    if quiet:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=stderr, transient=False,
    )


@app.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="Run folders; several are merged (e.g. shards).")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write (default: the folder itself; for several, merged-<time>).")
    ] = None,
) -> None:
    """Regenerate results.csv, report.md and plots from run folders.

    Example: nectargan-bench report results/runs/shard1 results/runs/shard2 --out results/runs/merged
    """
    from bench.report import report_dirs

    for directory in dirs:
        if not directory.is_dir():
            raise NectarGANError(f"run folder {directory} does not exist")
    _target, written = report_dirs(dirs, out)
    stderr.print(f"Wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


@app.command()
def compare(
    dir_a: Annotated[Path, typer.Argument(help="Run folder A (the baseline).")],
    dir_b: Annotated[Path, typer.Argument(help="Run folder B.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write compare.csv/.md (default: results/runs/compare-A-vs-B).")
    ] = None,
) -> None:
    """Print a markdown table of ratios B/A for the rows both runs have; write it as CSV and markdown.

    Example: nectargan-bench compare results/runs/before results/runs/after
    """
    from bench.report import compare_dirs

    for directory in (dir_a, dir_b):
        if not directory.is_dir():
            raise NectarGANError(f"run folder {directory} does not exist")
    if out is None:
        out = Path("results/runs") / f"compare-{dir_a.name}-vs-{dir_b.name}"
    _table, markdown, written = compare_dirs(dir_a, dir_b, out)
    typer.echo(markdown)
    stderr.print(f"Wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


class TaskChoice(StrEnum):
    edges2photo = "edges2photo"
    gray2color = "gray2color"
    denoise = "denoise"


@app.command()
def dataset(
    task: Annotated[TaskChoice, typer.Option(help="What A is: edges, greyscale or a noisy photo.")],
    out: Annotated[Path, typer.Option(help="Folder to create (train/, val/, test/).")],
    size: Annotated[int, typer.Option(help="Side of each image, 32..512.")] = 64,
    count: Annotated[int, typer.Option(help="Number of pairs, split 80/10/10.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
) -> None:
    """Build a pix2pix-format dataset from scikit-image's bundled photos (no download).

    Example: nectargan-bench dataset --task edges2photo --out data/edges64 --size 64 --count 200
    """
    from nectargan.data.samples import build_sample_dataset

    counts = build_sample_dataset(out, task.value, size=size, count=count, seed=seed)
    stderr.print(f"Wrote {sum(counts.values())} pairs ({size}x{size} each side) to {out}: "
                 + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False, soft_wrap=True)


class PrecisionChoice(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="pix2pix-format dataset folder (train/, val/).")],
    out: Annotated[Path, typer.Option(help="Run folder: metrics.csv, samples/, netG/netD.pth.tar.")],
    n_downs: Annotated[int, typer.Option(help="Down layers between initial_down and the bottleneck.")] = 6,
    features: Annotated[int, typer.Option(help="Channels of the first layer (cap 8x).")] = 64,
    block_type: Annotated[str, typer.Option(help="Block name.")] = "UnetBlock",
    upconv_type: Annotated[UpconvChoice, typer.Option(help="Upsampling.")] = UpconvChoice.Transposed,
    input_size: Annotated[int, typer.Option(help="Crop side in pixels (the generator's input_size).")] = 256,
    in_channels: Annotated[int, typer.Option(help="Input image channels.")] = 3,
    out_channels: Annotated[int | None, typer.Option(help="Output channels (default: in-channels).")] = None,
    use_dropout_layers: Annotated[int, typer.Option(help="Up layers with dropout, deepest first.")] = 3,
    steps: Annotated[int | None, typer.Option(help="Budget in steps.")] = None,
    seconds: Annotated[float | None, typer.Option(help="Budget in seconds (whichever ends first).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate for G and D.")] = 2e-4,
    beta1: Annotated[float, typer.Option(help="Adam beta1.")] = 0.5,
    lambda_l1: Annotated[float, typer.Option(help="Weight of the L1 term.")] = 100.0,
    d_layers: Annotated[int, typer.Option(help="PatchGAN n_layers (3: 34x34 patches, 4: 70x70).")] = 3,
    d_features: Annotated[int, typer.Option(help="PatchGAN base channels.")] = 64,
    direction: Annotated[str, typer.Option(help="AtoB (input = left half) or BtoA.")] = "AtoB",
    eval_every: Annotated[int, typer.Option(help="Evaluate on val every N steps (0: at the end only).")] = 200,
    log_every: Annotated[int, typer.Option(help="Read the losses every N steps.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[
        PrecisionChoice, typer.Option(help="auto: bf16 on CUDA, fp32 on CPU.")
    ] = PrecisionChoice.auto,
    channels_last: Annotated[
        bool | None, typer.Option(help="channels_last memory format (default: on for CUDA).")
    ] = None,
    compile: Annotated[bool | None, typer.Option(help="torch.compile the step (default: on for CUDA).")] = None,
    preload: Annotated[bool | None, typer.Option(help="Hold the data on the device (default: if it fits).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; one line at the end.")] = False,
) -> None:
    """Train a generator against a PatchGAN discriminator (pix2pix objective) and evaluate it.

    Give a budget: --steps and/or --seconds (whichever ends first).

    Example: nectargan-bench train --data data/edges64 --input-size 64 --n-downs 3 --steps 500 --out runs/t64
    """
    from nectargan.train import TrainConfig, fit

    if steps is None and seconds is None:
        raise NectarGANError("give a budget: --steps N and/or --seconds S")
    spec = _variant(n_downs, features, block_type, upconv_type, input_size, in_channels, out_channels,
                    use_dropout_layers)
    reason = spec.invalid_reason()
    if reason is not None:
        raise NectarGANError(reason)
    kwargs = spec.model_kwargs()
    config = TrainConfig(
        data=str(data), out=str(out), generator=kwargs, d_layers=d_layers, d_features=d_features,
        batch_size=batch_size,
        steps=steps, seconds=seconds, lr=lr, beta1=beta1, lambda_l1=lambda_l1, direction=direction,
        eval_every=eval_every, log_every=log_every, seed=seed, device=device, precision=precision.value,
        channels_last=channels_last, compile=compile, preload=preload,
    )
    progress = _TrainProgress(steps, seconds, quiet=quiet)
    try:
        summary = fit(config, callbacks=[progress])
    finally:
        progress.stop()
    stderr.print(
        f"{summary['steps']} steps in {summary['train_seconds']:.1f} s ({summary['img_per_s']:.1f} img/s, "
        f"{summary['device']}, {summary['precision']}, compile={'on' if summary['compile'] else 'off'}); "
        f"val L1 {summary['initial_val_l1']:.4f} -> {summary['val_l1']:.4f}, PSNR {summary['val_psnr']:.2f} dB, "
        f"SSIM {summary['val_ssim']:.3f}. Wrote {out}", highlight=False, soft_wrap=True,
    )


class _TrainProgress:
    """Training events -> a rich progress bar (img/s, losses, val L1, ETA)."""

    def __init__(self, steps: int | None, seconds: float | None, quiet: bool):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.by_steps = steps is not None
        self.total = steps if steps is not None else seconds
        self.progress = None if quiet else Progress(
            TextColumn("train"), BarColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=stderr,
        )
        self.task = None
        self.val = ""

    def _ensure(self):
        if self.progress is not None and self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, status="starting")

    def on_eval(self, record: dict) -> None:
        self._ensure()
        self.val = f" val L1 {record['val_l1']:.4f}"
        if self.progress is not None:
            self.progress.update(self.task, status=f"step {record['step']}{self.val}")

    def on_log(self, record: dict) -> None:
        self._ensure()
        if self.progress is None:
            return
        status = (f"step {record['step']} {record['img_per_s']:.1f} img/s D {record['loss_d']:.3f} "
                  f"G {record['loss_g_gan']:.3f} L1 {record['loss_g_l1']:.3f}{self.val}")
        done = record["step"] if self.by_steps else record["elapsed_s"]
        self.progress.update(self.task, completed=done, status=status)

    def on_end(self, summary: dict) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=self.total)

    def stop(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()


@app.command()
def study(
    config: Annotated[str, typer.Argument(help="Study TOML file, or a built-in config name (default, smoke).")],
    storage: Annotated[str, typer.Option(help="sqlite:///FILE.db, journal:FILE.log or postgresql://...")] = (
        "sqlite:///results/studies.db"
    ),
    study_name: Annotated[str | None, typer.Option(help="Study name (default: the config's study.name).")] = None,
    n_trials: Annotated[int | None, typer.Option(help="Trials to add (default: the config's study.n_trials).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after S seconds.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes sharing the storage.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Trial folders (default: results/studies/<name>).")] = None,
    heartbeat: Annotated[int, typer.Option(min=1, help="Heartbeat interval in seconds (RDB storages).")] = 10,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; one line at the end.")] = False,
) -> None:
    """Run (or resume) an Optuna study of short training trials; several workers share the storage.

    Example: nectargan-bench study studies/smoke.toml --storage sqlite:///results/studies.db --workers 2
    """
    from studies.runner import StudyRun, run_study

    run = StudyRun(config_path=config, storage=storage, study_name=study_name, n_trials=n_trials,
                   timeout_s=timeout, workers=workers, out_root=str(out) if out else None, heartbeat_s=heartbeat)
    progress = None if quiet else _study_progress()
    task = None

    def on_progress(state: dict) -> None:
        nonlocal task
        if progress is None:
            return
        if task is None:
            progress.start()
            task = progress.add_task("trials", total=state["total"], best=state["best"])
        progress.update(task, completed=state["finished"], best=state["best"])

    try:
        summary = run_study(run, on_progress=on_progress)
    finally:
        if progress is not None and task is not None:
            progress.stop()
    states = ", ".join(f"{n} {s.lower()}" for s, n in summary["states"].items()) or "none"
    stderr.print(f"Study {summary['study']!r}: added {summary['added']} trials ({states}); "
                 f"{summary['total_trials']} in all; best {summary['best']}. Storage {summary['storage']}. "
                 f"Watch it: nectargan-bench dashboard {summary['storage']}", highlight=False, soft_wrap=True)


def _study_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TextColumn("best {task.fields[best]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=stderr)


@app.command("study-report")
def study_report(
    storage: Annotated[str, typer.Argument(help="The study's storage URL.")],
    study_name: Annotated[str, typer.Option("--study", help="Study name.")],
    out: Annotated[Path, typer.Option(help="Folder for trials.csv, report.md and plots.")],
) -> None:
    """Write trials.csv, report.md (best trials or Pareto front, importances, pruned/failed) and plots.

    Example: nectargan-bench study-report sqlite:///results/studies.db --study smoke --out results/study-smoke
    """
    from studies.report import write_study_report

    written = write_study_report(storage, study_name, out)
    stderr.print(f"Wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


@app.command()
def dashboard(
    storage: Annotated[str, typer.Argument(help="Storage URL.")] = "sqlite:///results/studies.db",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    artifacts: Annotated[Path | None, typer.Option(help="Artifact folder (default: beside the storage).")] = None,
) -> None:
    """Serve optuna-dashboard on a study storage, with the trials' sample images.

    Example: nectargan-bench dashboard sqlite:///results/studies.db --port 8080
    """
    try:
        import optuna_dashboard
    except ImportError:
        raise NectarGANError("optuna-dashboard is not installed: pip install optuna-dashboard") from None
    from studies.storage import artifact_store, open_storage

    opened = open_storage(storage)
    store = artifact_store(storage, artifacts)
    stderr.print(f"optuna-dashboard on {storage}: http://{host}:{port}/ (Ctrl-C to stop)",
                 highlight=False, soft_wrap=True)
    optuna_dashboard.run_server(opened, host=host, port=port, artifact_store=store)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning known errors into one line and a non-zero exit."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["command"] = shlex.join(["nectargan-bench", *args])
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *[a for a in args if a != "--debug"]]
    try:
        result = app(args=args, prog_name="nectargan-bench", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        stderr.print(f"Error: {exc.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click_exceptions.ClickException as exc:
        stderr.print(f"Error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code or 1
    except typer.Abort:
        stderr.print("Aborted.")
        return 130
    except NectarGANError as exc:
        if debug:
            raise
        return _one_line_error(str(exc))
    except OSError as exc:
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        return _one_line_error(f"{exc.strerror or exc}{where}")
    except Exception as exc:  # the promise: never a traceback without --debug
        if debug:
            raise
        return _one_line_error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
    return result if isinstance(result, int) else 0


def _one_line_error(message: str) -> int:
    text = " ".join(message.split())
    if len(text) > 400:
        text = text[:400] + "..."
    stderr.print(f"Error: {text}", markup=False, highlight=False, soft_wrap=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
