"""The `sample` stage on the tiny model through the real model pool."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from stage_support import make_ctx, personas, questions

from cpx.stages import sample
from cpx.stages._rows import StageParamError
from cpx.stages._sampling import Request, sample_completions

ROLES = {"villain": "source", "assistant": "assistant", "comedian": "bystander", "teacher": "bystander"}
COUNTS = {"villain": 2, "assistant": 5, "comedian": 1, "teacher": 0}
LABELS = {"arm": "B", "source": "villain", "seed": 42, "checkpoint": 0.6}


def _params(tiny_ref, **kw):
    eval_personas = [{**p, "role": ROLES[p["name"]], "n": COUNTS[p["name"]]} for p in personas()]
    return {
        "model": {"base": tiny_ref, "adapters": []},
        "personas": eval_personas,
        "questions": questions(),
        "sampler": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 12, "seed": 42},
        "backend": "hf",
        **kw,
    }


def test_sample_stage_table(tiny_ref, run_dir, pool, tiny_model, tmp_path):
    params = _params(tiny_ref)
    ctx = make_ctx("sample", params, tmp_path / "a", run_dir=run_dir, models=pool, labels=LABELS)
    info = sample.run(ctx)
    table = pq.read_table(tmp_path / "a" / "completions.parquet")
    assert table.column_names == [
        *LABELS,
        "persona",
        "role",
        "question_id",
        "sample_index",
        "text",
        "n_tokens",
        "finish_reason",
    ]
    rows = table.to_pylist()
    nq = len(questions())
    assert info["completions"] == len(rows) == nq * sum(COUNTS.values())
    for name, n in COUNTS.items():
        mine = [r for r in rows if r["persona"] == name]
        assert len(mine) == n * nq
        assert all(r["role"] == ROLES[name] for r in mine)
        for q in questions():
            assert sorted(r["sample_index"] for r in mine if r["question_id"] == q["id"]) == list(range(n))
    assert all({k: r[k] for k in LABELS} == LABELS for r in rows)
    assert all(1 <= r["n_tokens"] <= 12 for r in rows)

    # the same completions as the engine called directly, in the stage's persona x question order
    model, tok = tiny_model
    reqs = [Request(p["prompt"], q["text"], p["n"]) for p in params["personas"] for q in questions()]
    direct = sample_completions(model, tok, reqs, params["sampler"])
    assert [r["text"] for r in rows] == [c.text for c in direct]

    # reproducible: a second run writes the same table
    ctx2 = make_ctx("sample", params, tmp_path / "b", run_dir=run_dir, models=pool, labels=LABELS)
    sample.run(ctx2)
    assert pq.read_table(tmp_path / "b" / "completions.parquet").equals(table)


@pytest.mark.parametrize(
    ("patch", "msg"),
    [
        ({"backend": "tpu"}, "backend"),
        ({"sampler": {"temperature": 1.0, "top_p": 2.0, "max_tokens": 4, "seed": 1}}, "top_p"),
        (
            {"personas": [{"name": "x", "prompt": "p", "role": "friend", "n": 1}]},
            r"personas\[0\] \(x\)\.role must be one of source, assistant, bystander, got 'friend'",
        ),
        (
            {"personas": [{"name": "x", "prompt": "p", "role": "source", "n": -2}]},
            r"personas\[0\] \(x\)\.n must be an integer >= 0, got -2",
        ),
        ({"questions": [{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]}, "question id 'a' appears twice"),
    ],
)
def test_sample_stage_bad_params(tiny_ref, run_dir, pool, tmp_path, patch, msg):
    ctx = make_ctx(
        "sample",
        _params(tiny_ref, **patch),
        tmp_path / "x",
        run_dir=run_dir,
        models=pool,
        stage_id="sample/B/villain/s42/ckpt0.6",
    )
    with pytest.raises(StageParamError, match=msg):
        sample.run(ctx)
    assert not (tmp_path / "x" / "completions.parquet").exists()


def test_auto_backend_is_hf_on_cpu():
    assert sample.resolve_backend("auto", "cpu") == "hf"
    assert sample.resolve_backend("hf", "cuda:0") == "hf"


def test_vllm_backend(tiny_ref, run_dir, pool, tmp_path):
    """Only where vLLM is installed (never on this project's GPU machines): the same table shape
    and per-persona counts as the hf backend."""
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    ctx = make_ctx(
        "sample", _params(tiny_ref, backend="vllm"), tmp_path / "v", run_dir=run_dir, models=pool, labels=LABELS
    )
    info = sample.run(ctx)
    rows = pq.read_table(tmp_path / "v" / "completions.parquet").to_pylist()
    assert info["backend"] == "vllm"
    for name, n in COUNTS.items():
        assert sum(r["persona"] == name for r in rows) == n * len(questions())
