"""The plots of a run's report (matplotlib, Agg): parameters vs GFLOPs, throughput vs cost and energy,
memory vs batch size. A plot with nothing drawn is not written: an empty picture is not a result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.timing import row_quartiles

PLOT_FILE = "params_vs_gflops.png"


def plot_params_vs_gflops(frame: pd.DataFrame, path: Path) -> Path | None:
    """Scatter of parameters against forward GFLOPs, one colour per block x upconv type."""
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for (block, upconv), group in ok.groupby(["block_type", "upconv_type"], sort=True):
        ax.scatter(group["flops_fwd"].astype(float) / 1e9, group["params"].astype(float) / 1e6,
                   label=f"{block} + {upconv}", alpha=0.8, s=36)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forward GFLOPs per image (log)")
    ax.set_ylabel("parameters, millions (log)")
    ax.set_title("UNet generator variants: size vs cost")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_measured(measured: pd.DataFrame, static: pd.DataFrame, directory: Path) -> list[Path]:
    """Throughput vs GFLOPs (one marker per block/upconv) and memory vs batch size."""
    ok = measured[measured["status"] == "ok"]
    if ok.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written: list[Path | None] = []
    static_fwd = static.set_index("variant")["flops_fwd"].astype(float)
    flops = pd.to_numeric(ok["flops_per_img"]).fillna(ok["variant"].map(static_fwd))  # rows older than the column
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    markers = iter("osD^v<>")
    for (block, upconv), group in ok.groupby(["block_type", "upconv_type"], sort=True):
        marker = next(markers, "o")
        for (task, mode, layout, batch), sub in group.groupby(["task", "mode", "layout", "batch_size"], sort=True):
            ax.errorbar(flops[sub.index] / 1e9, sub["img_per_s"].astype(float), yerr=_img_per_s_spread(sub),
                        fmt=marker, alpha=0.8, capsize=3, label=f"{block}+{upconv} {task} {mode} {layout} b{batch}")
    written.append(_save(fig, ax, "Measured throughput vs cost (bars: interquartile range of the timed blocks)",
                         directory / "throughput_vs_gflops.png", ("GFLOPs per image of the task", "images per second")))
    energy = ok[ok["joules_per_img"].notna()] if "joules_per_img" in ok else ok.iloc[:0]
    if len(energy):
        fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
        for (task, mode), group in energy.groupby(["task", "mode"], sort=True):
            ax.scatter(group["joules_per_img"].astype(float), group["img_per_s"].astype(float), alpha=0.8,
                       label=f"{task} {mode}")
        written.append(_save(fig, ax, "Throughput vs energy", directory / "throughput_vs_energy.png",
                             ("joules per image", "images per second")))
    if ok["batch_size"].nunique() > 1:
        fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
        for name, group in ok.groupby(["n_downs", "features", "block_type", "upconv_type", "task", "mode"]):
            group = group.sort_values("batch_size")
            n_downs, features, block, upconv, task, mode = name
            ax.plot(group["batch_size"], group["peak_mem_mib"], marker="o",
                    label=f"{block}+{upconv} d{n_downs} f{features} {task} {mode}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("peak memory (MiB)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # batches are whole numbers
        written.append(_save(fig, ax, "Memory vs batch size", directory / "memory_vs_batch.png"))
    return [path for path in written if path is not None]


def _img_per_s_spread(rows: pd.DataFrame) -> list[list[float]]:
    """Below and above each row's img/s: the img/s at the third and first quartile of its per-call times
    (a row timed in fewer than 2 blocks has none)."""
    below, above = [], []
    for _, row in rows.iterrows():
        quartiles = row_quartiles(row.get("block_s"), row.get("calls_per_block"))
        value = float(row["img_per_s"])
        if quartiles is None or min(quartiles) <= 0:
            below.append(0.0)
            above.append(0.0)
            continue
        batch = float(row["batch_size"])
        below.append(max(0.0, value - batch / quartiles[1]))
        above.append(max(0.0, batch / quartiles[0] - value))
    return [below, above]


def _save(fig: Any, ax: Any, title: str, path: Path, log_axes: tuple[str, str] | None = None) -> Path | None:
    """Title, log axes with these labels (when given), a legend beside the axes (never over the points),
    save, close. A plot with nothing drawn is not written (None): an empty picture is not a result."""
    import matplotlib.pyplot as plt

    if not ax.has_data():
        plt.close(fig)
        return None
    if log_axes is not None:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _pos: f"{value:g}")  # 0.02, 0.05, 0.1, not 2x10^-2 crowding
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain)
        ax.set_xlabel(f"{log_axes[0]} (log)")
        ax.set_ylabel(f"{log_axes[1]} (log)")
        ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
