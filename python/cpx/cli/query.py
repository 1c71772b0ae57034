"""`cpx query`: polars SQL over a run's results tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cpx.cli import EXIT_USAGE, CLIError
from cpx.cli import _latest as latest

FORMATS = ("table", "csv", "json", "parquet")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "query",
        help="run SQL over a run's results tables",
        description=(
            "Run a polars SQL query over RUN_DIR/results: the tables completions, "
            "marker_hits, leakage, cosines, screen, train_log, metrics and stats (those the run has). "
            'Example: cpx query "select arm, source, avg(rate) from leakage where '
            "role = 'assistant' group by arm, source\" runs/demo"
        ),
    )
    p.add_argument("sql", metavar="SQL", help="the query")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help=f"the run folder ({latest.HELP})")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from cpx.results import Results, ResultsError

    if args.format == "parquet" and not args.output:
        raise CLIError("--format parquet needs --output FILE", EXIT_USAGE)
    args.run_dir = latest.resolve(args.run_dir, "query")
    try:
        df = Results(args.run_dir).sql(args.sql).collect()
    except ResultsError as e:
        raise CLIError(str(e), EXIT_USAGE) from None
    except pl.exceptions.PolarsError as e:
        raise CLIError(f"query failed: {e}") from None
    out = Path(args.output) if args.output else None
    if args.format == "parquet":
        df.write_parquet(out)  # type: ignore[arg-type]
    elif args.format == "csv":
        text = df.write_csv()
        _emit(text, out)
    elif args.format == "json":
        _emit(df.write_json() + "\n", out)
    else:
        with pl.Config(
            tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200, tbl_hide_dataframe_shape=False
        ):
            _emit(str(df) + "\n", out)
    return 0


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
