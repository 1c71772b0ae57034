"""The decode loop of one batch: prefill once per prompt, then one token per row per step.

Each prompt is prefilled once and its keys and values are copied to its n completions; rows
stop at the end-of-turn token, and finished rows are dropped from the batch (the cache is
compacted) once enough of them have finished.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from cpx.stages import _decode_step
from cpx.stages._decode_step import FusedStep
from cpx.stages._draws import sample_tokens, uniforms
from cpx.stages._kv import PreallocatedKV, cache_dtype, cache_kwarg, mask_map, n_layers

# Compact the batch when this fraction of its rows has finished (checked every _CHECK_EVERY steps).
_COMPACT_FRACTION = 0.25
_CHECK_EVERY = 8


def decode_batch(
    model,
    ids,
    chunk,
    keys,
    sp,
    stops,
    pad,
    *,
    device,
    ignore_eos,
    log,
    steer_hook=None,
    fused=False,
) -> list[list[int]]:
    """Decode one batch of rows; returns each row's generated tokens (up to max_tokens).

    `sp` is the `cpx.plan.Sampler`. `steer_hook` (a `_steer.SteeringHook` or None) is told which request each forward row is of.
    `fused` runs the decode steps through the fused attention kernel and CUDA graphs
    (`_decode_step`, CUDA only); otherwise attention reads an additive bias over the cache.
    """
    import torch

    dev = torch.device(device)
    T = sp.max_tokens
    prompt_of_row = [r for r, _ in chunk]
    uniq = sorted(set(prompt_of_row), key=prompt_of_row.index)
    slot = {r: j for j, r in enumerate(uniq)}
    P = max(len(ids[r]) for r in uniq)
    B = len(chunk)

    # Left-padded prompts: the last prompt token of every row sits at column P - 1.
    prompt = torch.full((len(uniq), P), pad, dtype=torch.long)
    pmask = torch.zeros((len(uniq), P), dtype=torch.bool)
    for j, r in enumerate(uniq):
        n = len(ids[r])
        prompt[j, P - n :] = torch.tensor(ids[r], dtype=torch.long)
        pmask[j, P - n :] = True
    prompt, pmask = prompt.to(dev), pmask.to(dev)
    expand = torch.tensor([slot[r] for r in prompt_of_row], dtype=torch.long, device=dev)

    cache = PreallocatedKV(n_layers(model), P + T)
    cache.rows, cache.expand = B, expand
    kw = cache_kwarg(model)
    if steer_hook is not None:
        steer_hook.rows(uniq)
    pos = (pmask.long().cumsum(-1) - 1).clamp_(min=0)
    causal = torch.ones((P, P), dtype=torch.bool, device=dev).tril_()
    # Pad queries may attend to themselves: a fully masked row would make NaN keys and values.
    eye = torch.eye(P, dtype=torch.bool, device=dev)
    mask4 = ((causal[None] & pmask[:, None, :]) | eye[None])[:, None]
    out = model(
        input_ids=prompt,
        attention_mask=mask_map(mask4),
        position_ids=pos,
        use_cache=True,
        logits_to_keep=1,
        **{kw: cache},
    )
    logits = out.logits[:, -1].index_select(0, expand)
    del out
    cache.expand = None
    cache.length = P
    if steer_hook is not None:
        steer_hook.rows(prompt_of_row)

    step, bias = None, None
    draw_fused = fused and _decode_step.FUSE_ELEMENTWISE
    if fused:
        step = FusedStep(model, cache, kw, (~pmask).sum(-1).index_select(0, expand), log)
    else:
        # Additive attention bias over the cache positions, 0 where a row may attend. Its row
        # stride is a multiple of 16 so the slices handed to attention stay aligned for the
        # fused kernels; a float bias is used as is, where a boolean mask is converted at every layer.
        width = -(-(P + T) // 16) * 16
        bias = torch.full((B, 1, 1, width), torch.finfo(cache_dtype(model)).min, dtype=cache_dtype(model), device=dev)
        bias[:, 0, 0, :P].masked_fill_(pmask.index_select(0, expand), 0.0)
    next_pos = pmask.long().sum(-1).index_select(0, expand)
    key_t = torch.tensor(keys, dtype=torch.long, device=dev)
    out_tokens = torch.full((B, T), pad, dtype=torch.long, device=dev)
    stop_t = torch.tensor(stops, dtype=torch.long, device=dev)
    live = torch.arange(B, device=dev)  # batch row of each cache row
    finished = torch.zeros(B, dtype=torch.bool, device=dev)

    for t in range(T):
        nxt = sample_tokens(logits, sp.temperature, sp.top_p, uniforms(key_t, t), fused=draw_fused)
        out_tokens[live, t] = nxt
        if t == T - 1:
            break
        if not ignore_eos:
            finished |= torch.isin(nxt, stop_t)
            if (t + 1) % _CHECK_EVERY == 0:
                n_done = int(finished.sum())
                if n_done == finished.shape[0]:
                    break
                if n_done >= _COMPACT_FRACTION * finished.shape[0]:
                    keep = (~finished).nonzero().squeeze(-1)
                    log.debug("step %d: %d of %d rows finished, batch compacted", t + 1, n_done, len(finished))
                    cache.keep(keep)
                    if step is not None:
                        step.keep(keep)
                    else:
                        assert bias is not None
                        bias = bias[keep]
                    next_pos, key_t = next_pos[keep], key_t[keep]
                    live, nxt, finished = live[keep], nxt[keep], finished[keep]
                    if steer_hook is not None:
                        steer_hook.keep(keep)
        if step is not None:
            logits = step(nxt, next_pos, P + t)
        else:
            assert bias is not None  # the eager path keeps its attention bias
            bias[:, 0, 0, P + t] = 0.0
            out = model(
                input_ids=nxt[:, None],
                attention_mask=mask_map(bias[..., : P + t + 1]),
                position_ids=next_pos[:, None],
                use_cache=True,
                logits_to_keep=1,
                **{kw: cache},
            )
            logits = out.logits[:, -1]
            del out
        cache.length += 1
        next_pos = next_pos + 1
    return out_tokens.cpu().tolist()
