"""The results store contract, run against every implementation, plus JSONL crash safety."""

from __future__ import annotations

import json

import pytest

from bench.store import JsonlStore, MemoryStore, merged_rows
from nectargan.errors import NectarGANError


@pytest.fixture(params=["memory", "jsonl"])
def store(request, tmp_path):
    return MemoryStore() if request.param == "memory" else JsonlStore(tmp_path / "run")


def test_append_iterate_and_keys(store):
    store.append({"key": "a", "v": 1})
    store.append({"key": "b", "v": 2.5, "nested": {"x": [1, 2]}})
    assert store.keys() == {"a", "b"}
    assert list(store.iter_rows()) == [{"key": "a", "v": 1}, {"key": "b", "v": 2.5, "nested": {"x": [1, 2]}}]


def test_last_row_with_a_key_wins(store):
    store.append({"key": "a", "v": 1})
    store.append({"key": "b", "v": 2})
    store.append({"key": "a", "v": 3})
    assert [(r["key"], r["v"]) for r in store.iter_rows()] == [("b", 2), ("a", 3)]


def test_nan_and_inf_become_null(store):
    store.append({"key": "a", "v": float("nan"), "w": [float("inf")]})
    assert list(store.iter_rows()) == [{"key": "a", "v": None, "w": [None]}]


def test_rows_need_a_key(store):
    with pytest.raises(ValueError, match="key"):
        store.append({"v": 1})


def test_torn_last_line_is_skipped_then_repaired(tmp_path):
    store = JsonlStore(tmp_path)
    store.append({"key": "a"})
    with open(store.path, "a") as handle:
        handle.write('{"key": "b", "v"')  # a killed writer
    assert [r["key"] for r in store.iter_rows()] == ["a"]
    JsonlStore(tmp_path).append({"key": "c"})
    lines = store.path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "c"]


def test_corrupt_middle_line_is_an_error(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(NectarGANError, match="line 2 is not valid JSON"):
        list(JsonlStore(tmp_path).iter_rows())


def test_merged_rows(tmp_path):
    JsonlStore(tmp_path / "x").append({"key": "a", "v": 1})
    JsonlStore(tmp_path / "y").append({"key": "b", "v": 2})
    JsonlStore(tmp_path / "y").append({"key": "a", "v": 3})
    assert {r["key"]: r["v"] for r in merged_rows([tmp_path / "x", tmp_path / "y"])} == {"a": 3, "b": 2}
    with pytest.raises(NectarGANError, match=r"holds no results\.jsonl"):
        merged_rows([tmp_path / "missing"])


def test_a_row_from_a_newer_schema_is_refused_in_one_line(tmp_path):
    from bench.rows import SCHEMA_VERSION
    from bench.store import JsonlStore

    store = JsonlStore(tmp_path)
    store.append({"key": "a", "schema": SCHEMA_VERSION, "status": "ok"})
    assert [r["key"] for r in store.iter_rows()] == ["a"]
    store.append({"key": "b", "schema": SCHEMA_VERSION + 1, "status": "ok"})
    with pytest.raises(NectarGANError, match=rf"line 2 has row schema {SCHEMA_VERSION + 1}, newer than the "
                                             rf"{SCHEMA_VERSION} this nectargan-bench reads"):
        list(store.iter_rows())
