"""`cpx plan power` and the power section of `cpx compile`, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "specs" / "demo.yaml"
DEMO_SMALL = ROOT / "tests" / "data" / "demo_small.yaml"


def cpx(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    return subprocess.run(
        [sys.executable, "-m", "cpx", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_plan_power_tabulates_vary_values() -> None:
    r = cpx("plan", "power", str(DEMO), "--vary", "questions=20,40,80", "--vary", "sources=5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["Varied", "Analysis"]
    for label in ("plan", "questions=20", "questions=40", "questions=80", "sources=5"):
        assert any(line.startswith(label + " ") and "leakage" in line for line in lines), label
    between = {line.split()[0]: line for line in lines if " between_source " in line}
    assert "unreachable" in between["plan"] and "|rho|" in between["sources=5"]
    assert "warning: power: between_source" in r.stderr and "2/3!" in r.stderr


def test_plan_power_of_a_written_plan(tmp_path: Path) -> None:
    assert cpx("compile", str(DEMO_SMALL), "--out", str(tmp_path / "run"), "-q").returncode == 0
    r = cpx("plan", "power", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[:2] == ["Analysis", "Design"]
    assert "bystander_vs_assistant" in r.stdout


def test_bad_vary_exits_2() -> None:
    for bad, says in (
        ("layers=2", "unknown key 'layers'"),
        ("questions=ten", "'ten' is not an integer"),
        ("questions=20,0", "must be positive"),
        ("questions", "expected KEY=V1,V2"),
    ):
        r = cpx("plan", "power", str(DEMO_SMALL), "--vary", bad)
        assert r.returncode == 2, bad
        assert says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_compile_prints_power_only_when_the_spec_asks(tmp_path: Path) -> None:
    plain = cpx("compile", str(DEMO_SMALL), "--check")
    assert plain.returncode == 0 and "power" not in plain.stdout and "warning" not in plain.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"extends: {DEMO_SMALL}\npower: {{icc: 0.2}}\n")
    r = cpx("compile", str(spec), "--check")
    assert r.returncode == 0, r.stderr
    assert "power (alpha 0.05" in r.stdout and "ICC 0.200" in r.stdout
    assert any(line.startswith("warning: power: within_source") for line in r.stderr.splitlines())


def test_compile_with_an_unreadable_run_warns_and_still_succeeds(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"extends: {DEMO_SMALL}\npower: {{from_run: missing_run}}\n")
    r = cpx("compile", str(spec), "--check")
    assert r.returncode == 0
    assert "warning: power.from_run:" in r.stderr and "missing_run/results/marker_hits.parquet" in r.stderr
    r = cpx("plan", "power", str(spec))
    assert r.returncode == 2 and "missing_run/results/marker_hits.parquet" in r.stderr


def test_a_vary_key_the_design_lacks_is_an_error() -> None:
    r = cpx("plan", "power", str(DEMO), "--vary", "alphas=3,5")
    assert r.returncode == 2 and "alphas changes nothing here: the plan has no steer arm" in r.stderr


def test_impossible_power_settings_are_spec_errors() -> None:
    for override, message in (
        ("power={power: 0.01}", "must be above alpha"),
        ("power={base_rate: 1.0}", "power.base_rate: out of range"),
    ):
        r = cpx("compile", str(DEMO_SMALL), "--out", "/nonexistent/never", "-s", override)
        assert r.returncode == 2 and message in r.stderr, r.stderr
