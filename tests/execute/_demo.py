"""The small demo plan the executor tests run with cpx's real stage runners, and how to compare runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _exec_helpers import HERE, cpx_env, manifests
from cpx.execute import RESULT_TABLES

ROOT = HERE.parents[1]
DEMO = ROOT / "tests" / "data" / "demo_small.yaml"
# The demo's shape (33 stages: generate, datasets, arms A/B/C, two checkpoints, sample, scan,
# represent, analyze, report) with less work per stage, so ten kills fit in a test.
SMALL = [
    "training.marker.epochs=1",
    "training.convergence.epochs=1",
    "arms.B.phases.1.overrides.epochs=1",
    "datasets.marker.examples=10",
    "datasets.marker.negatives.examples_per_persona=5",
    "datasets.convergence.examples=10",
    "datasets.generic.examples=10",
    "eval.completions=2",
    "eval.screen.completions=1",
    "eval.sampler.max_tokens=8",
    "eval.screen.sampler.max_tokens=8",
    "eval.intervals.n_resamples=50",
]
REAL = {"CPX_STAGE_RESOLVER": "_exec_runners:resolve_real"}
# The reference and the runs compared with it (executors, kills) train one stage at a time, so
# that test_exec_fleet.py's `--fleet auto` run is compared with runs that had no fleet.
FLEET_OFF = ("--fleet", "off")


def compile_demo(out: Path) -> None:
    args = [sys.executable, "-m", "cpx", "compile", str(DEMO), "--out", str(out), "-q"]
    for s in SMALL:
        args += ["-s", s]
    r = subprocess.run(args, env=cpx_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def execute(run: Path, ledger: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpx", "execute", str(run), "--devices", "cpu", "--quiet", *FLEET_OFF, *extra],
        env=cpx_env(CPX_TEST_LEDGER=str(ledger), **REAL),
        capture_output=True,
        text=True,
        timeout=900,
    )


def sorted_table(path: Path):
    """A table in a canonical row order (every scalar column a sort key; row order is not a result)."""
    t = pq.read_table(path)
    scalar = (
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
    )
    keys = [f.name for f in t.schema if any(is_(f.type) for is_ in scalar)]
    return t.sort_by([(k, "ascending") for k in keys])


def assert_same_results(a: Path, b: Path) -> None:
    ma, mb = manifests(a), manifests(b)
    assert len(ma) == 33 and set(ma) == set(mb)
    for sid in ma:
        if sid == "report":  # the report states when it was made and how long stages took
            continue
        for rel, rec in ma[sid]["outputs"].items():
            assert rec == mb[sid]["outputs"][rel], f"{sid}/{rel} differs"
    for table in RESULT_TABLES:
        pa_, pb_ = a / "results" / f"{table}.parquet", b / "results" / f"{table}.parquet"
        assert pa_.is_file() and pb_.is_file(), table
        assert sorted_table(pa_).equals(sorted_table(pb_)), table
    findings = [(d / "report" / "report.md").read_text().partition("## Caveats")[2] for d in (a, b)]
    assert findings[0] and findings[0] == findings[1]
