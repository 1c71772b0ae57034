"""Fleet training: several independent LoRA runs on one base model, one forward and backward
pass over the shared weights per step.

Each member is exactly its own run (`cpx.stages._training.plan_run`): its own data order,
LoRA initialisation (its seed), optimizer state, learning-rate schedule and warmup, gradient
clipping on its own gradient norm, loss normalised by its own labelled tokens, checkpoints at
its own steps. A joint micro-step packs one micro-batch of every member still training into
one row, member after member (`cpx.stages._lora.Segments`); the loss backpropagated is the sum
of the members' own normalised losses, and since a member's tokens attend only within their
own examples and reach only its own LoRA, each member's gradient is the one it would get
alone. A member whose run is over leaves the fleet at once (`on_done`), the others go on.

On a GPU the fleet is cut to what fits: a probe runs the joint worst micro-step (every
member's longest micro-batch) without gradient checkpointing and halves the fleet until it
fits in 85% of memory; the sub-fleets then train one after another. When a member alone does
not fit, checkpointing goes on where every member asked for it (it changes no gradient).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpx.plan import Lora, Optim
from cpx.stages._training import (
    IGNORE,
    Encoded,
    RunPlan,
    TrainResult,
    _no_dropout,
    as_lora,
    as_optim,
    _save_due,
    _to_device,
    _target_index,
    fits_in_memory,
    put_back,
    set_checkpointing,
    target_logits,
)


@dataclass
class Member:
    """One run of a fleet: what `train_lora` takes for a stage trained alone."""

    examples: Sequence[Encoded]
    plan: RunPlan
    lora: Lora
    optim: Optim
    out_dir: Path
    seed: int
    parents: Sequence[Sequence[Any]] = ()  # frozen adapters (LoraDelta lists), applied unmerged
    log: Any = None
    progress: Callable[..., None] | None = None
    on_step: Callable[[int, dict[str, Any]], None] | None = None  # (step, {name: weight})
    # Outside joint passes: puts the model on this member's own chain before its passes.
    activate: Callable[[], None] | None = None
    checkpointing: str | None = field(default=None, init=False)  # what the memory probe decided
    fleet_size: int = field(default=0, init=False)  # members of the (sub-)fleet it trained in
    result: TrainResult | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # A script or test may give plain JSON: checked as the train stage's params are.
        self.lora, self.optim = as_lora(self.lora), as_optim(self.optim)


def pack_fleet(parts: Sequence[Sequence[Encoded]], device: str) -> dict[str, Any]:
    """The members' micro-batches back to back in one row (position ids restart per example),
    and which member each labelled target belongs to."""
    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []
    owner: list[int] = []
    bounds = [0]
    for m, part in enumerate(parts):
        for ex in part:
            bounds.append(bounds[-1] + len(ex.input_ids))
            ids += ex.input_ids
            labels += ex.labels
            pos += range(len(ex.input_ids))
            owner += [m] * sum(1 for y in ex.labels[1:] if y != IGNORE)
    index = _target_index(labels, len(ids), 0)
    if len(index) != len(owner):
        raise ValueError("an example starts with a labelled token: packed examples would train across each other")
    t = (1, len(ids))
    ids_t, pos_t, lab_t, idx_t, own_t = _to_device(
        [ids, pos, labels, index, owner], [t, t, t, (len(index),), (len(owner),)], device
    )
    return {
        "input_ids": ids_t,
        "position_ids": pos_t,
        "attention_mask": None,
        "labels": lab_t,
        "target_index": idx_t,
        "owner": own_t,
        "n_labels": len(index),
        "bounds": bounds,
    }


class RowAttention:
    """Attention over each example of a packed row alone, for transformers' attention interface.

    transformers' sdpa path turns restarting position ids into a dense block-diagonal mask over
    the whole row: a fleet's row of N members costs N^2 the attention of one member. This one
    takes the examples' boundaries from the host (`bounds`) and runs flash attention over the
    variable-length examples (`torch.nn.attention.varlen`) where it runs (a GPU; checked once
    against sdpa), else sdpa example by example. A row of one member without flash keeps
    transformers' own attention (the masked sdpa a stage alone has always used).
    """

    name = "cpx_row_attention"
    cu: Any = None
    bounds: list[int] = []
    max_len = 0
    flash = False
    _checked: dict[str, str | None] = {}

    @classmethod
    def set(cls, bounds: list[int], device: str) -> None:
        import torch

        cls.bounds = bounds
        cls.max_len = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        if cls.flash:
            flat = torch.tensor(bounds, dtype=torch.int32)
            if device.startswith("cuda"):
                flat = flat.pin_memory().to(device, non_blocking=True)
            cls.cu = flat

    @classmethod
    def forward(cls, module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
        import torch

        # (1, H, T, D) -> (T, H, D)
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
        if cls.flash:
            return _varlen(q, k, v, cls.cu, cls.max_len, scaling).unsqueeze(0), None
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        outs = [
            torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=scaling
            ).transpose(0, 1)
            for a, b in zip(cls.bounds, cls.bounds[1:], strict=False)
        ]
        return torch.cat(outs).unsqueeze(0), None

    @classmethod
    def prepare(cls, device: str) -> str | None:
        """Register the attention and decide flash or sdpa here; None when flash runs, else why not."""
        from transformers import AttentionInterface

        AttentionInterface.register(cls.name, cls.forward)
        if not device.startswith("cuda"):
            why: str | None = "not on a GPU"
        else:
            if device not in cls._checked:
                cls._checked[device] = _check_varlen(device)
            why = cls._checked[device]
        cls.flash = why is None
        return why

    @classmethod
    def choose(cls, model, own: str, n_members: int) -> None:
        """The attention of the next forward pass: this one when it runs flash or the row holds
        several members, the model's own otherwise."""
        model.config._attn_implementation = cls.name if cls.flash or n_members > 1 else own


def _varlen(q, k, v, cu, max_len: int, scaling):
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kw: dict[str, Any] = {}
    if "enable_gqa" in params:
        kw["enable_gqa"] = True
    elif k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    kw.update({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)})
    if "scale" in params:
        kw["scale"] = scaling
    elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-9:
        raise ValueError("this torch's varlen_attn takes no scale")
    return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **kw)


def _check_varlen(device: str) -> str | None:
    """Run flash varlen attention forward and backward on random bf16 data (two sequences,
    grouped heads) against sdpa sequence by sequence."""
    import torch

    try:
        gen = torch.Generator(device=device).manual_seed(0)
        lens = [37, 64]
        T, hq, hk, d = sum(lens), 4, 2, 128
        q = torch.randn(T, hq, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
        k = torch.randn(T, hk, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
        v = torch.randn(T, hk, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
        cu = torch.tensor([0, lens[0], T], dtype=torch.int32, device=device)
        out = _varlen(q, k, v, cu, max(lens), d**-0.5)
        out.float().square().sum().backward()
        ref = []
        for a, b in ((0, lens[0]), (lens[0], T)):
            kk, vv = (t[a:b].repeat_interleave(hq // hk, dim=1).transpose(0, 1) for t in (k, v))
            ref.append(
                torch.nn.functional.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1), kk, vv, is_causal=True
                ).transpose(0, 1)
            )
        want = torch.cat(ref).detach().float()
        err = float((out.detach().float() - want).norm() / want.norm())
        if not err < 2e-2 or q.grad is None or not torch.isfinite(q.grad).all():
            return f"flash varlen attention disagrees with sdpa (relative error {err:.2e})"
    except Exception as e:  # noqa: BLE001 - unavailable here: transformers' own attention is used
        return f"flash varlen attention unavailable ({e!r})"[:300]
    return None


def member_loss_sums(model, batch: dict[str, Any], n_members: int):
    """Summed cross-entropy of each member's labelled tokens in a packed fleet row."""
    import torch

    logits, target = target_logits(model, batch)
    if n_members == 1:
        return torch.nn.functional.cross_entropy(logits, target, reduction="sum").reshape(1)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return torch.zeros(n_members, device=ce.device, dtype=ce.dtype).index_add_(0, batch["owner"], ce)


def _forward(model, fleet, batch, present: list[int], counts: list[int], device: str):
    fleet.segments.set(present, counts, device)
    RowAttention.set(batch["bounds"], device)
    RowAttention.choose(model, fleet.attention, len(present))
    return member_loss_sums(model, batch, len(present))


def train_fleet(
    model,
    members: Sequence[Member],
    *,
    device: str = "cpu",
    on_done: Callable[[int, Any], None] | None = None,
    probe_memory: bool = True,
    checkpointing: bool | None = None,
    joint: bool | None = None,
    fleet_log=None,
) -> list[TrainResult]:
    """Train `members` together on `model` (put back as found on return) and save each
    member's adapters to `out_dir/checkpoints/<f>/`. `on_done(i, fleet)` is called as soon as
    member i's run is over and its checkpoints are saved (its `result` set); the model then
    still carries the fleet's LoRA linears, bypassed (`fleet.set_bypass`) for whatever the
    callback runs on the base model. `checkpointing` True or False skips the probe and trains
    the whole fleet at once with gradient checkpointing on or off (benches compare the two).
    `joint` (default `joint_passes(device)`): one pass over the base per micro-step with every
    member's micro-batch, or each member's own passes in turn (after its `activate`).
    """
    from cpx.models import small_model_threads

    if not members:
        return []
    with small_model_threads(model, device):
        joint = joint_passes(device) if joint is None else joint
        return _train_fleet(model, members, device, on_done, probe_memory, checkpointing, joint, fleet_log)


def joint_passes(device: str) -> bool:
    """Whether a fleet's steps are joint passes over the base (a GPU) or each member's passes
    one after another on its own chain (the CPU: bit for bit the stage alone, so a plan's CPU
    results do not depend on which stages trained together; a CPU has no idle arithmetic units
    for a fleet to fill)."""
    return device.startswith("cuda")


def _train_fleet(model, members, device, on_done, probe_memory, checkpointing, joint, fleet_log) -> list[TrainResult]:
    import torch

    from cpx.stages._lora import Fleet

    lora = members[0].lora
    was_training = model.training
    attrs_before = set(vars(model))
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    attn_before = model.config._attn_implementation
    fleet = Fleet(model, lora)
    fleet.attention = attn_before
    rng_after_init = []
    grad_ckpt = False
    try:
        for mem in members:
            fleet.add_member(mem.seed, mem.lora, mem.parents)
            rng_after_init.append(torch.random.get_rng_state())
        cuda = device.startswith("cuda")
        amp_dtype = members[0].plan.amp_dtype(device)
        asked = all(m.optim.gradient_checkpointing for m in members)
        dropout = lora.dropout
        everyone = list(range(len(members)))
        if dropout > 0:
            # Dropout draws random numbers over the whole row: members train one at a time,
            # each from the RNG state its own initialisation left, as alone.
            groups, grad_ckpt = [[i] for i in everyone], asked
        elif checkpointing is not None:
            groups, grad_ckpt = [everyone], checkpointing
        elif not joint:
            groups, grad_ckpt = [everyone], asked
        elif cuda and probe_memory:
            groups, grad_ckpt = _sub_fleets(model, fleet, members, device, amp_dtype, asked, fleet_log)
        else:
            groups, grad_ckpt = [everyone], asked
        if grad_ckpt:
            set_checkpointing(model, True, no_dropout=_no_dropout(model, lora))
        why = RowAttention.prepare(device)
        if fleet_log is not None:
            fleet_log.info("attention: %s", "flash varlen" if why is None else f"sdpa per example ({why})")
        model.train()
        for group in groups:
            if dropout > 0:
                torch.random.set_rng_state(rng_after_init[group[0]])
            _train_group(model, fleet, members, group, device, amp_dtype, on_done, grad_ckpt, joint)
    finally:
        model.config._attn_implementation = attn_before
        if grad_ckpt:
            set_checkpointing(model, False)
        fleet.detach()
        put_back(model, attrs_before, grads_before, was_training)
    return [m.result for m in members if m.result is not None]


def _worst_part(mem: Member) -> list[Encoded]:
    """The member's longest micro-batch over its whole run (by tokens)."""
    plan, best, most = mem.plan, [], -1
    for step in range(plan.total):
        chunk = plan.chunk(mem.examples, step)
        for k in range(0, len(chunk), plan.micro):
            part = chunk[k : k + plan.micro]
            n = sum(len(ex.input_ids) for ex in part)
            if n > most:
                best, most = part, n
    return best


def _sub_fleets(model, fleet, members, device, amp_dtype, asked, log) -> tuple[list[list[int]], bool]:
    """Halve the fleet until the joint worst micro-step of its heaviest sub-fleet fits."""
    worst = [_worst_part(m) for m in members]
    tokens = [sum(len(ex.input_ids) for ex in w) for w in worst]
    n = len(members)
    size = n
    while True:
        groups = [list(range(i, min(n, i + size))) for i in range(0, n, size)]
        heavy = max(groups, key=lambda g: sum(tokens[i] for i in g))
        params = [p for i in heavy for p in fleet.parameters(i)]

        def loss(heavy=heavy):
            batch = pack_fleet([worst[i] for i in heavy], device)
            return _forward(model, fleet, batch, heavy, [tokens[i] for i in heavy], device).sum()

        what = f"the joint worst micro-step of {len(heavy)} member(s) ({sum(tokens[i] for i in heavy)} tokens)"
        fits, note = fits_in_memory(loss, params, what, device, amp_dtype)
        if fits or size == 1:
            break
        size = (size + 1) // 2
    ckpt = not fits and asked
    for mem in members:
        mem.checkpointing = ("on: " if ckpt else "off: ") + note
        if mem.log is not None:
            mem.log.info("fleet of %d in sub-fleets of up to %d; gradient checkpointing %s", n, size, mem.checkpointing)
    if log is not None:
        log.info("fleet of %d trains as %d sub-fleet(s) of up to %d", n, len(groups), size)
    return groups, ckpt


def _train_group(model, fleet, members, group, device, amp_dtype, on_done, grad_ckpt, joint) -> None:
    import torch

    cuda = device.startswith("cuda")
    state = {}
    for i in group:
        mem = members[i]
        mem.fleet_size = len(group)
        params = fleet.parameters(i)
        for p in params:
            p.requires_grad_(True)
        lr, wd = mem.optim.lr, mem.optim.weight_decay
        opt: torch.optim.Optimizer
        if mem.plan.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True if cuda else None)
        else:
            opt = torch.optim.SGD(params, lr=lr, weight_decay=wd)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == "float16")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, mem.plan.factor)
        res = TrainResult(mem.plan.total, mem.plan.steps_per_epoch, mem.plan.checkpoint_steps)
        res.checkpointing = mem.checkpointing
        state[i] = {"params": params, "opt": opt, "scaler": scaler, "sched": sched, "res": res, "step": 0}
    t0 = t_step = time.perf_counter()
    active = list(group)
    while active:
        chunks = {i: members[i].plan.chunk(members[i].examples, state[i]["step"]) for i in active}
        n_lab = {i: sum(ex.n_labels for ex in chunks[i]) for i in active}
        lr_now = {i: state[i]["opt"].param_groups[0]["lr"] for i in active}
        parts = {
            i: [chunks[i][k : k + members[i].plan.micro] for k in range(0, len(chunks[i]), members[i].plan.micro)]
            for i in active
        }
        step_loss = {i: torch.zeros((), device=device) for i in active}
        if joint:
            passes = [(k, [i for i in active if k < len(parts[i])]) for k in range(max(len(p) for p in parts.values()))]
        else:
            passes = [(k, [i]) for i in active for k in range(len(parts[i]))]
        for k, present in passes:
            if not joint and members[present[0]].activate is not None:
                members[present[0]].activate()
            micro = [parts[i][k] for i in present]
            batch = pack_fleet(micro, device)
            counts = [sum(len(ex.input_ids) for ex in part) for part in micro]
            with torch.autocast("cuda", dtype=getattr(torch, amp_dtype or "bfloat16"), enabled=bool(amp_dtype)):
                lsums = _forward(model, fleet, batch, present, counts, device)
            terms = [state[i]["scaler"].scale(lsums[j] / n_lab[i]) for j, i in enumerate(present) if n_lab[i]]
            if terms:
                torch.stack(terms).sum().backward()
            detached = lsums.detach()
            for j, i in enumerate(present):
                step_loss[i] += detached[j]
                state[i]["res"].tokens += sum(len(ex.input_ids) for ex in micro[j])
        norms = {}
        for i in active:
            st, mem = state[i], members[i]
            st["res"].label_tokens += n_lab[i]
            st["scaler"].unscale_(st["opt"])  # a no-op without fp16 loss scaling
            grads = [p.grad for p in st["params"] if p.grad is not None]
            if mem.plan.clip:
                norms[i] = torch.nn.utils.clip_grad_norm_(st["params"], mem.plan.clip)  # the norm before clipping
            elif grads:
                norms[i] = torch.nn.utils.get_total_norm(grads)
            else:
                norms[i] = torch.zeros((), device=device)
            st["scaler"].step(st["opt"])
            st["scaler"].update()
            st["sched"].step()
            st["opt"].zero_grad(set_to_none=True)
            st["step"] += 1
        # The one wait for the GPU in a step: every member's logged loss and gradient norm.
        flat = torch.stack([v for i in active for v in (step_loss[i].float(), norms[i].float().to(device))]).tolist()
        now = time.perf_counter()
        finished = []
        for j, i in enumerate(active):
            st, mem, res = state[i], members[i], state[i]["res"]
            step = st["step"]
            loss = flat[2 * j] / n_lab[i] if n_lab[i] else float("nan")
            res.log.append(
                {
                    "step": step,
                    "loss": loss,
                    "lr": lr_now[i],
                    "grad_norm": flat[2 * j + 1],
                    "tokens": sum(len(ex.input_ids) for ex in chunks[i]),
                    "seconds": now - t_step,
                }
            )
            _save_due(functools.partial(_save, fleet, i, lora=mem.lora), res.checkpoint_steps, step, mem.out_dir)
            if mem.on_step is not None:
                mem.on_step(step, fleet.state_dict(i))
            if mem.progress is not None:
                mem.progress(step, res.total_steps, loss=round(loss, 4), tokens=res.tokens)
            total = res.total_steps
            if mem.log is not None and (step == total or step % max(1, total // 10) == 0):
                mem.log.info("step %d/%d loss %.4f lr %.3g", step, total, loss, lr_now[i])
            if step == total:
                res.seconds = now - t0
                finished.append(i)
        t_step = now
        for i in finished:
            active.remove(i)
            for p in state[i]["params"]:
                p.requires_grad_(False)
            mem = members[i]
            mem.result = state.pop(i)["res"]
            if on_done is not None:
                _off_training(model, fleet, grad_ckpt, functools.partial(on_done, i, fleet))


def _off_training(model, fleet, grad_ckpt: bool, fn: Callable[[], None]) -> None:
    """Run `fn` with the base model as it is outside training (eval mode, no LoRA, no
    checkpointing, its own attention), then go back to training."""
    fleet.set_bypass(True)
    model.eval()
    model.config._attn_implementation = fleet.attention
    if grad_ckpt:
        set_checkpointing(model, False)
    try:
        fn()
    finally:
        if grad_ckpt:
            set_checkpointing(model, True, no_dropout=_no_dropout(model, fleet.lora))
        model.train()
        fleet.set_bypass(False)


def _save(fleet, i: int, dest: Path, *, lora: Lora) -> None:
    from cpx.stages._lora import save_member

    save_member(fleet, i, dest, lora)
