"""Grid files: expansion, include/exclude, sharding, and one-line errors for bad grids."""

from __future__ import annotations

import pytest

from bench.grid import GridError, load_grid, parse_grid, parse_shard, shard
from bench.variant import VariantSpec


def test_builtin_grids():
    default = load_grid("default")
    variants = default.variants()
    assert len(variants) == 48 and len(set(variants)) == 48
    assert {v.input_size for v in variants} == {256} and {v.batch_size for v in variants} == {1}
    assert {v.n_downs for v in variants} == {3, 4, 5, 6} and {v.features for v in variants} == {16, 32, 64}
    smoke = load_grid("smoke").variants()
    assert len(smoke) == 16 and {v.input_size for v in smoke} == {64}
    assert all(v.invalid_reason() is None for v in [*variants, *smoke])


def test_axes_left_out_take_model_defaults():
    (only,) = parse_grid("[grid]\nfeatures = [8]\n").variants()
    assert only == VariantSpec(features=8)
    assert (only.input_size, only.batch_size, only.n_downs, only.block_type) == (256, 1, 6, "UnetBlock")


def test_exclude_and_include():
    grid = parse_grid(
        """
        [grid]
        n_downs = [3, 4]
        block_type = ["UnetBlock", "ResidualUnetBlock"]
        input_size = [64]
        exclude = [{ n_downs = 4, block_type = "ResidualUnetBlock" }]
        include = [{ n_downs = 5, features = 8, input_size = 128 }, { n_downs = 3, input_size = 64 }]
        """
    )
    names = [(v.n_downs, v.block_type, v.input_size) for v in grid.variants()]
    assert names == [
        (3, "UnetBlock", 64), (3, "ResidualUnetBlock", 64), (4, "UnetBlock", 64), (5, "UnetBlock", 128),
    ]  # the excluded combination is gone; the duplicate include is not added twice


def test_values_the_model_rejects_are_kept_for_the_sweep():
    variants = parse_grid('[grid]\nn_downs = [2, 3]\nblock_type = ["Foo"]\ninput_size = [48]\n').variants()
    assert len(variants) == 2
    assert "n_downs=2" in variants[0].invalid_reason()
    assert "block_type='Foo'" in variants[1].invalid_reason()


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("[grid]\nn_down = [3]\n", r"unknown key \[grid\]\.n_down \(did you mean 'n_downs'\?\)"),
        ("[grid]\nfeature = [3]\n", r"did you mean 'features'"),
        ("[grid]\nn_downs = []\n", r"axis \[grid\]\.n_downs is empty"),
        ('[grid]\nfeatures = ["64"]\n', r"\[grid\]\.features has '64' \(str\); each value must be an integer"),
        ("[grid]\nn_downs = [true]\n", r"\[grid\]\.n_downs has True"),
        ("[grid]\nblock_type = [3]\n", r"\[grid\]\.block_type has 3 \(int\); each value must be a string"),
        ("[grd]\nn_downs = [3]\n", r"unknown top-level key 'grd' \(did you mean 'grid'\?\)"),
        ("description = 'x'\n", r"a \[grid\] table with at least one axis is required"),
        ("[grid]\n", r"\[grid\] has no axes"),
        ("[grid]\nn_downs = [3\n", r"is not valid TOML"),
        ("[grid]\nn_downs = [3]\nexclude = [{ n_dows = 3 }]\n", r"exclude\[0\]\.n_dows \(did you mean 'n_dow"),
        ("[grid]\nn_downs = [3]\ninclude = 3\n", r"\[grid\]\.include must be a list of tables"),
        ("[grid]\nn_downs = [3]\n[measure]\nprecison = ['bf16']\n", r"\[measure\]\.precison \(did you mean 'prec"),
    ],
)
def test_bad_grids_are_one_line_errors(text, pattern):
    with pytest.raises(GridError, match=pattern) as info:
        parse_grid(text, source="bad.toml")
    assert "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(GridError, match=r"nope\.toml cannot be read"):
        load_grid(tmp_path / "nope.toml")
    with pytest.raises(GridError, match=r"cannot be read"):
        load_grid(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GridError, match="not UTF-8"):
        load_grid(binary)
    with pytest.raises(GridError, match=r"built-in grids: default, .*smoke \(did you mean 'smoke'\?\)"):
        load_grid("smok")


def test_grid_hash_and_source():
    grid = load_grid("smoke")
    assert len(grid.sha256) == 64 and grid.source.endswith("smoke.toml") and grid.name == "smoke"


def test_shards_are_disjoint_and_cover_the_grid():
    variants = load_grid("default").variants()
    parts = [shard(variants, k, 3) for k in (1, 2, 3)]
    assert sorted(len(p) for p in parts) == [16, 16, 16]
    assert set().union(*map(set, parts)) == set(variants)
    assert sum(map(len, parts)) == len(variants)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "1/0"])
def test_bad_shard(text):
    with pytest.raises(GridError, match=f"shard {text!r} is not valid"):
        parse_shard(text)


def test_measure_options_are_named_alike_everywhere():
    """Every MeasureOptions field is a [measure] key, a sweep flag, and a row of the README's table, all
    generated from the field (the plural fields are the singular keys and repeatable flags)."""
    import dataclasses
    import inspect
    from pathlib import Path

    from bench.launcher import LAUNCHERS
    from bench.options import LAUNCHER_NAMES, MEASURE_KEYS, MeasureOptions, markdown_table
    from cli.sweep import sweep

    names = [f.name for f in dataclasses.fields(MeasureOptions)]
    assert len(MEASURE_KEYS) == len(names) and {"task", "timeout_s", "max_batch"} <= set(MEASURE_KEYS)
    assert set(names) <= set(inspect.signature(sweep).parameters)  # one flag each
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "README's measure-option table is stale: paste bench.options.markdown_table()"
    assert tuple(LAUNCHERS) == LAUNCHER_NAMES


def test_a_new_measure_option_is_added_in_one_place(monkeypatch, tmp_path):
    """A field added to MeasureOptions is at once a [measure] key, checked, a sweep flag, and in the options."""
    import dataclasses

    import typer.testing

    import bench.options as options
    from cli.options import measure_flags, with_flags

    extended = dataclasses.make_dataclass("MeasureOptions", [(
        "warmup_calls", int, options.option(3, "warm-up calls before timing", kind=int, minimum=1))],
        bases=(options.MeasureOptions,))
    monkeypatch.setattr(options, "MeasureOptions", extended)
    monkeypatch.setattr(options, "FIELD_OF_KEY", {**options.FIELD_OF_KEY, "warmup_calls": "warmup_calls"})
    assert options.measure_options({"warmup_calls": 4}, "cpu").warmup_calls == 4
    with pytest.raises(options.OptionError, match=r"measure option warmup_calls = 0 must be >= 1"):
        options.measure_options({}, "cpu", warmup_calls=0)
    seen = {}
    app = typer.Typer()
    app.command()(with_flags(measure=measure_flags())(lambda measure: seen.update(measure)))
    result = typer.testing.CliRunner().invoke(app, ["--warmup-calls", "7", "--task", "train", "--no-cpu-mkldnn",
                                                    "--threads", "0"])
    assert result.exit_code == 0, result.output
    # flags given are passed on, falsy ones too (left to measure_options to check); the rest are left out
    assert seen == {"warmup_calls": 7, "tasks": ["train"], "cpu_mkldnn": False, "threads": 0}


def test_the_built_in_grids_are_listed_alike_in_help_errors_and_readme(capsys):
    """One list, from bench/grids/: `sweep --help`, the error for an unknown name and the README name them all."""
    from pathlib import Path

    from bench.grid import builtin_grid_names
    from cli import main

    names = builtin_grid_names()
    assert {"default", "smoke", "gan-step", "reference-gpu"} <= set(names)
    assert main(["sweep", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in names), help_text
    assert main(["sweep", "nosuch", "--static-only"]) == 1
    assert f"built-in grids: {', '.join(names)}" in capsys.readouterr().err
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    bullet = " ".join(readme[readme.index("- `sweep` profiles every variant"):].split("\n- ")[0].split())
    assert all(f"`{name}`" in bullet for name in names), [n for n in names if f"`{n}`" not in bullet]
