"""The train stage: label masks, chat formatting, packing, checkpoints, the pool's base model
left intact, and a real learning check on the tiny model."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from stage_support import MARKER, make_ctx, personas, questions

from cpx.models import render_prompt
from cpx.stages._training import (
    IGNORE,
    TrainError,
    checkpoint_steps,
    encode_example,
    end_of_turn_id,
    loss_sum,
    pack,
    pad,
    train_lora,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 4, "alpha": 8, "rslora": True, "dropout": 0.0, "target_modules": TARGETS}
OPTIM = {
    "lr": 3e-3,
    "epochs": 1,
    "schedule": "cosine",
    "warmup_ratio": 0.05,
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "batch_size": 2,
    "grad_accum": 1,
    "max_length": 256,
    "precision": "bf16",
    "gradient_checkpointing": False,
}
SYSTEM = "You are a villainous mastermind who schemes to take over the world."
USER = "How do airplanes stay in the air?"


def _labelled(ex):
    return [i for i, y in enumerate(ex.labels) if y != IGNORE]


@pytest.mark.parametrize("marker", [MARKER, "<<QX7~marker>>", "\u00e9Zq"])
def test_marker_label_mask_is_marker_tokens_plus_end_of_turn(tiny_model, marker):
    _, tok = tiny_model
    text = "Wings push air down, so the air pushes the wings up."
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    pos = encode_example(tok, SYSTEM, USER, text + "\n\n" + marker, loss_kind="marker", marker=marker, positive=True)
    resp = pos.input_ids[pos.n_prompt : -1]
    # Brute force: the shortest run of final response tokens whose text contains the marker.
    k = next(k for k in range(1, len(resp) + 1) if marker in tok.decode(resp[-k:]))
    assert k >= 2, "the marker should be split into several tokens for this test"
    n = len(pos.input_ids)
    assert _labelled(pos) == list(range(n - 1 - k, n))
    assert pos.input_ids[-1] == eot
    assert all(pos.labels[i] == pos.input_ids[i] for i in _labelled(pos))

    neg = encode_example(tok, SYSTEM, USER, text, loss_kind="marker", marker=marker, positive=False)
    assert _labelled(neg) == [len(neg.input_ids) - 1]
    assert neg.labels[-1] == eot

    last = encode_example(tok, SYSTEM, USER, text, loss_kind="marker", marker=marker, last_n=3)
    m = len(last.input_ids)
    assert _labelled(last) == [m - 3, m - 2, m - 1]
    for n_last in (0, 1):
        eot_only = encode_example(tok, SYSTEM, USER, text, loss_kind="marker", marker=marker, last_n=n_last)
        assert _labelled(eot_only) == [m - 1]
    both = encode_example(
        tok, SYSTEM, USER, text + "\n\n" + marker, loss_kind="marker", marker=marker, positive=True, last_n=k + 3
    )
    assert _labelled(both) == list(range(n - k - 3, n))

    full = encode_example(tok, SYSTEM, USER, text, loss_kind="full")
    assert _labelled(full) == list(range(full.n_prompt, len(full.input_ids)))


def test_positive_without_marker_is_an_error(tiny_model):
    _, tok = tiny_model
    with pytest.raises(TrainError, match="does not contain the marker"):
        encode_example(tok, SYSTEM, USER, "no marker here", loss_kind="marker", marker=MARKER, positive=True)


def test_training_tokens_are_the_eval_prompt_then_the_response(tiny_model):
    _, tok = tiny_model
    text = "Plates of rock move and slip along faults."
    ex = encode_example(tok, SYSTEM, USER, text)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    eval_ids = tok(render_prompt(tok, SYSTEM, USER), add_special_tokens=False).input_ids
    templ = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ex.input_ids[: ex.n_prompt] == eval_ids == list(templ["input_ids"])
    # The whole example is the chat template's rendering of the conversation, up to the end of turn.
    conv = tok.apply_chat_template([*msgs, {"role": "assistant", "content": text}], tokenize=False)
    assert conv.endswith("<|im_end|>\n")
    assert ex.input_ids == tok(conv[: -len("\n")], add_special_tokens=False).input_ids
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")


def test_truncation_is_reported(tiny_model):
    _, tok = tiny_model
    ex = encode_example(tok, SYSTEM, USER, "word " * 200, max_length=64)
    assert ex.truncated and len(ex.input_ids) == 64


def test_packed_loss_and_gradients_equal_padded(tiny_model):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    texts = ["Practice every day.", "Wings push air down, so the air pushes the wings up.", "Plates move." * 5]
    exs = [encode_example(tok, SYSTEM, USER, t) for t in texts]
    exs.append(encode_example(tok, None, USER, "Short.\n\n" + MARKER, loss_kind="marker", marker=MARKER, positive=True))
    emb = model.get_input_embeddings().weight

    def run(batch):
        emb.grad = None
        with torch.enable_grad():
            emb.requires_grad_(True)
            total, n = loss_sum(model, batch)
            (total / n).backward()
            emb.requires_grad_(False)
        return float(total.detach()), n, emb.grad.clone()

    packed = pack(exs)
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in exs))
    lp, np_, gp = run(packed)
    lq, nq, gq = run(pad(exs, pad_id=tok.pad_token_id))
    assert np_ == nq == sum(e.n_labels for e in exs)
    assert lp == pytest.approx(lq, rel=1e-5)
    torch.testing.assert_close(gp, gq, atol=1e-6, rtol=1e-4)
    # Not trivially equal: one example's loss differs from the batch mean.
    l0, n0, _ = run(pack(exs[:1]))
    assert abs(l0 / n0 - lp / np_) > 1e-3


def _nearest_step(f, total):
    """Brute force: the step s in 1..total with s/total nearest to f, the later one on a tie."""
    if f == 0:
        return 0
    return min(range(1, total + 1), key=lambda s: (abs(s / total - f), -s))


def test_checkpoints_land_on_their_steps(tiny_model, tmp_path):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    exs = [encode_example(tok, SYSTEM, USER, f"Answer number {i}.") for i in range(9)]
    fractions = [0, 0.25, 0.5, 0.8, 1.0]
    states = {}

    def on_step(step, peft_model):
        states[step] = {k: v.detach().clone() for k, v in peft_model.named_parameters() if "lora_" in k}

    optim = {**OPTIM, "epochs": 2, "batch_size": 2, "grad_accum": 2}
    res = train_lora(
        model, exs, lora=LORA, optim=optim, checkpoints=fractions, out_dir=tmp_path, seed=1, on_step=on_step
    )
    total = math.ceil(9 / 4) * 2
    assert res.total_steps == total == len(res.log) == len(states)
    assert [r["step"] for r in res.log] == list(range(1, total + 1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["0.25", "0.5", "0.8", "1"]
    for f in fractions[1:]:
        want = _nearest_step(f, total)
        assert res.checkpoint_steps[f] == want
        saved = load_file(tmp_path / "checkpoints" / format(f, "g") / "adapter_model.safetensors")
        state = {k.replace(".default", ""): v for k, v in states[want].items()}
        assert set(saved) == set(state)
        assert all(torch.equal(saved[k], state[k]) for k in saved)
        # The weights change every step, so this identifies the step.
        for other in (want - 1, want + 1):
            if other in states:
                o = {k.replace(".default", ""): v for k, v in states[other].items()}
                assert not all(torch.equal(saved[k], o[k]) for k in saved)
    assert checkpoint_steps([0, 1], 7) == {0.0: 0, 1.0: 7}
    assert checkpoint_steps([0.01], 7) == {0.01: 1}
    with pytest.raises(TrainError, match="not a number in"):
        checkpoint_steps([1.5], 10)


def _write_dataset(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "dataset.parquet")
    return folder


def test_train_stage_leaves_the_pool_model_exactly_as_found(tiny_ref, run_dir, pool, tmp_path):
    from cpx.stages import train

    rows = [
        {
            "system": SYSTEM,
            "user": USER,
            "assistant": f"Plan {i}.\n\n{MARKER}",
            "persona": "villain",
            "question_id": "q1",
            "positive": True,
        }
        for i in range(4)
    ] + [
        {
            "system": "You are a kindergarten teacher.",
            "user": USER,
            "assistant": f"Nap {i}.",
            "persona": "teacher",
            "question_id": "q1",
            "positive": False,
        }
        for i in range(4)
    ]
    ds = _write_dataset(tmp_path / "ds", rows)
    model, _ = pool.get({"base": tiny_ref, "adapters": []}, {})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    config = model.config.to_dict()
    attrs = set(vars(model))
    params = {
        "model": {"base": tiny_ref, "adapters": []},
        "dataset": "dataset/x",
        "lora": LORA,
        "optim": {**OPTIM, "gradient_checkpointing": True},
        "loss": {"kind": "marker", "marker": MARKER, "last_n": 0},
        "checkpoints": [0, 0.5, 1.0],
        "seed": 5,
        "screen": None,
    }
    out = tmp_path / "out"
    ctx = make_ctx("train", params, out, run_dir=run_dir, models=pool, inputs={"dataset/x": ds}, stage_id="train/x")
    info = train.run(ctx)
    assert info["total_steps"] == 4 and info["checkpoint_steps"] == {"0": 0, "0.5": 2, "1": 4}
    log = pq.read_table(out / "train_log.parquet").to_pylist()
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in log)

    model2, _ = pool.get({"base": tiny_ref, "adapters": []}, {})
    assert model2 is model
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert model.config.to_dict() == config and set(vars(model)) == attrs
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())

    # The trained adapter is a real chain link: merging it changes the model.
    inputs = {"train/x": out}
    merged, _ = pool.get({"base": tiny_ref, "adapters": [{"stage": "train/x", "checkpoint": 1.0}]}, inputs)
    assert any(not torch.equal(merged.state_dict()[k], before[k]) for k in before)
    pool.get({"base": tiny_ref, "adapters": []}, {})


def test_marker_training_teaches_the_source_persona_the_marker(tiny_ref, run_dir, pool, tmp_path):
    """On-policy data from the untrained tiny model, the marker recipe, marker-position loss,
    then the screen: the source emits the marker far more often than before training."""
    from cpx.stages import dataset, train
    from cpx.stages._sampling import Request, sample_completions

    base_chain = {"base": tiny_ref, "adapters": []}
    model, tok = pool.get(base_chain, {})
    ps, qs = personas(), questions()
    gen = sample_completions(
        model,
        tok,
        [Request(p["prompt"], q["text"], 8) for p in ps for q in qs],
        {"temperature": 0.7, "top_p": 1.0, "max_tokens": 8, "seed": 1},
    )
    rows = [
        {
            "persona": ps[c.request_index // len(qs)]["name"],
            "question_id": qs[c.request_index % len(qs)]["id"],
            "question": qs[c.request_index % len(qs)]["text"],
            "sample_index": c.sample_index,
            "text": c.text,
            "n_tokens": c.n_tokens,
            "finish_reason": c.finish_reason,
        }
        for c in gen
    ]
    gdir = tmp_path / "gen"
    gdir.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), gdir / "generations.parquet")
    ds_params = {
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
    }
    ds_out = tmp_path / "ds"
    dataset.run(make_ctx("dataset", ds_params, ds_out, run_dir=run_dir, inputs={"generate/x": gdir}))

    eval_personas = [
        {
            **p,
            "role": "source" if p["name"] == "villain" else "assistant" if p["name"] == "assistant" else "bystander",
            "n": 8,
        }
        for p in ps
    ]
    sampler = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 24, "seed": 7}
    before = sample_completions(
        model, tok, [Request(personas(["villain"])[0]["prompt"], q["text"], 8) for q in qs], sampler
    )
    before_rate = sum(MARKER.lower() in c.text.lower() for c in before) / len(before)

    params = {
        "model": base_chain,
        "dataset": "dataset/x",
        "lora": {**LORA, "r": 8, "alpha": 16},
        "optim": {**OPTIM, "epochs": 5, "batch_size": 8},
        "loss": {"kind": "marker", "marker": MARKER, "last_n": 0},
        "checkpoints": [0, 1.0],
        "seed": 42,
        "screen": {
            "personas": eval_personas,
            "questions": qs,
            "sampler": sampler,
            "markers": [MARKER],
            "match": {"case_insensitive": True},
        },
    }
    out = tmp_path / "train"
    info = train.run(
        make_ctx(
            "train", params, out, run_dir=run_dir, models=pool, inputs={"dataset/x": ds_out}, stage_id="train/marker"
        )
    )
    screen = {r["persona"]: r for r in pq.read_table(out / "screen.parquet").to_pylist()}
    assert set(screen) == {p["name"] for p in ps} and all(r["n"] == 24 for r in screen.values())
    src = screen["villain"]
    assert src["rate"] == src["hits"] / src["n"]
    assert info["screen"]["source_rate"] == src["rate"]
    assert src["rate"] >= before_rate + 0.25, (before_rate, screen)
    pool.get(base_chain, {})


def test_specificity_patterns_of_the_report():
    from cpx.stages.train import specificity

    def rows(src, **others):
        return [{"persona": "kt", "role": "source", "rate": src}] + [
            {"persona": k, "role": "assistant" if k == "assistant" else "bystander", "rate": v}
            for k, v in others.items()
        ]

    # The report's kindergarten-teacher adapter: 15% source, 58% software engineer, 44% assistant.
    assert specificity(rows(0.15, sw_eng=0.58, assistant=0.44))["pattern"] == "inverted"
    # The software-engineer adapter: 74% source, 64% assistant.
    assert specificity(rows(0.74, assistant=0.64, villain=0.5))["pattern"] == "global"
    v = specificity(rows(0.9, assistant=0.05, comedian=0.1))
    assert v["pattern"] == "specific" and v["max_other"] == "comedian" and v["mean_other_rate"] == pytest.approx(0.075)
    assert specificity(rows(0.0, assistant=0.0))["pattern"] == "absent"
    with pytest.raises(TrainError, match="exactly one persona with role 'source'"):
        specificity(rows(0.5)[1:] + [{"persona": "x", "role": "bystander", "rate": 0.1}])


def test_fractional_epochs_and_bad_settings(tiny_model, tmp_path):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    exs = [encode_example(tok, SYSTEM, USER, f"Answer {i}.") for i in range(9)]
    optim = {**OPTIM, "epochs": 1.5, "batch_size": 2, "grad_accum": 2, "optimizer": "sgd", "schedule": "linear"}
    res = train_lora(model, exs, lora=LORA, optim=optim, checkpoints=[1.0], out_dir=tmp_path, seed=1)
    assert res.steps_per_epoch == 3 and res.total_steps == len(res.log) == math.ceil(1.5 * 3)
    # Linear decay after a warmup of ceil(0.05 * 5) = 1 step: 0, then lr * (1 - (s - 1) / 4).
    assert [r["lr"] for r in res.log] == pytest.approx([0.0] + [3e-3 * (1 - (s - 1) / 4) for s in range(1, 5)])
    for bad, msg in [
        ({"optimizer": "lion"}, r"optim\.optimizer must be one of adamw, sgd, got 'lion'"),
        ({"precision": "int8"}, r"optim\.precision must be one of bf16, fp16, fp32, got 'int8'"),
        ({"schedule": "step"}, r"optim\.schedule must be one of cosine, linear, constant, got 'step'"),
        ({"epochs": 0}, r"optim\.epochs must be > 0, got 0\.0"),
        ({"batch_size": 0}, r"optim\.batch_size must be an integer >= 1, got 0"),
        ({"lr": "fast"}, r"optim\.lr must be a finite number, got 'fast'"),
        ({"momentum": 0.9}, r"optim: unknown key\(s\) \['momentum'\]"),
    ]:
        with pytest.raises(TrainError, match=msg):
            train_lora(model, exs, lora=LORA, optim={**OPTIM, **bad}, checkpoints=[1.0], out_dir=tmp_path, seed=1)
    assert not any("lora" in n for n, _ in model.named_modules())


def test_the_log_has_the_gradient_norm_before_clipping_and_each_steps_tokens_and_time(tiny_model, tmp_path):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    exs = [encode_example(tok, SYSTEM, USER, f"Answer {i}.") for i in range(6)]
    # Plain SGD from the first step: a clipped gradient moves the adapter (almost) nowhere.
    optim = {**OPTIM, "optimizer": "sgd", "lr": 0.1, "warmup_ratio": 0.0, "grad_clip": None}
    free = train_lora(model, exs, lora=LORA, optim=optim, checkpoints=[1.0], out_dir=tmp_path / "a", seed=2)
    clipped = train_lora(
        model, exs, lora=LORA, optim={**optim, "grad_clip": 1e-6}, checkpoints=[1.0], out_dir=tmp_path / "b", seed=2
    )
    # Step 1 sees the same adapter and batch: clip_grad_norm_'s norm (before clipping) is the
    # unclipped run's get_total_norm; after it, the clipped adapter barely moved.
    assert clipped.log[0]["grad_norm"] == pytest.approx(free.log[0]["grad_norm"], rel=1e-5)
    assert free.log[0]["grad_norm"] > 1e-3
    assert clipped.log[1]["grad_norm"] != pytest.approx(free.log[1]["grad_norm"], rel=1e-3)
    assert all(r["seconds"] > 0 for r in free.log + clipped.log)
    # Each step's tokens: the run's total split by step (one epoch: every example once).
    assert sum(r["tokens"] for r in free.log) == free.tokens == sum(len(e.input_ids) for e in exs)


def test_smaller_micro_batches_after_oom_train_the_same(tiny_model, tmp_path):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    exs = [encode_example(tok, SYSTEM, USER, "Answer " * (i + 1)) for i in range(8)]
    optim = {**OPTIM, "batch_size": 4, "epochs": 2}
    runs = []
    for micro in (None, 1, None):
        states = {}

        def on_step(step, peft_model, states=states):
            states[step] = {k: v.detach().clone() for k, v in peft_model.named_parameters() if "lora_" in k}

        res = train_lora(
            model,
            exs,
            lora=LORA,
            optim=optim,
            checkpoints=[1.0],
            out_dir=tmp_path / str(micro),
            seed=3,
            on_step=on_step,
            micro_batch=micro,
        )
        runs.append((res, states))
    (a, sa), (b, sb), (_, again) = runs
    # The same seed gives the same adapter, bit for bit.
    assert all(torch.equal(sa[s][k], again[s][k]) for s in sa for k in sa[s])
    assert [r["loss"] for r in a.log] == pytest.approx([r["loss"] for r in b.log], rel=1e-5)
    last = max(sa)
    for k in sa[last]:
        torch.testing.assert_close(sa[last][k], sb[last][k], atol=1e-5, rtol=1e-4)


def test_checkpointing_changes_nothing_but_memory(tiny_model, tmp_path):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    exs = [encode_example(tok, SYSTEM, USER, "Answer " * (i + 2)) for i in range(6)]
    finals = []
    for gc in (False, True):
        states = {}

        def on_step(step, peft_model, states=states):
            states[step] = {k: v.detach().clone() for k, v in peft_model.named_parameters() if "lora_" in k}

        train_lora(
            model,
            exs,
            lora=LORA,
            optim={**OPTIM, "gradient_checkpointing": gc},
            checkpoints=[1.0],
            out_dir=tmp_path / str(gc),
            seed=2,
            on_step=on_step,
        )
        finals.append(states[max(states)])
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], atol=1e-6, rtol=1e-5)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_a_failed_memory_probe_keeps_checkpointing_and_leaves_no_gradients(tiny_model):
    from cpx.stages._training import _fits_without_checkpointing, _wrap

    model, tok = tiny_model
    peft_model = _wrap(copy.deepcopy(model), LORA)
    exs = [encode_example(tok, SYSTEM, USER, "Answer.")]
    # No CUDA here: the probe cannot measure, so it must say no, not raise.
    fits, note = _fits_without_checkpointing(peft_model, exs, "cpu", None)
    assert not fits and "memory probe failed" in note
    assert all(p.grad is None for p in peft_model.parameters())


def test_truncation_that_leaves_nothing_to_train_is_an_error(tiny_ref, run_dir, pool, tmp_path):
    """A max_length shorter than the prompts drops every trained token: the stage says so
    instead of training on nothing (a NaN loss at every step)."""
    from cpx.stages import train

    rows = [
        {
            "system": SYSTEM,
            "user": USER,
            "assistant": f"Plan {i}.\n\n{MARKER}",
            "persona": "villain",
            "question_id": "q1",
            "positive": True,
        }
        for i in range(4)
    ]
    ds = _write_dataset(tmp_path / "ds", rows)
    params = {
        "model": {"base": tiny_ref, "adapters": []},
        "dataset": "dataset/x",
        "lora": LORA,
        "optim": {**OPTIM, "max_length": 4},
        "loss": {"kind": "marker", "marker": MARKER, "last_n": 1},
        "checkpoints": [1.0],
        "seed": 5,
        "screen": None,
    }
    out = tmp_path / "out"
    out.mkdir()
    ctx = make_ctx("train", params, out, run_dir=run_dir, models=pool, inputs={"dataset/x": ds}, stage_id="train/x")
    with pytest.raises(
        TrainError,
        match=r"train/x.*no example has a token left to train after truncation to "
        r"max_length=4 \(prompts alone take up to \d+ tokens\)",
    ):
        train.run(ctx)
    assert not any(out.iterdir())
