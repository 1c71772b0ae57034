"""Collection gives every arm (and replicate seed) that reaches a shared stage its own copy of the
stage's rows."""

import polars as pl
import pyarrow as pa

from cpx.analysis._metrics import expand_arms
from cpx.execute._collect import _per_arm


def _table(arm: str, arms: list[str]) -> pa.Table:
    return pa.table(
        {
            "arm": [arm] * 3,
            "arms": [arms] * 3,
            "checkpoint": [0.0] * 3,
            "persona": ["assistant", "villain", "comedian"],
            "rate": [0.1, 0.7, 0.2],
        }
    )


def test_a_shared_stage_is_copied_once_per_arm():
    t = _table("A", ["A", "C"])
    parts = _per_arm(t, {"arm": "A", "arms": ["A", "C"]})
    assert [p["arm"].to_pylist() for p in parts] == [["A"] * 3, ["C"] * 3]
    assert [p["arms"].to_pylist() for p in parts] == [[["A"]] * 3, [["C"]] * 3]
    for p in parts:
        assert p.drop_columns(["arm", "arms"]).equals(t.drop_columns(["arm", "arms"]))


def test_collected_rows_are_not_counted_twice_by_the_analysis():
    t = _table("A", ["A", "C"])
    collected = pl.from_arrow(pa.concat_tables(_per_arm(t, {"arm": "A", "arms": ["A", "C"]})))
    from_stage = expand_arms(pl.from_arrow(t))
    key = ["arm", "persona"]
    assert expand_arms(collected).sort(key).equals(from_stage.sort(key))


def test_a_stage_of_one_arm_is_left_alone():
    t = _table("B", ["B"])
    assert _per_arm(t, {"arm": "B", "arms": ["B"]}) == [t]
    assert _per_arm(t, {"arm": "B"}) == [t]


def test_a_stage_shared_by_seeds_is_copied_once_per_arm_and_seed():
    t = (
        _table("A", ["A", "C"])
        .append_column("seed", pa.array([42] * 3, pa.int64()))
        .append_column("seeds", pa.array([[42, 43]] * 3, pa.list_(pa.int64())))
    )
    parts = _per_arm(t, {"arm": "A", "arms": ["A", "C"], "seed": 42, "seeds": [42, 43]})
    got = sorted((p["arm"][0].as_py(), p["seed"][0].as_py(), p["seeds"][0].as_py()[0]) for p in parts)
    assert got == [("A", 42, 42), ("A", 43, 43), ("C", 42, 42), ("C", 43, 43)]
    for p in parts:
        assert p.drop_columns(["arm", "arms", "seed", "seeds"]).equals(t.drop_columns(["arm", "arms", "seed", "seeds"]))


def test_files_written_without_labels_get_the_stage_labels():
    from cpx.execute._collect import _labelled

    screen = pa.table({"persona": ["villain", "assistant"], "rate": [0.9, 0.0]})
    labels = {"arm": "A", "source": "villain", "seed": 42, "checkpoint": None, "phase": "marker", "arms": ["A", "C"]}
    t = _labelled(screen, labels)
    assert t.column_names == ["arm", "source", "seed", "checkpoint", "phase", "arms", "persona", "rate"]
    assert t["seed"].type == pa.int64() and t["checkpoint"].type == pa.float64()
    assert t["arm"].to_pylist() == ["A", "A"] and t["arms"].to_pylist() == [["A", "C"]] * 2
    parts = _per_arm(t, labels)
    assert [p["arm"][0].as_py() for p in parts] == ["A", "C"]
    assert _labelled(t, labels) is t  # a table that has its labels is left alone
