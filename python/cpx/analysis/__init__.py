"""Analyses: pure functions from results tables (polars DataFrames) to metrics and stats
tables. Statistics come from `cpx.stats`; nothing here reads or writes files except
`read_metrics` and `write_outputs`."""

from cpx.analysis._columns import (
    LABELS,
    METRIC_COLUMNS,
    STATS_COLUMNS,
    MetricsError,
    normalize_metrics,
    read_metrics,
)
from cpx.analysis._markdown import md_table, stats_markdown, tables
from cpx.analysis._metrics import build_metrics, cross_arm_table, leakage_by_role
from cpx.analysis._run import ANALYSES, Analysis, Options, analyze_metrics, analyze_tables
from cpx.analysis._specificity import adapter_quality
from cpx.analysis._write import write_outputs

__all__ = [
    "ANALYSES", "LABELS", "METRIC_COLUMNS", "STATS_COLUMNS", "Analysis", "MetricsError",
    "Options", "adapter_quality", "analyze_metrics", "analyze_tables", "build_metrics",
    "cross_arm_table", "leakage_by_role", "md_table", "normalize_metrics", "read_metrics",
    "stats_markdown", "tables", "write_outputs",
]
