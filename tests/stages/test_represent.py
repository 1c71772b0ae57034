"""Hidden states, centroids and cosines against transformers' output_hidden_states and scipy."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.spatial.distance import cosine as cosine_distance
from stage_support import make_ctx, personas, questions

from cpx.models import render_prompt
from cpx.stages import represent
from cpx.stages._hidden import HiddenStateError, centroid_cosines, last_prompt_hidden_states
from cpx.stages._rows import StageParamError


def _prompts(tok):
    return [render_prompt(tok, p["prompt"], q["text"]) for p in personas() for q in questions()]


def _reference(model, tok, prompts, layers):
    """One prompt at a time, no padding, transformers' own output_hidden_states."""
    out = []
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        out.append([hs[layer][0, -1].float().numpy() for layer in layers])
    return np.array(out)


def test_batched_left_padded_equals_one_by_one(tiny_model):
    model, tok = tiny_model
    prompts = _prompts(tok)
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # padding really happens
    layers = [0, 1, 2]  # embeddings, a decoder layer, the final norm (2 layers)
    ref = _reference(model, tok, prompts, layers)
    batched = last_prompt_hidden_states(model, tok, prompts, layers, batch_size=len(prompts))
    single = last_prompt_hidden_states(model, tok, prompts, layers, batch_size=1)
    np.testing.assert_allclose(batched, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(single, ref, atol=1e-5, rtol=1e-5)
    # a caller's layer order is kept
    swapped = last_prompt_hidden_states(model, tok, prompts, [2, 0], batch_size=5)
    np.testing.assert_allclose(swapped, ref[:, [2, 0]], atol=1e-5, rtol=1e-5)


def test_layer_out_of_range(tiny_model):
    model, tok = tiny_model
    with pytest.raises(HiddenStateError, match=r"layer 3 is out of range: the model has layers 0\.\.2"):
        last_prompt_hidden_states(model, tok, ["x"], [1, 3])


def _cosines_reference(centroids, center):
    p, n_layers, _ = centroids.shape
    out = np.zeros((n_layers, p, p))
    for li in range(n_layers):
        c = centroids[:, li]
        if center:
            c = c - np.mean([centroids[k, li] for k in range(p)], axis=0)
        for a in range(p):
            for b in range(p):
                out[li, a, b] = 1.0 - cosine_distance(c[a], c[b])
    return out


@pytest.mark.parametrize("centering", ["global_mean", "none"])
def test_centering_and_cosines_match_scipy(centering):
    rng = np.random.default_rng(1)
    cents = rng.normal(size=(5, 3, 16)) + rng.normal(size=(1, 3, 16)) * 3
    got = centroid_cosines(cents, centering)
    np.testing.assert_allclose(got, _cosines_reference(cents, centering == "global_mean"), atol=1e-12)
    with pytest.raises(HiddenStateError, match="centering"):
        centroid_cosines(cents, "mean")


def test_represent_stage(tiny_ref, run_dir, pool, tiny_model, tmp_path):
    model, tok = tiny_model
    layers = [1, 2]
    params = {
        "model": {"base": tiny_ref, "adapters": []},
        "personas": personas(),
        "questions": questions(),
        "layers": layers,
        "token": "last_prompt",
        "centering": "global_mean",
    }
    labels = {"arm": "B", "source": "villain", "seed": 42, "checkpoint": 0.4}
    ctx = make_ctx("represent", params, tmp_path / "out", run_dir=run_dir, models=pool, labels=labels)
    info = represent.run(ctx)
    assert info["prompts"] == len(personas()) * len(questions())

    ref = _reference(model, tok, _prompts(tok), layers).reshape(len(personas()), len(questions()), len(layers), -1)
    ref_cent = ref.mean(axis=1)
    ref_cos = _cosines_reference(ref_cent, True)

    cent = pq.read_table(tmp_path / "out" / "centroids.parquet").to_pylist()
    assert len(cent) == len(personas()) * len(layers)
    names = [p["name"] for p in personas()]
    for row in cent:
        assert {k: row[k] for k in labels} == labels
        np.testing.assert_allclose(
            row["vector"], ref_cent[names.index(row["persona"]), layers.index(row["layer"])], atol=1e-5
        )
    cos = pq.read_table(tmp_path / "out" / "cosines.parquet")
    assert cos.column_names == [*labels, "layer", "persona_a", "persona_b", "cosine"]
    rows = cos.to_pylist()
    assert len(rows) == len(layers) * len(names) ** 2
    for row in rows:
        assert {k: row[k] for k in labels} == labels
        want = ref_cos[layers.index(row["layer"]), names.index(row["persona_a"]), names.index(row["persona_b"])]
        assert row["cosine"] == pytest.approx(want, abs=1e-5)


def test_represent_stage_bad_params(tiny_ref, run_dir, pool, tmp_path):
    base = {
        "model": {"base": tiny_ref, "adapters": []},
        "personas": personas(),
        "questions": questions(),
        "layers": [1],
        "token": "last_prompt",
        "centering": "global_mean",
    }
    for bad, msg in (
        ({"layers": [7]}, "layer 7 is out of range"),
        ({"centering": "mean"}, "centering"),
        ({"token": "mean"}, "token"),
        ({"questions": []}, "questions"),
    ):
        ctx = make_ctx(
            "represent", {**base, **bad}, tmp_path / "bad", run_dir=run_dir, models=pool, stage_id="represent/x"
        )
        with pytest.raises(StageParamError, match=msg):
            represent.run(ctx)
