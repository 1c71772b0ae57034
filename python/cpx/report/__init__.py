"""The report: report.md, a self-contained report.html and figures (PNG, SVG, interactive
HTML) made with altair and rendered offline with vl-convert."""

from cpx.report._build import FIGURES, ReportData, build_report
from cpx.report._load import ReportError, from_run, from_stage

__all__ = ["FIGURES", "ReportData", "ReportError", "build_report", "from_run", "from_stage"]
