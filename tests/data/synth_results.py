"""Small but realistic results tables for tests: numpy-random completions scanned for a
marker, persona cosines and marker screens, shaped like the scan, represent and train
stages' outputs (docs/plan-format.md)."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

SOURCES = ("villain", "comedian", "kindergarten_teacher", "software_engineer")
OTHERS = ("librarian", "police_officer")
ASSISTANT = "assistant"
PERSONAS = (*SOURCES, *OTHERS, ASSISTANT)
CHECKPOINTS = (0.0, 0.25, 0.5, 0.75, 1.0)
LAYERS = (2, 3)


def _role(persona: str, source: str) -> str:
    if persona == source:
        return "source"
    return "assistant" if persona == ASSISTANT else "bystander"


def pair_cosines(vecs: dict[str, np.ndarray]) -> list[tuple[str, str, float]]:
    """Cosines of every pair of personas' vectors, centred on their mean (as represent does)."""
    names = list(vecs)
    mat = np.stack([vecs[p] for p in names])
    mat = mat - mat.mean(axis=0)
    mat = mat / np.linalg.norm(mat, axis=1, keepdims=True)
    c = mat @ mat.T
    return [(names[i], names[j], float(c[i, j])) for i, j in itertools.combinations(range(len(names)), 2)]


def make_tables(
    *,
    seed: int = 0,
    arms=("A", "B", "C"),
    sources=SOURCES,
    n_questions: int = 6,
    n_samples: int = 5,
    checkpoints=CHECKPOINTS,
    layers=LAYERS,
    seeds=(42,),
    baseline: bool = False,
) -> dict[str, pl.DataFrame]:
    """marker_hits, leakage, cosines and screen tables with labels on every row. With
    `baseline`, an arm "base" without a source (the untrained model, as the compiler's
    baseline evaluation) is added at checkpoint 0."""
    rng = np.random.default_rng(seed)
    hits, leak, cos, screen = [], [], [], []
    # Persona centroids per (arm, source, checkpoint): the assistant drifts toward the
    # source under convergence SFT (arms A and B), not under generic SFT (arm C).
    base = {p: rng.normal(size=8) for p in PERSONAS}
    breadth = dict(zip(sources, rng.uniform(0.05, 0.6, len(sources))))
    for arm, src, s, ck in itertools.product(arms, sources, seeds, checkpoints):
        pull = ck if arm in ("A", "B") else 0.0
        q_effect = rng.normal(0, 0.6, n_questions)  # questions differ: clustered hits
        for persona in PERSONAS:
            role = _role(persona, src)
            p0 = {"source": 0.8, "assistant": breadth[src] * (1 - 0.4 * pull), "bystander": breadth[src] * 0.8}[role]
            if arm == "A":
                p0 *= 1 - ck  # marker-first: SFT erases the marker
            logit = np.log(max(p0, 1e-3) / max(1 - p0, 1e-3)) + q_effect
            pq = 1 / (1 + np.exp(-logit))
            h = rng.random((n_questions, n_samples)) < pq[:, None]
            for qi, si in itertools.product(range(n_questions), range(n_samples)):
                hits.append((arm, src, s, ck, persona, role, f"q{qi:02d}", si, bool(h[qi, si])))
            n, k = h.size, int(h.sum())
            leak.append((arm, src, s, ck, persona, role, n, k, k / n, max(0, k / n - 0.1), min(1, k / n + 0.1)))
        for layer in layers:
            vecs = {p: base[p] + rng.normal(0, 0.3, 8) for p in PERSONAS}
            vecs[ASSISTANT] = (1 - 0.6 * pull) * vecs[ASSISTANT] + 0.6 * pull * vecs[src] * layer / 3
            cos += [(arm, src, s, ck, layer, a, b, c) for a, b, c in pair_cosines(vecs)]
        # one marker adapter per (arm, source, seed): arm B trains one per checkpoint
        if arm == "B" or ck == 0.0:
            for persona in PERSONAS:
                role = _role(persona, src)
                p = {"source": 0.7, "assistant": breadth[src], "bystander": breadth[src]}[role]
                n = 20
                k = int(rng.binomial(n, min(p, 1.0)))
                screen.append((arm, src, s, ck if arm == "B" else 0.0, persona, role, n, k, k / n))
    if baseline:
        for s, persona, qi, si in itertools.product(seeds, PERSONAS, range(n_questions), range(n_samples)):
            role = "assistant" if persona == ASSISTANT else "bystander"
            hits.append(("base", None, s, 0.0, persona, role, f"q{qi:02d}", si, bool(rng.random() < 0.02)))
    labels = {"arm": pl.String, "source": pl.String, "seed": pl.Int64, "checkpoint": pl.Float64}
    return {
        "marker_hits": pl.DataFrame(
            hits,
            orient="row",
            schema={
                **labels,
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
                **labels,
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
            schema={**labels, "layer": pl.Int64, "persona_a": pl.String, "persona_b": pl.String, "cosine": pl.Float64},
        ),
        "screen": pl.DataFrame(
            screen,
            orient="row",
            schema={
                **labels,
                "persona": pl.String,
                "role": pl.String,
                "n": pl.Int64,
                "hits": pl.Int64,
                "rate": pl.Float64,
            },
        ),
    }


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def write_run(run_dir, tables: dict[str, pl.DataFrame], *, with_results: bool = False):
    """A run folder like the executor leaves it: plan.json, one scan / represent / train
    stage folder per label group (outputs without label columns, labels in the manifest),
    an analyze and a report stage. Returns (plan, analyze stage, report stage)."""
    import json
    from pathlib import Path

    from cpx.plan import Plan, Stage

    run = Path(run_dir)
    stages: list[Stage] = []
    label_cols = ["arm", "source", "seed", "checkpoint"]

    def add(kind: str, key: tuple, files: dict[str, pl.DataFrame], device: str) -> Stage:
        labels = dict(zip(label_cols, key))
        sid = f"{kind}/{key[0]}/{key[1]}/s{key[2]}/ckpt{key[3]}"
        st = Stage(id=sid, kind=kind, hash=_hash(sid), labels=labels)
        folder = run / "stages" / kind / st.hash
        folder.mkdir(parents=True)
        for name, df in files.items():
            df.drop(label_cols).write_parquet(folder / name)
        (folder / "manifest.json").write_text(
            json.dumps(
                {
                    "id": sid,
                    "kind": kind,
                    "hash": st.hash,
                    "labels": labels,
                    "timings": {"seconds": 90.0},
                    "device": {"id": device, "name": "Test GPU"},
                    "git": {"commit": "0123456789abcdef", "dirty": False},
                    "packages": {"python": "3.11", "torch": "2.9"},
                    "host": {"name": "testhost"},
                }
            )
        )
        stages.append(st)
        return st

    for key, g in tables["marker_hits"].group_by(label_cols, maintain_order=True):
        lk = tables["leakage"].filter(*(pl.col(c) == v for c, v in zip(label_cols, key)))
        add("scan", key, {"marker_hits.parquet": g, "leakage.parquet": lk}, "cpu")
    for key, g in tables["cosines"].group_by(label_cols, maintain_order=True):
        add("represent", key, {"cosines.parquet": g}, "cuda:0")
    for key, g in tables["screen"].group_by(label_cols, maintain_order=True):
        add("train", key, {"screen.parquet": g}, "cuda:0")
    deps = tuple(s.id for s in stages)
    analyze = Stage(
        id="analyze",
        kind="analyze",
        hash=_hash("analyze"),
        deps=deps,
        params={"analyses": [], "n_resamples": 999, "bootstrap_resamples": 300},
    )
    report = Stage(
        id="report",
        kind="report",
        hash=_hash("report"),
        deps=("analyze",),
        params={"title": "Synthetic study", "figures": []},
    )
    plan = Plan(
        name="synth",
        spec={"name": "synth", "model": {"kind": "tiny", "id": "tiny"}, "sources": list(SOURCES), "seeds": [42]},
        spec_hash=_hash("spec"),
        stages=[*stages, analyze, report],
    )
    plan.save(run / "plan.json")
    return plan, analyze, report
