"""Writing an analysis' outputs: metrics.parquet, stats.parquet, stats.md."""

from __future__ import annotations

import os
from pathlib import Path

from cpx.analysis._markdown import stats_markdown
from cpx.analysis._run import Analysis


def write_outputs(analysis: Analysis, out_dir: str | os.PathLike[str], *, metrics: bool = True) -> list[Path]:
    """Write the tables into `out_dir`, each to a temporary name and then renamed, so a
    failure never leaves a half-written file under the final name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def put(name: str, write) -> None:  # type: ignore[no-untyped-def]
        tmp = out / f".{name}.{os.getpid()}.tmp"
        write(tmp)
        os.replace(tmp, out / name)
        written.append(out / name)

    if metrics:
        put("metrics.parquet", analysis.metrics.write_parquet)
    put("stats.parquet", analysis.stats.write_parquet)
    text = stats_markdown(analysis)
    put("stats.md", lambda p: Path(p).write_text(text))
    return written
