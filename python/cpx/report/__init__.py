"""The report: report.md, a self-contained report.html and figures (PNG, SVG, interactive
HTML) made with altair and rendered offline with vl-convert."""

from cpx.report._build import FIGURE_ALIASES, FIGURES, ReportData, build_report, figure_names
from cpx.report._inputs import read_folders
from cpx.report._load import ReportError, from_run, from_stage, screens

__all__ = [
    "FIGURES",
    "FIGURE_ALIASES",
    "ReportData",
    "ReportError",
    "build_report",
    "figure_names",
    "from_run",
    "from_stage",
    "read_folders",
    "screens",
]
