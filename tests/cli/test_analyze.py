"""`cpx analyze --metrics FILE --out DIR` on the table typed in from the seed report."""

from pathlib import Path

import polars as pl

from cpx.cli import main

CSV = Path(__file__).resolve().parents[1] / "data" / "seed_report_metrics.csv"


def test_analyze_seed_report_metrics(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", "--metrics", str(CSV), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["stats.md", "stats.parquet"]
    st = pl.read_parquet(out / "stats.parquet")
    for c in (
        "analysis",
        "arm",
        "source",
        "layer",
        "statistic",
        "estimate",
        "p_value",
        "p_method",
        "n",
        "n_eff",
        "icc",
        "p_adjusted",
    ):
        assert c in st.columns
    b = st.filter((pl.col("analysis") == "between_source") & (pl.col("p_method") == "exact"))
    assert round(b["p_value"][0], 3) == 0.083
    md = (out / "stats.md").read_text()
    assert "skipped: within_source (arm B, source villain, layer 15)" in md
    assert "p-values" in capsys.readouterr().out


def test_analyze_parquet_input_and_checkpoint(tmp_path):
    pq = tmp_path / "m.parquet"
    pl.read_csv(CSV, comment_prefix="#").write_parquet(pq)
    assert main(["analyze", "--metrics", str(pq), "--out", str(tmp_path / "o"), "--checkpoint", "0.2"]) == 0
    st = pl.read_parquet(tmp_path / "o" / "stats.parquet")
    b = st.filter(pl.col("analysis") == "between_source")
    assert b["checkpoint"].unique().to_list() == [0.2]


def test_analyze_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("arm,source\nB,villain\n")
    assert main(["analyze", "--metrics", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "missing column" in err
    assert not (tmp_path / "o").exists()
    assert main(["analyze", "--metrics", str(CSV)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["analyze"]) == 2


def test_analyze_a_run_folder(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from synth_results import make_tables, write_run

    tables = make_tables(seed=5, arms=("B",), checkpoints=(0.0, 0.5, 1.0))
    write_run(tmp_path, tables)
    (tmp_path / "results").mkdir()
    for name in ("marker_hits", "cosines"):
        tables[name].write_parquet(tmp_path / "results" / f"{name}.parquet")
    assert main(["analyze", str(tmp_path), "--n-resamples", "99"]) == 0
    out = tmp_path / "analysis"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.parquet", "stats.md", "stats.parquet"]
    st = pl.read_parquet(out / "stats.parquet")
    # the marker screens come from the plan's train stages
    assert st.filter(pl.col("analysis") == "marker_specificity").height == 4 * 3
    assert main(["analyze", str(tmp_path / "nope")]) == 1
    assert "no marker_hits" in capsys.readouterr().err


def _with_row(tmp_path, change):
    """The seed report's CSV with its first data row changed by `change(fields)`; (path, line)."""
    lines = CSV.read_text().splitlines()
    header = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    fields = lines[header + 1].split(",")
    lines[header + 1] = ",".join(change(fields))
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, header + 2


def test_a_row_with_an_extra_field_says_where_in_cpx_words(tmp_path, capsys):
    path, line = _with_row(tmp_path, lambda f: [*f, "9"])
    assert main(["analyze", "--metrics", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: 11 values but the header has 10 columns: an extra value '9' after column 'note'" in err
    assert "truncate_ragged_lines" not in err


def test_a_short_row_is_an_error_not_missing_values(tmp_path, capsys):
    path, line = _with_row(tmp_path, lambda f: f[:5])
    assert main(["analyze", "--metrics", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert (
        f"{path}:{line}: 5 values but the header has 10 columns: no value for column 'cosine' and the 4 after it" in err
    )


def test_a_table_without_rows_is_an_error(tmp_path, capsys):
    lines = CSV.read_text().splitlines()
    header = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    path = tmp_path / "h.csv"
    path.write_text("\n".join(lines[: header + 1]) + "\n")
    assert main(["analyze", "--metrics", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "no data rows (only a header)" in capsys.readouterr().err
    empty = tmp_path / "e.parquet"
    pl.read_csv(path, comment_prefix="#").write_parquet(empty)
    assert main(["analyze", "--metrics", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no data rows" in capsys.readouterr().err
