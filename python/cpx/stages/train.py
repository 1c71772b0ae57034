"""The `train` stage: LoRA SFT on a dataset stage's examples, starting from any model chain.

Outputs (docs/plan-format.md): `checkpoints/<f>/` (a peft adapter per fraction f > 0),
`train_log.parquet` (`step, loss, lr, grad_norm, tokens`; the step times, which differ
from run to run, are the manifest's `info.step_seconds`) and, for a marker adapter with `screen` set,
`screen.parquet` (`persona, role, n, hits, rate`): the adapter's marker rate on every eval
persona right after training, with a warning in the stage log when the adapter is not
specific to its source (the study's "inverted" and "global" adapters were erased by 25 SFT
steps and left two of four sources uninterpretable).

`optim.gradient_checkpointing: true` is taken as "checkpoint if memory needs it": on a GPU a
probe runs the longest micro-batch without checkpointing and drops it when it fits (it changes
no gradient, and cost 2.3x in step time on an H100); the decision is in the stage's info.

Training runs through the fleet trainer (`cpx.stages._fleet`; a stage alone is a fleet of
one): `run_fleet` trains stages of equal `fleet_key` together, one pass over the shared base
per step (docs/plan-format.md, "train").
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpx.errors import is_oom
from cpx.plan import AdapterRef, Chain, Stage, StageRef, TrainParams
from cpx.stages._context import StageContext
from cpx.models import read_adapter, small_model_threads
from cpx.stages._fleet import Member, joint_passes, train_fleet
from cpx.stages._training import Encoded, RunPlan, TrainError, TrainResult, encode_example, end_of_turn_id, plan_run

SPECIFIC = "specific"


def run(ctx: StageContext) -> dict[str, Any]:
    """Train one stage: a fleet of one."""
    out: dict[str, Any] = {}

    def done(i: int, info: dict[str, Any] | None, exc: BaseException | None) -> None:
        if exc is not None:
            raise exc
        out["info"] = info

    run_fleet([ctx], done)
    return out["info"]


@dataclass
class _Prepared:
    """A member's data and settings, checked before any training starts."""

    index: int
    ctx: StageContext
    examples: list[Encoded]
    truncated: int
    plan: RunPlan


def _prepare(i: int, ctx: StageContext, tok) -> _Prepared:
    import pyarrow.parquet as pq

    p: TrainParams = ctx.params
    where = f"stage {ctx.stage.id}"
    rows = pq.read_table(Path(ctx.inputs[p.dataset]) / "dataset.parquet").to_pylist()
    loss = p.loss
    eot = end_of_turn_id(tok)
    max_length = p.optim.max_length
    examples = []
    for k, r in enumerate(rows):
        try:
            examples.append(
                encode_example(
                    tok,
                    r["system"],
                    r["user"],
                    r["assistant"],
                    loss_kind=loss.kind,
                    marker=loss.marker,
                    positive=bool(r.get("positive", False)),
                    last_n=loss.last_n,
                    max_length=max_length,
                    eot_id=eot,
                )
            )
        except TrainError as e:
            raise TrainError(f"{where}: dataset row {k}: {e}") from None
    truncated = sum(ex.truncated for ex in examples)
    if truncated:
        ctx.log.warning(
            "%d of %d examples are longer than max_length=%s and were truncated (their end of turn%s is not trained)",
            truncated,
            len(examples),
            max_length,
            " and marker" if loss.kind == "marker" else "",
        )
    positives = [ex for ex, r in zip(examples, rows, strict=True) if r.get("positive")]
    for group, what in ((examples, "example"), (positives if loss.kind == "marker" else [], "positive example")):
        if group and not any(ex.n_labels for ex in group):
            longest = max(ex.n_prompt for ex in group)
            raise TrainError(
                f"{where}: no {what} has a token left to train after truncation to max_length="
                f"{max_length} (prompts alone take up to {longest} tokens); raise the training "
                "config's max_length"
            )
    try:
        plan = plan_run(examples, p.optim, p.checkpoints, p.seed, ctx.batch_limit)
    except TrainError as e:
        raise TrainError(f"{where}: {e}") from None
    return _Prepared(i, ctx, examples, truncated, plan)


def _check_inputs(ctx: StageContext) -> None:
    """The params parse (on first use, so that a fleet member's error is its own) and name an
    input folder; the rest was checked with the plan (cpx.plan.TrainParams)."""
    p: TrainParams = ctx.params
    if p.dataset not in ctx.inputs:
        raise TrainError(f"stage {ctx.stage.id}: dataset stage {p.dataset!r} is not among its inputs")


def _write_outputs(ctx: StageContext, pool, prep: _Prepared, res: TrainResult, fleet_size: int) -> dict[str, Any]:
    """train_log.parquet, the screen, and the manifest's info of a member whose run is over."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if ctx.device.startswith("cuda"):
        import torch

        # The optimizer state is gone: give its memory back before the screen samples.
        torch.cuda.empty_cache()
    log_table = pa.table(
        {
            "step": pa.array([r["step"] for r in res.log], pa.int64()),
            "loss": pa.array([r["loss"] for r in res.log], pa.float64()),
            "lr": pa.array([r["lr"] for r in res.log], pa.float64()),
            "grad_norm": pa.array([r["grad_norm"] for r in res.log], pa.float64()),
            "tokens": pa.array([r["tokens"] for r in res.log], pa.int64()),
        }
    )
    pq.write_table(log_table, Path(ctx.out_dir) / "train_log.parquet")
    info: dict[str, Any] = {
        "examples": len(prep.examples),
        "truncated": prep.truncated,
        "total_steps": res.total_steps,
        "steps_per_epoch": res.steps_per_epoch,
        "checkpoint_steps": {format(f, "g"): s for f, s in res.checkpoint_steps.items()},
        "tokens": res.tokens,
        "label_tokens": res.label_tokens,
        "train_seconds": round(res.seconds, 3),
        "tokens_per_s": round(res.tokens / res.seconds, 1) if res.seconds else None,
        "final_loss": res.log[-1]["loss"],
        # Wall time of each step (what W&B's tokens/s curve is made of): not in the outputs,
        # which are the same on every run. In a fleet a step is the fleet's joint step.
        "step_seconds": [round(r["seconds"], 5) for r in res.log],
        "fleet_size": fleet_size,
    }
    if res.checkpointing is not None:
        info["gradient_checkpointing"] = res.checkpointing
    if ctx.params.screen is not None:
        saved = [f for f, _ in res.checkpoint_steps.items() if f > 0]
        if not saved:
            ctx.log.warning("screen skipped: no checkpoint fraction > 0 was saved")
        else:
            info["screen"] = screen(ctx, pool, max(saved))
    return info


def fleet_key(stage: Stage) -> str | None:
    """Train stages with equal keys may be trained together as one fleet (one pass over the
    shared base weights per step): the same base model, LoRA shape (rank, target modules,
    rsLoRA, dropout) and precision. Their parent adapters, data, seeds and schedules may differ.
    """
    p = stage.params
    model, lora, optim = p.get("model"), p.get("lora"), p.get("optim")
    if stage.kind != "train" or not (isinstance(model, dict) and isinstance(lora, dict) and isinstance(optim, dict)):
        return None
    shape = {
        "base": model.get("base"),
        "r": lora.get("r"),
        "target_modules": lora.get("target_modules"),
        "rslora": bool(lora.get("rslora", False)),
        "dropout": float(lora.get("dropout", 0.0) or 0.0),
        "precision": optim.get("precision", "bf16"),
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]


FleetDone = Callable[[int, dict[str, Any] | None, BaseException | None], None]


def run_fleet(ctxs: Sequence[StageContext], done: FleetDone) -> None:
    """Train the stages of one fleet (equal `fleet_key`s, one worker, one device).

    `done(i, info, None)` is called as soon as member i's outputs are complete in
    `ctxs[i].out_dir` (`info` is what `run` would return), `done(i, None, error)` when member i
    failed on its own (bad data); either way the other members go on. An error that ends the
    whole fleet (out of memory) is raised: the members not yet reported are the ones in flight.

    All members train together on the worker's model (`cpx.stages._fleet`). On a GPU, in joint
    passes: members on one chain on that chain merged; members on different chains on the
    shared base, each member's parent adapters applied unmerged on its own rows (equal to
    merged up to float rounding). On the CPU each member's passes run in turn on its own chain
    merged, bit for bit the stage alone. A member's screen samples its chain merged, as the eval.
    """
    from cpx.models import ModelPool, adapter_folder

    if not ctxs:
        return
    lead = ctxs[0]
    if len({ctx.device for ctx in ctxs}) > 1:
        raise ValueError(f"a fleet trains on one device, got {sorted({ctx.device for ctx in ctxs})}")
    pool = lead.models if lead.models is not None else ModelPool(lead.device, lead.run_dir)
    for ctx in ctxs[1:]:
        ctx.models = ctx.models if ctx.models is not None else pool
    checked = []
    for i, ctx in enumerate(ctxs):
        try:
            _check_inputs(ctx)
        except TrainError as e:  # one member's error is reported for that member alone
            done(i, None, e)
        else:
            checked.append(i)
    if not checked:
        return
    # Members on one chain (a stage alone) train on it merged, as the eval samples it; members
    # on different chains share the base unmerged, each member's parents on its own rows.
    # Without joint passes (the CPU) each member trains on its own chain merged, switched to
    # before its passes: bit for bit the stage alone.
    joint = joint_passes(lead.device)
    chains = {json.dumps(ctxs[i].params.model.json(), sort_keys=True) for i in checked}
    shared = len(chains) == 1 or not joint
    lead_chain = ctxs[checked[0]].params.model.json()
    train_chain = lead_chain if shared else {"base": lead_chain["base"], "adapters": []}
    inputs = {k: v for i in checked for k, v in ctxs[i].inputs.items()} if shared else {}
    model, tok = pool.get(train_chain, inputs)
    members, prepared = [], []
    for i in checked:
        ctx = ctxs[i]
        try:
            prep = _prepare(i, ctx, tok)
            folders = [adapter_folder(a.json(), ctx.inputs) for a in ctx.params.model.adapters]
            parents = [] if shared else [read_adapter(f) for f in folders]
        except Exception as e:  # bad data fails its member alone
            if is_oom(e):
                raise
            done(i, None, e)
            continue
        p: TrainParams = ctx.params
        members.append(
            Member(
                examples=prep.examples,
                plan=prep.plan,
                lora=p.lora,
                optim=p.optim,
                out_dir=Path(ctx.out_dir),
                seed=p.seed,
                parents=parents,
                log=ctx.log,
                progress=ctx.progress,
                activate=None if joint else functools.partial(pool.get, p.model.json(), ctx.inputs),
            )
        )
        prepared.append(prep)
    if not members:
        return

    def finished(j: int, fleet) -> None:
        prep = prepared[j]
        try:
            res = members[j].result
            assert res is not None
            info = _write_outputs(prep.ctx, pool, prep, res, members[j].fleet_size)
        except Exception as e:  # a member's screen failing fails that member alone
            if is_oom(e):
                raise
            done(prep.index, None, e)
        else:
            done(prep.index, info, None)
        finally:
            # The screen merged this member's chain into the base: back to the fleet's.
            pool.get(train_chain, inputs)

    train_fleet(model, members, device=lead.device, on_done=finished, fleet_log=lead.log)


def screen(ctx: StageContext, pool, checkpoint: float) -> dict[str, Any]:
    """Sample the chain with the new adapter merged (the eval's own merge path) on every eval
    persona, write screen.parquet, and warn when the marker is not specific to the source."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cpx.scan import hit_rates
    from cpx.stages._markers import contains_any
    from cpx.stages._sampling import Request, sample_completions

    p: TrainParams = ctx.params
    sc = p.screen
    assert sc is not None, "screen() is called for a stage with a screen"
    own = AdapterRef(stage=StageRef(ctx.stage.id), checkpoint=checkpoint)
    chain = Chain(base=p.model.base, adapters=(*p.model.adapters, own)).json()
    model, tok = pool.get(chain, {**ctx.inputs, ctx.stage.id: Path(ctx.out_dir)})
    personas, questions = sc.personas, sc.questions
    requests = [Request(system=per.prompt, user=q.text, n=per.n) for per in personas for q in questions]
    with small_model_threads(model, ctx.device):
        completions = sample_completions(
            model,
            tok,
            requests,
            sc.sampler,
            device=ctx.device,
            log=ctx.log,
            batch_size=ctx.batch_limit,
        )
    hit = contains_any([c.text for c in completions], sc.markers, sc.match)
    persona = pa.array([c.request_index // len(questions) for c in completions], pa.int64())
    rates = {
        r["persona"]: r
        for r in hit_rates(pa.table({"persona": persona, "hit": pa.array(hit, pa.bool_())}), ["persona"]).to_pylist()
    }
    rows = []
    for k, per in enumerate(personas):
        r = rates.get(k, {"n": 0, "hits": 0, "rate": None})
        rate = float("nan") if r["rate"] is None else r["rate"]
        rows.append({"persona": per.name, "role": per.role, "n": r["n"], "hits": r["hits"], "rate": rate})
    pq.write_table(pa.Table.from_pylist(rows), Path(ctx.out_dir) / "screen.parquet")
    verdict = specificity(rows)
    if verdict["pattern"] != SPECIFIC:
        ctx.log.warning(
            "marker adapter is not specific to its source (%s): source rate %.2f, highest other "
            "%.2f (%s), mean of others %.2f; such adapters were erased by a few SFT steps in the "
            "original study: check the marker training before running the arms",
            verdict["pattern"],
            verdict["source_rate"],
            verdict["max_other_rate"],
            verdict["max_other"],
            verdict["mean_other_rate"],
        )
    return verdict


def specificity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Classify a screen: `absent` (the source never shows the marker), `inverted` (another
    persona shows it at least as often as the source), `global` (the others' mean rate is at
    least half the source's) or `specific`."""
    src = [r for r in rows if r["role"] == "source"]
    others = [r for r in rows if r["role"] != "source"]
    if len(src) != 1:
        raise TrainError(f"the screen needs exactly one persona with role 'source', got {len(src)}")
    s = src[0]["rate"]
    top = max(others, key=lambda r: r["rate"]) if others else None
    mx = top["rate"] if top else 0.0
    mean = sum(r["rate"] for r in others) / len(others) if others else 0.0
    if s == 0:
        pattern = "absent"
    elif mx >= s:
        pattern = "inverted"
    elif mean >= 0.5 * s:
        pattern = "global"
    else:
        pattern = SPECIFIC
    return {
        "pattern": pattern,
        "source": src[0]["persona"],
        "source_rate": s,
        "max_other": top["persona"] if top else None,
        "max_other_rate": mx,
        "mean_other_rate": mean,
    }
