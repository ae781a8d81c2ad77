"""Commands of the measuring harness: ``profile``, ``sweep``, ``report`` and ``compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bench.grid import builtin_grid_names
from bench.rows import AnyRow
from bench.store import JsonlStore
from bench.sweep import SweepProgress, SweepResult
from cli.options import (
    DEFAULT,
    DEFAULT_UPCONV,
    EXECUTOR_FLAGS,
    INVOCATION,
    BlockType,
    DropoutLayers,
    Features,
    InChannels,
    InputSize,
    NDowns,
    OutChannels,
    Quiet,
    Upconv,
    executor_settings,
    measure_flags,
    variant,
    with_flags,
)
from cli.progress import ProgressBar, sigterm_as_interrupt, stderr
from nectargan.errors import NectarGANError

stdout = Console()


def profile(
    n_downs: NDowns = DEFAULT.n_downs,
    features: Features = DEFAULT.features,
    block_type: BlockType = DEFAULT.block_type,
    upconv_type: Upconv = DEFAULT_UPCONV,
    input_size: InputSize = DEFAULT.input_size,
    in_channels: InChannels = DEFAULT.in_channels,
    out_channels: OutChannels = None,
    use_dropout_layers: DropoutLayers = DEFAULT.use_dropout_layers,
    depth: Annotated[int, typer.Option(min=1, max=4, help="Module depth of the table (1: layers).")] = 1,
) -> None:
    """Profile one variant: a per-module table of parameters and multiply-adds, then the totals.

    Example: nectargan-bench profile --n-downs 6 --features 64 --block-type UnetBlock --input-size 256
    """
    from bench.profile import module_table, profile_static

    spec = variant(n_downs, features, block_type, upconv_type, input_size, in_channels, out_channels,
                   use_dropout_layers)
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


@with_flags(measure=measure_flags(), where=EXECUTOR_FLAGS)
def sweep(
    grid: Annotated[
        str, typer.Argument(help=f"Grid TOML file, or a built-in grid name ({', '.join(builtin_grid_names())}).")
    ],
    static_only: Annotated[
        bool, typer.Option("--static-only", help="Count parameters, FLOPs and activations; no timing.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: results/runs/<grid>-<timestamp>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished rows.")] = False,
    shard: Annotated[str | None, typer.Option(help="Run only part K of N of the grid, as K/N (e.g. 1/2).")] = None,
    quiet: Quiet = False,
    measure: dict | None = None,
    where: dict | None = None,
) -> None:
    """Profile every variant of a grid into a run folder, then write its reports.

    Without --static-only each valid variant is also measured (throughput, latency, memory, compile
    cost) in a measuring child process, with the grid's [measure] options overridden by these flags.
    --executor slurm sends the grid to Slurm as a job array of shards, --executor ray as one Ray task
    per variant; the results land in the same run folder (see README "On a cluster").

    Example: nectargan-bench sweep bench/grids/default.toml --static-only --out results/runs/default
    """
    from bench.grid import load_grid, parse_shard
    from bench.options import measure_options
    from bench.run import run_sweep

    loaded = load_grid(grid)
    # checked even with --static-only, so a misspelt option is never silently ignored
    options = measure_options(loaded.measure, **(measure or {}))
    executor = executor_settings(loaded.executor, loaded.source, **(where or {}))
    bar = ProgressBar("profiling" if static_only else "measuring", quiet=quiet)
    folder: list[Path] = []
    progress = SweepProgress(folder=folder.append,
                             start=lambda total, finished: bar.start(total) or bar.update(completed=finished),
                             variant=lambda spec, rows: bar.update(advance=1, status=f"{spec.name} [{_worst(rows)}]"),
                             finished=lambda n, jobs: bar.update(completed=n, status=jobs))
    try:
        with sigterm_as_interrupt():
            result = run_sweep(loaded, None if static_only else options, executor, out=out, resume=resume,
                               shard=parse_shard(shard) if shard else None, command=INVOCATION.command,
                               progress=progress)
    except KeyboardInterrupt:
        bar.stop()
        _print(_interrupted(executor.kind, folder[0] if folder else out))
        raise typer.Exit(130) from None
    bar.stop()
    _print_outcome(result, quiet)


def _interrupted(kind: str, where: Path | None) -> str:
    if kind == "slurm":
        return f"Interrupted. The submitted jobs keep running; merge what they wrote with: nectargan-bench collect " \
               f"{where}"
    return f"Interrupted. Finished rows are kept in {where}/results.jsonl; continue with --out {where} --resume"


def _print_outcome(result: SweepResult, quiet: bool) -> None:
    """The sweep's summary, the baseline lines, fvcore's notes and failures; exit 1 when a row or shard failed."""
    directory = result.directory
    if result.detached:
        _print(f"Submitted {result.submitted} shard job(s) of {len(result.shards)} to Slurm; logs in "
               f"{directory}/submitit. Merge their results when they end: nectargan-bench collect {directory}")
        return
    for failure in result.failures:
        _print(f"Error: {failure}")
    if result.failures:
        _print(f"{_shards_summary(result)}. Resubmit the unfinished shards with --out {directory} --resume")
        raise typer.Exit(1)
    rows = list(JsonlStore(directory).iter_rows())
    text = _shards_summary(result) if result.shards else _summary(result)
    summary = f"{text}. Wrote {directory}/results.jsonl, " + ", ".join(p.name for p in result.written)
    failed = [r for r in rows if r.get("status") in ("error", "timeout")]
    failure = (f"Error: {len(failed)} row(s) failed (status error or timeout); see the reason column of "
               f"{directory}/results.csv") if failed else ""
    skipped_ops = _unsupported(rows)
    if quiet:  # one line: the failure first, the fvcore note folded in
        note = f"; fvcore skipped {len(skipped_ops)} operator(s) in its MACs (see report.md)" if skipped_ops else ""
        _print(f"{failure}. {summary}{note}" if failure else f"{summary}{note}")
    else:
        _print(summary)
        for line in _baseline_lines(rows):
            _print(line)
        if skipped_ops:
            ops = ", ".join(f"{op} ({n})" for op, n in sorted(skipped_ops.items()))
            _print(f"fvcore skipped these operators in its MACs (variants affected): {ops}")
        if failure:
            _print(failure)
    if failed:
        raise typer.Exit(1)


def _shards_summary(result: SweepResult) -> str:
    done = sum(s.finished for s in result.shards)
    return (f"{result.planned} variants in {len(result.shards)} Slurm shards ({result.submitted} submitted), {done} "
            f"finished; {_count_rows(result.directory)}")


def _count_rows(directory: Path) -> str:
    from collections import Counter

    counts = Counter(r["status"] for r in JsonlStore(directory).iter_rows())
    return "rows: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")


def collect(
    directory: Annotated[Path, typer.Argument(help="The run folder of a cluster sweep.")],
) -> None:
    """Merge what a cluster sweep's shards have written into its run folder and rewrite its reports.

    Exits 1 while shards are unfinished, naming their jobs' states.

    Example: nectargan-bench collect results/runs/default-20261127-101500
    """
    from bench.run import collect as collect_shards

    _existing_folders(directory)
    result, jobs = collect_shards(directory)
    if result.written:
        _print(f"Wrote {directory}/results.jsonl, " + ", ".join(p.name for p in result.written))
    unfinished = [s for s in result.shards if not s.complete]
    done = sum(s.finished for s in result.shards)
    _print(f"{done} of {result.planned} variants finished in {len(result.shards)} shards; {_count_rows(directory)}")
    if unfinished:
        states = "; ".join(f"shard {s.index}: {s.finished}/{s.variants} variants, {jobs.get(str(s.index), 'no job')}"
                           for s in unfinished)
        _print(f"Error: {len(unfinished)} shard(s) unfinished ({states}); collect again when they end, or resubmit "
               f"them with the sweep command and --out {directory} --resume")
        raise typer.Exit(1)


def _baseline_lines(rows: list[dict]) -> list[str]:
    """Per variant and training task: the fastest configuration and its speed-up over NectarGAN's loop."""
    import pandas as pd

    from bench.report import baseline_speedups, measure_frame

    lines = []
    for _, r in baseline_speedups(measure_frame(rows)).iterrows():
        same, one = r["speedup_same_batch"], r["speedup_vs_b1"]
        same = f"{same:.2f}x NectarGAN's loop at that batch" if pd.notna(same) else ""
        one = f"{one:.2f}x at its batch 1" if pd.notna(one) else ""
        caveats = ["noisy"] if r["noisy"] else []  # the report's own flags for the same row
        if pd.notna(r["speedup_same_batch"]) and not r["interleaved"]:
            caveats.append("timed separately")
        lines.append(f"{r['variant']} {r['task']}: fastest {r['fastest']} at {r['img_per_s']:,.1f} img/s = "
                     + ", ".join(x for x in (same, one) if x) + (f" ({', '.join(caveats)})" if caveats else ""))
    return lines


def _print(line: str) -> None:
    stderr.print(line, highlight=False, soft_wrap=True, markup=False)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary(result) -> str:
    """``3 variants, 1 already done (4 new rows: 3 ok, 1 invalid)``: variants and rows counted apart."""
    done = f", {result.skipped} already done" if result.skipped else ""
    new = sum(result.counts.values())
    if not new:
        return f"{_plural(result.planned, 'variant')}{done} (no new rows)"
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
    rows = _plural(new, "new row" if result.skipped else "row")
    return f"{_plural(result.planned, 'variant')}{done} ({rows}: {counts})"


def _worst(rows: list[AnyRow]) -> str:
    return next((r.status for r in rows if r.status != "ok"), "ok")


def _unsupported(rows: list[dict]) -> dict[str, int]:
    """Operators fvcore skipped, with the number of variants affected."""
    from bench.profile import summarise_unsupported

    return dict(summarise_unsupported([r.get("fvcore_unsupported") or {} for r in rows if r.get("status") == "ok"]))


def _existing_folders(*dirs: Path) -> None:
    for directory in dirs:
        if directory.exists() and not directory.is_dir():
            raise NectarGANError(f"{directory} is not a folder: give a run folder (the one holding results.jsonl)")
        if not directory.is_dir():
            raise NectarGANError(f"run folder {directory} does not exist")


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

    _existing_folders(*dirs)
    _target, written = report_dirs(dirs, out)
    stderr.print(f"Wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


def compare(
    dir_a: Annotated[Path, typer.Argument(help="Run folder A (the baseline).")],
    dir_b: Annotated[Path, typer.Argument(help="Run folder B.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write compare.csv/.md (default: results/runs/compare-A-vs-B).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Exit 1 when a measurement's img/s fell by more than "
                                   "this fraction (e.g. 0.05) and the drop is outside both runs' IQRs.")
    ] = None,
) -> None:
    """Print markdown tables of ratios B/A (static counts, and measurements by their full key); write them as
    CSV and markdown.

    Example: nectargan-bench compare results/runs/before results/runs/after --threshold 0.05
    """
    from bench.compare import compare_dirs

    _existing_folders(dir_a, dir_b)
    comparison = compare_dirs(dir_a, dir_b, out, threshold)
    typer.echo(comparison.markdown)
    stderr.print(f"Wrote {', '.join(str(p) for p in comparison.written)}", highlight=False, soft_wrap=True)
    regressed = comparison.regressions
    if threshold is not None and len(regressed):
        worst = regressed.sort_values("img_per_s_ratio").iloc[0]
        stderr.print(f"Error: {len(regressed)} measurement(s) regressed by more than {threshold:.0%} in img/s; "
                     f"worst {worst['variant']} {worst['task']}/{worst['mode']}/{worst['precision']}/"
                     f"{worst['layout']}: {worst['img_per_s_ratio']:.3f}x", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def trace(
    n_downs: NDowns = DEFAULT.n_downs,
    features: Features = DEFAULT.features,
    block_type: BlockType = DEFAULT.block_type,
    upconv_type: Upconv = DEFAULT_UPCONV,
    input_size: InputSize = DEFAULT.input_size,
    use_dropout_layers: DropoutLayers = DEFAULT.use_dropout_layers,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 16,
    task: Annotated[str, typer.Option(help="infer, train or gan_train.")] = "gan_train",
    mode: Annotated[str, typer.Option(help="eager, compile, compile-reduce-overhead, compile-max-autotune or "
                                      "nectargan.")] = "compile",
    precision: Annotated[str | None, typer.Option(help="fp32, tf32, bf16, fp16 (default: bf16 on CUDA, else "
                                                  "fp32).")] = None,
    layout: Annotated[str, typer.Option(help="nchw or channels_last.")] = "nchw",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    d_layers: Annotated[int | None, typer.Option(min=1, help="gan_train: PatchGAN layers (default 3).")] = None,
    d_features: Annotated[int | None, typer.Option(min=1, help="gan_train: PatchGAN features (default 64).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Warm steps traced.")] = 5,
    top: Annotated[int, typer.Option(min=1, help="Kernels listed.")] = 20,
    out: Annotated[Path | None, typer.Option(help="Write the markdown here (e.g. profile.md) as well.")] = None,
) -> None:
    """Trace warm steps of one measured workload with torch.profiler: the top kernels by time and their share.

    Example: nectargan-bench trace --task gan_train --mode compile --precision bf16 --device cuda --out profile.md
    """
    from bench.measure import config_reason
    from bench.options import check_measure_value
    from bench.records import MeasureConfig
    from bench.trace import trace_markdown, trace_step
    from nectargan.runtime import default_precision, resolve_device
    from nectargan.train.config import TrainConfig

    spec = variant(n_downs, features, block_type, upconv_type, input_size, DEFAULT.in_channels, None,
                   use_dropout_layers)
    where = resolve_device(device)
    precision = precision or default_precision(where.type)
    for key, value in (("task", task), ("mode", mode), ("precision", precision), ("layout", layout)):
        check_measure_value(key, value, f"--{key}")
    d = ((d_layers or TrainConfig.d_layers, d_features or TrainConfig.d_features) if task == "gan_train"
         else (None, None))
    cfg = MeasureConfig(task, mode, precision, layout, batch_size, *d)
    reason = config_reason(spec, cfg, str(where))
    if reason:
        raise NectarGANError(reason)
    text = trace_markdown(trace_step(spec, cfg, where, steps=steps, top=top))
    typer.echo(text)
    if out is not None:
        from bench.env import write_text_atomic

        write_text_atomic(out, text)
        stderr.print(f"Wrote {out}", highlight=False, soft_wrap=True)


COMMANDS = {"profile": profile, "sweep": sweep, "trace": trace, "collect": collect, "report": report,
            "compare": compare}
