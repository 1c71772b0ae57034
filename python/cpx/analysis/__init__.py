"""Analyses: pure functions from results tables (polars DataFrames) to metrics and stats
tables. Statistics come from `cpx.stats`; nothing here reads or writes files except
`read_metrics` and `write_outputs`.

The analyses (names as in a spec's `analyses:` list; `leakage` = the first two,
`adapter_specificity` = `marker_specificity`):

1. `leakage_by_role`: source, assistant and mean bystander marker rate per (arm, source, seed,
   checkpoint), each with a bootstrap interval that resamples whole questions.
2. `cross_arm`: the headline table at one checkpoint (baseline, each arm's source and
   assistant rate).
3. `within_source`: Spearman(cosine, assistant rate) over checkpoints per (arm, source, layer);
   exact p (all n! orderings) and asymptotic p as two rows.
4. `between_source`: Spearman over sources at one checkpoint, exact permutation p;
   `pseudo_replication`: all (source, checkpoint) points pooled, naive asymptotic p beside
   ICC(1) by source, Kish's design effect and effective N, and a p-value from exchanging
   whole sources' trajectories (`cluster_permutation`).
5. `bystander_vs_assistant`: assistant minus mean bystander rate, permutation test paired by
   question.
6. `marker_specificity`: per adapter (train stage screens) source rate against the other
   personas', a specificity index and class; and specificity (source - bystander rate) as a
   predictor of assistant leakage with the same tests as cosine.
7. Holm and Benjamini-Hochberg within each family (one analysis, one arm, one p-value kind).
8. `steering`: a steer arm's rows (those with an `alpha`, kept out of 1-6): per strength the
   achieved source-assistant cosine and the rates (`steering_curve`), Spearman of assistant and
   bystander leakage against the achieved cosine over strengths per (source, seed, layer)
   with the exact p, and pooled over sources with a cluster permutation (`steering_pooled`).
9. `seed_replication`: per-seed estimates of each arm's headline quantities and a pooled
   random-effects estimate over seeds (DerSimonian-Laird tau^2, Hartung-Knapp interval).

`stats.parquet` has one row per test (or estimate): `analysis, family, arm, source, seed,
layer, checkpoint, alpha, x, y, statistic, estimate, ci_low, ci_high, p_value, p_method`
(`exact`, `asymptotic`, `permutation`, `cluster_permutation`), `n_permutations, n,
n_clusters, icc` (of y), `icc_x, design_effect, n_eff, tau2, within_var, i2` (between-seed
variance, mean within-seed variance and the share between seeds), `p_adjusted` (Holm),
`p_adjusted_bh, note`. A test left with too few points keeps its row with null p-values and
a note starting `skipped:`.
"""

from cpx.analysis._columns import (
    LABELS,
    METRIC_COLUMNS,
    STATS_COLUMNS,
    MetricsError,
    normalize_metrics,
    read_metrics,
)
from cpx.analysis._markdown import md_table, stats_markdown, tables
from cpx.analysis._metrics import build_metrics, cross_arm_table, expand_arms, layer_free, leakage_by_role, trained
from cpx.analysis._run import ANALYSES, Analysis, Options, analyze_metrics, analyze_tables, split_predictors
from cpx.analysis._seeds import t_quantile
from cpx.analysis._specificity import adapter_quality
from cpx.analysis._steering import steer_layers_of
from cpx.analysis._tables import Table, ckpt, families, pval, shown_layers, skipped
from cpx.analysis._write import write_outputs

__all__ = [
    "ANALYSES",
    "Analysis",
    "LABELS",
    "METRIC_COLUMNS",
    "MetricsError",
    "Options",
    "STATS_COLUMNS",
    "Table",
    "adapter_quality",
    "analyze_metrics",
    "analyze_tables",
    "build_metrics",
    "ckpt",
    "cross_arm_table",
    "expand_arms",
    "families",
    "layer_free",
    "leakage_by_role",
    "md_table",
    "normalize_metrics",
    "pval",
    "read_metrics",
    "shown_layers",
    "skipped",
    "split_predictors",
    "stats_markdown",
    "steer_layers_of",
    "t_quantile",
    "tables",
    "trained",
    "write_outputs",
]
