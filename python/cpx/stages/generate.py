"""The `generate` stage: a model chain answers the data questions as each persona (on-policy
training data). n completions per persona and question from the spec's sampler, batched by the
hf engine; completions that already contain a marker are dropped and counted.

Output `generations.parquet`: labels + `persona, question_id, question, sample_index, text,
n_tokens, finish_reason` (docs/plan-format.md).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from cpx.stages._context import StageContext

if TYPE_CHECKING:
    from cpx.plan import GenerateParams


def run(ctx: StageContext) -> dict[str, Any]:
    import pyarrow as pa

    from cpx.models import small_model_threads
    from cpx.stages._markers import contains_any
    from cpx.stages._rows import labelled_table, write_parquet
    from cpx.stages._sampling import Request, sample_completions

    p: GenerateParams = ctx.params
    personas, questions = p.personas, p.questions
    model, tok = ctx.models.get(p.model.json(), ctx.inputs)
    requests = [Request(per.prompt, q.text, p.sampler.n) for per in personas for q in questions]
    t0 = time.perf_counter()
    with small_model_threads(model, ctx.device):
        comps = sample_completions(
            model,
            tok,
            requests,
            p.sampler,
            device=ctx.device,
            log=ctx.log,
            progress=ctx.progress,
            max_batch_size=ctx.batch_limit,
        )
    seconds = time.perf_counter() - t0
    marked = [False] * len(comps)
    if p.markers and p.match is not None:  # the params type asks for `match` with markers
        marked = contains_any([c.text for c in comps], p.markers, p.match)

    cols: dict[str, list[Any]] = {
        k: [] for k in ("persona", "question_id", "question", "sample_index", "text", "n_tokens", "finish_reason")
    }
    dropped: Counter[str] = Counter()
    nq = len(questions)
    for c, bad in zip(comps, marked, strict=True):
        per, q = personas[c.request_index // nq], questions[c.request_index % nq]
        if bad:
            dropped[per.name] += 1
            continue
        for k, v in (
            ("persona", per.name),
            ("question_id", q.id),
            ("question", q.text),
            ("sample_index", c.sample_index),
            ("text", c.text),
            ("n_tokens", c.n_tokens),
            ("finish_reason", c.finish_reason),
        ):
            cols[k].append(v)
    schema = {
        "persona": pa.string(),
        "question_id": pa.string(),
        "question": pa.string(),
        "sample_index": pa.int64(),
        "text": pa.string(),
        "n_tokens": pa.int64(),
        "finish_reason": pa.string(),
    }
    write_parquet(labelled_table(ctx.labels, cols, schema), ctx.out_dir / "generations.parquet")
    n_tokens = sum(c.n_tokens for c in comps)
    if dropped:
        ctx.log.info("dropped %d completions that contain a marker: %s", sum(dropped.values()), dict(dropped))
    return {
        "completions": len(comps),
        "kept": len(comps) - sum(dropped.values()),
        "dropped": sum(dropped.values()),
        "dropped_by_persona": dict(sorted(dropped.items())),
        "tokens": n_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(n_tokens / seconds, 1) if seconds > 0 else None,
    }
