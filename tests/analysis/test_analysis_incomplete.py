"""`analyze_metrics` on incomplete tables (published numbers are): never a crash, every
test either computed or skipped with a reason."""

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpx.analysis import analyze_metrics, stats_markdown

COLS = ["arm", "source", "seed", "checkpoint", "layer", "cosine", "source_rate", "assistant_rate", "bystander_rate"]

rate = st.one_of(st.none(), st.floats(0, 1, allow_nan=False))
row = st.tuples(
    st.sampled_from(["A", "B"]),
    st.sampled_from(["villain", "comedian", "kt", "swe"]),
    st.sampled_from([42, 43]),
    st.sampled_from([0.2, 0.4, 0.6, 0.8, 1.0, None]),
    st.sampled_from([15, 20, None]),
    st.one_of(st.none(), st.floats(-1, 1, allow_nan=False)),
    rate,
    rate,
    rate,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row, max_size=40))
def test_incomplete_tables_never_crash(rows):
    m = pl.DataFrame(
        rows,
        schema={
            "arm": pl.String,
            "source": pl.String,
            "seed": pl.Int64,
            "checkpoint": pl.Float64,
            "layer": pl.Int64,
            "cosine": pl.Float64,
            "source_rate": pl.Float64,
            "assistant_rate": pl.Float64,
            "bystander_rate": pl.Float64,
        },
        orient="row",
    )
    a = analyze_metrics(m)
    s = a.stats
    tested = s.filter(pl.col("p_value").is_not_null())
    assert tested.filter((pl.col("p_value") < 0) | (pl.col("p_value") > 1)).is_empty()
    assert (tested["p_adjusted"] >= tested["p_value"] - 1e-12).all()
    skipped = s.filter(pl.col("note").str.starts_with("skipped"))
    assert skipped["p_value"].null_count() == skipped.height
    assert isinstance(stats_markdown(a), str)
