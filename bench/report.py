"""Reports from a results store: ``results.csv``, ``report.md`` and PNG plots (pandas, matplotlib).

Reports only read rows; they never measure. Raw counts stay raw in the CSV; rounding to millions
and GFLOPs happens only in the markdown.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from bench import rows as rows_schema
from bench.env import ENV_FILE, read_env, write_json_atomic
from bench.plots import PLOT_FILE, plot_measured, plot_params_vs_gflops
from bench.records import BASELINE_MODE, BASELINE_TASKS, COMPILE_MODES, CPU_SHARED_CORES
from bench.store import JsonlStore, MemoryStore, Row, merged_rows, new_run_dir, write_rows_atomic
from nectargan.errors import NectarGANError

# The columns of the tables: the fields of the row schema (bench.rows), nothing listed here.
STATIC_COLUMNS = rows_schema.STATIC_COLUMNS
MEASURE_COLUMNS = rows_schema.MEASURE_COLUMNS
INT_COLUMNS = rows_schema.int_columns(rows_schema.StaticRow)
STATUS_ORDER = list(rows_schema.STATUSES)


def static_frame(rows: list[Row]) -> pd.DataFrame:
    """The static rows as a DataFrame with stable columns (integers stay integers, gaps are empty)."""
    static = [r for r in rows if r.get("kind") == rows_schema.STATIC_KIND]
    frame = pd.DataFrame(static)
    for column in STATIC_COLUMNS:
        if column not in frame:
            frame[column] = pd.NA
    frame["warnings"] = frame["warnings"].map(lambda w: "; ".join(w) if isinstance(w, list) else "")
    frame["reason"] = frame["reason"].fillna("")
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    frame["counts_agree"] = frame["counts_agree"].astype("boolean")
    hidden = set(rows_schema.columns(rows_schema.StaticRow, hidden=True))  # stored, not shown (key comes last)
    extra = sorted(c for c in frame.columns if c not in hidden)
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


def markdown_table(frame: pd.DataFrame, text_columns: int = 1) -> str:
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
        out += ["## Variants", "", markdown_table(table), ""]
        ranked = ok.sort_values(["flops_fwd", "params"], kind="stable")
        cheapest = ranked["flops_fwd"].iloc[0]
        ranking = pd.DataFrame({
            "rank": [str(i) for i in range(1, len(ranked) + 1)],
            "variant": ranked["variant"],
            "GFLOPs fwd": ranked["flops_fwd"].map(_giga),
            "x cheapest": ranked["flops_fwd"].map(lambda v: f"{v / cheapest:,.2f}"),
            "params (M)": ranked["params"].map(_millions),
        })
        out += ["## Ranking (cheapest forward pass first)", "", markdown_table(ranking, text_columns=2), "",
                f"![parameters vs GFLOPs]({PLOT_FILE})", ""]
    for status, heading in (("invalid", "Invalid combinations"), ("error", "Errors")):
        bad = frame[frame["status"] == status]
        if len(bad):
            listing = bad[["variant", "reason"]].copy()
            listing["reason"] = listing["reason"].str.replace("|", "\\|", regex=False)
            out += [f"## {heading}", "", markdown_table(listing, text_columns=2), ""]
    unsupported = Counter()
    for row in rows:
        unsupported.update((row.get("fvcore_unsupported") or {}).keys())
    if unsupported:
        ops = ", ".join(f"`{op}` ({n})" for op, n in sorted(unsupported.items()))
        out += ["## Counter notes", "",
                f"fvcore does not count these operators (variants affected): {ops}. They are elementwise "
                "and do not change the convolution counts.", ""]
    return "\n".join(out)


def measure_frame(rows: list[Row]) -> pd.DataFrame:
    """The measured rows with stable columns (empty when the run was static only)."""
    measured = pd.DataFrame([r for r in rows if r.get("kind") == rows_schema.MEASURE_KIND])
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
            markdown_table(shown, text_columns=3), ""]


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
    return ["## Cost to train (the whole pix2pix step, G and D)", "", note, "", markdown_table(table, text_columns=2),
            ""]


def _measured_markdown(measured: pd.DataFrame, envs: list[dict[str, Any]]) -> list[str]:
    """The measured part of report.md: notes on the run, the table, best configurations and speed-ups."""
    ok = measured[measured["status"] == "ok"].copy()
    out = ["## Measured", "", *_run_notes(measured, ok, envs)]
    if ok.empty:
        out += ["_No successful measurements._", ""]
    else:
        out += [markdown_table(_measured_table(ok), text_columns=6), ""]
        ours = ok[ok["mode"] != BASELINE_MODE]
        if (ours.groupby(["variant", "task"]).size() > 1).any():  # a choice to report
            best = ours.loc[ours.groupby(["variant", "task"])["img_per_s"].idxmax()]
            out += ["## Best configuration per variant", "", markdown_table(pd.DataFrame({
                "variant": best["variant"], "task": best["task"],
                "fastest": best["mode"] + ", " + best["precision"] + ", " + best["layout"],
                "img/s": best["img_per_s"].map(lambda v: f"{v:,.1f}"),
            }), text_columns=3), ""]
        out += _compiled_markdown(ok) + _baseline_markdown(measured) + _cost_to_train_markdown(measured)
    bad = measured[measured["status"] != "ok"]
    if len(bad):
        listing = bad[["variant", "task", "mode", "precision", "layout", "status", "reason"]].copy()
        listing["reason"] = listing["reason"].astype(str).str.replace("|", "\\|", regex=False)
        out += ["## Measurements that did not run", "", markdown_table(listing, text_columns=7), ""]
    return out


def _run_notes(measured: pd.DataFrame, ok: pd.DataFrame, envs: list[dict[str, Any]]) -> list[str]:
    """The ceilings, and what makes the figures less trustworthy (a loaded CPU, oneDNN off)."""
    out = []
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
    return out


def _measured_table(ok: pd.DataFrame) -> pd.DataFrame:
    """One line per ok measurement, formatted, with its flags."""
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
    return table


def _compiled_markdown(ok: pd.DataFrame) -> list[str]:
    """Each compiled row's speed-up over eager in the same task, precision, layout and batch."""
    group = ["variant", "task", "precision", "layout", "batch_size"]
    eager = ok[ok["mode"] == "eager"].set_index(group)
    speed = []
    for _, r in ok[ok["mode"].isin(list(COMPILE_MODES))].iterrows():
        key = tuple(r[k] for k in group)
        if key in eager.index:
            base = eager.loc[[key]].iloc[0]
            speed.append({"variant": r["variant"], "task": r["task"], "mode": r["mode"],
                          "precision": r["precision"], "layout": r["layout"],
                          "speedup over eager": f"{base['median_ms'] / r['median_ms']:.2f}x",
                          "noisy": "**yes**" if "True" in (str(r["noisy"]), str(base["noisy"])) else "",
                          "timed": "interleaved" if _timed_together(r, base) else "separately"})
    if not speed:
        return []
    return ["## Compiled over eager (same task, precision, layout)", "",
            "*timed*: `interleaved` when the pair was timed in the same blocks; `separately` (e.g. one of "
            "them measured by a resumed run) when not, which a drifting machine moves apart.", "",
            markdown_table(pd.DataFrame(speed), text_columns=5), ""]


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


