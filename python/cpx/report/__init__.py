"""The report: report.md, a self-contained report.html and figures (PNG, SVG, interactive
HTML) made with altair and rendered offline with vl-convert."""

from cpx.report._build import FIGURE_ALIASES, FIGURES, ReportData, build_report, figure_names
from cpx.report._load import ReportError, from_run, from_stage

__all__ = [
    "FIGURES",
    "FIGURE_ALIASES",
    "figure_names",
    "ReportData",
    "ReportError",
    "build_report",
    "from_run",
    "from_stage",
]
