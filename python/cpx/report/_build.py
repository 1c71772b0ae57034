"""Assembling the report: report.md, a self-contained report.html and figures/."""

from __future__ import annotations

import datetime as _dt
import html
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cpx.analysis import (
    Analysis,
    Table,
    expand_arms,
    families,
    md_table,
    shown_layers,
    skipped,
    tables,
    trained,
)
from cpx.report import _figures as F
from cpx.report._caveats import caveats
from cpx.report._provenance import provenance, spec_summary, tracked

FIGURES = (
    "hero",
    "trajectories",
    "heatmap",
    "cosine_evolution",
    "cosine_vs_leakage",
    "adapter_quality",
    "steering_curve",
    "seed_intervals",
)
# Figures shown in a section of their own, with the tables of their analysis.
SECTION_FIGURES = {"steering": "steering_curve", "seeds": "seed_intervals"}
STEERING_TABLES = ("steering_curve", "steering", "steering_pooled")
SEED_TABLES = ("seed_replication",)
# The seed report's figure file names, which specs use.
FIGURE_ALIASES = {
    "hero_cross_arm": "hero",
    "arm_b_trajectory": "trajectories",
    "arm_b_heatmap_100pct": "heatmap",
    "arm_b_cosine_vs_leakage": "cosine_vs_leakage",
}


def figure_names(names: list[str] | tuple[str, ...] | None, *, rest: bool = False) -> tuple[str, ...]:
    """Figure names resolved (aliases to names, duplicates dropped, order kept); none
    given means all; with `rest`, the figures not named follow the named ones. An unknown
    name is a ValueError listing the known ones."""
    if not names:
        return FIGURES
    out: list[str] = []
    for n in names:
        name = FIGURE_ALIASES.get(n, n)
        if name not in FIGURES:
            raise ValueError(f"unknown figure {n!r}; known: {', '.join([*FIGURES, *FIGURE_ALIASES])}")
        if name not in out:
            out.append(name)
    return tuple(out + [f for f in FIGURES if f not in out]) if rest else tuple(out)


@dataclass
class ReportData:
    """Everything a report shows. `leakage` (per persona) feeds the heatmap; `screen`
    (marker adapters' screens) the adapter-quality figure; `plan` (a cpx.plan.Plan, when the
    run has plan.json) the power section, when its spec has a `power` key."""

    analysis: Analysis
    leakage: pl.DataFrame | None = None
    screen: pl.DataFrame | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    stages: list[Any] = field(default_factory=list)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    name: str = "run"
    spec_hash: str | None = None
    plan: Any = None
    # The stages whose manifests the provenance counts: every stage for `cpx report`, the ones
    # upstream of it for the report stage (which is not done while it writes itself).
    counted: str = "stages"
    n_counted: int | None = None


def trajectory_arm(metrics: pl.DataFrame) -> str | None:
    """The arm whose trajectories the report shows: `B` (convergence first) when present,
    else the arm with cosines at the most checkpoints."""
    arms = metrics["arm"].drop_nulls().unique().to_list()
    if "B" in arms:
        return "B"
    with_cos = (
        metrics.filter(pl.col("cosine").is_not_null())
        .group_by("arm")
        .agg(pl.col("checkpoint").n_unique().alias("k"))
        .sort(["k", "arm"], descending=[True, False])
    )
    if with_cos.height:
        return str(with_cos["arm"][0])
    return str(sorted(arms)[0]) if arms else None


FIGURE_TEXT = {
    "hero": (
        "Cross-arm overview",
        "Top: marker rate on the source persona; bottom: on the "
        "assistant. One panel per source, one line per arm, seeds averaged. Bars: the rate's "
        "bootstrap interval clustered by question (single-seed points only).",
    ),
    "trajectories": (
        "Trajectories",
        "Source, assistant and bystander marker rates over checkpoints, one line per source.",
    ),
    "heatmap": (
        "Persona × source",
        "Marker rate of every evaluated persona for each source's marker at the final checkpoint.",
    ),
    "cosine_evolution": (
        "Cosine evolution",
        "Cosine similarity of the source and assistant "
        "centroids (global-mean centred) over checkpoints, one panel per layer.",
    ),
    "cosine_vs_leakage": ("Cosine versus leakage", "Each point is one (arm, source, checkpoint); one panel per layer."),
    "adapter_quality": (
        "Adapter quality",
        "Marker rate per persona for each marker adapter "
        "before merge (its screen). A specific adapter fires on its source only.",
    ),
    "steering_curve": (
        "Steering curve",
        "Top: the achieved cosine of the source and the steered "
        "assistant centroids at the steered layer; bottom: the marker rate on the "
        "assistant and on the bystanders (pooled), against the steering strength. "
        "Bars: bootstrap interval over questions (one seed) or Hartung-Knapp "
        "interval across seeds.",
    ),
    "seed_intervals": (
        "Per-seed estimates",
        "Each headline quantity per seed (dots) and the "
        "random-effects mean over seeds with its Hartung-Knapp interval (black).",
    ),
}


def _make(name: str, data: ReportData) -> Any | None:
    # A baseline evaluation of the untrained model has no source: it has no panel to go in.
    # Steer arms' rows have figures of their own, from the steering stats.
    # Inputs in a canonical order: a mean is summed in row order, and its last bit must not
    # depend on the order the rows were collected in (figures are byte-reproducible).
    m = F.canonical(trained(data.analysis.metrics).filter(pl.col("source").is_not_null()))
    arm = trajectory_arm(m)
    if name == "hero":
        return F.hero(m)
    if name == "trajectories":
        return F.trajectories(m, arm) if arm else None
    if name == "heatmap":
        ck = data.analysis.checkpoint
        if data.leakage is None or arm is None or ck is None:
            return None
        leakage = F.canonical(expand_arms(data.leakage).filter(pl.col("source").is_not_null()))
        return F.heatmap(leakage, arm, ck)
    if name == "cosine_evolution":
        return F.cosine_evolution(m)
    if name == "cosine_vs_leakage":
        return F.cosine_vs_leakage(m)
    if name == "adapter_quality":
        return F.adapter_quality(F.canonical(data.screen)) if data.screen is not None else None
    if name == "steering_curve":
        stats = data.analysis.stats
        return F.steering_curve(stats, shown_layers(stats, data.analysis.steer_layers))
    if name == "seed_intervals":
        return F.seed_intervals(data.analysis.stats)
    raise ValueError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")


def _svg_inline(path: Path) -> str:
    svg = path.read_text()
    return re.sub(r"^<\?xml[^>]*>\s*", "", svg)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in t.frame.iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _strings(key: str, rows: Sequence[tuple[str, ...]], names: tuple[str, ...]) -> Table:
    """A table of text columns `names`, one row a tuple."""
    return Table(
        key,
        "",
        pl.DataFrame({n: [r[i] for r in rows] for i, n in enumerate(names)}, schema=dict.fromkeys(names, pl.String)),
    )


def _kv(rows: list[tuple[str, str]]) -> Table:
    return _strings("kv", rows, ("item", "value"))


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
.caption{color:#555;font-size:.9em;max-width:60em}figure{margin:1.2em 0}
figure svg{max-width:100%;height:auto}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.caveats li{margin:.3em 0}"""


def build_report(
    data: ReportData,
    out_dir: str | os.PathLike[str],
    *,
    title: str | None = None,
    figures: tuple[str, ...] | list[str] = FIGURES,
) -> dict[str, Any]:
    """Write report.md, report.html and figures/ into `out_dir`. Returns what was written
    and how long each part took."""
    import cpx

    t0 = time.perf_counter()
    out = Path(out_dir)
    fig_dir = out / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)  # figures of an older report would be listed as current
    fig_dir.mkdir(parents=True)
    a = data.analysis
    title = title or f"cpx report: {data.name}"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    byline = (
        f"Generated by cpx {cpx.__version__} on {stamp} from run `{data.name}`"
        + (f" (spec hash `{data.spec_hash[:12]}`)" if data.spec_hash else "")
        + "."
    )

    # (kind, payload) blocks rendered to both Markdown and HTML.
    blocks: list[tuple[str, Any]] = [("h1", title), ("p", byline)]
    if data.spec:
        blocks += [("h2", "Spec"), ("table", _kv(spec_summary(data.spec, data.stages)))]
    blocks += [("h2", "Provenance"), ("table", _kv(provenance(data.manifests, data.n_counted, data.counted)))]
    runs = tracked(data.manifests)
    if runs:
        blocks += [("h3", "Tracker runs"), ("table", _strings("tracker_runs", runs, ("stage", "tracker", "run id")))]
    cav = caveats(trained(a.metrics), a.stats, a.adapters)
    if (data.spec.get("model") or {}).get("tiny"):
        cav.insert(
            0,
            "This run uses cpx's built-in tiny model with random weights: its responses are gibberish, "
            "and its numbers show that the pipeline works end to end, not how a real language model behaves.",
        )
    if cav:
        blocks += [("h2", "Caveats"), ("ul", cav)]
    shown = tables(a)
    blocks.append(("h2", "Results"))
    for t in shown:
        if t.key not in (*STEERING_TABLES, *SEED_TABLES):
            blocks += [("h3", t.title), ("table", t), ("caption", t.caption)]
    fam = families(a.stats)
    if fam.height:
        blocks += [
            ("h3", "Multiple comparisons"),
            ("table", Table("fam", "", fam)),
            (
                "caption",
                "Holm (family-wise error) and Benjamini-Hochberg (false discovery "
                "rate) within each family: one analysis, one arm, one kind of "
                "p-value.",
            ),
        ]
    timings: dict[str, float] = {"tables": time.perf_counter() - t0}
    made: list[F.Figure] = []
    figs: dict[str, tuple[str, Any]] = {}
    for name in figures:
        t1 = time.perf_counter()
        chart = _make(name, data)
        if chart is None:
            figs[name] = ("p", f"*{FIGURE_TEXT[name][0]}: no data for this figure.*")
            continue
        files = F.render(chart, fig_dir, name)
        fig = F.Figure(name, *FIGURE_TEXT[name], files=files, svg=_svg_inline(files["svg"]))
        made.append(fig)
        figs[name] = ("figure", fig)
        timings[name] = time.perf_counter() - t1
    steer_tables = [t for t in shown if t.key in STEERING_TABLES]
    steer_fig = figs.get(SECTION_FIGURES["steering"])
    if steer_tables or (steer_fig and steer_fig[0] == "figure"):
        blocks.append(("h2", "Steering"))
        blocks.append(
            (
                "p",
                "A steer arm adds alpha times the steering direction (source minus "
                "assistant centroid) to the residual stream at one layer. Does the "
                "achieved cosine move as intended, and does the marker follow it?",
            )
        )
        for t in steer_tables:
            blocks += [("h3", t.title), ("table", t), ("caption", t.caption)]
        if steer_fig:
            blocks.append(steer_fig)
    if "seed_replication" in a.options.analyses:
        blocks.append(("h2", "Replication over seeds"))
        seed_tables = [t for t in shown if t.key in SEED_TABLES]
        skipped_seeds = a.stats.filter(
            (pl.col("analysis") == "seed_replication") & pl.col("note").str.starts_with("skipped")
        )
        if not seed_tables and skipped_seeds.height:
            blocks.append(("p", f"*seed_replication {skipped_seeds['note'][0]}*"))
        for t in seed_tables:
            blocks += [("h3", t.title), ("table", t), ("caption", t.caption)]
        seed_fig = figs.get(SECTION_FIGURES["seeds"])
        if seed_fig and seed_fig[0] == "figure":
            blocks.append(seed_fig)
    if data.spec.get("power") is not None:
        blocks += [("h2", "Power"), *_power(data)]
    blocks.append(("h2", "Figures"))
    blocks += [figs[n] for n in figures if n in figs and n not in SECTION_FIGURES.values()]
    notes = a.notes + [f"skipped: {s}" for s in skipped(a.stats)]
    if notes:
        blocks += [("h2", "Notes"), ("ul", notes)]

    md = _markdown(blocks)
    page = _html(blocks, title)
    for name, text in (("report.md", md), ("report.html", page)):
        tmp = out / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    timings["total"] = time.perf_counter() - t0
    return {"figures": [f.name for f in made], "caveats": len(cav), "seconds": timings}


def _power(data: ReportData) -> list[tuple[str, Any]]:
    """The power section: cpx.power's table of the smallest detectable effects."""
    if data.plan is None:
        return [("p", "*Power: the spec asks for it, but the run has no plan.json to compute it from.*")]
    from cpx.power import PowerError, power_table

    try:
        t = power_table(data.plan)
    except PowerError as e:  # a design it cannot assess: say so, keep the rest of the report
        return [("p", f"*Power: not computed: {e}*")]
    return [("h3", t.title), ("table", t), ("caption", t.caption)]


def _markdown(blocks: list[tuple[str, Any]]) -> str:
    out = []
    for kind, x in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + x + "\n")
        elif kind in ("p", "caption"):
            out.append(x + "\n")
        elif kind == "ul":
            out.append("\n".join(f"- {i}" for i in x) + "\n")
        elif kind == "table":
            out.append(md_table(x.frame) + "\n")
        elif kind == "figure":
            links = " · ".join(f"[{e}](figures/{p.name})" for e, p in x.files.items())
            out.append(f"### {x.title}\n\n![{x.title}](figures/{x.files['png'].name})\n\n{x.caption} ({links})\n")
    return "\n".join(out)


def _inline_md(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", s)


def _html(blocks: list[tuple[str, Any]], title: str) -> str:
    body = []
    for kind, x in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline_md(x)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_md(x)}</p>")
        elif kind == "caption":
            body.append(f"<p class=caption>{_inline_md(x)}</p>")
        elif kind == "ul":
            body.append("<ul class=caveats>" + "".join(f"<li>{_inline_md(i)}</li>" for i in x) + "</ul>")
        elif kind == "table":
            body.append(_html_table(x))
        elif kind == "figure":
            body.append(
                f"<figure><h3>{html.escape(x.title)}</h3>{x.svg}<figcaption class=caption>"
                f"{_inline_md(x.caption)} Interactive version: "
                f"<code>figures/{x.files['html'].name}</code>.</figcaption></figure>"
            )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>"
        f"{html.escape(title)}</title><style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
