"""Power at compile time: the smallest effect each declared analysis can detect given the
plan's design (questions as clusters, completions, checkpoints, sources, strengths, seeds),
and warnings for comparisons that cannot reach significance. docs/power.md has the formulas."""

from cpx.power._calc import spearman_critical, spearman_min_p
from cpx.power._design import VARY_KEYS, Design, PowerError, design_of, icc_from_run, parse_vary
from cpx.power._rows import display, format_text, power_rows, power_table, power_warnings, rows_of, warnings_of

__all__ = [
    "VARY_KEYS",
    "Design",
    "PowerError",
    "design_of",
    "display",
    "format_text",
    "icc_from_run",
    "parse_vary",
    "power_rows",
    "power_table",
    "power_warnings",
    "rows_of",
    "spearman_critical",
    "spearman_min_p",
    "warnings_of",
]
