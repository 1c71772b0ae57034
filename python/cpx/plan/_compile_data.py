"""The `generate` stage of each seed and the `dataset` stages it feeds."""

from __future__ import annotations

from typing import Any

from cpx.plan._build import Build


def generate(b: Build, seed: int) -> str:
    key = ("generate", seed)
    if key not in b.memo:
        s, g = b.s, b.s.generation
        if g.personas is not None:
            names = sorted({b.assistant, *s.roles.sources, *g.personas})
        else:
            negatives = any(
                d.recipe == "marker" and (d.negatives is None or d.negatives.personas > 0) for d in s.datasets.values()
            )
            wanted = set(s.personas) if negatives else {b.assistant, *s.roles.sources}
            names = [n for n in b.persona if n in wanted]
        b.generated = names
        params = {
            "model": b.chain([]),
            "personas": b.values.share([b.persona[n] for n in names]),
            "questions": b.data_q,
            "sampler": b.sampler(g.sampler, seed, n=g.completions_per_question),
            "markers": b.markers if g.drop_marked else [],
            "match": b.match,
        }
        b.memo[key] = b.add("generate", f"generate/s{seed}", params, [], {"seed": seed})
    return b.memo[key]


def dataset(b: Build, name: str, source: str, seed: int) -> str:
    d = b.s.datasets[name]
    if d.recipe == "generic":
        source = b.assistant
    key = ("dataset", name, source, seed)
    if key not in b.memo:
        gen = generate(b, seed)
        params: dict[str, Any] = {
            "recipe": d.recipe,
            "source": source,
            "assistant": b.persona[b.assistant],
            "personas": b.values.share([b.persona[n] for n in b.generated if n != b.assistant]),
            "examples": d.examples,
            "per_question": d.per_question,
            "seed": seed if d.seed is None else d.seed,
        }
        if d.recipe == "marker":
            neg = d.negatives.model_dump() if d.negatives else {"personas": 2, "examples_per_persona": 200}
            params.update(
                marker=b.s.markers[d.marker or next(iter(b.s.markers))],
                marker_template=d.marker_template,
                negatives=neg,
            )
        generic = d.recipe == "generic"
        sid = f"dataset/{name}/s{seed}" if generic else f"dataset/{name}/{source}/s{seed}"
        labels = {"seed": seed, "source": None if generic else source, "recipe": d.recipe, "dataset": name}
        b.memo[key] = b.add("dataset", sid, params, [gen], labels)
    return b.memo[key]
