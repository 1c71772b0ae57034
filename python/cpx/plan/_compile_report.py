"""The `analyze` stage, which reads every eval point, and the `report` stage after it."""

from __future__ import annotations

from cpx.plan._build import Build


def analyze_and_report(b: Build) -> None:
    s = b.s
    analyze = b.add(
        "analyze",
        "analyze",
        {
            "analyses": [a.model_dump(exclude_none=True) for a in s.analyses],
            # Sorted, so that the order arms are written in changes no hash.
            "points": sorted(
                b.points,
                key=lambda p: (
                    p["seed"],
                    p["arm"],
                    p["source"] or "",
                    p["checkpoint"] if p["checkpoint"] is not None else -1.0,
                    p.get("alpha", 0.0),
                ),
            ),
        },
        b.analysis_deps,
        {},
    )
    b.add(
        "report",
        "report",
        {
            "title": s.report.title or b.L.name,
            "figures": s.report.figures,
            # As written (a relative `from_run` stays relative): changing it re-runs the report.
            "power": s.power.model_dump(mode="json") if s.power is not None else None,
        },
        [analyze],
        {},
    )
