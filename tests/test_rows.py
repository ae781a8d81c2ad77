"""The row schema (bench.rows): typed rows, keys, versions, and the curated reference folders still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.rows import (
    SCHEMA_VERSION,
    UPGRADES,
    FailedRow,
    MeasuredRow,
    RowKey,
    SchemaError,
    StaticRow,
    row_from_dict,
)
from bench.store import JsonlStore
from nectargan.errors import NectarGANError

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
REFERENCE_RUNS = sorted(p.parent for p in REFERENCE.rglob("results.jsonl"))


def test_there_are_reference_runs_to_check():
    assert len(REFERENCE_RUNS) >= 2  # the CPU static profile and the H100 gan-eager run at least


@pytest.mark.parametrize("run", REFERENCE_RUNS, ids=[str(p.relative_to(REFERENCE)) for p in REFERENCE_RUNS])
def test_reference_rows_read_typed_and_write_back_unchanged(run):
    """Every stored row becomes its typed row and back, unchanged (an unset column, null or absent, is left
    out); every key parses back."""
    lines = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]
    kinds = set()
    for stored in lines:
        row = row_from_dict(stored)
        kinds.add(type(row))
        assert row.to_dict() == {k: v for k, v in stored.items() if v is not None}
        assert not row.extra  # every column is a field of the schema
        assert str(RowKey.parse(stored["key"])) == stored["key"]
    assert kinds <= {StaticRow, MeasuredRow, FailedRow} and kinds


@pytest.mark.parametrize("run", REFERENCE_RUNS, ids=[str(p.relative_to(REFERENCE)) for p in REFERENCE_RUNS])
def test_reference_runs_compare_with_themselves(run, tmp_path):
    from bench.compare import compare_dirs

    comparison = compare_dirs(run, run, tmp_path / "cmp")
    assert len(comparison.static) == sum(1 for r in JsonlStore(run).iter_rows() if r["kind"] == "static")
    assert (comparison.static["params_ratio"] == 1.0).all()
    if len(comparison.measured):
        assert (comparison.measured["img_per_s_ratio"] == 1.0).all() and not comparison.regressions.size


def test_measured_keys_round_trip_with_discriminator_and_batch():
    key = RowKey("measure", '{"n_downs":3}', "gan_train", "compile", "bf16", "nchw", "cuda:0", (3, 64), 1)
    assert str(key).endswith("|gan_train|compile|bf16|nchw|cuda:0|D3x64|b1")
    assert RowKey.parse(str(key)) == key
    with pytest.raises(SchemaError, match="is not a static or measure key"):
        RowKey.parse("elsewhere|{}")


def test_an_older_schema_is_upgraded_or_refused_in_one_line(tmp_path, monkeypatch):
    row = {"schema": SCHEMA_VERSION - 1, "kind": "static", "key": "static|{}", "status": "invalid",
           "reason": "n_downs", "name": "x", "n_downs": 2, "features": 8, "block_type": "UnetBlock",
           "upconv_type": "Transposed", "input_size": 64, "in_channels": 3, "out_channels": 3,
           "use_dropout_layers": 3, "batch_size": 1}
    store = JsonlStore(tmp_path)
    store.append(row)
    with pytest.raises(NectarGANError, match=rf"line 1 has row schema {SCHEMA_VERSION - 1}, which this "
                                             r"nectargan-bench cannot upgrade; read it with the version that wrote"):
        list(store.iter_rows())
    # a renamed column: the upgrade renames it, and the row reads as today's
    monkeypatch.setitem(UPGRADES, SCHEMA_VERSION - 1,
                        lambda old: {("variant" if k == "name" else k): v for k, v in old.items()})
    upgraded = next(store.iter_rows())
    assert upgraded["schema"] == SCHEMA_VERSION and upgraded["variant"] == "x" and "name" not in upgraded
    assert isinstance(row_from_dict(upgraded), FailedRow)


def test_a_row_that_is_no_kind_or_incomplete_is_refused():
    with pytest.raises(SchemaError, match="is not a result row"):
        row_from_dict({"key": "k", "kind": "measured", "status": "ok"})
    with pytest.raises(SchemaError, match="is not a complete static row"):
        row_from_dict({"key": "static|{}", "kind": "static", "status": "ok", "variant": "x"})
