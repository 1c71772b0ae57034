"""A run's results tables as polars LazyFrames: `cpx.open(run_dir)` and `cpx query`.

>>> r = cpx.open("runs/demo")
>>> r.leakage.filter(pl.col("role") == "assistant").collect()
>>> r.sql("select arm, avg(rate) from leakage group by arm").collect()
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cpx.errors import CpxError

if TYPE_CHECKING:
    import polars as pl


def result_tables() -> tuple[str, ...]:
    """The tables a run's `results/` folder can hold (the executor's `RESULT_TABLES`)."""
    from cpx.execute import RESULT_TABLES

    return tuple(RESULT_TABLES)


class ResultsError(CpxError, LookupError):
    """A results folder, table or column that does not exist; the message lists what does."""


class Results(Mapping[str, "pl.LazyFrame"]):
    """The results tables of one run, by name, as LazyFrames (`r["leakage"]` or `r.leakage`)."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.results_dir = self.run_dir / "results"
        if not self.results_dir.is_dir():
            hint = (
                "run `cpx execute` first"
                if (self.run_dir / "plan.json").exists()
                else "not a cpx run folder (no plan.json)"
            )
            raise ResultsError(f"{self.results_dir}: no results folder; {hint}")
        known = result_tables()
        present = {p.stem for p in self.results_dir.glob("*.parquet")}
        self._paths = {
            n: self.results_dir / f"{n}.parquet"
            for n in [*[k for k in known if k in present], *sorted(present - set(known))]
        }

    def __getitem__(self, name: str) -> pl.LazyFrame:
        import polars as pl

        if name not in self._paths:
            raise ResultsError(self._unknown(name))
        return pl.scan_parquet(self._paths[name])

    def __getattr__(self, name: str) -> pl.LazyFrame:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except ResultsError as e:
            raise AttributeError(str(e)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"Results({str(self.run_dir)!r}, tables={list(self._paths)})"

    def _unknown(self, name: str) -> str:
        missing = [t for t in result_tables() if t not in self._paths]
        msg = f"no table {name!r} in {self.results_dir}; tables: {', '.join(self._paths) or 'none'}"
        if name in missing:
            msg = (
                f"table {name!r} is not in {self.results_dir} (this run produced none); "
                f"tables: {', '.join(self._paths) or 'none'}"
            )
        return msg

    def columns(self) -> dict[str, list[str]]:
        """Each table's column names (read from the Parquet schemas, no data)."""
        return {n: list(self[n].collect_schema().names()) for n in self._paths}

    def sql(self, query: str) -> pl.LazyFrame:
        """Run polars SQL over the tables. An unknown table or column raises ResultsError
        listing the tables, or the columns of the tables the query names."""
        import polars as pl

        ctx = pl.SQLContext(frames={n: self[n] for n in self._paths})
        try:
            lf = ctx.execute(query, eager=False)
            lf.collect_schema()  # resolves names now, so errors surface here
        except pl.exceptions.SQLInterfaceError as e:
            m = re.search(r"relation '([^']+)' was not found", str(e))
            if m:
                raise ResultsError(self._unknown(m.group(1))) from None
            raise ResultsError(f"SQL error: {e}") from None
        except pl.exceptions.ColumnNotFoundError as e:
            m = re.search(r'unable to find column "([^"]+)"', str(e))
            col = m.group(1) if m else str(e).splitlines()[0]
            cols = self.columns()
            named = [t for t in cols if re.search(rf"\b{re.escape(t)}\b", query)] or list(cols)
            listing = "; ".join(f"{t}: {', '.join(cols[t])}" for t in named)
            raise ResultsError(f"no column {col!r}; columns of {listing}") from None
        except pl.exceptions.SQLSyntaxError as e:
            raise ResultsError(f"SQL syntax error: {e}") from None
        return lf


def open_results(run_dir: str | os.PathLike[str]) -> Results:
    """The results of the run in `run_dir` (see `Results`)."""
    return Results(run_dir)
