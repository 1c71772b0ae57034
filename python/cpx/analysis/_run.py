"""Running the analyses: on a metrics table alone (`cpx analyze --metrics`) or on a run's
results (the `analyze` stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from cpx.analysis._adjust import adjust
from cpx.analysis._bystander import bystander_vs_assistant
from cpx.analysis._columns import LABELS, METRIC_COLUMNS, STEER_LABELS, normalize_metrics, stats_frame
from cpx.analysis._correlation import between_source, pooled, within_source
from cpx.analysis._metrics import (
    build_metrics,
    expand_arms,
    final_checkpoint,
    leakage_by_role,
    leakage_by_role_from_leakage,
    source_personas,
    steer_arms,
    steered,
    trained,
)
from cpx.analysis._seeds import seed_replication
from cpx.analysis._specificity import adapter_quality, adapter_rows, specificity_vs_cosine
from cpx.analysis._steering import steering

ANALYSES = (
    "leakage_by_role",
    "cross_arm",
    "within_source",
    "between_source",
    "pseudo_replication",
    "bystander_vs_assistant",
    "marker_specificity",
    "steering",
    "seed_replication",
)
# Names the spec language uses for groups of the analyses above.
ALIASES = {"leakage": ("leakage_by_role", "cross_arm"), "adapter_specificity": ("marker_specificity",)}
# Options an entry of `analyses` may set for itself alone.
PER_ANALYSIS = ("checkpoint", "layers")
# Params the compiler adds that the analyses do not need (the rows carry their labels).
IGNORED_PARAMS = ("points",)


@dataclass(frozen=True)
class Options:
    """What the analyses compute. `checkpoint` is the one the cross-arm table, the
    between-source test, the bystander test and the per-seed rates of seed_replication use
    (default: the last checkpoint in the data; the bystander test then runs at every
    checkpoint); `layers` restricts the cosine analyses, steering's included (default: all).
    `per` holds per-analysis overrides of those two."""

    analyses: tuple[str, ...] = ANALYSES
    checkpoint: float | None = None
    layers: tuple[int, ...] | None = None
    confidence_level: float = 0.95
    n_resamples: int = 9999
    bootstrap_resamples: int = 2000
    seed: int = 0
    per: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, analysis: str, key: str) -> Any:
        """An option for one analysis: its own setting, else the global one."""
        return self.per.get(analysis, {}).get(key, getattr(self, key))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Options:
        """From an analyze stage's params: `{"analyses": [{"name": ..., <option>: ...}], ...}`.
        An empty list means every analysis. An unknown name or option is an error."""
        known = [f for f in cls.__dataclass_fields__ if f not in ("analyses", "per")]
        opts: dict[str, Any] = {}
        for k, v in params.items():
            if k in ("analyses", *IGNORED_PARAMS):
                continue
            if k not in known:
                raise ValueError(f"analyze params: unknown option {k!r}; known: {', '.join(known)}")
            opts[k] = tuple(v) if k == "layers" and v is not None else v
        names: list[str] = []
        per: dict[str, dict[str, Any]] = {}
        for i, a in enumerate(params.get("analyses") or []):
            a = a if isinstance(a, dict) else {"name": a}
            name = str(a.get("name"))
            targets = ALIASES.get(name, (name,))
            if any(t not in ANALYSES for t in targets):
                raise ValueError(
                    f"analyze params: analyses[{i}]: unknown analysis {name!r}; known: "
                    f"{', '.join([*ANALYSES, *ALIASES])}"
                )
            for k in a:
                if k != "name" and k not in PER_ANALYSIS:
                    raise ValueError(
                        f"analyze params: analyses[{i}] ({name}): unknown option "
                        f"{k!r}; an analysis may set {', '.join(PER_ANALYSIS)}"
                    )
            for t in targets:
                if t not in names:
                    names.append(t)
                own = {k: (tuple(v) if k == "layers" else v) for k, v in a.items() if k != "name"}
                per.setdefault(t, {}).update(own)
        if names:
            opts["analyses"] = tuple(n for n in ANALYSES if n in names)
        return cls(per=per, **opts)


@dataclass
class Analysis:
    """Everything the analyses produced: the metrics and stats tables (steer arms' rows
    carry an `alpha`), per-adapter quality (when marker screens exist), notes for stats.md and
    the report, and each steer arm's steered layer when known (from the spec), which the
    steering tables show the achieved cosine at."""

    metrics: pl.DataFrame
    stats: pl.DataFrame
    adapters: pl.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    options: Options = field(default_factory=Options)
    steer_layers: dict[str, int] = field(default_factory=dict)

    @property
    def checkpoint(self) -> float | None:
        ck = self.options.get("cross_arm", "checkpoint")
        return float(ck) if ck is not None else final_checkpoint(self.metrics)


def _ensure_specificity(metrics: pl.DataFrame) -> pl.DataFrame:
    if "specificity" in metrics.columns:
        return metrics
    return metrics.with_columns((pl.col("source_rate") - pl.col("bystander_rate")).alias("specificity"))


def split_predictors(metrics: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """The metrics of arms that have cosines, of arms that have specificity values, and
    notes naming the arms left out (one note per arm instead of a skipped row per test).
    Rows without a source (a baseline evaluation of the untrained model) are left out of both."""
    notes: list[str] = []
    kept: dict[str, pl.DataFrame] = {}
    sourced = metrics.filter(pl.col("source").is_not_null())
    for col in ("cosine", "specificity"):
        empty = sorted(
            str(a)
            for (a,), g in sourced.group_by("arm")
            if g[col].null_count() == g.height or g["assistant_rate"].null_count() == g.height
        )
        notes += [
            f"arm {arm}: no {col} values with assistant leakage, so no {col}-leakage tests for this arm"
            for arm in empty
        ]
        kept[col] = sourced.filter(~pl.col("arm").cast(pl.String).is_in(empty))
    seeds = metrics["seed"].drop_nulls().n_unique()
    if seeds > 1:
        notes.append(
            f"{seeds} seeds: the within-source, between-source and pooled tests (and "
            "the steering pooled test) use the mean over seeds per point; "
            "seed_replication gives the per-seed estimates and their spread"
        )
    return kept["cosine"], kept["specificity"], notes


def _layers(df: pl.DataFrame, layers: tuple[int, ...] | None) -> pl.DataFrame:
    return df if layers is None else df.filter(pl.col("layer").is_in(list(layers)))


def _at(df: pl.DataFrame, checkpoint: float | None) -> pl.DataFrame:
    return df if checkpoint is None else df.filter((pl.col("checkpoint") - checkpoint).abs() < 1e-9)


def _tests(
    metrics: pl.DataFrame, marker_hits: pl.DataFrame | None, adapters: pl.DataFrame | None, opts: Options
) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    everything, metrics = metrics, trained(metrics)  # steer arms' rows have analyses of their own
    last = final_checkpoint(metrics)
    with_cos, with_spec, notes = split_predictors(metrics)
    if "within_source" in opts.analyses:
        rows += within_source(_layers(with_cos, opts.get("within_source", "layers")))
    if "between_source" in opts.analyses:
        ck = opts.get("between_source", "checkpoint")
        ck = last if ck is None else float(ck)
        if ck is None:
            notes.append("between-source test skipped: no checkpoint values in the data")
        else:
            rows += between_source(_layers(with_cos, opts.get("between_source", "layers")), checkpoint=ck)
    if "pseudo_replication" in opts.analyses:
        rows += pooled(
            _layers(with_cos, opts.get("pseudo_replication", "layers")), n_resamples=opts.n_resamples, seed=opts.seed
        )
    if "bystander_vs_assistant" in opts.analyses:
        ck = opts.get("bystander_vs_assistant", "checkpoint")
        hits = None if marker_hits is None else _at(marker_hits, ck)
        rows += bystander_vs_assistant(hits, _at(metrics, ck), n_resamples=opts.n_resamples, seed=opts.seed)
    if "marker_specificity" in opts.analyses:
        if adapters is not None:
            rows += adapter_rows(adapters)
        ck = opts.get("marker_specificity", "checkpoint")
        rows += specificity_vs_cosine(
            _layers(with_spec, opts.get("marker_specificity", "layers")),
            checkpoint=last if ck is None else float(ck),
            n_resamples=opts.n_resamples,
            seed=opts.seed,
        )
    steer_rows: list[dict[str, Any]] = []
    if {"steering", "seed_replication"} & set(opts.analyses):
        steer_rows = steering(
            everything,
            layers=opts.get("steering", "layers"),
            n_resamples=opts.n_resamples,
            seed=opts.seed,
            confidence_level=opts.confidence_level,
        )
    if "steering" in opts.analyses:
        rows += steer_rows
    if "seed_replication" in opts.analyses:
        ck = opts.get("seed_replication", "checkpoint")
        rows += seed_replication(
            everything,
            checkpoint=last if ck is None else float(ck),
            steering_rows=steer_rows,
            confidence_level=opts.confidence_level,
        )
    return rows, notes


def assistant_persona(table: pl.DataFrame) -> str:
    """The persona that plays the assistant role (the most frequent one, should several)."""
    a = table.filter(pl.col("role") == "assistant")["persona"]
    return "assistant" if a.is_empty() else str(a.mode().sort()[0])


def analyze_metrics(metrics: pl.DataFrame, options: Options | None = None) -> Analysis:
    """Analyses 3, 4, 5 (difference only), 6 (specificity from the rates), 7, steering (rows
    with an `alpha`) and seed_replication on a per-checkpoint metrics table, such as one typed
    in from a paper. Missing values are allowed; a test with too few points becomes a row with
    a `skipped:` note."""
    opts = options or Options()
    metrics = _ensure_specificity(normalize_metrics(metrics))
    rows, notes = _tests(metrics, None, None, opts)
    return Analysis(metrics=metrics, stats=adjust(stats_frame(rows)), notes=notes, options=opts)


def _metrics_of(tables: dict[str, pl.DataFrame], opts: Options, labels: tuple[str, ...]) -> pl.DataFrame | None:
    """The metrics of one kind of eval point (keyed by `labels`), None without any rows."""
    hits = tables.get("marker_hits")
    leakage = tables.get("leakage")
    if hits is not None and hits.height:
        roles = leakage_by_role(
            hits,
            confidence_level=opts.confidence_level,
            n_resamples=opts.bootstrap_resamples,
            seed=opts.seed,
            labels=labels,
        )
        who = source_personas(hits, labels)
        roles_from = hits
    elif leakage is not None and leakage.height:
        roles = leakage_by_role_from_leakage(leakage, labels)
        who = source_personas(leakage, labels)
        roles_from = leakage
    else:
        return None
    return build_metrics(
        roles, tables.get("cosines"), assistant=assistant_persona(roles_from), source_persona=who, labels=labels
    )


def analyze_tables(tables: dict[str, pl.DataFrame], options: Options | None = None) -> Analysis:
    """All analyses on a run's tables: `marker_hits` (or `leakage`), `cosines` and, when
    marker adapters were screened, `screen`. Builds the metrics table first.

    Rows with an `alpha` (a steer arm's eval points) are kept apart: the metrics of the other
    rows are built, and analysed, exactly as without them; theirs are keyed by STEER_LABELS
    and go to the steering and seed_replication analyses. The metrics table holds both, with
    `alpha` null on the others."""
    opts = options or Options()
    tables = {k: (expand_arms(v) if k != "screen" else v) for k, v in tables.items()}
    arms = set().union(*(steer_arms(v) for v in tables.values()))
    plain = {k: trained(v, arms) for k, v in tables.items()}
    steer = {k: steered(v) for k, v in tables.items() if k != "screen"}
    parts = [m for m in (_metrics_of(plain, opts, LABELS), _metrics_of(steer, opts, STEER_LABELS)) if m is not None]
    if not parts:
        raise ValueError("analyze: no marker_hits or leakage rows to analyse")
    metrics = pl.concat(parts, how="diagonal_relaxed")
    if "alpha" not in metrics.columns:
        metrics = metrics.with_columns(pl.lit(None, pl.Float64).alias("alpha"))
    first = [*METRIC_COLUMNS, "alpha"]
    metrics = metrics.select(first + [c for c in metrics.columns if c not in first])
    screen = tables.get("screen")
    adapters = adapter_quality(screen) if screen is not None and screen.height else None
    rows, notes = _tests(metrics, plain.get("marker_hits"), adapters, opts)
    return Analysis(metrics=metrics, stats=adjust(stats_frame(rows)), adapters=adapters, notes=notes, options=opts)


__all__ = ["ANALYSES", "LABELS", "Analysis", "Options", "analyze_metrics", "analyze_tables"]
