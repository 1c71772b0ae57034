"""Running the analyses: on a metrics table alone (`cpx analyze --metrics`) or on a run's
results (the `analyze` stage)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from cpx.analysis._adjust import adjust
from cpx.analysis._bystander import bystander_vs_assistant
from cpx.analysis._columns import LABELS, normalize_metrics, stats_frame
from cpx.analysis._correlation import between_source, pooled, within_source
from cpx.analysis._metrics import (
    build_metrics,
    final_checkpoint,
    leakage_by_role,
    leakage_by_role_from_leakage,
    source_personas,
)
from cpx.analysis._specificity import adapter_quality, adapter_rows, specificity_vs_cosine

ANALYSES = ("leakage_by_role", "cross_arm", "within_source", "between_source",
            "bystander_vs_assistant", "marker_specificity")


@dataclass(frozen=True)
class Options:
    """What the analyses compute. `checkpoint` is the one the cross-arm table and the
    between-source test use (default: the last checkpoint in the data)."""

    analyses: tuple[str, ...] = ANALYSES
    checkpoint: float | None = None
    confidence_level: float = 0.95
    n_resamples: int = 9999
    bootstrap_resamples: int = 2000
    seed: int = 0
    assistant: str = "assistant"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Options:
        """From an analyze stage's params: `{"analyses": [{"name": ..., <option>: ...}]}`;
        options may also sit at the top level. An unknown name or option is an error."""
        opts: dict[str, Any] = {}
        names: list[str] = []
        known = {f for f in cls.__dataclass_fields__ if f != "analyses"}
        for k, v in params.items():
            if k == "analyses":
                continue
            if k not in known:
                raise ValueError(f"analyze params: unknown option {k!r}; known: {', '.join(sorted(known))}")
            opts[k] = v
        for i, a in enumerate(params.get("analyses") or []):
            name = a.get("name") if isinstance(a, dict) else a
            if name not in ANALYSES:
                raise ValueError(f"analyze params: analyses[{i}]: unknown analysis {name!r}; "
                                 f"known: {', '.join(ANALYSES)}")
            names.append(name)
            for k, v in (a.items() if isinstance(a, dict) else ()):
                if k == "name":
                    continue
                if k not in known:
                    raise ValueError(f"analyze params: analyses[{i}] ({name}): unknown option "
                                     f"{k!r}; known: {', '.join(sorted(known))}")
                opts[k] = v
        if names:
            opts["analyses"] = tuple(names)
        return cls(**opts)


@dataclass
class Analysis:
    """Everything the analyses produced: the metrics and stats tables, per-adapter quality
    (when marker screens exist) and notes for stats.md and the report."""

    metrics: pl.DataFrame
    stats: pl.DataFrame
    adapters: pl.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    options: Options = field(default_factory=Options)

    @property
    def checkpoint(self) -> float | None:
        return self.options.checkpoint if self.options.checkpoint is not None else \
            final_checkpoint(self.metrics)


def _ensure_specificity(metrics: pl.DataFrame) -> pl.DataFrame:
    if "specificity" in metrics.columns:
        return metrics
    return metrics.with_columns(
        (pl.col("source_rate") - pl.col("bystander_rate")).alias("specificity"))


def split_predictors(metrics: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """The metrics of arms that have cosines, of arms that have specificity values, and
    notes naming the arms left out (one note per arm instead of a skipped row per test)."""
    notes: list[str] = []
    kept: dict[str, pl.DataFrame] = {}
    for col in ("cosine", "specificity"):
        empty = sorted(str(a) for (a,), g in metrics.group_by("arm")
                       if g[col].null_count() == g.height
                       or g["assistant_rate"].null_count() == g.height)
        notes += [f"arm {arm}: no {col} values with assistant leakage, so no {col}-leakage "
                  "tests for this arm" for arm in empty]
        kept[col] = metrics.filter(~pl.col("arm").cast(pl.String).is_in(empty))
    seeds = metrics["seed"].drop_nulls().n_unique()
    if seeds > 1:
        notes.append(f"{seeds} seeds: the correlation tests use the mean over seeds per point")
    return kept["cosine"], kept["specificity"], notes


def _tests(metrics: pl.DataFrame, marker_hits: pl.DataFrame | None,
           adapters: pl.DataFrame | None, opts: Options) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    ck = opts.checkpoint if opts.checkpoint is not None else final_checkpoint(metrics)
    with_cos, with_spec, notes = split_predictors(metrics)
    if "within_source" in opts.analyses:
        rows += within_source(with_cos)
    if "between_source" in opts.analyses:
        if ck is None:
            notes.append("between-source test skipped: no checkpoint values in the data")
        else:
            rows += between_source(with_cos, checkpoint=ck)
        rows += pooled(with_cos, n_resamples=opts.n_resamples, seed=opts.seed)
    if "bystander_vs_assistant" in opts.analyses:
        rows += bystander_vs_assistant(marker_hits, metrics, n_resamples=opts.n_resamples,
                                       seed=opts.seed)
    if "marker_specificity" in opts.analyses:
        if adapters is not None:
            rows += adapter_rows(adapters)
        rows += specificity_vs_cosine(with_spec, checkpoint=ck, n_resamples=opts.n_resamples,
                                      seed=opts.seed)
    return rows, notes


def analyze_metrics(metrics: pl.DataFrame, options: Options | None = None) -> Analysis:
    """Analyses 3, 4, 5 (difference only), 6 (specificity from the rates) and 7 on a
    per-checkpoint metrics table, such as one typed in from a paper. Missing values are
    allowed; a test with too few points becomes a row with a `skipped:` note."""
    opts = options or Options()
    metrics = _ensure_specificity(normalize_metrics(metrics))
    rows, notes = _tests(metrics, None, None, opts)
    return Analysis(metrics=metrics, stats=adjust(stats_frame(rows)), notes=notes, options=opts)


def analyze_tables(tables: dict[str, pl.DataFrame], options: Options | None = None) -> Analysis:
    """All analyses on a run's tables: `marker_hits` (or `leakage`), `cosines` and, when
    marker adapters were screened, `screen`. Builds the metrics table first."""
    opts = options or Options()
    hits = tables.get("marker_hits")
    leakage = tables.get("leakage")
    if hits is not None and hits.height:
        roles = leakage_by_role(hits, confidence_level=opts.confidence_level,
                                n_resamples=opts.bootstrap_resamples, seed=opts.seed)
        who = source_personas(hits)
    elif leakage is not None and leakage.height:
        roles = leakage_by_role_from_leakage(leakage)
        who = source_personas(leakage)
    else:
        raise ValueError("analyze: no marker_hits or leakage rows to analyse")
    metrics = build_metrics(roles, tables.get("cosines"), assistant=opts.assistant,
                            source_persona=who)
    screen = tables.get("screen")
    adapters = adapter_quality(screen) if screen is not None and screen.height else None
    rows, notes = _tests(metrics, hits, adapters, opts)
    return Analysis(metrics=metrics, stats=adjust(stats_frame(rows)), adapters=adapters,
                    notes=notes, options=opts)


def with_checkpoint(analysis: Analysis, checkpoint: float | None) -> Analysis:
    return replace(analysis, options=replace(analysis.options, checkpoint=checkpoint))


__all__ = ["ANALYSES", "LABELS", "Analysis", "Options", "analyze_metrics", "analyze_tables"]
