"""Gathering a report's data: from a run folder (`cpx report RUN_DIR`) or from inside the
`report` stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from cpx.analysis import (
    Analysis,
    Options,
    adapter_quality,
    normalize_metrics,
    split_predictors,
    steer_layers_of,
    trained,
)
from cpx.errors import CpxError
from cpx.plan import Plan, Stage
from cpx.report._build import ReportData
from cpx.report._inputs import read_folders


class ReportError(CpxError):
    """A report that cannot be made; the message says what is missing and what to run."""


def _options(plan: Plan | None) -> Options:
    if plan is None:
        return Options()
    analyze = [s for s in plan.stages if s.kind == "analyze"]
    return Options.from_params(analyze[-1].params) if analyze else Options()


def _closure(plan: Plan, stage: Stage) -> list[Stage]:
    by_id = plan.by_id()
    seen: dict[str, Stage] = {}
    todo = list(stage.deps)
    while todo:
        sid = todo.pop()
        if sid in seen or sid not in by_id:
            continue
        seen[sid] = by_id[sid]
        todo.extend(by_id[sid].deps)
    return [s for s in plan.stages if s.id in seen]


def _stage_dir(run_dir: Path, s: Stage) -> Path:
    return run_dir / "stages" / s.kind / s.hash


def _manifests(run_dir: Path, stages: list[Stage]) -> list[dict[str, Any]]:
    out = []
    for s in stages:
        try:
            out.append(json.loads((_stage_dir(run_dir, s) / "manifest.json").read_text()))
        except (OSError, ValueError):
            continue
    return out


def _analysis(
    metrics: pl.DataFrame, stats: pl.DataFrame, screen: pl.DataFrame | None, opts: Options, plan: Plan | None
) -> Analysis:
    metrics = normalize_metrics(metrics)
    adapters = adapter_quality(screen) if screen is not None and screen.height else None
    return Analysis(
        metrics=metrics,
        stats=stats,
        adapters=adapters,
        notes=split_predictors(trained(metrics))[2],
        options=opts,
        steer_layers=steer_layers_of(plan.spec) if plan else {},
    )


def screens(run_dir: Path, stages: list[Stage]) -> pl.DataFrame | None:
    train = [(_stage_dir(run_dir, s), s.labels) for s in stages if s.kind == "train"]
    return read_folders(train, names=("screen",)).get("screen")


def from_run(run_dir: str | Path) -> ReportData:
    """A run's report data from `<run>/results/*.parquet`, plan.json and the stage manifests."""
    run = Path(run_dir)
    plan = Plan.load(run) if (run / "plan.json").exists() else None
    res = run / "results"
    need = [n for n in ("metrics", "stats") if not (res / f"{n}.parquet").is_file()]
    if need:
        raise ReportError(
            f"{res}: no {' or '.join(f'{n}.parquet' for n in need)}; run `cpx execute` (with an analyze stage) first"
        )
    read = {
        n: pl.read_parquet(res / f"{n}.parquet")
        for n in ("metrics", "stats", "leakage", "screen")
        if (res / f"{n}.parquet").is_file()
    }
    stages = plan.stages if plan else []
    screen = read.get("screen")
    if screen is None and plan is not None:
        screen = screens(run, stages)
    return ReportData(
        analysis=_analysis(read["metrics"], read["stats"], screen, _options(plan), plan),
        leakage=read.get("leakage"),
        screen=screen,
        spec=plan.spec if plan else {},
        stages=stages,
        manifests=_manifests(run, stages),
        name=plan.name if plan else run.name,
        spec_hash=plan.spec_hash if plan else None,
        plan=plan,
        counted="stages of the plan",
        n_counted=len(stages) or None,
    )


def from_stage(stage: Stage, inputs: dict[str, Path], run_dir: Path, plan: Plan | None) -> ReportData:
    """The report stage's data: metrics and stats from its analyze input, the per-persona
    leakage and marker screens from the stages upstream of it (found through `plan`, the plan
    its executor loaded; None: its inputs only)."""
    upstream = _closure(plan, stage) if plan else []
    folders: list[tuple[Path, dict[str, Any] | None]] = [(p, None) for p in inputs.values()]
    folders += [
        (_stage_dir(run_dir, s), s.labels) for s in upstream if s.kind in ("scan", "train") and s.id not in inputs
    ]
    tables = read_folders(folders, names=("metrics", "stats", "leakage", "screen"))
    if "metrics" not in tables or "stats" not in tables:
        raise ReportError(
            f"report stage {stage.id}: no analyze output among its inputs ({', '.join(inputs) or 'none'})"
        )
    return ReportData(
        analysis=_analysis(tables["metrics"], tables["stats"], tables.get("screen"), _options(plan), plan),
        leakage=tables.get("leakage"),
        screen=tables.get("screen"),
        spec=plan.spec if plan else {},
        stages=plan.stages if plan else [],
        manifests=_manifests(Path(run_dir), upstream),
        name=plan.name if plan else stage.id,
        spec_hash=plan.spec_hash if plan else None,
        plan=plan,
        counted="stages before this report",
        n_counted=len(upstream) or None,
    )
