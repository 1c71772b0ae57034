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
    from cpx.models import small_model_threads
    from cpx.stages._markers import contains_any
    from cpx.stages._rows import completion_table, write_parquet
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

    dropped = Counter(
        personas[c.request_index // len(questions)].name for c, bad in zip(comps, marked, strict=True) if bad
    )
    columns = ["persona", "question_id", "question", "sample_index", "text", "n_tokens", "finish_reason"]
    table = completion_table(ctx.labels, comps, personas, questions, columns, keep=[not m for m in marked])
    write_parquet(table, ctx.out_dir / "generations.parquet")
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
