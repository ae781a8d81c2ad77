"""Reports from a results store: ``results.csv``, ``report.md`` and PNG plots (pandas, matplotlib).

Reports only read rows; they never measure. Raw counts stay raw in the CSV; rounding to millions
and GFLOPs happens only in the markdown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.env import ENV_FILE, read_env, write_json_atomic
from bench.records import BASELINE_MODE, BASELINE_TASKS, COMPILE_MODES, CPU_SHARED_CORES
from bench.store import RUNS_ROOT, JsonlStore, MemoryStore, Row, merged_rows, new_run_dir, write_rows_atomic
from nectargan.errors import NectarGANError

VARIANT_COLUMNS = [
    "variant", "n_downs", "features", "block_type", "upconv_type", "input_size", "in_channels",
    "out_channels", "use_dropout_layers", "batch_size",
]
STATIC_COLUMNS = [
    *VARIANT_COLUMNS, "status", "reason", "params", "param_mib", "macs", "flops_fwd", "flops_train",
    "conv_macs_analytic", "conv_macs_fvcore", "conv_flops_counter", "counts_agree", "activations",
    "warnings", "profile_s",
]
INT_COLUMNS = [
    "n_downs", "features", "input_size", "in_channels", "out_channels", "use_dropout_layers", "batch_size",
    "params", "macs", "flops_fwd", "flops_train", "conv_macs_analytic", "conv_macs_fvcore",
    "conv_flops_counter", "activations",
]
# Columns compared by `compare` (ratio B/A), in this order, when both runs have them.
COMPARED = ["params", "macs", "flops_fwd", "flops_train", "activations"]
PLOT_FILE = "params_vs_gflops.png"
MEASURE_COLUMNS = [
    *VARIANT_COLUMNS, "task", "mode", "precision", "layout", "device", "threads", "status", "reason",
    "median_ms", "iqr_ms", "min_ms", "img_per_s", "tflops", "pct_of_peak", "noisy", "peak_mem_mib",
    "peak_reserved_mib", "compile_s", "compile_warm_s", "graph_breaks", "recompiles", "max_rel_err", "err_flag",
    "blocks", "calls_per_block", "measure_s", "max_batch", "above_ceiling", "cpu_mkldnn", "d_layers", "d_features",
    "flops_per_img", "joules_per_img", "avg_power_w", "sm_clock_before_mhz", "sm_clock_after_mhz", "throttle_reasons",
    "throttled", "gpu_shared", "cpu_others", "cpu_shared", "ceiling_shared", "timed_with", "err_check",
]
STATUS_ORDER = ["ok", "invalid", "error", "oom", "timeout"]


def static_frame(rows: list[Row]) -> pd.DataFrame:
    """The static rows as a DataFrame with stable columns (integers stay integers, gaps are empty)."""
    static = [r for r in rows if r.get("kind") == "static"]
    frame = pd.DataFrame(static)
    for column in STATIC_COLUMNS:
        if column not in frame:
            frame[column] = pd.NA
    frame["warnings"] = frame["warnings"].map(lambda w: "; ".join(w) if isinstance(w, list) else "")
    frame["reason"] = frame["reason"].fillna("")
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    frame["counts_agree"] = frame["counts_agree"].astype("boolean")
    extra = sorted(c for c in frame.columns if c not in STATIC_COLUMNS and c not in ("fvcore_unsupported",))
    extra = [c for c in extra if c not in ("schema", "kind", "finished_at", "key")]
    frame = frame[[*STATIC_COLUMNS, *extra, "key"]] if "key" in frame else frame[STATIC_COLUMNS]
    frame["status"] = pd.Categorical(frame["status"], categories=STATUS_ORDER)
    order = ["status", "n_downs", "features", "input_size", "block_type", "upconv_type"]
    frame = frame.sort_values(order, kind="stable", key=_natural_order).reset_index(drop=True)
    frame["status"] = frame["status"].astype(str)
    return frame


def _natural_order(column: pd.Series) -> pd.Series:
    """Blocks in registry order and upsampling as declared (UnetBlock, Transposed first)."""
    from nectargan.models.unet.blocks import UPCONV_TYPES, list_blocks

    known = {"block_type": list_blocks(), "upconv_type": list(UPCONV_TYPES)}.get(str(column.name))
    if known is None:
        return column
    rank = {name: i for i, name in enumerate(known)}
    return column.map(lambda v: rank.get(v, len(known)) if isinstance(v, str) else len(known))


def _millions(value: Any) -> str:
    return "" if pd.isna(value) else f"{value / 1e6:,.2f}"


def _giga(value: Any) -> str:
    """Four significant figures, so tiny and large variants both read well."""
    return "" if pd.isna(value) else f"{value / 1e9:#.4g}".rstrip(".")


def _markdown(frame: pd.DataFrame, text_columns: int = 1) -> str:
    """A markdown table that keeps the strings as formatted; the first columns left, numbers right."""
    align = ["left"] * text_columns + ["right"] * (len(frame.columns) - text_columns)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def _env_lines(envs: list[dict[str, Any]]) -> list[str]:
    lines = ["| host | CPU | GPU | torch | CUDA | fvcore | commit | grid | started |", "|" + "---|" * 9]
    for env in envs:
        git = env.get("git") or {}
        commit = (git.get("commit") or "")[:10] + (" (dirty)" if git.get("dirty") else "")
        grid_hash = (env.get("grid_sha256") or "")[:10]
        shard = f", shard {env['shard']}" if env.get("shard") else ""
        lines.append(
            f"| {env.get('host', '')} | {env.get('cpu', '')} ({env.get('cpu_count', '')} cores) "
            f"| {env.get('gpu') or 'none'} | {env.get('torch', '')} | {env.get('cuda') or '-'} "
            f"| {env.get('fvcore', '')} | {commit} | {Path(env.get('grid') or '').name} {grid_hash}{shard} "
            f"| {env.get('started_at', '')} |"
        )
    return lines


def render_markdown(frame: pd.DataFrame, rows: list[Row], envs: list[dict[str, Any]], title: str,
                    measured: bool = False) -> str:
    """The report: environment, status summary, the table, a ranking, invalid rows, counter notes."""
    ok = frame[frame["status"] == "ok"]
    counts = frame["status"].value_counts().to_dict()
    out = [f"# {'Measured sweep' if measured else 'Static profile'}: {title}", ""]
    out += ["## Environment", "", *_env_lines(envs), ""]
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "invalid", "error") if counts.get(s))
    disagree = int((ok["counts_agree"] == False).sum())  # noqa: E712 - nullable boolean
    agree = ("agree exactly in every ok row." if disagree == 0 else f"**disagree in {disagree} row(s)**: see warnings.")
    out += [
        "## Summary", "",
        f"{len(frame)} {'variant' if len(frame) == 1 else 'variants'}: {summary or 'none'}. "
        "Counts are per image (batch 1); FLOPs count 2 per "
        "multiply-add (torch.utils.flop_counter, convolutions only); MACs are fvcore's, which also counts "
        "InstanceNorm and upsampling.",
        "",
        ("The three convolution counts (closed form, fvcore, flop_counter) " + agree) if len(ok) else
        "No variant could be profiled, so nothing was counted.",
        "",
    ]
    if len(ok):
        table = pd.DataFrame({
            "variant": ok["variant"],
            "params (M)": ok["params"].map(_millions),
            "fp32 MiB": ok["param_mib"].map(lambda v: f"{v:,.1f}"),
            "GMACs (fvcore)": ok["macs"].map(_giga),
            "GFLOPs fwd": ok["flops_fwd"].map(_giga),
            "GFLOPs train": ok["flops_train"].map(_giga),
            "activations (M)": ok["activations"].map(_millions),
            "counts agree": ok["counts_agree"].map(lambda v: "yes" if v else "**no**"),
        })
        out += ["## Variants", "", _markdown(table), ""]
        ranked = ok.sort_values(["flops_fwd", "params"], kind="stable")
        cheapest = ranked["flops_fwd"].iloc[0]
        ranking = pd.DataFrame({
            "rank": [str(i) for i in range(1, len(ranked) + 1)],
            "variant": ranked["variant"],
            "GFLOPs fwd": ranked["flops_fwd"].map(_giga),
            "x cheapest": ranked["flops_fwd"].map(lambda v: f"{v / cheapest:,.2f}"),
            "params (M)": ranked["params"].map(_millions),
        })
        out += ["## Ranking (cheapest forward pass first)", "", _markdown(ranking, text_columns=2), "",
                f"![parameters vs GFLOPs]({PLOT_FILE})", ""]
    for status, heading in (("invalid", "Invalid combinations"), ("error", "Errors")):
        bad = frame[frame["status"] == status]
        if len(bad):
            listing = bad[["variant", "reason"]].copy()
            listing["reason"] = listing["reason"].str.replace("|", "\\|", regex=False)
            out += [f"## {heading}", "", _markdown(listing, text_columns=2), ""]
    unsupported = Counter()
    for row in rows:
        unsupported.update((row.get("fvcore_unsupported") or {}).keys())
    if unsupported:
        ops = ", ".join(f"`{op}` ({n})" for op, n in sorted(unsupported.items()))
        out += ["## Counter notes", "",
                f"fvcore does not count these operators (variants affected): {ops}. They are elementwise "
                "and do not change the convolution counts.", ""]
    return "\n".join(out)


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


def measure_frame(rows: list[Row]) -> pd.DataFrame:
    """The measured rows with stable columns (empty when the run was static only)."""
    measured = pd.DataFrame([r for r in rows if r.get("kind") == "measure"])
    for column in MEASURE_COLUMNS:
        if column not in measured:
            measured[column] = pd.NA
    return measured[MEASURE_COLUMNS].sort_values(
        ["n_downs", "features", "block_type", "upconv_type", "task", "precision", "layout", "mode"],
        kind="stable", key=_natural_order,
    ).reset_index(drop=True)


def _timed_together(a: pd.Series, b: pd.Series) -> bool:
    """Whether two rows of the same group were timed in the same blocks (A B A B ...), from ``timed_with``."""
    modes = a.get("timed_with")
    modes = "" if modes is None or pd.isna(modes) else str(modes)
    return bool(modes) and b["mode"] in modes.split(",")


def _config_label(row: pd.Series) -> str:
    return f"{row['mode']}, {row['precision']}, {row['layout']}, batch {row['batch_size']}"


def baseline_speedups(measured: pd.DataFrame) -> pd.DataFrame:
    """Per variant and training task: the fastest configuration measured and its speed-up over NectarGAN's
    own loop (mode ``nectargan``) at the same batch size and at NectarGAN's default batch 1."""
    ok = measured[(measured["status"] == "ok") & measured["task"].isin(BASELINE_TASKS)]
    out = []
    for (variant, task), group in ok.groupby(["variant", "task"], sort=False):
        ours = group[group["mode"] != BASELINE_MODE]
        base = group[group["mode"] == BASELINE_MODE]
        if ours.empty or base.empty:
            continue
        best = ours.loc[ours["img_per_s"].astype(float).idxmax()]
        same = base[base["batch_size"] == best["batch_size"]]
        one = base[base["batch_size"] == 1]
        compared = [best, *(frame.iloc[0] for frame in (same, one) if len(frame))]
        noisy = any(str(r.get("noisy")) == "True" for r in compared)
        out.append({
            "variant": variant, "task": task, "fastest": _config_label(best), "img_per_s": float(best["img_per_s"]),
            "noisy": noisy, "interleaved": len(same) > 0 and _timed_together(best, same.iloc[0]),
            "baseline_img_per_s": float(same["img_per_s"].iloc[0]) if len(same) else None,
            "speedup_same_batch": float(best["img_per_s"]) / float(same["img_per_s"].iloc[0]) if len(same) else None,
            "baseline_b1_img_per_s": float(one["img_per_s"].iloc[0]) if len(one) else None,
            "speedup_vs_b1": float(best["img_per_s"]) / float(one["img_per_s"].iloc[0]) if len(one) else None,
        })
    return pd.DataFrame(out)


def _baseline_markdown(measured: pd.DataFrame) -> list[str]:
    table = baseline_speedups(measured)
    if table.empty:
        return []

    def x(v: Any) -> str:
        return "" if v is None or pd.isna(v) else f"{v:,.2f}x"

    shown = pd.DataFrame({
        "variant": table["variant"], "task": table["task"], "fastest configuration": table["fastest"],
        "img/s": table["img_per_s"].map(lambda v: f"{v:,.1f}"),
        "NectarGAN loop img/s": table["baseline_img_per_s"].map(lambda v: "" if pd.isna(v) else f"{v:,.1f}"),
        "speed-up, same batch": table["speedup_same_batch"].map(x),
        "speed-up over NectarGAN at batch 1": table["speedup_vs_b1"].map(x),
        "noisy": table["noisy"].map(lambda v: "**yes**" if v else ""),
        "timed": table["interleaved"].map(lambda v: "interleaved" if v else "separately"),
    })
    return ["## Against NectarGAN's own loop", "",
            "The fastest configuration of each variant against NectarGAN's training loop (eager fp32, NCHW, D "
            "called on real and fake separately, `.item()` on every loss every step), in the same run, at the "
            "same batch size and at NectarGAN's default batch 1. *timed*: `interleaved` when the two were timed in "
            "the same blocks (A B A B ...); `separately` when they were timed one after the other (the loop runs in "
            "fp32, so against a bf16 or channels_last row it is always its own group), which a drifting machine "
            "moves apart. A speed-up from a noisy row (IQR above 10 % of the median) is not to be trusted.", "",
            _markdown(shown, text_columns=3), ""]


def _cost_to_train_markdown(measured: pd.DataFrame) -> list[str]:
    gan = measured[(measured["status"] == "ok") & (measured["task"] == "gan_train")
                   & (measured["mode"] != BASELINE_MODE)]
    if gan.empty:
        return []
    best = gan.loc[gan.groupby("variant")["img_per_s"].idxmax()]

    def f(v: Any, spec: str) -> str:
        return "" if v is None or pd.isna(v) else format(v, spec)

    table = pd.DataFrame({
        "variant": best["variant"], "fastest configuration": [_config_label(r) for _, r in best.iterrows()],
        "img/s": best["img_per_s"].map(lambda v: f(v, ",.1f")),
        "J/img": best["joules_per_img"].map(lambda v: f(v, ".4g")),
        "avg W": best["avg_power_w"].map(lambda v: f(v, ".0f")),
        "peak MiB": best["peak_mem_mib"].map(lambda v: f(v, ",.1f")),
    })
    note = ("Energy from NVML's counter (CUDA) or RAPL (CPU), over the timed blocks."
            if best["joules_per_img"].notna().any() else
            "Energy is empty: no NVML or readable RAPL counter on this machine.")
    return ["## Cost to train (the whole pix2pix step, G and D)", "", note, "", _markdown(table, text_columns=2), ""]


def _measured_markdown(measured: pd.DataFrame, envs: list[dict[str, Any]]) -> list[str]:
    ok = measured[measured["status"] == "ok"].copy()
    out = ["## Measured", ""]
    ceilings = {d: c for env in envs for d, c in (env.get("matmul_ceiling_tflops") or {}).items()}
    if ceilings:
        out += ["Matmul ceiling (TFLOP/s, measured once per run): " + "; ".join(
            f"{d}: " + ", ".join(f"{p} {v:.3g}" for p, v in c.items()) for d, c in ceilings.items()) + ".", ""]
    loaded = {d: o for env in envs for d, o in (env.get("matmul_ceiling_cpu_others") or {}).items()
              if o is not None and o > CPU_SHARED_CORES}
    if loaded:
        out += ["**The CPU's matmul ceiling was measured while other processes kept "
                + ", ".join(f"{o:.1f} cores busy ({d})" for d, o in loaded.items())
                + "**: it is lower than the machine's, so every *% of peak* is too high (rows flagged "
                "`ceiling_shared`). Measure the run again on an idle machine.", ""]
    shared = int((ok["cpu_shared"] == True).sum())  # noqa: E712 - object column
    if shared:
        out += [f"**{shared} row(s) were measured while other processes kept the CPU busy** (flag *CPU shared*): "
                "their timings are not to be trusted; measure on an idle machine, or with `--threads` below the "
                "free cores.", ""]
    if (measured["cpu_mkldnn"] == False).any():  # noqa: E712 - object column
        out += ["oneDNN was off for the CPU rows (`cpu_mkldnn = false`, `--no-cpu-mkldnn`).", ""]
    if ok.empty:
        out += ["_No successful measurements._", ""]
    else:
        def f(v: Any, spec: str) -> str:
            return "" if v is None or pd.isna(v) else format(v, spec)

        table = pd.DataFrame({
            "variant": ok["variant"], "task": ok["task"], "mode": ok["mode"],
            "precision": ok["precision"], "layout": ok["layout"], "batch": ok["batch_size"].map(str),
            "median ms": ok["median_ms"].map(lambda v: f(v, ".3f")), "IQR ms": ok["iqr_ms"].map(lambda v: f(v, ".3f")),
            "img/s": ok["img_per_s"].map(lambda v: f(v, ",.1f")), "TFLOP/s": ok["tflops"].map(lambda v: f(v, ".3g")),
            "% peak": ok["pct_of_peak"].map(lambda v: f(v, ".1f")),
            "peak MiB": ok["peak_mem_mib"].map(lambda v: f(v, ",.1f")),
            "compile s (cold/warm)": [
                "" if pd.isna(c) else f"{c:.1f} / {f(w, '.1f') or '-'}"
                for c, w in zip(ok["compile_s"], ok["compile_warm_s"], strict=True)
            ],
            "max rel err": ok["max_rel_err"].map(lambda v: f(v, ".1e")),
            "flags": [", ".join(x for x, on in (("noisy", n is True), ("error above tolerance", e is True),
                                                ("above the ceiling", c is True), ("throttled", t is True),
                                                ("GPU shared", g is True), ("CPU shared", u is True)) if on)
                      for n, e, c, t, g, u in zip(ok["noisy"], ok["err_flag"], ok["above_ceiling"], ok["throttled"],
                                                  ok["gpu_shared"], ok["cpu_shared"], strict=True)],
        })
        if ok["compile_s"].isna().all():
            table = table.drop(columns=["compile s (cold/warm)"])
        reference = (ok["mode"] == "eager") & (ok["precision"] == "fp32") & (ok["layout"] == "nchw")
        if reference.all():  # every row is the reference configuration itself: its error is 0 by definition
            table = table.drop(columns=["max rel err"])
        out += [_markdown(table, text_columns=6), ""]
        ours = ok[ok["mode"] != BASELINE_MODE]
        if (ours.groupby(["variant", "task"]).size() > 1).any():  # a choice to report
            best = ours.loc[ours.groupby(["variant", "task"])["img_per_s"].idxmax()]
            out += ["## Best configuration per variant", "", _markdown(pd.DataFrame({
                "variant": best["variant"], "task": best["task"],
                "fastest": best["mode"] + ", " + best["precision"] + ", " + best["layout"],
                "img/s": best["img_per_s"].map(lambda v: f"{v:,.1f}"),
            }), text_columns=3), ""]
        group = ["variant", "task", "precision", "layout", "batch_size"]
        eager = ok[ok["mode"] == "eager"].set_index(group)
        compiled = ok[ok["mode"].isin(list(COMPILE_MODES))]
        speed = []
        for _, r in compiled.iterrows():
            key = tuple(r[k] for k in group)
            if key in eager.index:
                base = eager.loc[[key]].iloc[0]
                speed.append({"variant": r["variant"], "task": r["task"], "mode": r["mode"],
                              "precision": r["precision"], "layout": r["layout"],
                              "speedup over eager": f"{base['median_ms'] / r['median_ms']:.2f}x",
                              "noisy": "**yes**" if "True" in (str(r["noisy"]), str(base["noisy"])) else "",
                              "timed": "interleaved" if _timed_together(r, base) else "separately"})
        if speed:
            out += ["## Compiled over eager (same task, precision, layout)", "",
                    "*timed*: `interleaved` when the pair was timed in the same blocks; `separately` (e.g. one of "
                    "them measured by a resumed run) when not, which a drifting machine moves apart.", "",
                    _markdown(pd.DataFrame(speed), text_columns=5), ""]
        out += _baseline_markdown(measured) + _cost_to_train_markdown(measured)
    bad = measured[measured["status"] != "ok"]
    if len(bad):
        listing = bad[["variant", "task", "mode", "precision", "layout", "status", "reason"]].copy()
        listing["reason"] = listing["reason"].astype(str).str.replace("|", "\\|", regex=False)
        out += ["## Measurements that did not run", "", _markdown(listing, text_columns=7), ""]
    return out


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
        quartiles = _quartiles(row.get("block_s"), row.get("calls_per_block"))
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


def write_reports(directory: Path, rows: list[Row], envs: list[dict[str, Any]], title: str) -> list[Path]:
    """Write results.csv (static), measurements.csv, report.md and the plots; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    frame = static_frame(rows)
    measured = measure_frame(rows)
    written = []
    csv_path = directory / "results.csv"
    csv_frame = frame.drop(columns=["key"], errors="ignore")
    csv_frame["param_mib"] = pd.to_numeric(csv_frame["param_mib"]).round(4)
    csv_frame["profile_s"] = pd.to_numeric(csv_frame["profile_s"]).round(3)
    csv_frame.to_csv(csv_path, index=False)
    written.append(csv_path)
    plot = plot_params_vs_gflops(frame, directory / PLOT_FILE)
    if plot:
        written.append(plot)
    markdown = render_markdown(frame, rows, envs, title, measured=len(measured) > 0)
    if len(measured):
        measured.to_csv(directory / "measurements.csv", index=False)
        written.append(directory / "measurements.csv")
        plots = plot_measured(measured, frame, directory)
        written += plots
        markdown = markdown.rstrip("\n") + "\n\n" + "\n".join(_measured_markdown(measured, envs)).rstrip("\n")
        # a blank line before each image: right after a table, GitHub would read it as a table row
        markdown += "".join(f"\n\n![{p.stem}]({p.name})" for p in plots) + "\n"
    md_path = directory / "report.md"
    md_path.write_text(markdown + "\n", encoding="utf-8")
    written.append(md_path)
    return written


def report_dirs(directories: list[Path], out: Path | None = None, replace: bool = False,
                extra_env: dict[str, Any] | None = None) -> tuple[Path, list[Path]]:
    """Regenerate reports from one run folder (in place) or merge several into ``out``.

    ``replace`` rewrites the merged rows of an ``out`` that already holds them (the executors merge
    their shard folders into the sweep's folder again as shards finish); ``extra_env`` goes into the
    merged env.json.
    """
    if not directories:
        raise NectarGANError("report needs at least one run folder")
    rows = merged_rows(directories)
    envs = [env for d in directories if (env := read_env(d)) is not None]
    if out is None:
        out = directories[0] if len(directories) == 1 else new_run_dir("merged")
    if out.exists() and not out.is_dir():
        raise NectarGANError(f"output folder {out} exists and is not a folder")
    if len(directories) > 1 or out.resolve() != directories[0].resolve():
        if JsonlStore(out).exists() and not replace:
            raise NectarGANError(f"output folder {out} already holds results; choose an empty folder")
        write_rows_atomic(out, MemoryStore(rows).iter_rows())
        write_json_atomic(out / ENV_FILE, {"merged_from": [str(d) for d in directories], "sources": envs,
                                           **(extra_env or {})})
    names = [Path(env["grid"]).stem for env in envs if env.get("grid")]
    title = " + ".join(dict.fromkeys(names)) if len(names) == len(directories) else " + ".join(
        d.name for d in directories
    )
    return out, write_reports(out, rows, envs, title)


def compare_frames(rows_a: list[Row], rows_b: list[Row]) -> pd.DataFrame:
    """For the ok rows both runs have: each compared figure in A and B and the ratio B/A."""
    a = static_frame(rows_a)
    b = static_frame(rows_b)
    if "key" not in a or "key" not in b:  # a run without static rows
        return pd.DataFrame(columns=["variant", *[f"{c}_{x}" for c in COMPARED for x in ("a", "b", "ratio")]])
    a, b = a[a["status"] == "ok"], b[b["status"] == "ok"]
    joined = a.merge(b, on="key", suffixes=("_a", "_b"))
    out = pd.DataFrame({"variant": joined["variant_a"]})
    for column in COMPARED:
        va, vb = joined[f"{column}_a"], joined[f"{column}_b"]
        out[f"{column}_a"], out[f"{column}_b"] = va, vb
        ratio = vb.astype(float) / va.astype(float)
        out[f"{column}_ratio"] = ratio.where(va.astype(float) != 0)
    return out.reset_index(drop=True)


# Measured figures compared by `compare` (ratio B/A) and whether more is better.
COMPARED_MEASURED = {"median_ms": False, "img_per_s": True, "tflops": True, "peak_mem_mib": False,
                     "compile_s": False, "joules_per_img": False}


def _quartiles(blocks: Any, calls: Any) -> tuple[float, float] | None:
    """(q1, q3) of the per-call seconds over a row's timed blocks."""
    if not isinstance(blocks, list) or len(blocks) < 2 or not calls or pd.isna(calls):
        return None
    from bench.timing import Measurement

    return Measurement(block_s=list(blocks), calls_per_block=int(calls)).quartiles_s


def compare_measured(rows_a: list[Row], rows_b: list[Row], threshold: float | None = None) -> pd.DataFrame:
    """Measured rows ok in both runs, joined by their full key (variant, task, mode, precision, layout,
    batch, device): each figure in A and B and the ratio B/A.

    ``significant`` is False when the interquartile ranges of the two runs' per-call times overlap
    (the difference is within the noise); ``regressed`` marks a significant slowdown of img/s by
    more than ``threshold`` (a fraction, e.g. 0.05).
    """
    a = pd.DataFrame([r for r in rows_a if r.get("kind") == "measure" and r.get("status") == "ok"])
    b = pd.DataFrame([r for r in rows_b if r.get("kind") == "measure" and r.get("status") == "ok"])
    ids = ["variant", "task", "mode", "precision", "layout", "batch_size", "device"]
    if a.empty or b.empty:
        return pd.DataFrame(columns=ids)
    joined = a.merge(b, on="key", suffixes=("_a", "_b"))
    if joined.empty:  # no measurement key in common: nothing to pair (the caller says so)
        return pd.DataFrame(columns=[*ids, "significant", "regressed"])
    out = pd.DataFrame({k: joined[f"{k}_a"] for k in ids})
    for column in COMPARED_MEASURED:
        if f"{column}_a" not in joined or f"{column}_b" not in joined:
            continue
        va, vb = pd.to_numeric(joined[f"{column}_a"]), pd.to_numeric(joined[f"{column}_b"])
        if va.isna().all() and vb.isna().all():
            continue
        out[f"{column}_a"], out[f"{column}_b"] = va, vb
        out[f"{column}_ratio"] = (vb / va).where(va != 0)
    significant = []
    for _, row in joined.iterrows():
        qa = _quartiles(row["block_s_a"], row["calls_per_block_a"])
        qb = _quartiles(row["block_s_b"], row["calls_per_block_b"])
        significant.append(bool(qa and qb and (qa[1] < qb[0] or qb[1] < qa[0])))
    out["significant"] = significant
    limit = threshold if threshold is not None else 0.0
    out["regressed"] = out["significant"] & (out["img_per_s_ratio"] < 1 - limit)
    return out.reset_index(drop=True)


@dataclass
class Comparison:
    """What `compare` found: the static and measured tables, their markdown, and the regressions."""

    static: pd.DataFrame
    measured: pd.DataFrame
    markdown: str
    written: list[Path]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.measured[self.measured["regressed"]] if "regressed" in self.measured else self.measured.iloc[:0]


def _key_counts(rows_a: list[Row], rows_b: list[Row], kind: str) -> tuple[int, int]:
    keys_a = {r["key"] for r in rows_a if r.get("kind") == kind}
    keys_b = {r["key"] for r in rows_b if r.get("kind") == kind}
    return len(keys_a - keys_b), len(keys_b - keys_a)


def compare_dirs(dir_a: Path, dir_b: Path, out: Path | None = None, threshold: float | None = None) -> Comparison:
    """Write compare.csv (static), compare_measured.csv and compare.md into ``out``."""
    rows_a, rows_b = merged_rows([dir_a]), merged_rows([dir_b])
    table = compare_frames(rows_a, rows_b)
    measured = compare_measured(rows_a, rows_b, threshold)
    only_a, only_b = _key_counts(rows_a, rows_b, "static")
    ratios = table[["variant", *[f"{c}_ratio" for c in COMPARED]]].rename(
        columns={f"{c}_ratio": f"{c} B/A" for c in COMPARED}
    )
    lines = [
        f"# Compare: B = {dir_b.name} over A = {dir_a.name}", "",
        "## Static profile", "",
        f"{len(table)} variants in both (ok in both); {only_a} only in A, {only_b} only in B.", "",
        ratios.to_markdown(index=False, floatfmt=".3f") if len(ratios) else "_No rows in common._", "",
    ]
    if any(r.get("kind") == "measure" for r in [*rows_a, *rows_b]):
        m_only_a, m_only_b = _key_counts(rows_a, rows_b, "measure")
        ok_a = {r["key"] for r in rows_a if r.get("kind") == "measure" and r.get("status") == "ok"}
        ok_b = {r["key"] for r in rows_b if r.get("kind") == "measure" and r.get("status") == "ok"}
        both = {r["key"] for r in rows_a if r.get("kind") == "measure"} & {r["key"] for r in rows_b}
        lines += ["## Measured", "",
                  f"{len(measured)} measurements in both (same variant, task, mode, precision, layout, batch and "
                  f"device; ok in both); {m_only_a} only in A, {m_only_b} only in B; {len((ok_a - ok_b) & both)} ok "
                  f"only in A and {len((ok_b - ok_a) & both)} ok only in B. A ratio is *not significant* when the "
                  "interquartile ranges of the two runs' per-call times overlap; between two runs, a shared machine "
                  "can drift more than that, so compare a run with a rerun of itself before trusting a threshold.",
                  ""]
        for setting in ("threads", "cpu_mkldnn"):
            seen_a = {r.get(setting) for r in rows_a if r.get("kind") == "measure" and r.get("status") == "ok"}
            seen_b = {r.get(setting) for r in rows_b if r.get("kind") == "measure" and r.get("status") == "ok"}
            if seen_a and seen_b and seen_a != seen_b:
                lines += [f"**The runs differ in `{setting}`** (A: {sorted(map(str, seen_a))}, B: "
                          f"{sorted(map(str, seen_b))}): the ratios compare settings, not code.", ""]
        if len(measured):
            shown = measured[["variant", "task", "mode", "precision", "layout", "batch_size"]].copy()
            for column in COMPARED_MEASURED:
                if f"{column}_ratio" in measured:
                    shown[f"{column} B/A"] = measured[f"{column}_ratio"].map(
                        lambda v: "" if pd.isna(v) else f"{v:.3f}")
            shown["significant"] = measured["significant"].map({True: "yes", False: "no"})
            if threshold is not None:
                shown["regressed"] = measured["regressed"].map({True: "**yes**", False: ""})
            lines += [_markdown(shown, text_columns=6), ""]
        else:
            lines += ["_No measurements in common._", ""]
    markdown = "\n".join(lines)
    out = out or RUNS_ROOT / f"compare-{dir_a.name}-vs-{dir_b.name}"
    if out.exists() and not out.is_dir():
        raise NectarGANError(f"output folder {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "compare.csv", out / "compare.md"
    table.to_csv(csv_path, index=False)
    written = [csv_path]
    if len(measured):
        measured.to_csv(out / "compare_measured.csv", index=False)
        written.append(out / "compare_measured.csv")
    md_path.write_text(markdown, encoding="utf-8")
    return Comparison(table, measured, markdown, [*written, md_path])
