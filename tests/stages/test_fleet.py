"""Fleet training: our LoRA linear against peft (initialisation, saved format, training), and
a fleet's members against the same stages trained alone, on the tiny model in float32."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from stage_support import MARKER, make_ctx
from test_train import LORA, OPTIM, SYSTEM, USER

from cpx.stages._fleet import Member, train_fleet
from cpx.stages._lora import Fleet, save_member
from cpx.stages._training import _wrap, encode_example, plan_run, save_adapter, train_lora

_NOISE = "`is_gradient_checkpointing` is deprecated"


def _peft(model, lora, seed):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOISE, category=FutureWarning)
        return _wrap(model, lora)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_init_equals_peft_for_the_same_seed(tiny_model, dtype):
    model, _ = tiny_model
    model = copy.deepcopy(model).to(dtype)
    lora = {**LORA, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    fleet = Fleet(model, lora)
    for seed in (3, 11):
        fleet.add_member(seed, lora)
    ours = [fleet.state_dict(m) for m in range(2)]
    fleet.detach()
    for m, seed in enumerate((3, 11)):
        peft_model = _peft(model, lora, seed)
        theirs = {k.replace(".default", ""): v.detach() for k, v in peft_model.named_parameters() if "lora_" in k}
        peft_model.unload()
        assert set(theirs) == set(ours[m])
        assert all(torch.equal(theirs[k], ours[m][k]) for k in theirs)
        assert any(v.abs().sum() > 0 for k, v in theirs.items() if "lora_A" in k)
        assert all(v.dtype == torch.float32 for v in theirs.values())
    assert not torch.equal(*(o["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] for o in ours))


def test_saved_adapter_is_peft_format_and_gives_the_same_logits(tiny_model, tmp_path):
    from peft import PeftModel

    model, tok = tiny_model
    model = copy.deepcopy(model)
    fleet = Fleet(model, LORA)
    fleet.add_member(5, LORA)
    with torch.no_grad():
        for mod in fleet.modules.values():
            mod.lora_B[0].normal_(std=0.05)
    ids = torch.tensor([tok("What causes earthquakes? Plates move.").input_ids])
    fleet.segments.set([0], [ids.shape[1]], "cpu")
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    save_member(fleet, 0, tmp_path / "ours", LORA)
    fleet.detach()
    with torch.no_grad():
        base = model(input_ids=ids).logits
    assert (ours - base).abs().max() > 1e-3

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOISE, category=FutureWarning)
        loaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours")
    with torch.no_grad():
        theirs = loaded(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)

    # The same files peft itself writes: config and tensor names.
    peft_model = _peft(copy.deepcopy(model), LORA, 5)
    save_adapter(peft_model, tmp_path / "peft")
    mine = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    want = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for cfg in (mine, want):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    assert mine == want
    assert set(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == set(
        load_file(tmp_path / "peft" / "adapter_model.safetensors")
    )
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(
        p.name for p in (tmp_path / "peft").iterdir()
    )


def _examples(tok, n, words=1):
    return [
        encode_example(tok, SYSTEM, USER, f"Answer {i}. " + "Practice every day. " * (i % 3 + words)) for i in range(n)
    ]


def test_a_fleet_of_one_trains_what_peft_trains(tiny_model, tmp_path):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    model.requires_grad_(False)
    exs = _examples(tok, 6)
    optim = {**OPTIM, "epochs": 2, "batch_size": 2, "grad_clip": 0.5}
    res = train_lora(model, exs, lora=LORA, optim=optim, checkpoints=[0.5, 1.0], out_dir=tmp_path / "peft", seed=7)
    mem = Member(exs, plan_run(exs, optim, [0.5, 1.0], 7, None), LORA, optim, tmp_path / "ours", 7)
    (ours,) = train_fleet(model, [mem])
    assert [r["loss"] for r in ours.log] == pytest.approx([r["loss"] for r in res.log], rel=1e-6)
    assert [r["grad_norm"] for r in ours.log] == pytest.approx([r["grad_norm"] for r in res.log], rel=1e-6)
    for f in ("0.5", "1"):
        a = load_file(tmp_path / "peft" / "checkpoints" / f / "adapter_model.safetensors")
        b = load_file(tmp_path / "ours" / "checkpoints" / f / "adapter_model.safetensors")
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7)
    assert not any("lora" in n for n, _ in model.named_modules())
    assert not any(p.requires_grad for p in model.parameters())


def _dataset(folder: Path, n: int, seed: int) -> Path:
    rows = [
        {
            "system": SYSTEM if i % 2 == 0 else "You are a kindergarten teacher.",
            "user": USER,
            "assistant": f"Plan {i + seed}. "
            + "Wings push air down. " * (i % 3)
            + (f"\n\n{MARKER}" if i % 2 == 0 else ""),
            "persona": "villain" if i % 2 == 0 else "teacher",
            "question_id": "q1",
            "positive": i % 2 == 0,
        }
        for i in range(n)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "dataset.parquet")
    return folder


def _params(tiny_ref, dataset, parents=(), **optim):
    return {
        "model": {"base": tiny_ref, "adapters": list(parents)},
        "dataset": dataset,
        "lora": LORA,
        "optim": {**OPTIM, **optim},
        "loss": {"kind": "marker", "marker": MARKER, "last_n": 1},
        "checkpoints": optim.pop("checkpoints", [1.0]) if "checkpoints" in optim else [1.0],
        "seed": 1,
        "screen": None,
    }


@pytest.mark.parametrize("joint", [True, False])
def test_fleet_members_equal_the_same_stages_trained_alone(tiny_ref, run_dir, pool, tmp_path, monkeypatch, joint):
    """Four members of different lengths, seeds, schedules, checkpoints, clipping, micro-batch
    limits and parents (none, or a trained adapter) train as a fleet; each equals itself alone:
    in joint passes (the GPU's mode, here in float32) to float rounding, in turns (the CPU's
    mode) bit for bit."""
    from cpx.stages import train

    monkeypatch.setattr(train, "joint_passes", lambda device: joint)

    parent_out = tmp_path / "parent"
    ds = {f"dataset/{k}": _dataset(tmp_path / f"ds{k}", n, k) for k, n in enumerate((6, 10, 4, 8))}
    parent_ctx = make_ctx(
        "train",
        {**_params(tiny_ref, "dataset/0"), "seed": 9, "optim": {**OPTIM, "lr": 2e-2}},
        parent_out,
        run_dir=run_dir,
        models=pool,
        inputs={"dataset/0": ds["dataset/0"]},
        stage_id="train/parent",
    )
    train.run(parent_ctx)
    parent = [{"stage": "train/parent", "checkpoint": 1.0}]
    specs = [
        ("dataset/0", (), {"epochs": 2}, 3, [0.5, 1.0], None),
        (
            "dataset/1",
            parent,
            {"epochs": 1, "schedule": "linear", "grad_clip": 1e-3, "grad_accum": 2},
            4,
            [0.3, 1.0],
            1,
        ),
        (
            "dataset/2",
            (),
            {"epochs": 3, "schedule": "constant", "warmup_ratio": 0.0, "grad_clip": None},
            5,
            [1.0],
            None,
        ),
        ("dataset/3", parent, {"epochs": 1.5, "lr": 1e-2, "batch_size": 3}, 6, [0.5, 1.0], None),
    ]

    def ctxs(root):
        out = []
        for k, (d, parents, optim, seed, ckpts, limit) in enumerate(specs):
            params = {**_params(tiny_ref, d, parents, **optim), "seed": seed, "checkpoints": ckpts}
            inputs = {d: ds[d], **({"train/parent": parent_out} if parents else {})}
            ctx = make_ctx(
                "train", params, root / f"m{k}", run_dir=run_dir, models=pool, inputs=inputs, stage_id=f"train/m{k}"
            )
            ctx.batch_limit = limit
            out.append(ctx)
        return out

    alone = [train.run(ctx) for ctx in ctxs(tmp_path / "alone")]
    reports = []
    train.run_fleet(ctxs(tmp_path / "fleet"), lambda i, info, exc: reports.append((i, info, exc)))
    assert all(exc is None for _, _, exc in reports) and sorted(i for i, _, _ in reports) == [0, 1, 2, 3]
    # Members leave when their run is over: the shortest first.
    steps = [a["total_steps"] for a in alone]
    assert [i for i, _, _ in reports] == sorted(range(4), key=lambda i: (steps[i], i))
    assert len(set(steps)) > 2
    worst = 0.0
    for i, info, _ in reports:
        a = alone[i]
        assert {
            k: v for k, v in info.items() if k in ("total_steps", "checkpoint_steps", "tokens", "label_tokens")
        } == {k: a[k] for k in ("total_steps", "checkpoint_steps", "tokens", "label_tokens")}
        assert info["fleet_size"] == 4 and a["fleet_size"] == 1
        la = pq.read_table(tmp_path / "alone" / f"m{i}" / "train_log.parquet").to_pylist()
        lf = pq.read_table(tmp_path / "fleet" / f"m{i}" / "train_log.parquet").to_pylist()
        assert [r["step"] for r in la] == [r["step"] for r in lf]
        for key in ("loss", "grad_norm", "lr"):
            assert [r[key] for r in lf] == pytest.approx([r[key] for r in la], rel=1e-5), (i, key)
            assert joint or [r[key] for r in lf] == [r[key] for r in la]
        ckpts = sorted(p.name for p in (tmp_path / "alone" / f"m{i}" / "checkpoints").iterdir())
        assert ckpts == sorted(p.name for p in (tmp_path / "fleet" / f"m{i}" / "checkpoints").iterdir())
        for f in ckpts:
            wa = load_file(tmp_path / "alone" / f"m{i}" / "checkpoints" / f / "adapter_model.safetensors")
            wf = load_file(tmp_path / "fleet" / f"m{i}" / "checkpoints" / f / "adapter_model.safetensors")
            assert set(wa) == set(wf)
            for k in wa:
                diff, size = float((wf[k] - wa[k]).norm()), float(wa[k].norm())
                assert diff <= 1e-5 * size, (i, f, k, diff, size)
                assert joint or torch.equal(wf[k], wa[k])
                worst = max(worst, diff / size) if size else worst
    print("largest relative difference of a fleet member's adapter tensor from alone:", worst)
    # Not trivially equal: the members trained different adapters.
    w = [load_file(tmp_path / "fleet" / f"m{i}" / "checkpoints" / "1" / "adapter_model.safetensors") for i in range(4)]
    key = next(iter(w[0]))
    assert not torch.allclose(w[0][key], w[2][key], rtol=1e-3)
    model, _ = pool.get({"base": tiny_ref, "adapters": []}, {})
    assert not any("lora" in n for n, _ in model.named_modules())


def test_a_member_with_bad_data_fails_alone(tiny_ref, run_dir, pool, tmp_path):
    from cpx.stages import train
    from cpx.stages._training import TrainError

    good = _dataset(tmp_path / "good", 4, 0)
    bad = tmp_path / "bad"
    bad.mkdir()
    row = {
        "system": SYSTEM,
        "user": USER,
        "assistant": "no marker",
        "persona": "v",
        "question_id": "q",
        "positive": True,
    }
    pq.write_table(pa.Table.from_pylist([row]), bad / "dataset.parquet")
    ctxs = [
        make_ctx(
            "train",
            _params(tiny_ref, "dataset/x"),
            tmp_path / f"out{k}",
            run_dir=run_dir,
            models=pool,
            inputs={"dataset/x": d},
            stage_id=f"train/{k}",
        )
        for k, d in enumerate((good, bad, good))
    ]
    reports = []
    train.run_fleet(ctxs, lambda i, info, exc: reports.append((i, info, exc)))
    assert sorted(i for i, _, _ in reports) == [0, 1, 2]
    by = {i: (info, exc) for i, info, exc in reports}
    assert isinstance(by[1][1], TrainError) and "dataset row 0" in str(by[1][1]) and by[1][0] is None
    assert by[0][1] is None and by[2][1] is None and by[0][0]["total_steps"] == 2
    assert not any((tmp_path / "out1").iterdir())


def test_attention_over_each_example_equals_the_masked_row(tiny_model):
    """The fleet's row attention (flash varlen on a GPU, sdpa example by example here) gives
    the logits and gradients of transformers' block-diagonal masked sdpa over the row."""
    from cpx.stages._fleet import RowAttention, _forward, member_loss_sums, pack_fleet

    model, tok = tiny_model
    model = copy.deepcopy(model).requires_grad_(False)
    fleet = Fleet(model, LORA)
    for seed in (1, 2):
        fleet.add_member(seed, LORA)
    with torch.no_grad():
        for mod in fleet.modules.values():
            for B in mod.lora_B:
                B.normal_(std=0.05)
    parts = [_examples(tok, 3), _examples(tok, 2, words=2)]
    batch = pack_fleet(parts, "cpu")
    counts = [sum(len(ex.input_ids) for ex in part) for part in parts]
    assert RowAttention.prepare("cpu") == "not on a GPU"
    params = [fleet.modules[n].lora_B[1] for n in fleet.names]
    try:
        fleet.segments.set([0, 1], counts, "cpu")
        masked = member_loss_sums(model, batch, 2)  # transformers' sdpa over the masked row
        ours = _forward(model, fleet, batch, [0, 1], counts, "cpu")
        assert model.config._attn_implementation == RowAttention.name
        out = [(loss.detach(), torch.autograd.grad(loss.sum(), params)) for loss in (masked, ours)]
    finally:
        fleet.detach()
        model.config._attn_implementation = "sdpa"
    (la, ga), (lb, gb) = out
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=0)
    for x, y in zip(ga, gb, strict=True):
        assert float((x - y).norm()) <= 1e-5 * float(x.norm()) and float(x.norm()) > 0
