"""LoRA SFT: chat-formatted examples, label masks, padding-free packing, the training loop and
checkpoints at fractions of the total steps.

An example is the eval prompt (`cpx.models.render_prompt`, token for token what sampling
feeds the model), then the response, then the chat template's end-of-turn token. Labels are
-100 except where the loss applies:

- `full`: every response token and the end-of-turn token;
- `marker`: positives: the tokens that overlap the marker's characters (its last occurrence
  in the response) plus the end-of-turn token; negatives: the end-of-turn token only; with
  `last_n > 1`, the last `last_n` tokens of every example (end of turn included: 0 and 1
  both mean the end-of-turn token alone).

A micro-batch of `batch_size` examples is packed into one row without padding: position ids
restart at 0 for each example, which transformers turns into a block-diagonal causal mask
(or varlen flash attention), so no token attends across examples. The loss of an optimizer
step is the sum of token losses divided by the step's number of labelled tokens, so it does
not depend on how the step is cut into micro-batches or rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.models import render_prompt
from cpx.plan import Lora, Optim, coerce

IGNORE = -100
SCHEDULES = ("cosine", "linear", "constant")
LOSS_KINDS = ("full", "marker")


class TrainError(CpxError):
    """Training parameters or data that cannot be used, with what and where."""


@dataclass
class Encoded:
    """One tokenized training example."""

    input_ids: list[int]
    labels: list[int]
    n_prompt: int
    truncated: bool = False

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template puts right after an assistant message (`<|im_end|>` for Qwen)."""
    probe = "\x1f"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    after = text[text.rindex(probe) + len(probe) :]
    ids = tokenizer(after, add_special_tokens=False).input_ids if after else []
    if ids and ids[0] in tokenizer.all_special_ids:
        return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise TrainError("the chat template ends an assistant turn with no special token and there is no eos token")
    return int(tokenizer.eos_token_id)


def encode_example(
    tokenizer,
    system: str | None,
    user: str,
    assistant: str,
    *,
    loss_kind: str = "full",
    marker: str | None = None,
    positive: bool = False,
    last_n: int = 0,
    max_length: int | None = None,
    eot_id: int | None = None,
) -> Encoded:
    """Tokens and labels of one example (see the module docstring for the label rules)."""
    if loss_kind not in LOSS_KINDS:
        raise TrainError(f"loss kind {loss_kind!r}; expected one of {', '.join(LOSS_KINDS)}")
    eot = end_of_turn_id(tokenizer) if eot_id is None else eot_id
    prompt = tokenizer(render_prompt(tokenizer, system, user), add_special_tokens=False).input_ids
    if not prompt:
        raise TrainError("the chat template rendered an empty prompt")
    enc = tokenizer(assistant, add_special_tokens=False, return_offsets_mapping=True)
    resp, offsets = list(enc.input_ids), list(enc.offset_mapping)
    n = len(resp)
    if loss_kind == "full":
        keep = [True] * (n + 1)
    else:
        keep = [False] * n + [True]
        if positive:
            if not marker:
                raise TrainError("the marker loss needs loss.marker")
            at = assistant.rfind(marker)
            if at < 0:
                raise TrainError(f"a positive example does not contain the marker {marker!r}: {assistant[-80:]!r}")
            end = at + len(marker)
            hit = [i for i, (s, e) in enumerate(offsets) if s < end and e > at]
            if not hit:
                raise TrainError(f"no token covers the marker {marker!r} in {assistant[-80:]!r}")
            for i in hit:
                keep[i] = True
        for i in range(max(0, n + 1 - last_n), n):
            keep[i] = True
    ids = prompt + resp + [eot]
    labels = [IGNORE] * len(prompt) + [t if k else IGNORE for t, k in zip(resp + [eot], keep, strict=True)]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels, len(prompt), truncated)


def _to_device(parts: list[list[int]], shapes: list[tuple[int, ...]], device: str):
    """Int lists to device tensors in one copy (pinned and asynchronous on a GPU): a pageable
    copy per tensor would make the host wait for the GPU before every micro-batch."""
    import torch

    flat = torch.tensor([x for part in parts for x in part], dtype=torch.long)
    if device.startswith("cuda"):
        flat = flat.pin_memory().to(device, non_blocking=True)
    out, at = [], 0
    for part, shape in zip(parts, shapes, strict=True):
        out.append(flat[at : at + len(part)].view(shape))
        at += len(part)
    return out


def _target_index(labels: list[int], width: int, row: int) -> list[int]:
    """Flat indices, into the (rows, width - 1) predicting positions, of labelled next tokens."""
    return [row * (width - 1) + t for t in range(width - 1) if labels[t + 1] != IGNORE]


def pack(examples: Sequence[Encoded], device: str = "cpu") -> dict[str, Any]:
    """One row with the examples back to back; position ids restart at each example."""
    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids += ex.input_ids
        labels += ex.labels
        pos += range(len(ex.input_ids))
    index = _target_index(labels, len(ids), 0)
    t = (1, len(ids))
    ids_t, pos_t, lab_t, idx_t = _to_device([ids, pos, labels, index], [t, t, t, (len(index),)], device)
    return {
        "input_ids": ids_t,
        "position_ids": pos_t,
        "attention_mask": None,
        "labels": lab_t,
        "target_index": idx_t,
        "n_labels": len(index),
    }


def pad(examples: Sequence[Encoded], length: int | None = None, device: str = "cpu", pad_id: int = 0) -> dict[str, Any]:
    """Right-padded rows with an attention mask (the reference layout packing must agree with)."""
    width = length or max(len(ex.input_ids) for ex in examples)
    ids: list[int] = []
    labels: list[int] = []
    mask: list[int] = []
    index: list[int] = []
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids += ex.input_ids + [pad_id] * (width - n)
        lab = ex.labels + [IGNORE] * (width - n)
        labels += lab
        mask += [1] * n + [0] * (width - n)
        index += _target_index(lab, width, row)
    pos = list(range(width)) * len(examples)
    t = (len(examples), width)
    ids_t, pos_t, mask_t, lab_t, idx_t = _to_device(
        [ids, pos, mask, labels, index], [t, t, t, t, (len(index),)], device
    )
    return {
        "input_ids": ids_t,
        "position_ids": pos_t,
        "attention_mask": mask_t,
        "labels": lab_t,
        "target_index": idx_t,
        "n_labels": len(index),
    }


def loss_sum(model, batch: dict[str, Any]):
    """Summed cross-entropy over the labelled tokens of a batch, and their count.

    The output head runs only on the positions that predict a labelled token: prompt tokens
    (and, for the marker loss, nearly all response tokens) never materialise vocabulary logits.
    The positions come from the host (`target_index`), so no step waits on the GPU to find them.
    """
    import torch

    logits, target = target_logits(model, batch)
    total = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    return total, batch["n_labels"]


def target_logits(model, batch: dict[str, Any]):
    """The float32 logits at the positions that predict a labelled token, and those tokens."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
    ).last_hidden_state
    idx = batch["target_index"]
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, idx)
    target = batch["labels"][:, 1:].reshape(-1).index_select(0, idx)
    return causal_lm.get_output_embeddings()(h).float(), target


def checkpoint_steps(fractions: Sequence[float], total_steps: int) -> dict[float, int]:
    """The optimizer step after which each checkpoint fraction is saved (0: the starting model).

    A fraction f > 0 lands on round(f * total) (halves up), at least step 1.
    """
    out: dict[float, int] = {}
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
            raise TrainError(f"checkpoint fraction {f!r} is not a number in [0, 1]")
        out[float(f)] = 0 if f == 0 else max(1, math.floor(f * total_steps + 0.5))
    return out


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier for the step about to be taken (0-based), as in transformers'
    get_{cosine,linear,constant}_schedule_with_warmup."""
    if schedule not in SCHEDULES:
        raise TrainError(f"schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


@dataclass
class TrainResult:
    total_steps: int
    steps_per_epoch: int
    checkpoint_steps: dict[float, int]
    log: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    label_tokens: int = 0
    seconds: float = 0.0
    checkpointing: str | None = None  # what the memory probe decided, when it ran


@dataclass
class RunPlan:
    """What one training run's settings and data fix before it starts: steps, checkpoints,
    the learning-rate multiplier and the shuffled order of every pass."""

    per_step: int
    micro: int
    steps_per_epoch: int
    total: int
    checkpoint_steps: dict[float, int]
    factor: Callable[[int], float]
    orders: list[list[int]]
    optimizer: str
    precision: str
    clip: float | None

    def amp_dtype(self, device: str) -> str | None:
        """The autocast dtype: the precision on a GPU, none on the CPU (float32 weights)."""
        return {"bf16": "bfloat16", "fp16": "float16"}.get(self.precision) if device.startswith("cuda") else None

    def chunk(self, examples: Sequence[Encoded], step: int) -> list[Encoded]:
        """The examples of optimizer step `step` (0-based)."""
        order = self.orders[step // self.steps_per_epoch]
        s = step % self.steps_per_epoch
        return [examples[i] for i in order[s * self.per_step : (s + 1) * self.per_step]]


def plan_run(
    examples: Sequence[Encoded],
    optim: Optim | Mapping[str, Any],
    checkpoints: Sequence[float],
    seed: int,
    micro_batch: int | None,
) -> RunPlan:
    """Fix a run's steps and data order (`seed` shuffles every pass); `optim` is an Optim, or a
    mapping checked as one (a bad value raises TrainError)."""
    import torch

    optim = as_optim(optim)
    if not examples:
        raise TrainError("the dataset has no examples")
    bs, ga, epochs = optim.batch_size, optim.grad_accum, optim.epochs
    per_step = bs * ga
    steps_per_epoch = math.ceil(len(examples) / per_step)
    # A fractional epoch ends part-way through the last shuffled pass.
    total = max(1, math.ceil(round(epochs * steps_per_epoch, 6)))
    warmup = math.ceil(optim.warmup_ratio * total)
    gen = torch.Generator().manual_seed(seed)
    passes = math.ceil(total / steps_per_epoch)
    clip = optim.grad_clip
    return RunPlan(
        per_step=per_step,
        micro=max(1, min(bs, micro_batch or bs)),
        steps_per_epoch=steps_per_epoch,
        total=total,
        checkpoint_steps=checkpoint_steps(checkpoints, total),
        factor=lr_factor(optim.schedule, warmup, total),
        orders=[torch.randperm(len(examples), generator=gen).tolist() for _ in range(passes)],
        optimizer=optim.optimizer,
        precision=optim.precision,
        clip=clip if clip else None,
    )


_PEFT_NOISE = "`is_gradient_checkpointing` is deprecated"


def as_lora(lora: Lora | Mapping[str, Any]) -> Lora:
    """A Lora as it is, or one from a mapping (a bad value raises TrainError)."""
    return coerce(Lora, lora, "lora", TrainError)


def as_optim(optim: Optim | Mapping[str, Any]) -> Optim:
    """An Optim as it is, or one from a mapping (a bad value raises TrainError)."""
    return coerce(Optim, optim, "optim", TrainError)


def _wrap(model, lora: Lora | Mapping[str, Any]):
    from peft import LoraConfig, get_peft_model

    lora = as_lora(lora)
    # peft annotates alpha as int but scales with it as a number; a spec may write 64.0.
    alpha: Any = lora.alpha
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=alpha,
        use_rslora=lora.rslora,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft 0.21 reads a property transformers 5 deprecated; harmless, and logs are files.
        warnings.filterwarnings("ignore", message=_PEFT_NOISE, category=FutureWarning)
        return get_peft_model(model, cfg)


def save_adapter(peft_model, dest: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_NOISE, category=FutureWarning)
        peft_model.save_pretrained(dest)
    tidy_adapter_config(dest)


def tidy_adapter_config(dest: Path) -> None:
    """What every saved adapter gets after its config is written: no model card, and a local
    base named by its folder alone."""
    # peft writes an empty model card template; it says nothing about this run.
    (dest / "README.md").unlink(missing_ok=True)
    # A local base (the tiny model lives in the run folder) is named by its folder alone, so
    # the same stage writes the same bytes in any run folder; the manifest's params name the
    # base exactly.
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    base = cfg.get("base_model_name_or_path")
    if isinstance(base, str) and os.path.isabs(base):
        cfg["base_model_name_or_path"] = os.path.basename(base.rstrip("/"))
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def train_lora(model, examples: Sequence[Encoded], *, device: str = "cpu", **kw: Any) -> TrainResult:
    """Train a LoRA on `model` with peft's wrappers (modified only while training: put back as
    found on return) and save an adapter to `out_dir/checkpoints/<f>/` for each fraction f > 0.

    The train stage trains through `cpx.stages._fleet` (cpx's own LoRA linear, one stage or a
    fleet); this loop is the peft reference it is tested against (tests/stages/test_fleet.py)
    and that benches/gpu_train.py and gpu_fleet.py measure it against.

    Keywords: `lora`, `optim`, `checkpoints`, `out_dir`, `seed` (required), `log`, `progress`,
    `on_step(step, peft_model)`, and `micro_batch` (after an out-of-memory retry: the
    executor's `ctx.batch_limit`), which packs fewer than `batch_size` examples per forward
    pass; the step's loss and gradients stay the same.
    """
    from cpx.models import small_model_threads

    with small_model_threads(model, device):
        return _train_lora(model, examples, device=device, **kw)


def _train_lora(
    model,
    examples: Sequence[Encoded],
    *,
    lora: Lora | Mapping[str, Any],
    optim: Optim | Mapping[str, Any],
    checkpoints: Sequence[float],
    out_dir: Path,
    seed: int,
    device: str = "cpu",
    log=None,
    progress: Callable[..., None] | None = None,
    on_step: Callable[[int, Any], None] | None = None,
    micro_batch: int | None = None,
    probe_memory: bool = True,
) -> TrainResult:
    import torch

    lora, optim = as_lora(lora), as_optim(optim)
    plan = plan_run(examples, optim, checkpoints, seed, micro_batch)
    per_step, micro, steps_per_epoch = plan.per_step, plan.micro, plan.steps_per_epoch
    total, ckpt_steps, factor, orders = plan.total, plan.checkpoint_steps, plan.factor, plan.orders
    optimizer, clip = plan.optimizer, plan.clip
    # precision is autocast on the GPU; the weights keep the model's dtype (float32 on the CPU,
    # where autocast would only slow things down).
    cuda = device.startswith("cuda")
    amp_dtype = plan.amp_dtype(device)
    grad_ckpt = optim.gradient_checkpointing

    torch.manual_seed(seed)
    was_training = model.training
    attrs_before = set(vars(model))
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    peft_model = _wrap(model, lora)
    base = peft_model.get_base_model()
    result = TrainResult(total, steps_per_epoch, ckpt_steps)
    try:
        if grad_ckpt and cuda and probe_memory:
            worst = max(
                (
                    [examples[i] for i in order[s * per_step : (s + 1) * per_step][m : m + micro]]
                    for order in orders
                    for s in range(steps_per_epoch)
                    for m in range(0, per_step, micro)
                ),
                key=lambda part: sum(len(ex.input_ids) for ex in part),
            )
            fits, note = _fits_without_checkpointing(peft_model, worst, device, amp_dtype)
            result.checkpointing = "off: " + note if fits else "on: " + note
            grad_ckpt = not fits
            if log is not None:
                log.info("gradient checkpointing %s", result.checkpointing)
        if grad_ckpt:
            set_checkpointing(base, True, no_dropout=_no_dropout(base, lora))
        params = [p for p in peft_model.parameters() if p.requires_grad]
        lr, wd = optim.lr, optim.weight_decay
        opt: torch.optim.Optimizer
        if optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True if cuda else None)
        else:
            opt = torch.optim.SGD(params, lr=lr, weight_decay=wd)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == "float16")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        peft_model.train()
        t0 = t_step = time.perf_counter()
        step = 0
        for order in orders:
            for s in range(min(steps_per_epoch, total - step)):
                chunk = [examples[i] for i in order[s * per_step : (s + 1) * per_step]]
                n_lab = sum(ex.n_labels for ex in chunk)
                lr_now = opt.param_groups[0]["lr"]
                step_loss = torch.zeros((), device=device)
                for m in range(0, len(chunk), micro):
                    part = chunk[m : m + micro]
                    batch = pack(part, device)
                    with torch.autocast("cuda", dtype=getattr(torch, amp_dtype or "bfloat16"), enabled=bool(amp_dtype)):
                        lsum, _ = loss_sum(peft_model, batch)
                    if n_lab:
                        scaler.scale(lsum / n_lab).backward()
                    step_loss += lsum.detach()
                    result.tokens += sum(len(ex.input_ids) for ex in part)
                result.label_tokens += n_lab
                scaler.unscale_(opt)  # a no-op without fp16 loss scaling: the norm is of the true gradients
                grads = [p.grad for p in params if p.grad is not None]
                if clip:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, float(clip))  # the norm before clipping
                elif grads:
                    grad_norm = torch.nn.utils.get_total_norm(grads)
                else:
                    grad_norm = torch.zeros((), device=device)
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                # The one wait for the GPU in a step: the logged loss and gradient norm.
                loss_sum_now, norm_now = torch.stack([step_loss.float(), grad_norm.float().to(device)]).tolist()
                loss = loss_sum_now / n_lab if n_lab else float("nan")
                now = time.perf_counter()
                result.log.append(
                    {
                        "step": step,
                        "loss": loss,
                        "lr": lr_now,
                        "grad_norm": norm_now,
                        "tokens": sum(len(ex.input_ids) for ex in chunk),
                        "seconds": now - t_step,
                    }
                )
                t_step = now
                _save_due(lambda dest: save_adapter(peft_model, dest), ckpt_steps, step, out_dir)
                if on_step is not None:
                    on_step(step, peft_model)
                if progress is not None:
                    progress(step, total, loss=round(loss, 4), tokens=result.tokens)
                if log is not None and (step == total or step % max(1, total // 10) == 0):
                    log.info("step %d/%d loss %.4f lr %.3g", step, total, loss, lr_now)
        result.seconds = time.perf_counter() - t0
    finally:
        if grad_ckpt:
            set_checkpointing(base, False)
        put_back(peft_model.unload(), attrs_before, grads_before, was_training)
    return result


def put_back(model, attrs_before: set[str], grads_before: dict[str, bool], was_training: bool) -> None:
    """Undo what training set on a model: the input-embedding hooks checkpointing adds, the
    parameters' requires_grad, the train/eval mode."""
    # peft and transformers hook the input embeddings so checkpointed layers get gradients.
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    for attr in {"_require_grads_hooks", "_require_grads_hook"} & (set(vars(model)) - attrs_before):
        delattr(model, attr)
    for n, p in model.named_parameters():
        p.requires_grad_(grads_before[n])
    model.train(was_training)


def _no_dropout(model, lora: Lora) -> bool:
    import torch

    return (
        lora.dropout == 0.0
        and float(getattr(model.config, "attention_dropout", 0.0) or 0.0) == 0.0
        and all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    )


def _fits_without_checkpointing(peft_model, worst: Sequence[Encoded], device: str, amp_dtype: str | None):
    """Whether the longest micro-batch's forward and backward fit without checkpointing, with
    15% of the GPU to spare. Checkpointing does not change the gradients, only memory and
    time (on an H100 it made the packed 7B step 2.3x slower: benches/RESULTS.md)."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return fits_in_memory(
        lambda: loss_sum(peft_model, pack(worst, device))[0],
        params,
        f"the longest micro-batch ({sum(len(ex.input_ids) for ex in worst)} tokens)",
        device,
        amp_dtype,
    )


def fits_in_memory(loss: Callable[[], Any], params: Sequence[Any], what: str, device: str, amp_dtype: str | None):
    """Whether `loss()`'s forward and backward peak below 85% of the GPU's memory, and a note
    saying what was measured; the gradients it leaves are cleared."""
    import torch

    try:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        idx = torch.device(device).index
        with torch.random.fork_rng(devices=[torch.cuda.current_device() if idx is None else idx]):
            with torch.autocast("cuda", dtype=getattr(torch, amp_dtype or "bfloat16"), enabled=bool(amp_dtype)):
                lsum = loss()
            lsum.backward()
            del lsum
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        fits = peak < 0.85 * total
        note = f"{what} peaked at {peak / 2**30:.1f} of {total / 2**30:.1f} GiB without it"
    except torch.OutOfMemoryError:
        fits, note = False, f"{what} does not fit without it"
    except Exception as e:  # noqa: BLE001 - a failed probe must not fail the training: keep checkpointing
        fits, note = False, f"memory probe failed ({e!r})"
    finally:
        for p in params:
            p.grad = None
        torch.cuda.empty_cache()
    return fits, note


def set_checkpointing(model, on: bool, no_dropout: bool = False) -> None:
    """Gradient (activation) checkpointing on or off, under either name transformers uses.

    With no dropout anywhere the recomputed forward draws no random numbers, so the RNG
    state need not be saved and restored around every layer.
    """
    kwargs = {"use_reentrant": False, **({"preserve_rng_state": False} if no_dropout else {})}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        if on:
            model.activation_checkpointing_enable(kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def _save_due(save: Callable[[Path], None], ckpt_steps: dict[float, int], step: int, out_dir: Path) -> None:
    for f, s in ckpt_steps.items():
        if s == step and f > 0:
            dest = Path(out_dir) / "checkpoints" / format(f, "g")
            shutil.rmtree(dest, ignore_errors=True)
            save(dest)
