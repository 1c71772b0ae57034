"""The report's figures, made with altair and rendered offline with vl-convert.

Each figure is a function from tables to an altair chart, kept to a few layers so the whole
report renders in seconds. Colours: the Okabe-Ito palette for categories and viridis for
the heatmap, both readable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from cpx.analysis import layer_free

# Okabe & Ito (2008), without black, in the order that separates neighbours best.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000"]
FONT = 12
PANEL_W, PANEL_H = 190, 130


def _alt() -> Any:
    try:
        import altair as alt
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("the report needs altair and vl-convert-python: pip install 'cpx[report]'") from e
    return alt


def _scale(domain: list[str]) -> Any:
    alt = _alt()
    return alt.Scale(domain=domain, range=OKABE_ITO[: max(1, len(domain))])


def _config(chart: Any) -> Any:
    return (
        chart.configure_axis(labelFontSize=FONT - 1, titleFontSize=FONT)
        .configure_header(labelFontSize=FONT, titleFontSize=FONT)
        .configure_legend(labelFontSize=FONT - 1, titleFontSize=FONT, orient="right")
        .configure_title(fontSize=FONT + 2, anchor="start")
        .configure_view(stroke="#ccc")
    )


def _pct_axis(field: str, title: str) -> Any:
    alt = _alt()
    return alt.Y(f"{field}:Q", title=title, axis=alt.Axis(format="%", tickCount=5), scale=alt.Scale(domain=[0, 1]))


def _ckpt_x() -> Any:
    alt = _alt()
    return alt.X(
        "checkpoint:Q",
        title="checkpoint (share of SFT)",
        axis=alt.Axis(format="%", values=[0, 0.25, 0.5, 0.75, 1], labelOverlap=True),
        scale=alt.Scale(domain=[0, 1]),
    )


def canonical(df: pl.DataFrame) -> pl.DataFrame:
    """df's rows in one order whatever order they came in (sorted by every sortable column)."""
    cols = [c for c in df.columns if not isinstance(df.schema[c], (pl.List, pl.Struct, pl.Array, pl.Object))]
    return df.sort(cols, nulls_last=True, maintain_order=True) if cols else df


def _chart(df: pl.DataFrame) -> Any:
    """An altair chart of df's rows in a canonical order: the same data give the same spec
    (altair names a dataset by a hash of its rows) and the same marks in the same order, so
    the figure files come out byte for byte the same."""
    return _alt().Chart(canonical(df))


def _sorted(values: pl.Series) -> list[str]:
    return sorted(str(v) for v in values.drop_nulls().unique().to_list())


def _rate_and_interval(base: Any, field: str, keys: list[str]) -> tuple[Any, Any]:
    """A rate's line with points and its interval's bars (columns ci_low, ci_high)."""
    alt = _alt()
    line = base.mark_line(point=True).encode(
        y=_pct_axis(field, "marker rate"),
        tooltip=[
            *keys,
            alt.Tooltip(f"{field}:Q", format=".1%"),
            alt.Tooltip("ci_low:Q", format=".1%", title="interval low"),
            alt.Tooltip("ci_high:Q", format=".1%", title="interval high"),
        ],
    )
    return line, base.mark_rule(opacity=0.6).encode(y="ci_low:Q", y2="ci_high:Q")


def hero(metrics: pl.DataFrame) -> Any | None:
    """Source marker % (top) and assistant % (bottom) across checkpoints, one column per
    source, one line per arm; bars: the rate's bootstrap interval (clustered by question), where
    one seed makes the point (with several, the point is a mean over seeds and has no bar here:
    the per-seed figure and tables give their intervals)."""
    alt = _alt()
    flat = layer_free(metrics)
    measures = {"source_rate": "source", "assistant_rate": "assistant"}
    keys = ["arm", "source", "checkpoint"]
    parts = []
    for col, who in measures.items():
        has_ci = f"{who}_ci_low" in flat.columns and f"{who}_ci_high" in flat.columns
        one = pl.col("seed").n_unique() == 1 if "seed" in flat.columns else pl.lit(True)
        aggs = [pl.col(col).mean().alias("rate")]
        for end in ("low", "high"):
            c = f"{who}_ci_{end}"
            aggs.append(
                (pl.when(one).then(pl.col(c).first()) if has_ci else pl.lit(None, pl.Float64)).alias(f"ci_{end}")
            )
        parts.append(
            flat.group_by(keys, maintain_order=True)
            .agg(aggs)
            .with_columns(measure=pl.lit("source marker" if who == "source" else "assistant leakage"))
        )
    long = pl.concat(parts).drop_nulls("rate")
    if long.is_empty():
        return None
    arms = _sorted(long["arm"])
    colour = alt.Color("arm:N", scale=_scale(arms), title="arm")
    base = _chart(long).encode(x=_ckpt_x(), color=colour)
    lines, bars = _rate_and_interval(base, "rate", ["arm", "source", "checkpoint"])
    bars = bars.transform_filter("isValid(datum.ci_low)")  # mean-over-seeds points have none
    chart = (
        alt.layer(lines, bars)
        .properties(width=PANEL_W, height=PANEL_H)
        .facet(
            row=alt.Row("measure:N", title=None, sort=["source marker", "assistant leakage"]),
            column=alt.Column("source:N", title=None),
        )
        .properties(title="Source marker and assistant leakage, by arm (bars: bootstrap interval)")
    )
    return chart


def trajectories(metrics: pl.DataFrame, arm: str) -> Any | None:
    """One arm's source, assistant and bystander rates over checkpoints, one line per source."""
    alt = _alt()
    lf = (
        layer_free(metrics)
        .filter(pl.col("arm") == arm)
        .group_by(["source", "checkpoint"])
        .agg(pl.col("source_rate").mean(), pl.col("assistant_rate").mean(), pl.col("bystander_rate").mean())
    )
    long = lf.unpivot(
        index=["source", "checkpoint"],
        on=["source_rate", "assistant_rate", "bystander_rate"],
        variable_name="role",
        value_name="rate",
    ).drop_nulls("rate")
    if long.is_empty():
        return None
    long = long.with_columns(pl.col("role").str.replace("_rate", ""))
    return (
        _chart(long)
        .mark_line(point=True)
        .encode(
            x=_ckpt_x(),
            y=_pct_axis("rate", "marker rate"),
            color=alt.Color("source:N", scale=_scale(_sorted(long["source"])), title="source"),
            tooltip=["source", "role", "checkpoint", alt.Tooltip("rate:Q", format=".1%")],
        )
        .properties(width=PANEL_W + 30, height=PANEL_H + 20)
        .facet(
            column=alt.Column("role:N", title=None, sort=["source", "assistant", "bystander"]),
        )
        .properties(title=f"Arm {arm}: marker rate by role across checkpoints")
    )


def heatmap(leakage: pl.DataFrame, arm: str, checkpoint: float) -> Any | None:
    """Marker rate of every persona (rows) for each source's adapter (columns) in one arm
    at one checkpoint."""
    alt = _alt()
    df = leakage.filter((pl.col("arm") == arm) & ((pl.col("checkpoint") - checkpoint).abs() < 1e-9))
    df = df.group_by(["source", "persona", "role"]).agg(pl.col("rate").mean())
    if df.is_empty():
        return None
    order = df.group_by("persona").agg(pl.col("rate").mean()).sort(["rate", "persona"], descending=[True, False])
    base = _chart(df).encode(
        x=alt.X("source:N", title="source persona (adapter)", axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("persona:N", title="evaluated persona", sort=order["persona"].to_list()),
    )
    rect = base.mark_rect().encode(
        color=alt.Color(
            "rate:Q",
            scale=alt.Scale(scheme="viridis", domain=[0, 1]),
            title="marker rate",
            legend=alt.Legend(format="%"),
        ),
        tooltip=["source", "persona", "role", alt.Tooltip("rate:Q", format=".1%")],
    )
    text = base.mark_text(fontSize=FONT - 1).encode(
        text=alt.Text("rate:Q", format=".0%"),
        color=alt.condition("datum.rate > 0.55", alt.value("black"), alt.value("white")),
    )
    n_src = df["source"].n_unique()
    return (rect + text).properties(
        width=max(160, 70 * n_src),
        height=22 * df["persona"].n_unique(),
        title=f"Arm {arm} at checkpoint {100 * checkpoint:g}%: marker rate per persona",
    )


def cosine_evolution(metrics: pl.DataFrame) -> Any | None:
    """cos(source, assistant) across checkpoints: one row of panels per arm, one column per
    layer, one line per source."""
    alt = _alt()
    df = (
        metrics.filter(pl.col("cosine").is_not_null() & pl.col("layer").is_not_null())
        .group_by(["arm", "source", "checkpoint", "layer"])
        .agg(pl.col("cosine").mean())
    )
    if df.is_empty():
        return None
    df = df.with_columns(
        ("L" + pl.col("layer").cast(pl.String)).alias("layer_name"),
        ("arm " + pl.col("arm").cast(pl.String)).alias("arm_name"),
    )
    layers = [f"L{v}" for v in sorted(df["layer"].unique().to_list())]
    return (
        _chart(df)
        .mark_line(point=True)
        .encode(
            x=_ckpt_x(),
            y=alt.Y("cosine:Q", title="cos(source, assistant)"),
            color=alt.Color("source:N", scale=_scale(_sorted(df["source"])), title="source"),
            tooltip=["arm", "source", "checkpoint", "layer", alt.Tooltip("cosine:Q", format=".3f")],
        )
        .properties(width=PANEL_W, height=PANEL_H - 20)
        .facet(
            row=alt.Row("arm_name:N", title=None),
            column=alt.Column("layer_name:N", title=None, sort=layers),
        )
        .properties(title="Cosine similarity of source and assistant across checkpoints")
    )


def cosine_vs_leakage(metrics: pl.DataFrame) -> Any | None:
    """Assistant leakage against cos(source, assistant), every (arm, source, checkpoint),
    one panel per layer."""
    alt = _alt()
    df = (
        metrics.filter(
            pl.col("cosine").is_not_null() & pl.col("assistant_rate").is_not_null() & pl.col("layer").is_not_null()
        )
        .group_by(["arm", "source", "checkpoint", "layer"])
        .agg(pl.col("cosine").mean(), pl.col("assistant_rate").mean())
    )
    if df.is_empty():
        return None
    df = df.with_columns(("L" + pl.col("layer").cast(pl.String)).alias("layer_name"))
    layers = [f"L{v}" for v in sorted(df["layer"].unique().to_list())]
    return (
        _chart(df)
        .mark_point(filled=True, size=60, opacity=0.85)
        .encode(
            x=alt.X("cosine:Q", title="cos(source, assistant)", scale=alt.Scale(zero=False)),
            y=_pct_axis("assistant_rate", "assistant leakage"),
            color=alt.Color("source:N", scale=_scale(_sorted(df["source"])), title="source"),
            shape=alt.Shape("arm:N", title="arm"),
            tooltip=[
                "arm",
                "source",
                "checkpoint",
                alt.Tooltip("cosine:Q", format=".3f"),
                alt.Tooltip("assistant_rate:Q", format=".1%"),
            ],
        )
        .properties(width=PANEL_W, height=PANEL_H)
        .facet(
            column=alt.Column("layer_name:N", title=None, sort=layers),
        )
        .properties(title="Assistant leakage against cosine similarity, by layer")
    )


def adapter_quality(screen: pl.DataFrame) -> Any | None:
    """Each marker adapter's screen before merge, one row per adapter: the source rate, the
    assistant rate and the bystanders' mean (with their range as a grey bar)."""
    alt = _alt()
    if screen.is_empty():
        return None
    keys = ["arm", "source", "checkpoint"]
    df = screen.with_columns(pl.col("checkpoint").fill_null(0.0))
    by = (
        df.filter(pl.col("role") == "bystander")
        .group_by(keys)
        .agg(pl.col("rate").min().alias("low"), pl.col("rate").max().alias("high"))
    )
    pts = df.group_by([*keys, "role"]).agg(pl.col("rate").mean())
    label = pl.concat_str(
        [
            pl.lit("arm "),
            pl.col("arm").cast(pl.String).fill_null("-"),
            pl.lit(" · "),
            pl.col("source").cast(pl.String).fill_null("-"),
            pl.when(pl.col("checkpoint") > 0)
            .then(pl.lit(" @") + (pl.col("checkpoint") * 100).round(0).cast(pl.Int64).cast(pl.String) + pl.lit("%"))
            .otherwise(pl.lit("")),
        ]
    ).alias("adapter")
    pts, by = pts.with_columns(label), by.with_columns(label)
    order = pts.sort(keys, nulls_last=True)["adapter"].unique(maintain_order=True).to_list()
    roles = ["source", "assistant", "bystander"]
    y = alt.Y("adapter:N", title=None, sort=order, axis=alt.Axis(labelLimit=320))
    x_scale = alt.Scale(domain=[0, 1])
    bars = (
        _chart(by).mark_rule(color="#bbbbbb", strokeWidth=5).encode(y=y, x=alt.X("low:Q", scale=x_scale), x2="high:Q")
    )
    dots = (
        _chart(pts)
        .mark_point(filled=True, size=70, opacity=0.95)
        .encode(
            y=y,
            x=alt.X(
                "rate:Q",
                title="marker rate (grey bar: range over bystanders)",
                axis=alt.Axis(format="%", tickCount=5),
                scale=x_scale,
            ),
            color=alt.Color(
                "role:N", title="role", scale=alt.Scale(domain=roles, range=[OKABE_ITO[4], OKABE_ITO[3], "#777777"])
            ),
            shape=alt.Shape("role:N", scale=alt.Scale(domain=roles, range=["circle", "square", "triangle"])),
            tooltip=["adapter", "role", alt.Tooltip("rate:Q", format=".1%")],
        )
    )
    return (bars + dots).properties(
        width=420, height=16 * len(order), title="Marker adapters before merge: where does the marker fire?"
    )


def _panel(df: pl.DataFrame) -> pl.DataFrame:
    """A `panel` column: the source, prefixed with the arm when several arms are shown."""
    several = df["arm"].n_unique() > 1
    return df.with_columns(
        (("arm " + pl.col("arm").cast(pl.String) + " · ") if several else pl.lit(""))
        .add(pl.col("source").cast(pl.String))
        .alias("panel")
    )


def steering_curve(stats: pl.DataFrame, layers: dict[str, int]) -> Any | None:
    """A steer arm's curve, one column of panels per source: the achieved cos(source,
    assistant) at the shown layer (top) and the assistant and bystander marker rates (bottom)
    against the steering strength, with their intervals (`steering_curve` stats rows)."""
    alt = _alt()
    curve = stats.filter(pl.col("analysis") == "steering_curve")
    if curve.is_empty():
        return None
    shown = pl.DataFrame(
        {"arm": list(layers), "layer": list(layers.values())}, schema={"arm": pl.String, "layer": pl.Int64}
    )
    cos = _panel(curve.filter(pl.col("y") == "cosine").join(shown, on=["arm", "layer"]))
    rates = _panel(curve.filter(pl.col("y").is_in(["assistant_rate", "bystander_rate"])))
    rates = rates.with_columns(pl.col("y").str.replace("_rate", "").alias("role"))
    if rates.is_empty() and cos.is_empty():
        return None
    panels = sorted(set(cos["panel"].to_list()) | set(rates["panel"].to_list()))
    x = alt.X("alpha:Q", title="steering strength (alpha)")
    col = alt.Column("panel:N", title=None, sort=panels)
    charts = []
    if cos.height:
        what = ", ".join(f"L{v}" for v in sorted(set(layers.values())))
        base = _chart(cos).encode(x=x)
        line = base.mark_line(point=alt.OverlayMarkDef(color="#000000"), color="#000000").encode(
            y=alt.Y("estimate:Q", title=f"achieved cosine ({what})"),
            tooltip=["panel", "alpha", alt.Tooltip("estimate:Q", format=".3f")],
        )
        bars = base.mark_rule(color="#000000", opacity=0.5).encode(y="ci_low:Q", y2="ci_high:Q")
        charts.append(alt.layer(bars, line).properties(width=PANEL_W, height=PANEL_H - 20).facet(column=col))
    if rates.height:
        roles = ["assistant", "bystander"]
        colour = alt.Color(
            "role:N", title="leakage to", scale=alt.Scale(domain=roles, range=[OKABE_ITO[3], OKABE_ITO[0]])
        )
        base = _chart(rates).encode(x=x, color=colour)
        line, bars = _rate_and_interval(base, "estimate", ["panel", "role", "alpha"])
        charts.append(alt.layer(bars, line).properties(width=PANEL_W, height=PANEL_H).facet(column=col))
    chart = charts[0] if len(charts) == 1 else alt.vconcat(*charts)
    return chart.properties(title="Steering: achieved cosine and leakage against strength")


def seed_intervals(stats: pl.DataFrame) -> Any | None:
    """Each headline quantity's per-seed estimates (coloured by seed) and the pooled
    estimate with its across-seed interval (black), rates and correlations side by side."""
    alt = _alt()
    s = stats.filter((pl.col("analysis") == "seed_replication") & pl.col("estimate").is_not_null())
    if s.is_empty():
        return None
    label = pl.concat_str(
        [
            pl.col("arm").cast(pl.String),
            pl.lit(" · "),
            pl.col("source").cast(pl.String),
            pl.lit(" · "),
            pl.col("statistic").str.replace_all("_", " "),
            pl.when(pl.col("layer").is_not_null())
            .then(pl.lit(" L") + pl.col("layer").cast(pl.String))
            .otherwise(pl.lit("")),
        ]
    )
    s = s.with_columns(label.alias("quantity"), pl.col("seed").cast(pl.String).alias("seed_name"))
    seeds = sorted(s["seed"].drop_nulls().unique().to_list())
    charts = []
    for rate, title in ((True, "rate"), (False, "Spearman rho")):
        part = s.filter(pl.col("statistic").str.ends_with("rate") == rate)
        if part.is_empty():
            continue
        order = sorted(part["quantity"].unique().to_list())
        y = alt.Y("quantity:N", title=None, sort=order, axis=alt.Axis(labelLimit=320))
        dom = [0, 1] if rate else [-1, 1]
        xs = alt.Scale(domain=dom)
        fmt = "%" if rate else ".1f"
        pooled = _chart(part.filter(pl.col("seed").is_null()))
        ci_bar = pooled.mark_rule(color="#000000", strokeWidth=2).encode(
            y=y, x=alt.X("ci_low:Q", scale=xs, title=title, axis=alt.Axis(format=fmt)), x2="ci_high:Q"
        )
        mean = pooled.mark_tick(color="#000000", thickness=3, size=14).encode(
            y=y,
            x=alt.X("estimate:Q", scale=xs),
            tooltip=[
                "quantity",
                alt.Tooltip("estimate:Q", format=".3f"),
                alt.Tooltip("ci_low:Q", format=".3f"),
                alt.Tooltip("ci_high:Q", format=".3f"),
            ],
        )
        dots = (
            _chart(part.filter(pl.col("seed").is_not_null()))
            .mark_point(filled=True, size=55, opacity=0.9)
            .encode(
                y=y,
                x=alt.X("estimate:Q", scale=xs),
                color=alt.Color("seed_name:N", title="seed", scale=_scale([str(v) for v in seeds])),
                tooltip=["quantity", "seed_name", alt.Tooltip("estimate:Q", format=".3f")],
            )
        )
        charts.append(alt.layer(ci_bar, mean, dots).properties(width=300, height=14 * len(order)))
    chart = charts[0] if len(charts) == 1 else alt.hconcat(*charts).resolve_scale(y="independent")
    return chart.properties(
        title="Replication over seeds: per-seed estimates (dots), pooled mean and across-seed interval (black)"
    )


@dataclass(frozen=True)
class Figure:
    """A rendered figure: its name, title, caption and file paths (png, svg, html)."""

    name: str
    title: str
    caption: str
    files: dict[str, Path]
    svg: str


def _stable_ids(svg: str) -> str:
    """Vega numbers gradients and clip paths from a counter that lives as long as the process
    (`gradient_3` in one report is `gradient_5` in the next): number them by order of first
    appearance in this file instead."""
    ids: dict[str, str] = {}
    for m in re.finditer(r'id="([A-Za-z]+)_?(\d+)"', svg):
        ids.setdefault(m.group(0)[4:-1], f"{m.group(1)}_{len(ids) + 1}")
    if not ids:
        return svg
    pattern = re.compile(r'(?<=id=")(?:%s)(?=")|(?<=#)(?:%s)(?=[)"])' % (("|".join(map(re.escape, ids)),) * 2))
    return pattern.sub(lambda m: ids[m.group(0)], svg)


def render(chart: Any, out_dir: Path, name: str) -> dict[str, Path]:
    """Write `name`.png (2x), .svg and a self-contained interactive .html, atomically."""
    import vl_convert as vlc

    chart = _config(chart)
    spec = chart.to_json()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for ext, data in (
        ("png", vlc.vegalite_to_png(spec, scale=2)),
        ("svg", _stable_ids(vlc.vegalite_to_svg(spec)).encode()),
        ("html", vlc.vegalite_to_html(spec, bundle=True).encode()),
    ):
        path = out_dir / f"{name}.{ext}"
        tmp = out_dir / f".{name}.{ext}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        files[ext] = path
    return files


FigureMaker = Callable[[], Any]
