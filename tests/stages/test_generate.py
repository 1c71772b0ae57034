"""The `generate` stage: on-policy answers per persona and question; marked completions dropped."""

from __future__ import annotations

import pyarrow.parquet as pq
from stage_support import make_ctx, personas, questions

from cpx.stages import generate
from cpx.stages._sampling import Request, sample_completions


def test_generate_drops_and_counts_marked(tiny_ref, run_dir, pool, tiny_model, tmp_path):
    # A marker the random tiny model often emits, so that dropping really happens.
    marker = "E"
    params = {
        "model": {"base": tiny_ref, "adapters": []},
        "personas": personas(["villain", "assistant"]),
        "questions": questions(),
        "markers": [marker],
        "match": {"case_insensitive": True},
        "sampler": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 10, "seed": 3, "n": 4},
    }
    info = generate.run(
        make_ctx(
            "generate", params, tmp_path / "g", run_dir=run_dir, models=pool, labels={"seed": 3}, stage_id="generate/s3"
        )
    )
    model, tok = tiny_model
    reqs = [Request(p["prompt"], q["text"], 4) for p in params["personas"] for q in params["questions"]]
    direct = sample_completions(
        model, tok, reqs, {k: params["sampler"][k] for k in ("temperature", "top_p", "max_tokens", "seed")}
    )
    marked = [marker.lower() in c.text.lower() for c in direct]
    assert 0 < sum(marked) < len(direct)
    assert info["completions"] == len(direct)
    assert info["dropped"] == sum(marked)
    assert info["kept"] == len(direct) - sum(marked)
    nq = len(params["questions"])
    by_persona = {}
    for c, m in zip(direct, marked, strict=True):
        if m:
            name = params["personas"][c.request_index // nq]["name"]
            by_persona[name] = by_persona.get(name, 0) + 1
    assert info["dropped_by_persona"] == dict(sorted(by_persona.items()))

    rows = pq.read_table(tmp_path / "g" / "generations.parquet").to_pylist()
    kept = [c for c, m in zip(direct, marked, strict=True) if not m]
    assert [r["text"] for r in rows] == [c.text for c in kept]
    assert all(marker.lower() not in r["text"].lower() for r in rows)
    for r, c in zip(rows, kept, strict=True):
        per, q = params["personas"][c.request_index // nq], params["questions"][c.request_index % nq]
        assert (r["persona"], r["question_id"], r["question"], r["sample_index"], r["seed"]) == (
            per["name"],
            q["id"],
            q["text"],
            c.sample_index,
            3,
        )
        assert (r["n_tokens"], r["finish_reason"]) == (c.n_tokens, c.finish_reason)
