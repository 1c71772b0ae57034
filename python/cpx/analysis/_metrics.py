"""Leakage by role (analysis 1), the metrics table, and the cross-arm table (analysis 2)."""

from __future__ import annotations

from typing import Any

import polars as pl

from cpx.analysis import _stats
from cpx.scan import hit_rates
from cpx.analysis._columns import LABEL_TYPES, LABELS, METRIC_COLUMNS, STEER_LABELS

ROLES = ("source", "assistant", "bystander")


def with_labels(df: pl.DataFrame, labels: tuple[str, ...] = LABELS) -> pl.DataFrame:
    """`df` with every label column present and typed (absent labels become null)."""
    exprs = []
    for c in labels:
        dtype = LABEL_TYPES[c]
        exprs.append((pl.col(c) if c in df.columns else pl.lit(None)).cast(dtype).alias(c))
    return df.with_columns(exprs)


def expand_arms(df: pl.DataFrame) -> pl.DataFrame:
    """One copy of each row per arm, and per replicate seed, it belongs to.

    The compiler runs a stage reached from two arms once, labelled with the first arm and
    listing all of them in `arms`; each of those arms has the row as one of its points. A
    stage that does not depend on the seed is labelled with the first seed and lists every
    seed in `seeds`; each seed has the row.
    """
    for one, many, dtype in (("arm", "arms", pl.String), ("seed", "seeds", pl.Int64)):
        if many not in df.columns or df.schema[many] != pl.List(dtype) or one not in df.columns:
            continue
        values = (
            pl.when(pl.col(many).list.len() > 0).then(pl.col(many)).otherwise(pl.concat_list(pl.col(one).cast(dtype)))
        )
        df = df.with_columns(values.alias(one)).explode(one).drop(many)
    return df


def steered(df: pl.DataFrame) -> pl.DataFrame:
    """The rows of steer arms' eval points (those with an `alpha`)."""
    return df.filter(pl.col("alpha").is_not_null()) if "alpha" in df.columns else df.clear()


def steer_arms(df: pl.DataFrame) -> set[str]:
    """The arms with steered rows (an `alpha`)."""
    return {str(a) for a in steered(df)["arm"].drop_nulls().unique().to_list()}


def trained(df: pl.DataFrame, arms: set[str] | None = None) -> pl.DataFrame:
    """Every row but steer arms' (`arms`, default: those with an `alpha` in `df`): what the
    checkpoint analyses see. A steer arm's rows without an `alpha` are left out as well: they
    come from a stage it shares with a train arm (the represent stage whose centroids give
    the steering direction), which counts for that train arm, not as a steered point."""
    if "alpha" not in df.columns:
        return df
    arms = steer_arms(df) if arms is None else arms
    if not arms:
        return df.filter(pl.col("alpha").is_null())
    theirs = pl.col("arm").cast(pl.String).is_in(sorted(arms)).fill_null(False)
    return df.filter(pl.col("alpha").is_null() & ~theirs)


def _join_keys(a: pl.DataFrame, b: pl.DataFrame, labels: tuple[str, ...] = LABELS) -> list[str]:
    # A label that one side never sets (say, a represent stage without a seed) cannot be
    # matched on; joining on the labels both sides carry keeps those rows together.
    return [c for c in labels if a[c].null_count() < a.height and b[c].null_count() < b.height] or [c for c in labels]


def leakage_by_role(
    marker_hits: pl.DataFrame,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    labels: tuple[str, ...] = LABELS,
) -> pl.DataFrame:
    """Source, assistant and bystander marker rates per label group (`labels`: by default
    (arm, source, seed, checkpoint); STEER_LABELS adds the steering strength).

    Each rate is the fraction of completions with a hit (bystanders pooled: with equal
    completions per persona this is the mean of the bystander personas' rates), with a
    percentile bootstrap interval that resamples whole questions (cluster = question_id),
    since completions of one question are not independent.
    Returns one row per label group and role: labels, role, personas, n, n_questions, hits,
    rate, ci_low, ci_high.
    """
    need = {"role", "question_id", "hit", "persona"}
    missing = need - set(marker_hits.columns)
    if missing:
        raise ValueError(f"marker_hits: missing column(s) {sorted(missing)}")
    keys = [*labels, "role"]
    df = with_labels(marker_hits, labels).filter(pl.col("role").is_in(ROLES)).sort(keys, nulls_last=True)
    # n, hits and rate from cpx.scan.hit_rates (groups in first-row order, as group_by's below).
    rates = hit_rates(df.select(*keys, "hit"), keys).select(["n", "hits", "rate"]).to_pylist()
    rows: list[dict[str, Any]] = []
    groups = df.group_by(keys, maintain_order=True)
    for i, ((key, g), rate) in enumerate(zip(groups, rates, strict=True)):
        hits = g["hit"].cast(pl.Float64)
        low, high = _stats.cluster_bootstrap_mean(
            hits.to_numpy().astype("float64"),
            g["question_id"].cast(pl.String).to_list(),
            confidence_level=confidence_level,
            n_resamples=n_resamples,
            seed=seed + i,
        )
        rows.append(
            {
                **dict(zip(keys, key)),
                "personas": g["persona"].n_unique(),
                "n": rate["n"],
                "n_questions": g["question_id"].n_unique(),
                "hits": rate["hits"],
                "rate": rate["rate"],
                "ci_low": low,
                "ci_high": high,
            }
        )
    schema = {
        **{c: LABEL_TYPES[c] for c in labels},
        "role": pl.String,
        "personas": pl.Int64,
        "n": pl.Int64,
        "n_questions": pl.Int64,
        "hits": pl.Int64,
        "rate": pl.Float64,
        "ci_low": pl.Float64,
        "ci_high": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def leakage_by_role_from_leakage(leakage: pl.DataFrame, labels: tuple[str, ...] = LABELS) -> pl.DataFrame:
    """The same table from per-persona `leakage` rows when no completion-level hits exist.

    Source and assistant keep the scan stage's intervals; the bystander rate is the mean of
    the bystander personas' rates, without an interval.
    """
    df = with_labels(leakage, labels).filter(pl.col("role").is_in(ROLES))
    single = (
        df.filter(pl.col("role") != "bystander")
        .group_by([*labels, "role"])
        .agg(
            pl.col("persona").n_unique().alias("personas"),
            pl.col("n").sum(),
            pl.col("hits").sum(),
            pl.col("rate").mean(),
            pl.col("ci_low").mean(),
            pl.col("ci_high").mean(),
        )
    )
    by = (
        df.filter(pl.col("role") == "bystander")
        .group_by([*labels, "role"])
        .agg(
            pl.col("persona").n_unique().alias("personas"),
            pl.col("n").sum(),
            pl.col("hits").sum(),
            pl.col("rate").mean(),
            pl.lit(None, pl.Float64).alias("ci_low"),
            pl.lit(None, pl.Float64).alias("ci_high"),
        )
    )
    out = pl.concat([single, by], how="vertical_relaxed").with_columns(pl.lit(None, pl.Int64).alias("n_questions"))
    return out.select(
        *labels,
        "role",
        "personas",
        pl.col("n").cast(pl.Int64),
        "n_questions",
        pl.col("hits").cast(pl.Int64),
        "rate",
        "ci_low",
        "ci_high",
    )


def roles_wide(roles: pl.DataFrame, labels: tuple[str, ...] = LABELS) -> pl.DataFrame:
    """One row per label group with `<role>_rate`, `<role>_ci_low`, `<role>_ci_high`, `<role>_n`."""
    base = roles.select(labels).unique(maintain_order=True)
    for role in ROLES:
        part = roles.filter(pl.col("role") == role).select(
            *labels,
            pl.col("rate").alias(f"{role}_rate"),
            pl.col("ci_low").alias(f"{role}_ci_low"),
            pl.col("ci_high").alias(f"{role}_ci_high"),
            pl.col("n").alias(f"{role}_n"),
        )
        base = base.join(part, on=list(labels), how="left", nulls_equal=True)
    return base


def source_personas(table: pl.DataFrame, labels: tuple[str, ...] = LABELS) -> pl.DataFrame:
    """(labels, source_persona): the persona that plays the source role in each group."""
    return (
        with_labels(table, labels)
        .filter(pl.col("role") == "source")
        .group_by(labels)
        .agg(pl.col("persona").first().alias("source_persona"))
    )


def build_metrics(
    roles: pl.DataFrame,
    cosines: pl.DataFrame | None,
    *,
    assistant: str = "assistant",
    source_persona: pl.DataFrame | None = None,
    labels: tuple[str, ...] = LABELS,
) -> pl.DataFrame:
    """The metrics table: one row per (arm, source, seed, checkpoint, layer), or per
    (`labels`, layer) for other label sets (STEER_LABELS: per steering strength too).

    `roles` is `leakage_by_role`'s output; `cosines` the represent stages' rows (labels,
    layer, persona_a, persona_b, cosine). The cosine is the one between the source persona
    (from `source_persona`, else the `source` label) and the `assistant` persona.
    Groups without cosines keep one row with a null layer; `specificity` is
    source_rate - bystander_rate.
    """
    wide = roles_wide(roles, labels)
    if cosines is not None and cosines.height:
        cos = with_labels(cosines, labels)
        if source_persona is not None and source_persona.height:
            cos = cos.join(source_persona, on=list(labels), how="left", nulls_equal=True)
            cos = cos.with_columns(pl.coalesce("source_persona", "source").alias("source_persona"))
        else:
            cos = cos.with_columns(pl.col("source").alias("source_persona"))
        a, b, s = pl.col("persona_a"), pl.col("persona_b"), pl.col("source_persona")
        pair = cos.filter(((a == s) & (b == assistant)) | ((b == s) & (a == assistant)))
        pair = (
            pair.group_by([*labels, "layer"])
            .agg(pl.col("cosine").mean())
            .select(*labels, pl.col("layer").cast(pl.Int64), pl.col("cosine").cast(pl.Float64))
        )
        keys = _join_keys(wide, pair, labels)
        drop = [c for c in labels if c not in keys]
        out = wide.join(pair.drop(drop), on=keys, how="full", coalesce=True, nulls_equal=True)
    else:
        out = wide.with_columns(pl.lit(None, pl.Int64).alias("layer"), pl.lit(None, pl.Float64).alias("cosine"))
    for c in ("source_rate", "assistant_rate", "bystander_rate"):
        if c not in out.columns:
            out = out.with_columns(pl.lit(None, pl.Float64).alias(c))
    out = out.with_columns((pl.col("source_rate") - pl.col("bystander_rate")).alias("specificity"))
    first = list(METRIC_COLUMNS)
    return out.select(first + [c for c in out.columns if c not in first]).sort([*labels, "layer"], nulls_last=True)


def layer_free(metrics: pl.DataFrame) -> pl.DataFrame:
    """The metrics table with one row per (arm, source, seed, checkpoint) (and `alpha`, where
    the table has that column): rates only."""
    keys = [c for c in STEER_LABELS if c in metrics.columns]
    rate_cols = [c for c in metrics.columns if c not in (*keys, "layer", "cosine") and metrics[c].dtype.is_numeric()]
    return (
        metrics.group_by(keys)
        .agg([pl.col(c).drop_nulls().first().alias(c) for c in rate_cols])
        .sort(keys, nulls_last=True)
    )


def mean_over_seeds(df: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    """Mean of `values` per `keys` over seeds (nulls ignored), with `n_seeds`."""
    return (
        df.group_by(keys)
        .agg([pl.col(v).mean().alias(v) for v in values] + [pl.col("seed").n_unique().alias("n_seeds")])
        .sort(keys, nulls_last=True)
    )


def final_checkpoint(metrics: pl.DataFrame) -> float | None:
    ck = metrics["checkpoint"].drop_nulls()
    return None if ck.is_empty() else float(ck.max())  # type: ignore[arg-type]


def cross_arm_table(metrics: pl.DataFrame, *, checkpoint: float | None = None) -> pl.DataFrame:
    """The headline table at `checkpoint` (default: the last one): per source, the baseline
    leak (assistant rate at checkpoint 0, arms averaged), then each arm's source and
    assistant rates (seeds averaged). Columns: source, baseline, `<arm> source`, `<arm> assistant`.
    """
    lf = layer_free(metrics)
    if checkpoint is None:
        checkpoint = final_checkpoint(lf)
    sources = sorted(lf["source"].drop_nulls().unique().to_list())
    out = pl.DataFrame({"source": sources}, schema={"source": pl.String})
    base = (
        lf.filter(pl.col("checkpoint") == 0.0).group_by("source").agg(pl.col("assistant_rate").mean().alias("baseline"))
    )
    out = out.join(base, on="source", how="left")
    if checkpoint is None:
        return out
    at = lf.filter((pl.col("checkpoint") - checkpoint).abs() < 1e-9)
    for arm in sorted(at["arm"].drop_nulls().unique().to_list()):
        part = (
            at.filter(pl.col("arm") == arm)
            .group_by("source")
            .agg(
                pl.col("source_rate").mean().alias(f"{arm} source"),
                pl.col("assistant_rate").mean().alias(f"{arm} assistant"),
            )
        )
        out = out.join(part, on="source", how="left")
    return out
