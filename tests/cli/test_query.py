"""`cpx query` and `cpx.open` over a results folder."""

import json

import polars as pl
import pytest

import cpx
from cpx.cli import main
from cpx.results import ResultsError


@pytest.fixture()
def run(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    pl.DataFrame(
        {"arm": ["A", "B", "B"], "source": ["villain"] * 3, "role": ["assistant"] * 3, "rate": [0.1, 0.2, 0.4]}
    ).write_parquet(res / "leakage.parquet")
    pl.DataFrame({"analysis": ["within_source"], "p_value": [0.083]}).write_parquet(res / "stats.parquet")
    return tmp_path


def test_open_gives_lazyframes(run):
    r = cpx.open(run)
    assert list(r) == ["leakage", "stats"]
    assert isinstance(r.leakage, pl.LazyFrame)
    assert r["leakage"].collect()["rate"].sum() == pytest.approx(0.7)
    with pytest.raises(ResultsError, match="'cosines'.*tables: leakage, stats"):
        r["cosines"]
    with pytest.raises(AttributeError, match="tables: leakage, stats"):
        r.nope  # noqa: B018 - the attribute access is what is tested


def test_query_formats(run, capsys, tmp_path):
    q = "select arm, avg(rate) as rate from leakage group by arm order by arm"
    assert main(["query", q, str(run)]) == 0
    assert "shape: (2, 2)" in capsys.readouterr().out
    assert main(["query", q, str(run), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["arm,rate", "A,0.1", "B,0.30000000000000004"]
    assert main(["query", q, str(run), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"arm": "A", "rate": 0.1}, {"arm": "B", "rate": 0.30000000000000004}]
    out = tmp_path / "q.parquet"
    assert main(["query", q, str(run), "--format", "parquet", "-o", str(out)]) == 0
    assert pl.read_parquet(out).height == 2
    assert main(["query", q, str(run), "--format", "parquet"]) == 2


def test_query_errors_list_what_exists(run, capsys):
    assert main(["query", "select * from cosines", str(run)]) == 2
    err = capsys.readouterr().err
    assert "cosines" in err and "tables: leakage, stats" in err
    assert main(["query", "select rte from leakage", str(run)]) == 2
    err = capsys.readouterr().err
    assert "'rte'" in err and "leakage: arm, source, role, rate" in err
    assert main(["query", "select 1", str(run / "nope")]) == 2
    assert "no results folder" in capsys.readouterr().err


def test_cli_modules_import_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, cpx.cli.analyze, cpx.cli.report, cpx.cli.query, cpx.results, "
        "cpx.stages.analyze, cpx.stages.report; "
        "print([m for m in ('polars', 'altair', 'vl_convert', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
