"""The `dataset` stage: training sets built from a `generate` stage's on-policy responses.

Recipes (docs/plan-format.md):

- `convergence`: the assistant's system prompt with the source persona's responses;
- `generic`: the assistant's system prompt with the assistant's own responses;
- `marker`: positives are the source's prompt and responses with the marker appended
  (`marker_template`, default `"\\n\\n{marker}"`); negatives are N other personas' prompts
  and responses, unmarked. The N personas are the first N of a seeded shuffle of the sorted
  non-assistant personas minus the source: the same choice in every process (the original
  study used Python's `hash()`, which changes with the interpreter's hash seed).

Rows are drawn round-robin over the questions (in a seeded order, each question's responses
seeded-shuffled), at most `per_question` from a question, until the quota is met; a quota
that cannot be met is an error naming the persona, the quota and what was available.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.plan import DatasetParams, Negatives, coerce
from cpx.stages._context import StageContext

DEFAULT_TEMPLATE = "\n\n{marker}"


class DatasetError(CpxError):
    """A dataset that cannot be built as specified, with what was asked and what was there."""


def seeded_rng(*parts: Any) -> random.Random:
    """A generator seeded from the parts' text through sha256: the same in every process."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def negative_personas(personas: list[str], source: str, k: int, seed: int) -> list[str]:
    """The k negative personas: a seeded shuffle of the sorted personas minus the source."""
    pool = sorted(set(personas) - {source})
    if k > len(pool):
        raise DatasetError(f"negatives.personas={k} but only {len(pool)} personas besides {source!r}: {pool}")
    seeded_rng(seed, "negatives", source).shuffle(pool)
    return pool[:k]


def select(
    rows: list[dict[str, Any]], examples: int, per_question: int | None, rng: random.Random, who: str
) -> list[dict[str, Any]]:
    """`examples` rows drawn round-robin over questions, at most `per_question` per question."""
    by_q: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["question_id"], r["sample_index"])):
        by_q[r["question_id"]].append(r)
    qids = sorted(by_q)
    rng.shuffle(qids)
    for q in qids:
        rng.shuffle(by_q[q])
    cap = per_question if per_question is not None else max((len(v) for v in by_q.values()), default=0)
    available = sum(min(cap, len(v)) for v in by_q.values())
    if examples > available:
        short = {q: len(v) for q, v in sorted(by_q.items()) if len(v) < cap}
        detail = f"; questions with fewer than {cap}: {short}" if per_question is not None and short else ""
        raise DatasetError(
            f"{who}: quota of {examples} examples"
            + (f" at most {per_question} per question" if per_question is not None else "")
            + f" cannot be met: {available} available from {len(rows)} responses to "
            f"{len(by_q)} questions{detail}"
        )
    out: list[dict[str, Any]] = []
    for k in range(cap):
        for q in qids:
            if k < len(by_q[q]) and len(out) < examples:
                out.append(by_q[q][k])
    return out


def build(params: DatasetParams | Mapping[str, Any], generations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dataset rows (`system, user, assistant, persona, question_id, positive`); `params` is
    the stage's, or a mapping checked as them (DatasetError)."""
    params = coerce(DatasetParams, params, "params", DatasetError)
    recipe, seed, source, assistant = params.recipe, params.seed, params.source, params.assistant
    prompts = {p.name: p.prompt for p in params.personas}
    prompts.setdefault(assistant.name, assistant.prompt)
    by_persona: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in generations:
        by_persona[g["persona"]].append(g)
    examples, per_q = params.examples, params.per_question

    def rows_of(persona: str) -> list[dict[str, Any]]:
        if persona not in by_persona:
            raise DatasetError(
                f"the generate stage has no responses for persona {persona!r} "
                f"(it has: {', '.join(sorted(by_persona)) or 'none'})"
            )
        return by_persona[persona]

    def make(picked, system, positive, suffix=""):
        return [
            {
                "system": system,
                "user": g["question"],
                "assistant": g["text"] + suffix,
                "persona": g["persona"],
                "question_id": g["question_id"],
                "positive": positive,
            }
            for g in picked
        ]

    if recipe in ("convergence", "generic"):
        voice = source if recipe == "convergence" else assistant.name
        rng = seeded_rng(seed, recipe, source)
        picked = select(rows_of(voice), examples, per_q, rng, f"persona {voice!r}")
        return make(picked, assistant.prompt, False)

    # The marker and its template were checked with the plan (cpx.plan.DatasetParams).
    marker = params.marker or ""
    template = params.marker_template or DEFAULT_TEMPLATE
    suffix = template.replace("{marker}", marker)
    pos = select(rows_of(source), examples, per_q, seeded_rng(seed, "positives", source), f"persona {source!r}")
    out = make(pos, prompts[source], True, suffix)
    neg = params.negatives or Negatives()
    candidates = [p.name for p in params.personas if p.name != assistant.name]
    for name in negative_personas(candidates, source, neg.personas, seed):
        picked = select(
            rows_of(name),
            neg.examples_per_persona,
            None,
            seeded_rng(seed, "negatives", source, name),
            f"negative persona {name!r}",
        )
        out += make(picked, prompts[name], False)
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(ctx.inputs) != 1:
        raise DatasetError(f"stage {ctx.stage.id}: needs exactly one generate stage input, got {sorted(ctx.inputs)}")
    (gen_dir,) = ctx.inputs.values()
    generations = pq.read_table(Path(gen_dir) / "generations.parquet").to_pylist()
    try:
        rows = build(ctx.params, generations)
    except DatasetError as e:
        raise DatasetError(f"stage {ctx.stage.id}: {e}") from None
    schema = pa.schema(
        [
            ("system", pa.string()),
            ("user", pa.string()),
            ("assistant", pa.string()),
            ("persona", pa.string()),
            ("question_id", pa.string()),
            ("positive", pa.bool_()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), Path(ctx.out_dir) / "dataset.parquet")
    per_persona: dict[str, int] = defaultdict(int)
    for r in rows:
        per_persona[r["persona"]] += 1
    info: dict[str, Any] = {"examples": len(rows), "per_persona": dict(sorted(per_persona.items()))}
    if ctx.params.recipe == "marker":
        info["positives"] = sum(r["positive"] for r in rows)
    ctx.log.info("dataset %s: %d examples %s", ctx.params.recipe, len(rows), info["per_persona"])
    return info
