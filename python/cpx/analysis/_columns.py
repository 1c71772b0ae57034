"""Column names and dtypes of the tables the analyses read and write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from cpx.errors import CpxError

LABELS = ("arm", "source", "seed", "checkpoint")
# A steer arm's eval points differ by steering strength, not by checkpoint: their rows carry an
# `alpha` label as well (null on every other row), and their metrics are keyed by STEER_LABELS.
STEER_LABELS = (*LABELS, "alpha")
LABEL_TYPES: dict[str, Any] = {
    "arm": pl.String,
    "source": pl.String,
    "seed": pl.Int64,
    "checkpoint": pl.Float64,
    "alpha": pl.Float64,
}

METRIC_COLUMNS: dict[str, Any] = {
    "arm": pl.String,
    "source": pl.String,
    "seed": pl.Int64,
    "checkpoint": pl.Float64,
    "layer": pl.Int64,
    "cosine": pl.Float64,
    "source_rate": pl.Float64,
    "assistant_rate": pl.Float64,
    "bystander_rate": pl.Float64,
}

STATS_COLUMNS: dict[str, Any] = {
    "analysis": pl.String,
    "family": pl.String,
    "arm": pl.String,
    "source": pl.String,
    "seed": pl.Int64,
    "layer": pl.Int64,
    "checkpoint": pl.Float64,
    "alpha": pl.Float64,
    "x": pl.String,
    "y": pl.String,
    "statistic": pl.String,
    "estimate": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p_value": pl.Float64,
    "p_method": pl.String,
    "n_permutations": pl.Int64,
    "n": pl.Int64,
    "n_clusters": pl.Int64,
    "icc": pl.Float64,
    "icc_x": pl.Float64,
    "design_effect": pl.Float64,
    "n_eff": pl.Float64,
    "tau2": pl.Float64,
    "within_var": pl.Float64,
    "i2": pl.Float64,
    "p_adjusted": pl.Float64,
    "p_adjusted_bh": pl.Float64,
    "note": pl.String,
}


class MetricsError(CpxError, ValueError):
    """A metrics table that cannot be analysed; the message says where and what."""


def stats_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts with any subset of STATS_COLUMNS) as a stats table with the full schema."""
    for r in rows:
        unknown = set(r) - set(STATS_COLUMNS)
        if unknown:
            raise KeyError(f"unknown stats columns {sorted(unknown)}")
    return pl.DataFrame([{c: r.get(c) for c in STATS_COLUMNS} for r in rows], schema=STATS_COLUMNS, orient="row")


def normalize_metrics(df: pl.DataFrame, *, where: str = "metrics table") -> pl.DataFrame:
    """Cast a metrics table to METRIC_COLUMNS' dtypes (and `alpha`, a steer arm's strength, to
    Float64 when present); keep any extra columns.

    Missing required columns and values that cannot be cast are errors naming the column
    (and the first offending value); missing values (null, empty, NaN) are allowed.
    """
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise MetricsError(
            f"{where}: missing column(s) {', '.join(missing)}; "
            f"a metrics table needs {', '.join(METRIC_COLUMNS)} (found: {', '.join(df.columns)})"
        )
    out = []
    typed = {**METRIC_COLUMNS, **({"alpha": pl.Float64} if "alpha" in df.columns else {})}
    for c, dtype in typed.items():
        s = df[c]
        if s.dtype == pl.String and dtype != pl.String:
            s = s.str.strip_chars().replace("", None)
        bad = s.cast(dtype, strict=False).is_null() & s.is_not_null()
        if bad.any():
            i = int(bad.arg_max() or 0)
            raise MetricsError(
                f"{where}: column {c!r} must hold {dtype} values, but row {i + 1} "
                f"(not counting the header) has {s[i]!r}"
            )
        cast = s.cast(dtype)
        if dtype == pl.Float64:
            cast = cast.fill_nan(None)
        out.append(cast.alias(c))
    extra = [df[c] for c in df.columns if c not in typed]
    res = pl.DataFrame(out + extra)
    for c in ("source_rate", "assistant_rate", "bystander_rate"):
        outside = res.filter((pl.col(c) < 0) | (pl.col(c) > 1))
        if outside.height:
            raise MetricsError(
                f"{where}: column {c!r} holds rates in [0, 1], but has {outside[c][0]!r}; "
                "write percentages as fractions (20.2% -> 0.202)"
            )
    return res


def read_metrics(path: str | Path) -> pl.DataFrame:
    """Read a metrics table from CSV or Parquet and normalise it."""
    path = Path(path)
    if not path.exists():
        raise MetricsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            _check_rows(path, "\t" if suffix == ".tsv" else ",")
            df = pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False, comment_prefix="#")
        else:
            raise MetricsError(f"{path}: expected a .csv, .tsv or .parquet file")
    except MetricsError:
        raise
    except Exception as e:  # noqa: BLE001 - polars' own errors say what, we add where
        raise MetricsError(f"{path}: cannot read ({e})") from None
    out = normalize_metrics(df, where=str(path))  # a missing column is the first thing to say
    if out.height == 0:
        raise MetricsError(f"{path}: no data rows (only a header); a metrics table needs at least one row")
    return out


def _check_rows(path: Path, sep: str) -> None:
    """Every data row of a CSV has as many fields as the header: a row with more is an error
    (polars' own message suggests truncating), and one with fewer would be read as missing
    values without a word."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(i, r) for i, r in enumerate(csv.reader(f, delimiter=sep), 1) if r and not r[0].startswith("#")]
    except (UnicodeDecodeError, csv.Error) as e:
        raise MetricsError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise MetricsError(f"{path}: empty; expected a header line and at least one row")
    header = rows[0][1]
    for line, r in rows[1:]:
        if len(r) != len(header):
            more = len(r) > len(header)
            detail = (
                f"an extra value {r[len(header)]!r} after column {header[-1]!r}"
                if more
                else f"no value for column {header[len(r)]!r}"
                + (f" and the {len(header) - len(r) - 1} after it" if len(header) - len(r) > 1 else "")
            )
            raise MetricsError(
                f"{path}:{line}: {len(r)} values but the header has {len(header)} columns: {detail}"
                + ("" if more else "; leave a value empty with ',,' rather than dropping it")
            )
