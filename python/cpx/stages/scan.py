"""The `scan` stage: marker hits per completion and the leakage table with clustered intervals.

Reads the `completions.parquet` of its one `sample` dependency, counts each marker in each
completion with `cpx.scan` (a hit is any marker at least once), and summarises per persona:
`n` completions, `hits`, `rate = hits / n`, and a bootstrap interval of the rate from
`cpx.stats` that resamples whole questions (cluster = `question_id`), since the completions
of one question share its prompt and are not independent.

Outputs (docs/plan-format.md): `marker_hits.parquet` — labels + `persona, role, question_id,
sample_index, hit` and one count column per marker, named `count:<marker>`;
`leakage.parquet` — labels + `persona, role, n, hits, rate, ci_low, ci_high`, one row per
persona in the order of the sample stage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cpx.stages._context import StageContext

if TYPE_CHECKING:
    from cpx.plan import ScanParams

BOOT_METHOD: Final = "bca"


def _input(ctx: StageContext) -> Path:
    """The stage's one input (the sample stage's folder); the params were checked with the
    plan (cpx.plan.ScanParams)."""
    from cpx.plan import StageParamError

    if len(ctx.inputs) != 1:
        raise StageParamError(
            f"stage {ctx.stage.id}: needs exactly one sample stage as input, got {sorted(ctx.inputs)}"
        )
    (dep,) = ctx.inputs.values()
    return Path(dep)


def leakage_rows(persona, role, question_id, hit, *, confidence_level: float, n_resamples: int, seed: int):
    """One row per persona (first-appearance order): role, n, hits, rate, ci_low, ci_high.

    The interval is a BCa bootstrap of the proportion that resamples whole questions
    (`cpx.stats.grouped_bootstrap`; persona k in sorted-name order uses its k-th seed of `seed`);
    NaN for a persona whose completions all answer one question.
    """
    import pyarrow as pa

    from cpx.scan import hit_rates
    from cpx.stats import grouped_bootstrap

    t = pa.table(
        {
            "persona": pa.array(list(persona), pa.string()),
            "question_id": pa.array(list(question_id), pa.string()),
            "hit": pa.array([bool(h) for h in hit], pa.bool_()),
        }
    )
    # A persona answered on a single question has no interval over questions.
    questions: dict[str, set[str]] = {}
    for name, q in zip(t.column("persona").to_pylist(), t.column("question_id").to_pylist(), strict=True):
        questions.setdefault(name, set()).add(q)
    ci = {name: (math.nan, math.nan) for name, qs in questions.items() if len(qs) < 2}
    if len(ci) < len(questions):
        keep = pa.array([name not in ci for name in t.column("persona").to_pylist()])
        boot = grouped_bootstrap(
            t.filter(keep),
            value="hit",
            by=["persona"],
            cluster="question_id",
            statistic="proportion",
            method=BOOT_METHOD,
            confidence_level=confidence_level,
            n_resamples=n_resamples,
            seed=seed,
        ).to_pylist()
        ci.update({b["persona"]: (b["low"], b["high"]) for b in boot})
    roles: dict[str, str] = {}
    for name, r in zip(t.column("persona").to_pylist(), role, strict=True):
        roles.setdefault(name, r)
    return [
        {
            "persona": g["persona"],
            "role": roles[g["persona"]],
            "n": g["n"],
            "hits": g["hits"],
            "rate": g["rate"],
            "ci_low": float(ci[g["persona"]][0]),
            "ci_high": float(ci[g["persona"]][1]),
        }
        for g in hit_rates(t, ["persona"]).to_pylist()
    ]


def run(ctx: StageContext) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cpx.stages._markers import marker_counts
    from cpx.plan import StageParamError
    from cpx.stages._rows import labelled_table, write_parquet

    p: ScanParams = ctx.params
    path = _input(ctx) / "completions.parquet"
    need = ["persona", "role", "question_id", "sample_index", "text"]
    try:
        table = pq.read_table(path, columns=need)
    except (OSError, KeyError, pa.ArrowInvalid) as e:
        raise StageParamError(f"stage {ctx.stage.id}: cannot read {need} from {path}: {e}") from None
    if table.num_rows == 0:
        raise StageParamError(f"stage {ctx.stage.id}: {path} has no completions to scan")
    counts = marker_counts(table.column("text"), p.markers, p.match)
    hit = (counts > 0).any(axis=1)

    hit_cols: dict[str, Any] = {
        k: table.column(k).combine_chunks() for k in ("persona", "role", "question_id", "sample_index")
    }
    hit_cols["hit"] = pa.array(hit, pa.bool_())
    schema: dict[str, Any] = {
        "persona": pa.string(),
        "role": pa.string(),
        "question_id": pa.string(),
        "sample_index": pa.int64(),
        "hit": pa.bool_(),
    }
    for j, m in enumerate(p.markers):
        hit_cols[f"count:{m}"] = counts[:, j].tolist()
        schema[f"count:{m}"] = pa.int64()
    write_parquet(labelled_table(ctx.labels, hit_cols, schema), ctx.out_dir / "marker_hits.parquet")

    rows = leakage_rows(
        table.column("persona").to_pylist(),
        table.column("role").to_pylist(),
        table.column("question_id").to_pylist(),
        hit,
        confidence_level=p.confidence_level,
        n_resamples=p.n_resamples,
        seed=p.seed,
    )
    leak_cols = {k: [r[k] for r in rows] for k in ("persona", "role", "n", "hits", "rate", "ci_low", "ci_high")}
    leak_schema = {
        "persona": pa.string(),
        "role": pa.string(),
        "n": pa.int64(),
        "hits": pa.int64(),
        "rate": pa.float64(),
        "ci_low": pa.float64(),
        "ci_high": pa.float64(),
    }
    write_parquet(labelled_table(ctx.labels, leak_cols, leak_schema), ctx.out_dir / "leakage.parquet")
    by_role: dict[str, list[int]] = {}
    for r in rows:
        acc = by_role.setdefault(r["role"], [0, 0])
        acc[0] += r["hits"]
        acc[1] += r["n"]
    return {
        "completions": int(len(hit)),
        "hits": int(np.sum(hit)),
        "rate_by_role": {k: v[0] / v[1] for k, v in sorted(by_role.items())},
    }
