"""Replication over seeds (`seed_replication`): each arm's headline quantities per seed, the
between-seed variance, and a pooled estimate with an interval that treats the seed as the
unit of replication.

The pooled estimate is a random-effects mean over seeds (DerSimonian-Laird tau^2) with a
Hartung-Knapp interval (t with k - 1 degrees of freedom), chosen over a cluster bootstrap
because with the usual 2-5 seeds a bootstrap over seeds has only a handful of distinct
resamples, while the Hartung-Knapp interval keeps close to its level at small k. Each seed's
within-seed variance comes from its own interval (a rate's question-clustered bootstrap);
estimates without one (a correlation) get equal weights, where the interval reduces to the
plain t interval of the per-seed estimates, mean +- t s / sqrt(k).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl

from cpx.analysis._correlation import within_source
from cpx.analysis._metrics import layer_free, trained

Row = dict[str, Any]


def t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with a whole number `df` of degrees of freedom, from the
    finite series of Abramowitz & Stegun 26.7.3-4 (scipy is a test dependency only)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0
        for j in range(2, df, 2):  # (1*3*...*(j-1)) / (2*4*...*j) cos^j
            term *= (j - 1) / j * c2
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for j in range(3, df - 1, 2):  # (2*4*...*(j-1)) / (1*3*...*j) cos^j
        term *= (j - 1) / j * c2
        total += term
    return 2 / math.pi * (theta + s * total)


def t_quantile(confidence_level: float, df: int) -> float:
    """The t with P(|T| <= t) = `confidence_level` (bisection on t_two_sided)."""
    lo, hi = 0.0, 1.0
    while t_two_sided(hi, df) < confidence_level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided(mid, df) < confidence_level:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * hi:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class RandomEffects:
    """A random-effects mean over k seeds.

    `tau2`: between-seed variance (DerSimonian-Laird, truncated at 0); `within_var`: the mean
    within-seed variance (None when the estimates came without one); `i2`: the share of the
    estimates' variability that is between seeds, max(0, (Q - (k - 1)) / Q) (None without
    within-seed variances); `q`: Cochran's Q; the interval is Hartung-Knapp's."""

    estimate: float
    se: float
    tau2: float
    within_var: float | None
    i2: float | None
    q: float | None
    ci_low: float
    ci_high: float
    k: int
    weights: str  # inverse_variance | equal


def random_effects(
    estimates: Sequence[float] | np.ndarray,
    variances: Sequence[float | None] | np.ndarray | None = None,
    *,
    confidence_level: float = 0.95,
) -> RandomEffects:
    """DerSimonian-Laird random-effects mean of `estimates` (one per seed, at least two) with
    within-seed `variances`, and a Hartung-Knapp interval.

    Weights are 1 / (v_i + tau^2). When a variance is missing, or some are 0 (a rate of 0 or 1
    on every question), every seed gets equal weight and v-bar (the mean of the known
    variances, else 0) stands for all of them: then tau^2 = max(0, s^2 - v-bar), the mean is
    the plain mean and the interval mean +- t s / sqrt(k).
    """
    y = np.asarray(estimates, dtype=np.float64)
    k = len(y)
    if k < 2:
        raise ValueError(f"random_effects needs at least 2 estimates, got {k}")
    if not np.isfinite(y).all():
        raise ValueError(f"random_effects: estimates must be finite, got {y.tolist()}")
    if variances is not None and len(variances) != k:
        raise ValueError(f"random_effects: {len(variances)} variances for {k} estimates")
    given = [] if variances is None else [None if v is None else float(v) for v in variances]
    known = [v for v in given if v is not None and math.isfinite(v)]
    if any(v < 0 for v in known):
        raise ValueError(f"random_effects: variances must be >= 0, got {known}")
    t = t_quantile(confidence_level, k - 1)
    q: float | None
    i2: float | None
    if variances is not None and len(known) == k and min(known) > 0:
        v = np.asarray(known, dtype=np.float64)
        w = 1 / v
        mu_fe = float((w * y).sum() / w.sum())
        q = float((w * (y - mu_fe) ** 2).sum())
        c = float(w.sum() - (w**2).sum() / w.sum())
        tau2 = max(0.0, (q - (k - 1)) / c)
        ws = 1 / (v + tau2)
        mu = float((ws * y).sum() / ws.sum())
        var_hk = float((ws * (y - mu) ** 2).sum() / ((k - 1) * ws.sum()))
        i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
        within: float | None = float(v.mean())
        kind = "inverse_variance"
    else:
        mu = float(y.mean())
        s2 = float(y.var(ddof=1))
        within = float(np.mean(known)) if known and len(known) == k else None
        tau2 = max(0.0, s2 - (within or 0.0))
        var_hk = s2 / k
        if within is not None and within > 0:
            q = (k - 1) * s2 / within
            i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
        else:
            q = i2 = None
        kind = "equal"
    se = math.sqrt(var_hk)
    return RandomEffects(mu, se, tau2, within, i2, q, mu - t * se, mu + t * se, k, kind)


def clip_to_range(name: str, low: float, high: float) -> tuple[float, float]:
    """An interval cut to the range its quantity can take (a rate [0, 1], a correlation or
    cosine [-1, 1]): the t interval of a few seeds can reach past it."""
    lo, hi = (0.0, 1.0) if name.endswith("rate") else (-1.0, 1.0)
    return max(lo, low), min(hi, high)


def z_of(confidence_level: float) -> float:
    """The normal quantile that a two-sided interval at `confidence_level` spans +- of."""
    return NormalDist().inv_cdf(0.5 + confidence_level / 2)


def interval_variance(low: float | None, high: float | None, z: float) -> float | None:
    """The variance a symmetric interval of half-width z * sd implies: ((high - low) / 2z)^2."""
    return ((high - low) / (2 * z)) ** 2 if low is not None and high is not None else None


def _per_seed_rates(metrics: pl.DataFrame, checkpoint: float | None, confidence_level: float) -> list[Row]:
    """Source and assistant rate per (arm, source, seed) at `checkpoint`, with the variance
    implied by each rate's bootstrap interval (width / 2z, squared)."""
    if checkpoint is None:
        return []
    lf = layer_free(trained(metrics).filter(pl.col("source").is_not_null()))
    lf = lf.filter((pl.col("checkpoint") - checkpoint).abs() < 1e-9)
    z = z_of(confidence_level)
    out: list[Row] = []
    for r in lf.iter_rows(named=True):
        for role in ("source", "assistant"):
            est = r.get(f"{role}_rate")
            if est is None:
                continue
            lo, hi = r.get(f"{role}_ci_low"), r.get(f"{role}_ci_high")
            var = interval_variance(lo, hi, z)
            out.append(
                {
                    "arm": r["arm"],
                    "source": r["source"],
                    "seed": r["seed"],
                    "checkpoint": checkpoint,
                    "statistic": f"{role}_rate",
                    "x": "seed",
                    "y": f"{role}_rate",
                    "estimate": est,
                    "ci_low": lo,
                    "ci_high": hi,
                    "var": var,
                }
            )
    return out


def _per_seed_rhos(metrics: pl.DataFrame, steering_rows: list[Row]) -> list[Row]:
    """The within-source rho over checkpoints, computed per seed, and the steering rho
    (assistant leakage against the achieved cosine over strengths) of each seed."""
    out: list[Row] = []
    tm = trained(metrics).filter(pl.col("source").is_not_null() & pl.col("cosine").is_not_null())
    for (s,), g in tm.group_by(["seed"], maintain_order=True):
        for r in within_source(g):
            if r.get("p_method") == "exact" or r.get("p_method") == "permutation":
                out.append(
                    {
                        "arm": r["arm"],
                        "source": r["source"],
                        "seed": s,
                        "layer": r["layer"],
                        "statistic": "within_source_rho",
                        "x": "cosine",
                        "y": "assistant_rate",
                        "estimate": r["estimate"],
                        "n": r["n"],
                    }
                )
    for r in steering_rows:
        if (
            r.get("analysis") == "steering"
            and r.get("y") == "assistant_rate"
            and r.get("p_method") in ("exact", "permutation")
        ):
            out.append(
                {
                    "arm": r["arm"],
                    "source": r["source"],
                    "seed": r["seed"],
                    "layer": r["layer"],
                    "statistic": "steering_rho",
                    "x": "cosine",
                    "y": "assistant_rate",
                    "estimate": r["estimate"],
                    "n": r["n"],
                }
            )
    return out


def seed_replication(
    metrics: pl.DataFrame,
    *,
    checkpoint: float | None,
    steering_rows: list[Row] | None = None,
    confidence_level: float = 0.95,
) -> list[Row]:
    """Per-seed estimates and their random-effects pooling (see the module docstring).

    Quantities, per (arm, source): the source and assistant rate at `checkpoint` (the
    cross-arm one), the within-source rho per layer (computed within each seed, unlike
    within_source, which averages over seeds), and, for steer arms, the steering rho per layer
    from `steering_rows`. One row per seed (`seed` set, its own interval and `within_var`
    where it has one) and one pooled row (`seed` null: estimate, Hartung-Knapp interval, `tau2`, `within_var`,
    `i2`, `n_clusters` = seeds). With a single seed in the data, one `skipped:` row per arm.
    """
    seeds = sorted(int(s) for s in metrics["seed"].drop_nulls().unique().to_list())
    arms = sorted(str(a) for a in metrics.filter(pl.col("source").is_not_null())["arm"].drop_nulls().unique().to_list())
    base: Row = {"analysis": "seed_replication"}
    if len(seeds) < 2:
        which = f" ({seeds[0]})" if seeds else ""
        why = f"skipped: {len(seeds)} seed(s){which}, 2 needed for a between-seed variance"
        return [{**base, "arm": a, "n_clusters": len(seeds), "note": why} for a in arms]
    per = _per_seed_rates(metrics, checkpoint, confidence_level)
    per += _per_seed_rhos(metrics, steering_rows or [])
    rows: list[Row] = []
    keys = ("arm", "source", "layer", "checkpoint", "statistic")
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in per:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    for key in sorted(groups, key=lambda k: tuple((v is None, str(v)) for v in k)):
        g = sorted(groups[key], key=lambda r: r["seed"])
        first = g[0]
        common = {**base, **dict(zip(keys, key)), "x": first["x"], "y": first["y"]}
        for r in g:
            rows.append(
                {
                    **common,
                    "seed": r["seed"],
                    "estimate": r["estimate"],
                    "ci_low": r.get("ci_low"),
                    "ci_high": r.get("ci_high"),
                    "n": r.get("n"),
                    "within_var": r.get("var"),
                    "note": f"seed {r['seed']} alone",
                }
            )
        pooled: Row = {**common, "n": len(g), "n_clusters": len(g)}
        if len(g) < 2:
            rows.append({**pooled, "note": f"skipped: only seed {g[0]['seed']} has this estimate"})
            continue
        re = random_effects([r["estimate"] for r in g], [r.get("var") for r in g], confidence_level=confidence_level)
        how = (
            "inverse-variance weights"
            if re.weights == "inverse_variance"
            else "equal weights (no within-seed variance)"
            if re.within_var is None
            else "equal weights (a seed has within-seed variance 0)"
        )
        low, high = clip_to_range(key[-1], re.ci_low, re.ci_high)
        note = (
            f"pooled over {re.k} of {len(seeds)} seeds: DerSimonian-Laird random effects, {how}, "
            "Hartung-Knapp interval (cut to the quantity's range)"
        )
        if len(g) < len(seeds):
            missing = sorted(set(seeds) - {r["seed"] for r in g})
            note += f"; seed(s) {', '.join(map(str, missing))} have no estimate (e.g. a constant variable)"
        if len({r["estimate"] for r in g}) == 1 and not re.within_var:
            note += (
                "; every seed gives the same value and there is no within-seed variance: the interval "
                "has no width, which says nothing about the uncertainty"
            )
        rows.append(
            {
                **pooled,
                "statistic": key[-1],
                "estimate": re.estimate,
                "ci_low": low,
                "ci_high": high,
                "tau2": re.tau2,
                "within_var": re.within_var,
                "i2": re.i2,
                "note": note,
            }
        )
    return rows
