"""specs/demo.yaml end to end as `make demo` runs it (`cpx compile SPEC && cpx execute`, no
RUN_DIR), with the real runners on the tiny model.

Checks what only the whole demo shows: the marker reaches the assistant in arm B for at least
two sources and at least half of the within-source tests are computed (the demo shows a
correlation over a moving trajectory, docs/tiny-model.md); `cpx analyze RUN` reproduces the
run's own stats table; `cpx report` twice gives the same figure files, byte for byte; the
report says it is a tiny random model and counts its stages right.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "demo.yaml"

pytestmark = pytest.mark.slow


def _cpx(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    env.pop("CPX_STAGE_RESOLVER", None)
    return subprocess.run(
        [sys.executable, "-m", "cpx", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    here = tmp_path_factory.mktemp("demo")
    r = _cpx("compile", str(SPEC), "-q", cwd=here)
    assert r.returncode == 0, r.stderr
    r = _cpx("execute", "--devices", "cpu", "--quiet", cwd=here, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.startswith("cpx execute: runs/demo (the last `cpx compile` here")
    return here / "runs" / "demo"


def test_the_marker_leaks_to_the_assistant_in_arm_b(run: Path) -> None:
    leak = pl.read_parquet(run / "results" / "leakage.parquet")
    b = leak.filter((pl.col("arm") == "B") & (pl.col("role") == "assistant"))
    leaking = b.group_by("source").agg(pl.col("rate").max()).filter(pl.col("rate") > 0)
    assert leaking.height >= 2, b
    stats = pl.read_parquet(run / "results" / "stats.parquet").filter(pl.col("analysis") == "within_source")
    computed = stats["p_value"].is_not_null().sum()
    assert stats.height and 2 * computed >= stats.height, stats.select("arm", "source", "layer", "note")


def test_analyze_reproduces_the_stats_table(run: Path, tmp_path: Path) -> None:
    r = _cpx("analyze", str(run), "--out", str(tmp_path / "again"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    own = pl.read_parquet(run / "results" / "stats.parquet")
    again = pl.read_parquet(tmp_path / "again" / "stats.parquet")
    assert again.equals(own.select(again.columns), null_equal=True)


def test_report_is_reproducible_and_says_what_the_model_is(run: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        r = _cpx("report", str(run), "--out", str(tmp_path / name), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / "a" / "figures").iterdir())
    assert files and all(
        (tmp_path / "a" / "figures" / f).read_bytes() == (tmp_path / "b" / "figures" / f).read_bytes() for f in files
    )
    md = (run / "report" / "report.md").read_text()
    assert "built-in tiny model with random weights" in md
    m = re.search(r"\| stages done \| (\d+) of (\d+) stages before this report \|", md)
    assert m and m.group(1) == m.group(2)
