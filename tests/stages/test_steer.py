"""Activation steering in the `sample` and `represent` stages, on the tiny model through the real model pool."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from stage_support import make_ctx, personas, questions

from cpx.stages import represent, sample
from cpx.stages._rows import StageParamError
from cpx.stages._sampling import Request, sample_completions, sample_token_ids
from cpx.stages._steer import Steering

REP = "represent/base"
ROLES = {"villain": "source", "assistant": "assistant", "comedian": "bystander", "teacher": "bystander"}
COUNTS = {"villain": 2, "assistant": 3, "comedian": 2, "teacher": 1}
SAMPLER = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 12, "seed": 42}


@pytest.fixture(scope="module")
def base_rep(tiny_ref, run_dir, pool, tmp_path_factory):
    """The unsteered represent stage's output folder (layers 1 and 2, centering none)."""
    out = tmp_path_factory.mktemp("steer") / "rep"
    represent.run(make_ctx("represent", _rep_params(tiny_ref), out, run_dir=run_dir, models=pool, stage_id=REP))
    return out


def _steer(layer=1, alpha=1.0, normalize=False, steered=("assistant",), source="villain", assistant="assistant"):
    return {
        "layer": layer,
        "alpha": alpha,
        "normalize": normalize,
        "personas": list(steered),
        "direction": {"represent": REP, "source": source, "assistant": assistant},
    }


def _rep_params(tiny_ref, steer=None):
    p = {
        "model": {"base": tiny_ref, "adapters": []},
        "personas": personas(),
        "questions": questions(),
        "layers": [1, 2],
        "token": "last_prompt",
        "centering": "none",
    }
    return p if steer is None else {**p, "steer": steer}


def _sample_params(tiny_ref, steer=None, **kw):
    eval_personas = [{**p, "role": ROLES[p["name"]], "n": COUNTS[p["name"]]} for p in personas()]
    p = {
        "model": {"base": tiny_ref, "adapters": []},
        "personas": eval_personas,
        "questions": questions(),
        "sampler": SAMPLER,
        "backend": "hf",
        **kw,
    }
    return p if steer is None else {**p, "steer": steer}


def _run(mod, kind, params, out, run_dir, pool, base_rep):
    ctx = make_ctx(
        kind,
        params,
        out,
        run_dir=run_dir,
        models=pool,
        inputs={REP: base_rep} if "steer" in params else None,
        stage_id=f"{kind}/x",
    )
    info = mod.run(ctx)
    name = "completions.parquet" if kind == "sample" else "centroids.parquet"
    return info, pq.read_table(out / name)


def _centroids(table) -> dict[tuple[str, int], np.ndarray]:
    return {(r["persona"], r["layer"]): np.array(r["vector"]) for r in table.to_pylist()}


def _cos(out, layer, a, b):
    rows = pq.read_table(out / "cosines.parquet").to_pylist()
    return next(r["cosine"] for r in rows if (r["layer"], r["persona_a"], r["persona_b"]) == (layer, a, b))


def test_alpha_zero_is_unsteered(tiny_ref, run_dir, pool, base_rep, tmp_path):
    _, cent = _run(
        represent,
        "represent",
        _rep_params(tiny_ref, _steer(alpha=0.0, steered=list(ROLES))),
        tmp_path / "r",
        run_dir,
        pool,
        base_rep,
    )
    assert cent.equals(pq.read_table(base_rep / "centroids.parquet"))
    assert pq.read_table(tmp_path / "r" / "cosines.parquet").equals(pq.read_table(base_rep / "cosines.parquet"))
    _, plain = _run(sample, "sample", _sample_params(tiny_ref), tmp_path / "a", run_dir, pool, base_rep)
    info, zero = _run(
        sample,
        "sample",
        _sample_params(tiny_ref, _steer(alpha=0.0, steered=list(ROLES))),
        tmp_path / "b",
        run_dir,
        pool,
        base_rep,
    )
    assert zero.equals(plain)
    assert info["steer"]["alpha"] == 0.0 and info["steer"]["layer"] == 1 and info["steer"]["direction_norm"] > 0


def test_positive_alpha_moves_the_assistant_to_the_source(tiny_ref, run_dir, pool, base_rep, tmp_path):
    base = _centroids(pq.read_table(base_rep / "centroids.parquet"))
    _, one = _run(
        represent, "represent", _rep_params(tiny_ref, _steer(alpha=1.0)), tmp_path / "one", run_dir, pool, base_rep
    )
    one = _centroids(one)
    np.testing.assert_allclose(one[("assistant", 1)], base[("villain", 1)], rtol=1e-5, atol=1e-5)
    assert not np.allclose(one[("assistant", 2)], base[("assistant", 2)])  # the later layer sees the steering
    # normalize: the unit direction times the raw norm is the same vector
    norm = float(np.linalg.norm(base[("villain", 1)] - base[("assistant", 1)]))
    info, unit = _run(
        represent,
        "represent",
        _rep_params(tiny_ref, _steer(alpha=norm, normalize=True)),
        tmp_path / "unit",
        run_dir,
        pool,
        base_rep,
    )
    assert info["steer"]["direction_norm"] == pytest.approx(norm, rel=1e-6)
    np.testing.assert_allclose(_centroids(unit)[("assistant", 1)], base[("villain", 1)], rtol=1e-5, atol=1e-5)
    before = _cos(base_rep, 1, "villain", "assistant")
    _run(represent, "represent", _rep_params(tiny_ref, _steer(alpha=0.5)), tmp_path / "half", run_dir, pool, base_rep)
    half = _cos(tmp_path / "half", 1, "villain", "assistant")
    assert before < half < 1.0
    assert _cos(tmp_path / "one", 1, "villain", "assistant") == pytest.approx(1.0, abs=1e-6)


def test_steering_the_assistant_only_leaves_the_others(tiny_ref, run_dir, pool, base_rep, tmp_path):
    base = _centroids(pq.read_table(base_rep / "centroids.parquet"))
    _, cent = _run(
        represent, "represent", _rep_params(tiny_ref, _steer(alpha=8.0)), tmp_path / "r", run_dir, pool, base_rep
    )
    for (name, layer), v in _centroids(cent).items():
        assert np.array_equal(v, base[(name, layer)]) == (name != "assistant"), (name, layer)
    _, plain = _run(sample, "sample", _sample_params(tiny_ref), tmp_path / "a", run_dir, pool, base_rep)
    _, steered = _run(
        sample, "sample", _sample_params(tiny_ref, _steer(alpha=8.0)), tmp_path / "b", run_dir, pool, base_rep
    )
    plain, steered = plain.to_pylist(), steered.to_pylist()
    assert [r["persona"] for r in plain] == [r["persona"] for r in steered]
    others = [(a, b) for a, b in zip(plain, steered, strict=True) if a["persona"] != "assistant"]
    assert others and all(a == b for a, b in others)
    mine = [(a["text"], b["text"]) for a, b in zip(plain, steered, strict=True) if a["persona"] == "assistant"]
    assert sum(a != b for a, b in mine) >= len(mine) // 2


def test_steered_completions_do_not_depend_on_batch_size(tiny_model64, base_rep, caplog):
    """Float64 (batch shapes round float32 logits differently). Frequent tokens are made end-of-turn
    ids so that rows stop early and the batch is compacted: a row keeps its coefficient."""
    model, tok = tiny_model64
    base = _centroids(pq.read_table(base_rep / "centroids.parquet"))
    vector = 4.0 * (base[("villain", 1)] - base[("assistant", 1)])
    reqs = [Request(p["prompt"], q["text"], 4) for p in personas(["villain", "assistant"]) for q in questions()]
    steering = Steering(layer=1, vector=vector, coefficients=tuple(float(i >= 3) for i in range(len(reqs))))
    sampler = {**SAMPLER, "max_tokens": 24}
    free = sample_token_ids(model, tok, reqs, sampler, batch_size=len(reqs) * 4)
    counts = np.bincount([t for toks in free.values() for t in toks[:8]])
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted({tok.eos_token_id, *(int(t) for t in np.argsort(counts)[-3:])})
    try:
        plain = sample_completions(model, tok, reqs, sampler, batch_size=len(reqs) * 4)
        with caplog.at_level("DEBUG", logger="cpx.sampling"):
            big = sample_completions(model, tok, reqs, sampler, batch_size=len(reqs) * 4, steering=steering)
        assert "batch compacted" in caplog.text
        assert sample_completions(model, tok, reqs, sampler, batch_size=1, steering=steering) == big
        assert sample_completions(model, tok, reqs, sampler, batch_size=5, steering=steering) == big
    finally:
        model.generation_config.eos_token_id = saved
    assert sum(c.finish_reason == "stop" for c in big) >= len(big) // 4
    assert [c for c in plain if c.request_index < 3] == [c for c in big if c.request_index < 3]
    assert any(a != b for a, b in zip(plain, big, strict=True) if a.request_index >= 3)


@pytest.mark.parametrize(
    ("kind", "patch", "msg"),
    [
        (
            "sample",
            {"direction": {"represent": "represent/other", "source": "villain", "assistant": "assistant"}},
            r"steer\.direction\.represent 'represent/other' is not a dependency",
        ),
        ("sample", {"layer": 0}, r"steer\.layer 0 is not a layer of represent/base's centroids \(layers \[1, 2\]\)"),
        (
            "represent",
            {"direction": {"represent": REP, "source": "pirate", "assistant": "assistant"}},
            r"steer\.direction\.source 'pirate' has no centroid",
        ),
        (
            "sample",
            {"direction": {"represent": REP, "source": "villain", "assistant": "butler"}},
            r"steer\.direction\.assistant 'butler' has no centroid",
        ),
        ("sample", {"alpha": float("nan")}, r"steer\.alpha must be a finite number"),
        ("represent", {"alpha": float("inf")}, r"steer\.alpha must be a finite number"),
        (
            "sample",
            {"normalize": True, "direction": {"represent": REP, "source": "villain", "assistant": "villain"}},
            r"steer\.normalize is true but the direction is zero",
        ),
        ("sample", {"personas": ["assistant", "pirate"]}, r"steer\.personas names \['pirate'\] that are not among"),
        ("represent", {"personas": ["pirate"]}, r"steer\.personas names \['pirate'\]"),
        ("sample", {"alpha": None}, r"steer\.alpha must be a finite number"),
        ("sample", {"direction": None}, r"steer\.direction must be a mapping"),
        ("sample", {"alpha": 1e300}, r"steer\.alpha: 1e\+300 times the direction overflows the model's dtype"),
        ("represent", {"layer": 3}, r"steer\.layer 3 is not a layer of represent/base's centroids"),
    ],
)
def test_bad_steer_is_a_clear_error(tiny_ref, run_dir, pool, base_rep, tmp_path, kind, patch, msg):
    params = (_sample_params if kind == "sample" else _rep_params)(tiny_ref, {**_steer(), **patch})
    ctx = make_ctx(
        kind, params, tmp_path / "x", run_dir=run_dir, models=pool, inputs={REP: base_rep}, stage_id=f"{kind}/steer/x"
    )
    with pytest.raises(StageParamError, match=rf"^stage {kind}/steer/x: params\.{msg}"):
        (sample if kind == "sample" else represent).run(ctx)
    assert not any((tmp_path / "x").iterdir())


def test_steering_needs_the_hf_backend(tiny_ref, run_dir, pool, base_rep, tmp_path):
    ctx = make_ctx(
        "sample",
        _sample_params(tiny_ref, _steer(), backend="vllm"),
        tmp_path / "x",
        run_dir=run_dir,
        models=pool,
        inputs={REP: base_rep},
        stage_id="sample/v",
    )
    with pytest.raises(StageParamError, match=r"stage sample/v: params\.steer needs params\.backend hf"):
        sample.run(ctx)
    assert not any((tmp_path / "x").iterdir())
    assert sample.resolve_backend("auto", "cuda:0", steer=True) == "hf"
