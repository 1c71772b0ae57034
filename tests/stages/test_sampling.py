"""The hf sampling engine against transformers' own generate, scipy and brute-force references."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import stats

from cpx.models import render_prompt
from cpx.stages._sampling import (
    Request,
    SamplerError,
    row_keys,
    sample_completions,
    sample_token_ids,
    sample_tokens,
    stop_token_ids,
    uniforms,
)

from stage_support import PERSONAS, QUESTIONS

REQUESTS = [
    Request(PERSONAS["villain"], QUESTIONS["q0"], 3),
    Request(None, "Hi", 2),
    Request(PERSONAS["assistant"], QUESTIONS["q2"], 1),
    Request(PERSONAS["teacher"], QUESTIONS["q1"], 0),
]


def _sampler(**kw):
    return {"temperature": 1.0, "top_p": 1.0, "max_tokens": 24, "seed": 7, **kw}


def _generate(model, tok, req, max_new):
    enc = tok(render_prompt(tok, req.system, req.user), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        g = model.generate(**enc, do_sample=False, max_new_tokens=max_new)
    return g[0, enc.input_ids.shape[1] :].tolist()


def test_greedy_equals_generate(tiny_model):
    model, tok = tiny_model
    out = sample_completions(model, tok, REQUESTS, _sampler(temperature=0.0), batch_size=4)
    assert [(c.request_index, c.sample_index) for c in out] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    stops = set(stop_token_ids(model, tok))
    for c in out:
        ref = _generate(model, tok, REQUESTS[c.request_index], 24)
        body = ref[:-1] if ref and ref[-1] in stops else ref
        assert c.text == tok.decode(body, skip_special_tokens=True)
        assert c.n_tokens == len(ref)


def test_stops_at_end_of_turn(tiny_model):
    """A token the model emits greedily, made an end-of-turn id, ends the completion as generate does."""
    model, tok = tiny_model
    req = REQUESTS[0]
    free = _generate(model, tok, req, 12)
    stop = free[5]
    first = free.index(stop)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    try:
        (c,) = sample_completions(model, tok, [Request(req.system, req.user, 1)], _sampler(temperature=0.0))
        ref = _generate(model, tok, req, 12)
    finally:
        model.generation_config.eos_token_id = saved
    assert c.finish_reason == "stop"
    assert c.n_tokens == first + 1 == len(ref)
    assert c.text == tok.decode(free[:first], skip_special_tokens=True)


def test_seeded_and_independent_of_batch_size(tiny_model64):
    model, tok = tiny_model64
    sp = _sampler(top_p=0.9, max_tokens=20)
    a = sample_completions(model, tok, REQUESTS, sp, batch_size=3)
    b = sample_completions(model, tok, REQUESTS, sp, batch_size=64)
    c = sample_completions(model, tok, REQUESTS, {**sp, "seed": 8}, batch_size=64)
    assert a == b
    assert [x.text for x in a] != [x.text for x in c]
    # completions of one prompt differ from each other
    assert len({x.text for x in a if x.request_index == 0}) == 3
    assert all(x.n_tokens == 20 if x.finish_reason == "length" else x.finish_reason == "stop" for x in a)


def test_counts_per_request(tiny_model):
    model, tok = tiny_model
    reqs = [Request(PERSONAS[p], QUESTIONS["q1"], n) for p, n in zip(PERSONAS, (4, 0, 1, 7), strict=True)]
    out = sample_completions(model, tok, reqs, _sampler(max_tokens=3), batch_size=5)
    counts = np.bincount([c.request_index for c in out], minlength=4)
    assert counts.tolist() == [4, 0, 1, 7]
    assert sample_completions(model, tok, [], _sampler()) == []


def test_first_token_distribution_matches_softmax(tiny_model):
    """Empirical first-token frequencies against the model's own softmax (chi-square, scipy)."""
    model, tok = tiny_model
    req = Request(PERSONAS["comedian"], QUESTIONS["q0"], 3000)
    temperature = 1.5
    out = sample_token_ids(model, tok, [req], _sampler(temperature=temperature, max_tokens=1), batch_size=1000)
    enc = tok(render_prompt(tok, req.system, req.user), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits[0, -1].double()
    p = torch.softmax(logits / temperature, -1).numpy()
    firsts = [out[(0, s)][0] for s in range(req.n)]
    counts = np.bincount(firsts, minlength=p.size).astype(float)
    # bins with enough expected counts, the rest pooled into one
    big = p * req.n >= 5
    assert big.sum() >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(p[big], p[~big].sum()) * req.n
    res = stats.chisquare(obs, exp / exp.sum() * obs.sum())
    assert res.pvalue > 1e-3, res


def test_sample_tokens_inverse_cdf_and_nucleus():
    """On a grid of uniforms, each token's share equals its nucleus-renormalised probability;
    the nucleus is the one transformers' TopPLogitsWarper keeps."""
    from transformers.generation.logits_process import TopPLogitsWarper

    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(1, 24)) * 2, dtype=torch.float32)
    top_p, temp = 0.8, 0.7
    n = 200_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    got = sample_tokens(logits.expand(n, -1), temp, top_p, u.float())
    share = np.bincount(got.numpy(), minlength=24) / n
    warped = TopPLogitsWarper(top_p)(None, logits / temp)
    ref = torch.softmax(warped.double(), -1)[0].numpy()
    assert set(np.flatnonzero(share)) == set(np.flatnonzero(ref))
    np.testing.assert_allclose(share, ref, atol=2e-5)
    # top_p = 1 keeps every token; temperature 0 is argmax
    full = sample_tokens(logits.expand(n, -1), temp, 1.0, u.float())
    np.testing.assert_allclose(
        np.bincount(full.numpy(), minlength=24) / n, torch.softmax(logits.double() / temp, -1)[0].numpy(), atol=2e-5
    )
    assert sample_tokens(logits, 0.0, 0.5, u[:1].float()).item() == int(logits.argmax())


def _fmix32_ref(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    m = np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & m
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & m
    x ^= x >> np.uint64(16)
    return x


def test_uniforms_match_reference_hash_and_are_uniform():
    keys = row_keys(42, [(r, s) for r in range(50) for s in range(40)])
    assert len(set(keys)) == len(keys)
    kt = torch.tensor(keys, dtype=torch.long)
    for step in (0, 1, 511):
        u = uniforms(kt, step).numpy()
        c = np.uint64((step * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF)
        ref = _fmix32_ref(np.array(keys, dtype=np.uint64) ^ _fmix32_ref(np.full(len(keys), c)))
        np.testing.assert_array_equal(u, ((ref >> np.uint64(8)).astype(np.float64) / (1 << 24)).astype(np.float32))
        assert stats.kstest(u, "uniform").pvalue > 1e-3


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_sampler_is_a_clear_error(tiny_model, bad, where):
    model, tok = tiny_model
    with pytest.raises(SamplerError, match=where):
        sample_completions(model, tok, REQUESTS, _sampler(**bad))


def test_bad_request_count(tiny_model):
    model, tok = tiny_model
    with pytest.raises(SamplerError, match="request 1: n"):
        sample_completions(model, tok, [REQUESTS[0], Request(None, "x", -1)], _sampler())


def test_rows_that_end_early_leave_the_others_unchanged(tiny_model64, caplog):
    """With a frequent token made an end-of-turn id, most rows stop early and the batch is
    compacted; every completion is then its unconstrained twin cut at the first stop token,
    at any batch size (the random stream belongs to the row, not to the batch)."""
    model, tok = tiny_model64
    reqs = [Request(PERSONAS[p], QUESTIONS[q], 6) for p in ("villain", "teacher") for q in ("q0", "q1")]
    sp = _sampler(max_tokens=32)
    free = sample_token_ids(model, tok, reqs, sp, batch_size=64)
    counts = np.bincount([t for toks in free.values() for t in toks[:12]])
    stops = {tok.eos_token_id, *(int(t) for t in np.argsort(counts)[-3:])}
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted(stops)
    log = logging.getLogger("test.sampling")
    try:
        with caplog.at_level(logging.DEBUG, logger="test.sampling"):
            big = sample_completions(model, tok, reqs, sp, batch_size=64, log=log)
        small = sample_completions(model, tok, reqs, sp, batch_size=5)
    finally:
        model.generation_config.eos_token_id = saved
    assert big == small
    assert any("batch compacted" in r.getMessage() for r in caplog.records)
    assert sum(c.finish_reason == "stop" for c in big) >= len(big) // 2
    for c in big:
        toks = free[(c.request_index, c.sample_index)]
        cut = next((k for k, t in enumerate(toks) if t in stops), None)
        if cut is None:
            assert (c.finish_reason, c.n_tokens) == ("length", 32)
            assert c.text == tok.decode(toks, skip_special_tokens=True)
        else:
            assert (c.finish_reason, c.n_tokens) == ("stop", cut + 1)
            assert c.text == tok.decode(toks[:cut], skip_special_tokens=True)


def test_fused_path_where_it_cannot_run_is_a_clear_error(tiny_model):
    """The fused decode path needs CUDA: asked for on the CPU it says so (the default there is
    the PyTorch path)."""
    model, tok = tiny_model
    with pytest.raises(SamplerError, match="fused decode path needs CUDA"):
        sample_completions(model, tok, REQUESTS[:1], _sampler(max_tokens=2), fused=True)
