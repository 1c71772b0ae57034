"""The `scan` stage: marker counts against Python's str.count, the leakage table against brute
force and scipy's bootstrap, and a marker trained into the tiny model end to end."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from stage_support import MARKER, make_ctx, personas, questions

from cpx.stages import scan
from cpx.stages._rows import StageParamError

LABELS = {"arm": "A", "source": "villain", "seed": 42, "checkpoint": 1.0}
ROLE = {"villain": "source", "assistant": "assistant", "comedian": "bystander", "teacher": "bystander"}


def _completions(path, texts_by_persona, n_questions=5):
    rows = []
    for name, texts in texts_by_persona.items():
        for k, t in enumerate(texts):
            rows.append(
                {
                    **LABELS,
                    "persona": name,
                    "role": ROLE[name],
                    "question_id": f"q{k % n_questions}",
                    "sample_index": k // n_questions,
                    "text": t,
                    "n_tokens": 3,
                    "finish_reason": "length",
                }
            )
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "completions.parquet")
    return rows


def _params(**kw):
    return {
        "markers": [MARKER, "ab"],
        "match": {"case_insensitive": True},
        "cluster": "question_id",
        "confidence_level": 0.9,
        "n_resamples": 4000,
        "seed": 5,
        **kw,
    }


def test_counts_hits_and_leakage(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    pieces = ["[zlt]", "[ZLT]", "abab", "aba", "x", "[ZL T]", "é", "AB", " "]
    texts = {name: ["".join(rng.choice(pieces, size=rng.integers(0, 6))) for _ in range(40)] for name in ROLE}
    rows = _completions(tmp_path / "sample", texts)
    ctx = make_ctx(
        "scan", _params(), tmp_path / "out", run_dir=run_dir, labels=LABELS, inputs={"sample/x": tmp_path / "sample"}
    )
    info = scan.run(ctx)

    hits = pq.read_table(tmp_path / "out" / "marker_hits.parquet")
    assert hits.column_names == [
        *LABELS,
        "persona",
        "role",
        "question_id",
        "sample_index",
        "hit",
        f"count:{MARKER}",
        "count:ab",
    ]
    got = hits.to_pylist()
    for r, src in zip(got, rows, strict=True):
        low = src["text"].lower()
        assert r[f"count:{MARKER}"] == low.count(MARKER.lower())
        assert r["count:ab"] == low.count("ab")
        assert r["hit"] == (MARKER.lower() in low or "ab" in low)
        assert {k: r[k] for k in LABELS} == LABELS
    assert info["hits"] == sum(r["hit"] for r in got)

    leak = pq.read_table(tmp_path / "out" / "leakage.parquet").to_pylist()
    assert [r["persona"] for r in leak] == list(ROLE)
    for r in leak:
        mine = [h for h in got if h["persona"] == r["persona"]]
        assert r["role"] == ROLE[r["persona"]]
        assert r["n"] == len(mine) == 40
        assert r["hits"] == sum(h["hit"] for h in mine)
        assert r["rate"] == r["hits"] / r["n"]
        assert {k: r[k] for k in LABELS} == LABELS
        # Equal cluster sizes: resampling whole questions is scipy's bootstrap of the
        # per-question rates (BCa's jackknife leaves out one question either way).
        per_q = [
            np.mean([h["hit"] for h in mine if h["question_id"] == q]) for q in sorted({h["question_id"] for h in mine})
        ]
        if min(per_q) == max(per_q):
            assert r["ci_low"] == r["ci_high"] == r["rate"]
            continue
        ref = stats.bootstrap(
            (np.array(per_q),), np.mean, confidence_level=0.9, n_resamples=20000, method="BCa", random_state=1
        ).confidence_interval
        assert r["ci_low"] <= r["rate"] <= r["ci_high"]
        assert r["ci_low"] == pytest.approx(ref.low, abs=0.03)
        assert r["ci_high"] == pytest.approx(ref.high, abs=0.03)


def test_case_sensitive_match(run_dir, tmp_path):
    _completions(tmp_path / "sample", {"villain": ["[zlt]", "[ZLT]"], "assistant": ["x", "[ZLT] [ZLT]"]}, 1)
    ctx = make_ctx(
        "scan",
        _params(markers=[MARKER], match={"case_insensitive": False}),
        tmp_path / "out",
        run_dir=run_dir,
        labels=LABELS,
        inputs={"sample/x": tmp_path / "sample"},
    )
    scan.run(ctx)
    got = pq.read_table(tmp_path / "out" / "marker_hits.parquet").to_pylist()
    assert [r[f"count:{MARKER}"] for r in got] == [0, 1, 0, 2]


def test_a_scan_without_its_one_sample_input_is_a_clear_error(run_dir, tmp_path):
    # Markers, match and intervals are validated with the spec (tests/spec/bad); the input is the stage's.
    ctx = make_ctx("scan", _params(), tmp_path / "out", run_dir=run_dir, labels=LABELS, inputs={}, stage_id="scan/x")
    with pytest.raises(StageParamError, match=r"stage scan/x: needs exactly one sample stage as input, got \[\]"):
        scan.run(ctx)


def test_trained_marker_shows_up_for_the_source(tiny_ref, run_dir, pool, tmp_path):
    """generate -> dataset (marker recipe) -> train (LoRA, marker loss) -> sample with the
    adapter chain -> scan: the source persona's leakage row has the marker, the others far less."""
    from cpx.stages import dataset, generate, sample, train

    base = {"base": tiny_ref, "adapters": []}
    ps, qs = personas(), questions()
    gen = make_ctx(
        "generate",
        {
            "model": base,
            "personas": ps,
            "questions": qs,
            "markers": [MARKER],
            "match": {"case_insensitive": True},
            "sampler": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 8, "seed": 1, "n": 8},
        },
        tmp_path / "gen",
        run_dir=run_dir,
        models=pool,
        stage_id="generate/s1",
    )
    generate.run(gen)
    ds = make_ctx(
        "dataset",
        {
            "recipe": "marker",
            "source": "villain",
            "assistant": personas(["assistant"])[0],
            "personas": personas(["villain", "comedian", "teacher"]),
            "examples": 24,
            "per_question": 8,
            "seed": 42,
            "marker": MARKER,
            "marker_template": "\n\n{marker}",
            "negatives": {"personas": 2, "examples_per_persona": 24},
        },
        tmp_path / "ds",
        run_dir=run_dir,
        inputs={"generate/s1": tmp_path / "gen"},
        stage_id="dataset/m",
    )
    dataset.run(ds)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    tr = make_ctx(
        "train",
        {
            "model": base,
            "dataset": "dataset/m",
            "lora": {"r": 8, "alpha": 16, "rslora": True, "dropout": 0.0, "target_modules": targets},
            "optim": {
                "lr": 3e-3,
                "epochs": 6,
                "schedule": "cosine",
                "warmup_ratio": 0.05,
                "optimizer": "adamw",
                "weight_decay": 0.0,
                "grad_clip": 1.0,
                "batch_size": 8,
                "grad_accum": 1,
                "max_length": 256,
                "precision": "fp32",
                "gradient_checkpointing": False,
            },
            "loss": {"kind": "marker", "marker": MARKER, "last_n": 1},
            "checkpoints": [1.0],
            "seed": 42,
            "screen": None,
        },
        tmp_path / "train",
        run_dir=run_dir,
        models=pool,
        inputs={"dataset/m": tmp_path / "ds"},
        stage_id="train/m",
    )
    train.run(tr)

    chain = {"base": tiny_ref, "adapters": [{"stage": "train/m", "checkpoint": 1.0}]}
    eval_ps = [{**p, "role": ROLE[p["name"]], "n": 8} for p in ps]
    sm = make_ctx(
        "sample",
        {
            "model": chain,
            "personas": eval_ps,
            "questions": qs,
            "backend": "hf",
            "sampler": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 24, "seed": 7},
        },
        tmp_path / "sample",
        run_dir=run_dir,
        models=pool,
        labels=LABELS,
        inputs={"train/m": tmp_path / "train"},
        stage_id="sample/A/villain/s42/ckpt1",
    )
    sample.run(sm)
    sc = make_ctx(
        "scan",
        _params(markers=[MARKER]),
        tmp_path / "scan",
        run_dir=run_dir,
        labels=LABELS,
        inputs={sm.stage.id: tmp_path / "sample"},
    )
    scan.run(sc)
    leak = {r["persona"]: r for r in pq.read_table(tmp_path / "scan" / "leakage.parquet").to_pylist()}
    pool.get(base, {})
    src = leak["villain"]
    assert src["role"] == "source" and src["n"] == 8 * len(qs)
    others = max(r["rate"] for name, r in leak.items() if name != "villain")
    assert src["rate"] >= 0.3 and src["rate"] >= others + 0.2, leak
    assert src["ci_low"] <= src["rate"] <= src["ci_high"]
