"""Synthetic results of a steer arm, shaped as its sample/scan/represent stages write them:
labels `arm, source, seed, checkpoint=None, alpha`, one eval point per (source, seed, alpha)."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

from synth_results import ASSISTANT, PERSONAS, SOURCES, pair_cosines

ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)
LABEL_SCHEMA = {"arm": pl.String, "source": pl.String, "seed": pl.Int64, "checkpoint": pl.Float64, "alpha": pl.Float64}


def _role(persona: str, source: str) -> str:
    if persona == source:
        return "source"
    return "assistant" if persona == ASSISTANT else "bystander"


def make_steer_tables(
    *,
    seed: int = 0,
    arm: str = "S",
    sources=SOURCES,
    seeds=(42,),
    alphas=ALPHAS,
    layers=(1, 2),
    steer_layer: int = 2,
    n_questions: int = 6,
    n_samples: int = 4,
) -> dict[str, pl.DataFrame]:
    """marker_hits, leakage and cosines of a steer arm. The steered assistant's centroid moves
    toward the source's with alpha at layers >= `steer_layer` (earlier layers do not see the
    steering), and its marker rate rises with it; seeds differ by a seed-level offset."""
    rng = np.random.default_rng(seed)
    hits, leak, cos = [], [], []
    base = {p: rng.normal(size=8) for p in PERSONAS}
    amax = max(abs(a) for a in alphas) or 1.0
    for src, s in itertools.product(sources, seeds):
        seed_shift = rng.normal(0, 0.4)
        breadth = rng.uniform(0.05, 0.3)
        # the same prompts at every strength: layers before the steered one do not change
        noise = {p: rng.normal(0, 0.2, 8) for p in PERSONAS}
        for alpha in alphas:
            pull = alpha / amax
            q_effect = rng.normal(0, 0.5, n_questions)
            for persona in PERSONAS:
                role = _role(persona, src)
                p0 = {"source": 0.8, "assistant": breadth + 0.5 * pull, "bystander": breadth * (1 + 0.2 * pull)}[role]
                logit = np.log(p0 / (1 - p0)) + q_effect + seed_shift
                pq = 1 / (1 + np.exp(-logit))
                h = rng.random((n_questions, n_samples)) < pq[:, None]
                for qi, si in itertools.product(range(n_questions), range(n_samples)):
                    hits.append((arm, src, s, None, alpha, persona, role, f"q{qi:02d}", si, bool(h[qi, si])))
                n, k = h.size, int(h.sum())
                leak.append(
                    (arm, src, s, None, alpha, persona, role, n, k, k / n, max(0, k / n - 0.1), min(1, k / n + 0.1))
                )
            for layer in layers:
                vecs = {p: base[p] + noise[p] for p in PERSONAS}
                if layer >= steer_layer:
                    vecs[ASSISTANT] = vecs[ASSISTANT] + pull * (vecs[src] - vecs[ASSISTANT])
                cos += [(arm, src, s, None, alpha, layer, a, b, c) for a, b, c in pair_cosines(vecs)]
    return {
        "marker_hits": pl.DataFrame(
            hits,
            orient="row",
            schema={
                **LABEL_SCHEMA,
                "persona": pl.String,
                "role": pl.String,
                "question_id": pl.String,
                "sample_index": pl.Int64,
                "hit": pl.Boolean,
            },
        ),
        "leakage": pl.DataFrame(
            leak,
            orient="row",
            schema={
                **LABEL_SCHEMA,
                "persona": pl.String,
                "role": pl.String,
                "n": pl.Int64,
                "hits": pl.Int64,
                "rate": pl.Float64,
                "ci_low": pl.Float64,
                "ci_high": pl.Float64,
            },
        ),
        "cosines": pl.DataFrame(
            cos,
            orient="row",
            schema={
                **LABEL_SCHEMA,
                "layer": pl.Int64,
                "persona_a": pl.String,
                "persona_b": pl.String,
                "cosine": pl.Float64,
            },
        ),
    }


def with_steer(tables: dict[str, pl.DataFrame], steer: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """A run's tables with a steer arm's rows appended (null `alpha` on the other rows, as
    after concatenating every stage's output)."""
    out = dict(tables)
    for name, df in steer.items():
        out[name] = pl.concat([tables[name], df], how="diagonal_relaxed")
    return out
