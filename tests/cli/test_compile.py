"""`cpx compile`, `cpx plan`, `cpx schema` as a user runs them: real processes, exit codes, files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cpx.plan import Plan

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "tests" / "data" / "demo_small.yaml"
BAD = ROOT / "tests" / "spec" / "bad"


def cpx(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    return subprocess.run(
        [sys.executable, "-m", "cpx", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_help_says_what_it_does() -> None:
    r = cpx("compile", "--help")
    assert r.returncode == 0
    assert "expand it into a plan" in r.stdout and "KEY=VALUE" in r.stdout


def test_compile_writes_the_plan_and_a_summary(tmp_path: Path) -> None:
    r = cpx("compile", str(DEMO), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    plan = Plan.load(tmp_path / "run")
    assert plan.name == "demo" and len(plan.stages) == 33
    raw = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert set(raw) == {"format", "name", "spec", "spec_hash", "values", "stages"}
    assert raw["spec"]["eval"]["sampler"]["temperature"] == 1.0 and "extends" not in raw["spec"]
    for kind in ("generate", "dataset", "train", "sample", "represent", "scan", "analyze", "report"):
        assert f"\n  {kind} " in r.stdout
    assert "GPU-h" in r.stdout and "33 stages" in r.stdout


def test_default_out_dir_is_runs_name(tmp_path: Path) -> None:
    r = cpx("compile", str(DEMO), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "demo" / "plan.json").is_file()


def test_done_count_reads_manifests(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cpx("compile", str(DEMO), "--out", str(run), "-q").returncode == 0
    plan = Plan.load(run)
    for s in plan.stages[:3]:
        d = run / "stages" / s.kind / s.hash
        d.mkdir(parents=True)
        (d / "manifest.json").write_text("{}")
    r = cpx("compile", str(DEMO), "--out", str(run))
    kinds = [s.kind for s in plan.stages[:3]]
    total = next(line for line in r.stdout.splitlines() if line.strip().startswith("total"))
    assert total.split()[1:3] == [str(len(plan.stages)), "3"]
    for kind in set(kinds):
        row = next(line for line in r.stdout.splitlines() if line.strip().startswith(kind + " "))
        assert int(row.split()[2]) == kinds.count(kind)
    show = cpx("plan", "show", str(run))
    assert show.stdout.count("  done ") == 3 and "33 stages, 3 done" in show.stdout


def test_bad_spec_exits_2_with_positions_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    r = cpx("compile", str(BAD / "many_errors.yaml"), "--out", str(out))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "6 errors in spec" in r.stderr
    assert "many_errors.yaml:4:13: roles.sources[0]: undefined persona 'villian'" in r.stderr
    assert "did you mean 'villain'?" in r.stderr
    assert not out.exists()


def test_syntax_error_and_unknown_key_exit_2(tmp_path: Path) -> None:
    cases = (("syntax_flow.yaml", "syntax_flow.yaml:3:5"), ("unknown_top_key.yaml", "unknown_top_key.yaml:2:1"))
    for name, where in cases:
        r = cpx("compile", str(BAD / name), "--out", str(tmp_path / name))
        assert r.returncode == 2 and where in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / name).exists()


def test_bad_override_exits_2(tmp_path: Path) -> None:
    r = cpx("compile", str(DEMO), "--out", str(tmp_path / "x"), "-s", "eval.temperature=0.7")
    assert r.returncode == 2 and "-s eval.temperature=0.7" in r.stderr and "unknown key 'temperature'" in r.stderr


def test_an_existing_plan_is_kept_when_the_spec_turns_bad(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cpx("compile", str(DEMO), "--out", str(run), "-q").returncode == 0
    before = (run / "plan.json").read_bytes()
    assert cpx("compile", str(DEMO), "--out", str(run), "-s", "eval.completions=0").returncode == 2
    assert (run / "plan.json").read_bytes() == before


def test_compile_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from cpx.cli import main\n"
        f"rc = main(['compile', {str(DEMO)!r}, '--out', {str(tmp_path / 'run')!r}, '-q'])\n"
        f"main(['plan', 'show', {str(tmp_path / 'run')!r}])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'polars', 'altair') if m in sys.modules)\n"
        "print('HEAVY', heavy, rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY [] 0" in r.stdout


def test_plan_show_graph_and_diff(tmp_path: Path) -> None:
    g = cpx("plan", "show", str(DEMO), "--graph")
    assert g.returncode == 0 and g.stdout.startswith("flowchart LR")
    run = tmp_path / "run"
    c = cpx("compile", str(DEMO), "--out", str(run), "-q", "-s", "representation.layers=[2]")
    assert c.returncode == 0
    # the demo's within_source analysis asks for layers [1, 2]: layer 1 is no longer read
    assert "warning: analyses[1] (within_source): layer(s) 1 are not read" in c.stderr
    d = cpx("plan", "diff", str(DEMO), str(run))
    assert d.returncode == 0
    assert "~ represent/base/s42  layers: [1, 2] -> [2]" in d.stdout
    assert d.stdout.startswith("9 changed, 0 added, 0 removed")  # 7 represent + analyze + report
    missing = cpx("plan", "show", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "cpx compile" in missing.stderr and "Traceback" not in missing.stderr


def test_schema_command(tmp_path: Path) -> None:
    r = cpx("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "cpx experiment spec" and "arms" in schema["properties"]
    assert cpx("schema", "-o", str(tmp_path / "s.json")).returncode == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema
