"""``compare A B``: ratios B/A of two runs' static counts and of their measurements, by full key, with
each difference's significance (the runs' interquartile ranges) and regressions past a threshold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.report import markdown_table, static_frame
from bench.rows import MEASURE_KIND, STATIC_KIND
from bench.store import RUNS_ROOT, Row, merged_rows
from bench.timing import row_quartiles
from nectargan.errors import NectarGANError

# Columns compared by `compare` (ratio B/A), in this order, when both runs have them.
COMPARED = ["params", "macs", "flops_fwd", "flops_train", "activations"]


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


def compare_measured(rows_a: list[Row], rows_b: list[Row], threshold: float | None = None) -> pd.DataFrame:
    """Measured rows ok in both runs, joined by their full key (variant, task, mode, precision, layout,
    batch, device): each figure in A and B and the ratio B/A.

    ``significant`` is False when the interquartile ranges of the two runs' per-call times overlap
    (the difference is within the noise); ``regressed`` marks a significant slowdown of img/s by
    more than ``threshold`` (a fraction, e.g. 0.05).
    """
    a = pd.DataFrame([r for r in rows_a if r.get("kind") == MEASURE_KIND and r.get("status") == "ok"])
    b = pd.DataFrame([r for r in rows_b if r.get("kind") == MEASURE_KIND and r.get("status") == "ok"])
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
        qa = row_quartiles(row["block_s_a"], row["calls_per_block_a"])
        qb = row_quartiles(row["block_s_b"], row["calls_per_block_b"])
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
    only_a, only_b = _key_counts(rows_a, rows_b, STATIC_KIND)
    ratios = table[["variant", *[f"{c}_ratio" for c in COMPARED]]].rename(
        columns={f"{c}_ratio": f"{c} B/A" for c in COMPARED}
    )
    lines = [
        f"# Compare: B = {dir_b.name} over A = {dir_a.name}", "",
        "## Static profile", "",
        f"{len(table)} variants in both (ok in both); {only_a} only in A, {only_b} only in B.", "",
        ratios.to_markdown(index=False, floatfmt=".3f") if len(ratios) else "_No rows in common._", "",
    ]
    if any(r.get("kind") == MEASURE_KIND for r in [*rows_a, *rows_b]):
        m_only_a, m_only_b = _key_counts(rows_a, rows_b, MEASURE_KIND)
        ok_a = {r["key"] for r in rows_a if r.get("kind") == MEASURE_KIND and r.get("status") == "ok"}
        ok_b = {r["key"] for r in rows_b if r.get("kind") == MEASURE_KIND and r.get("status") == "ok"}
        both = {r["key"] for r in rows_a if r.get("kind") == MEASURE_KIND} & {r["key"] for r in rows_b}
        lines += ["## Measured", "",
                  f"{len(measured)} measurements in both (same variant, task, mode, precision, layout, batch and "
                  f"device; ok in both); {m_only_a} only in A, {m_only_b} only in B; {len((ok_a - ok_b) & both)} ok "
                  f"only in A and {len((ok_b - ok_a) & both)} ok only in B. A ratio is *not significant* when the "
                  "interquartile ranges of the two runs' per-call times overlap; between two runs, a shared machine "
                  "can drift more than that, so compare a run with a rerun of itself before trusting a threshold.",
                  ""]
        for setting in ("threads", "cpu_mkldnn"):
            seen_a = {r.get(setting) for r in rows_a if r.get("kind") == MEASURE_KIND and r.get("status") == "ok"}
            seen_b = {r.get(setting) for r in rows_b if r.get("kind") == MEASURE_KIND and r.get("status") == "ok"}
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
            lines += [markdown_table(shown, text_columns=6), ""]
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
