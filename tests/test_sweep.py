"""Sweeps end to end: rows, invalid combinations, reports, resume after SIGKILL, shards, compare."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.compare import compare_frames
from bench.grid import load_grid
from bench.rows import STATIC_COLUMNS
from cli import main

REQUIRED_COLUMNS = [
    "variant", "n_downs", "features", "block_type", "upconv_type", "input_size", "in_channels",
    "use_dropout_layers", "batch_size", "status", "reason", "params", "param_mib", "macs", "flops_fwd",
    "flops_train", "conv_macs_analytic", "activations",
]
TINY = """
description = "four tiny variants and four the model rejects"
[grid]
n_downs = [3]
features = [2, 4]
block_type = ["UnetBlock", "ResidualUnetBlock"]
input_size = [32]
include = [
  { n_downs = 2, input_size = 32 },
  { n_downs = 3, features = 0, input_size = 32 },
  { n_downs = 3, input_size = 48 },
  { n_downs = 3, input_size = 32, block_type = "NoSuchBlock" },
]
"""


def _grid(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _lines(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines() if line]


def test_sweep_rows_invalid_rows_and_reports(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sweep", str(_grid(tmp_path)), "--static-only", "--out", str(out), "--quiet"]) == 0
    rows = _lines(out)
    assert len(rows) == 8
    ok = [r for r in rows if r["status"] == "ok"]
    invalid = {r["variant"]: r["reason"] for r in rows if r["status"] == "invalid"}
    assert len(ok) == 4 and len(invalid) == 4
    assert all(r["params"] > 0 and r["flops_fwd"] > 0 and r["counts_agree"] for r in ok)
    reasons = " | ".join(invalid.values())
    for fragment in ("n_downs=2 is not valid", "features=0 is not valid", "input_size=48 is not valid",
                     "block_type='NoSuchBlock' is not valid"):
        assert fragment in reasons
    assert all(r["schema"] == 1 and r["kind"] == "static" for r in rows)

    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns[: len(STATIC_COLUMNS)]) == STATIC_COLUMNS
    assert set(REQUIRED_COLUMNS) <= set(frame.columns)
    assert len(frame) == 8 and (frame["status"] == "invalid").sum() == 4
    assert frame.loc[frame["status"] == "ok", "params"].dtype.kind == "i" or frame["params"].notna().sum() == 4

    report = (out / "report.md").read_text()
    for heading in ("## Environment", "## Variants", "## Ranking", "## Invalid combinations", "## Counter notes"):
        assert heading in report
    assert "NoSuchBlock" in report
    assert (out / "params_vs_gflops.png").stat().st_size > 1000
    env = json.loads((out / "env.json").read_text())
    assert env["grid_sha256"] and env["torch"] and env["started_at"] and "sweep" in env["command"]
    assert "fvcore skipped" in capsys.readouterr().err


def test_spec_numbers_through_the_sweep(tmp_path):
    grid = _grid(tmp_path, '[grid]\nblock_type = ["UnetBlock", "ResidualUnetBlock"]\n'
                           'upconv_type = ["Transposed", "Bilinear"]\n', "spec")
    out = tmp_path / "run"
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q"]) == 0
    frame = pd.read_csv(out / "results.csv").set_index("variant")
    expected = {
        "UnetBlock-Transposed-d6-f64-256px": (54_404_675, 12_096_372_736, 6_060_064_768),
        "UnetBlock-Bilinear-d6-f64-256px": (39_150_979, 22_173_188_096, None),
        "ResidualUnetBlock-Transposed-d6-f64-256px": (57_547_782, 12_851_871_744, None),
        "ResidualUnetBlock-Bilinear-d6-f64-256px": (42_294_086, 22_928_687_104, None),
    }
    for variant, (params, flops, macs) in expected.items():
        assert frame.loc[variant, "params"] == params
        assert frame.loc[variant, "flops_fwd"] == flops
        assert frame.loc[variant, "conv_macs_analytic"] * 2 == flops
        if macs:
            assert frame.loc[variant, "macs"] == macs


def test_existing_results_need_resume_and_are_kept(tmp_path, capsys):
    grid = _grid(tmp_path)
    out = tmp_path / "run"
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q"]) == 0
    before = (out / "results.jsonl").read_bytes()
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q"]) == 1
    assert "already holds results; resume that run" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q", "--resume"]) == 0
    assert (out / "results.jsonl").read_bytes() == before  # nothing left to do, nothing duplicated
    assert len(json.loads((out / "env.json").read_text())["resumes"]) == 1


def test_bad_grid_from_the_command_line(tmp_path, capsys):
    bad = _grid(tmp_path, "[grid]\nn_down = [3]\n", "typo")
    assert main(["sweep", str(bad), "--static-only", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "[grid].n_down" in err and "did you mean 'n_downs'" in err
    assert not (tmp_path / "x").exists()


def test_sigkill_then_resume_gives_every_row_once(tmp_path):
    out, grid = tmp_path / "run", tmp_path / "g8.toml"
    grid.write_text('[grid]\nn_downs = [3]\nfeatures = [4, 8]\nblock_type = ["UnetBlock", "ResidualUnetBlock"]\n'
                    'upconv_type = ["Transposed", "Bilinear"]\ninput_size = [32]\n')  # 8 variants
    cmd = [sys.executable, "-m", "cli", "sweep", str(grid), "--static-only", "--out", str(out), "--quiet"]
    slow = (  # the same command, each row 0.4 s slower, so the kill lands part-way
        "import sys, time, bench.sweep as s; profile = s.static_row; "
        "s.static_row = lambda spec: (time.sleep(0.4), profile(spec))[1]; "
        "from cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", slow, *cmd[3:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = _lines(out)
    assert 3 <= len(partial) < 8
    with open(results, "a") as handle:  # what a kill in the middle of a write would leave
        handle.write('{"schema": 1, "kind": "static", "key": "static|{\\"n_dow')

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = _lines(out)  # every line parses
    keys = [r["key"] for r in rows]
    expected = {f"static|{v.key}" for v in load_grid(str(grid)).variants()}
    assert len(keys) == len(set(keys)) == 8 and set(keys) == expected
    assert rows[: len(partial)] == partial  # earlier rows untouched
    assert len(pd.read_csv(out / "results.csv")) == 8


def test_shards_merge_to_the_whole_and_compare(tmp_path, capsys):
    grid = str(_grid(tmp_path))
    whole, half1, half2, merged = (tmp_path / n for n in ("whole", "s1", "s2", "merged"))
    assert main(["sweep", grid, "--static-only", "--out", str(whole), "-q"]) == 0
    assert main(["sweep", grid, "--static-only", "--out", str(half1), "-q", "--shard", "1/2"]) == 0
    assert main(["sweep", grid, "--static-only", "--out", str(half2), "-q", "--shard", "2/2"]) == 0
    k1 = {r["key"] for r in _lines(half1)}
    k2 = {r["key"] for r in _lines(half2)}
    assert k1 and k2 and not k1 & k2
    assert main(["report", str(half1), str(half2), "--out", str(merged)]) == 0
    columns = ["variant", "status", "reason", "params", "macs", "flops_fwd", "flops_train", "activations"]
    a = pd.read_csv(whole / "results.csv")[columns].sort_values("variant").reset_index(drop=True)
    b = pd.read_csv(merged / "results.csv")[columns].sort_values("variant").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert json.loads((merged / "env.json").read_text())["merged_from"] == [str(half1), str(half2)]

    capsys.readouterr()
    assert main(["compare", str(whole), str(half1), "--out", str(tmp_path / "cmp")]) == 0
    markdown = capsys.readouterr().out
    assert "only in A" in markdown and "params B/A" in markdown
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert table["params_a"].dtype.kind == "i"  # counts stay integers
    ok_in_half = sum(1 for r in _lines(half1) if r["status"] == "ok")
    assert len(table) == ok_in_half and (table["flops_fwd_ratio"] == 1.0).all()


def test_report_in_place_regenerates(tmp_path):
    out = tmp_path / "run"
    assert main(["sweep", str(_grid(tmp_path)), "--static-only", "--out", str(out), "-q"]) == 0
    (out / "results.csv").unlink()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 8 and (out / "report.md").exists()


def test_compare_ratios():
    base = {"kind": "static", "status": "ok", "variant": "v", "key": "k", "params": 10, "param_mib": 1.0,
            "macs": 100, "flops_fwd": 200, "flops_train": 600, "activations": 5}
    other = base | {"flops_fwd": 300, "params": 5}
    table = compare_frames([base], [other])
    assert table.loc[0, "flops_fwd_ratio"] == pytest.approx(1.5)
    assert table.loc[0, "params_ratio"] == pytest.approx(0.5)
    assert table.loc[0, "macs_ratio"] == pytest.approx(1.0)


def test_missing_run_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_resume_refuses_another_grid_or_shard(tmp_path, capsys):
    out = tmp_path / "run"
    grid = _grid(tmp_path)
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q", "--shard", "1/2"]) == 0
    before = (out / "results.jsonl").read_bytes()
    assert main(["sweep", "smoke", "--static-only", "--out", str(out), "-q", "--resume"]) == 1
    assert "was started with grid" in capsys.readouterr().err
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q", "--resume", "--shard", "2/2"]) == 1
    assert "was started with shard 1/2, not 2/2" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before


def test_empty_grid_or_shard_is_an_error(tmp_path, capsys):
    empty = _grid(tmp_path, '[grid]\nn_downs = [3]\nexclude = [{ n_downs = 3 }]\n', "empty")
    assert main(["sweep", str(empty), "--static-only", "--out", str(tmp_path / "a"), "-q"]) == 1
    assert "has no variants" in capsys.readouterr().err
    assert main(["sweep", "smoke", "--static-only", "--out", str(tmp_path / "b"), "-q", "--shard", "50/100"]) == 1
    assert "shard 50/100 is empty: the grid has only 16 variants" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_explicit_default_out_channels_is_the_same_variant(tmp_path):
    grid = _grid(tmp_path, "[grid]\nn_downs = [3]\nfeatures = [4]\ninput_size = [32]\n"
                           "include = [{ n_downs = 3, features = 4, input_size = 32, out_channels = 3 }]\n", "dup")
    out = tmp_path / "run"
    assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q"]) == 0
    assert len(_lines(out)) == 1


def test_a_failing_variant_is_a_row_and_a_non_zero_exit(tmp_path, capsys):
    from nectargan.models import UnetBlock, register_block
    from nectargan.models.unet import blocks as blocks_module

    saved = dict(blocks_module._REGISTRY)

    @register_block(name="ExplodingBlock")
    class ExplodingBlock(UnetBlock):
        def forward(self, x):
            raise RuntimeError("boom")

    try:
        grid = _grid(tmp_path, '[grid]\nn_downs = [3]\ninput_size = [32]\nfeatures = [4]\n'
                               'block_type = ["UnetBlock", "ExplodingBlock"]\n', "boom")
        out = tmp_path / "run"
        assert main(["sweep", str(grid), "--static-only", "--out", str(out), "-q"]) == 1
    finally:
        blocks_module._REGISTRY.clear()
        blocks_module._REGISTRY.update(saved)
    rows = {r["block_type"]: r for r in _lines(out)}
    assert rows["UnetBlock"]["status"] == "ok"
    assert rows["ExplodingBlock"]["status"] == "error" and "boom" in rows["ExplodingBlock"]["reason"]
    assert "1 row(s) failed" in capsys.readouterr().err
