"""The top-p draw's nucleus: the threshold search of the fused kernel against the sorting path.

`search_nucleus` is the fused top-p kernel's algorithm written in PyTorch; it runs on the CPU.
The kernel itself runs here too, through Triton's interpreter, where Triton is installed.
"""

from __future__ import annotations

import importlib.util

import pytest
from stage_support import run_in_triton_interpreter
import torch

from cpx.stages._draws import sample_tokens, search_nucleus, sort_keys, sort_nucleus

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
SAMPLERS = [(1.0, 0.9), (0.7, 0.95), (1.3, 0.5), (0.5, 0.999), (1.0, 1e-4)]


def _logits(rows, vocab, dtype, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sort_keys_order_as_the_floats(dtype):
    x = torch.tensor([float("-inf"), -3e4, -2.5, -1e-3, -0.0, 0.0, 1e-3, 2.5, 3e4, float("inf")]).to(dtype)
    k = sort_keys(x[None])[0]
    assert bool((k[1:] >= k[:-1]).all())
    assert int(k[4]) == int(k[5])  # -0.0 == +0.0
    assert len(set(k.tolist())) == len(x) - 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("temperature", "top_p"), SAMPLERS)
def test_search_finds_the_sort_paths_nucleus(dtype, temperature, top_p):
    """On random logits the threshold search keeps exactly the sorting path's tokens."""
    x = _logits(64, 3000, dtype, seed=hash((str(dtype), temperature, top_p)) % 1000)
    got = search_nucleus(x, temperature, top_p)
    assert torch.equal(got, sort_nucleus(x, temperature, top_p, stable=True))
    assert torch.equal(got.sum(-1), sort_nucleus(x, temperature, top_p).sum(-1))
    assert bool((got.sum(-1) >= 1).all())


@pytest.mark.parametrize("top_p", [0.9, 0.5, 0.3, 1e-6])
def test_search_drops_ties_lowest_index_first(top_p):
    """Logits with many ties: the same nucleus as a stable sort (ties in index order); the
    default sort orders ties otherwise on the CPU, but keeps as many of them."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-4, 4, (64, 3000), generator=gen).float()
    got = search_nucleus(x, 1.0, top_p)
    assert torch.equal(got, sort_nucleus(x, 1.0, top_p, stable=True))
    assert torch.equal(got.sum(-1), sort_nucleus(x, 1.0, top_p).sum(-1))


def _sample_tokens_as_before(logits, temperature, top_p, u):
    """`sample_tokens`' CPU path as it was before the fused top-p kernel (frozen copy)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    work = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    scaled = work / temperature if temperature != 1.0 else work
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=False)
        del scaled
        drop = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1.0 - top_p)
        drop[:, -1] = False
        sorted_logits.masked_fill_(drop, float("-inf"))
        del drop
        cdf = sorted_logits.softmax(dim=-1).cumsum_(dim=-1)
    else:
        order = None
        cdf = scaled.softmax(dim=-1).cumsum_(dim=-1)
    target = (u * cdf[:, -1]).unsqueeze(-1).contiguous()
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
    if order is not None:
        idx = order.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return idx


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("temperature", "top_p"), [(0.0, 1.0), (1.0, 1.0), (0.7, 1.0), *SAMPLERS])
def test_cpu_path_unchanged(dtype, temperature, top_p):
    x = _logits(200, 1000, dtype, seed=11)
    u = torch.rand(200, generator=torch.Generator().manual_seed(12))
    for fused in (False, True):  # fused asks for kernels: on the CPU top_p < 1 still sorts
        if fused and top_p >= 1.0 and temperature > 0:
            continue  # the top_p = 1 kernel has no CPU fallback
        assert torch.equal(
            sample_tokens(x, temperature, top_p, u, fused=fused), _sample_tokens_as_before(x, temperature, top_p, u)
        )


_KERNEL_CHECK = """
import torch
from cpx.stages._draws_triton import sample_top_p
from cpx.stages._draws import nucleus_mask, search_nucleus

gen = torch.Generator().manual_seed(0)
for acc, block, draw in ((False, 128, 128), (True, 64, 256)):
    kw = dict(block=block, draw_block=draw, num_warps=4, accumulate=acc, thresholds=True)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for temperature, top_p in ((1.0, 0.9), (0.7, 0.95), (1.0, 1e-4)):
            x = (torch.randn(4, 700, generator=gen, dtype=torch.float64) * 3).to(dtype)
            u = torch.rand(4, generator=gen)
            tok, thresh, n_drop = sample_top_p(x, temperature, top_p, u, **kw)
            kept = nucleus_mask(x, thresh, n_drop)
            assert torch.equal(kept, search_nucleus(x, temperature, top_p)), (acc, dtype, temperature, top_p)
            assert bool(kept.gather(1, tok[:, None]).all())
    x = torch.randint(-4, 4, (4, 700), generator=gen).float()
    for top_p in (0.9, 0.5):
        tok, thresh, n_drop = sample_top_p(x, 1.0, top_p, torch.rand(4, generator=gen), **kw)
        assert torch.equal(nucleus_mask(x, thresh, n_drop), search_nucleus(x, 1.0, top_p))
# a grid of uniforms: each kept token's share is its renormalised probability
x = (torch.randn(1, 24, generator=gen) * 2).bfloat16()
n = 500
u = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
tok = sample_top_p(x.expand(n, -1).contiguous(), 0.7, 0.8, u, block=32, num_warps=1)
share = torch.bincount(tok, minlength=24).double() / n
keep = search_nucleus(x, 0.7, 0.8)[0]
ref = torch.where(keep, torch.softmax(x.double() / 0.7, -1)[0], 0.0)
assert float((share - ref / ref.sum()).abs().max()) <= 1.5 / n
print("ok")
"""


_REJECT_CHECK = """
import torch
from stage_support import assert_nucleus_shares
from cpx.stages._draws_triton import sample_top_p_reject
from cpx.stages._draws import search_nucleus

gen = torch.Generator().manual_seed(0)
# every draw inside the nucleus, for 16-bit and float32 logits, ties, and a nucleus of one token
# (top_p 1e-4: most rows fall back to the radix kernel)
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for temperature, top_p in ((1.0, 0.9), (0.7, 0.95), (1.0, 1e-4)):
        x = (torch.randn(6, 300, generator=gen, dtype=torch.float64) * 3).to(dtype)
        tok = sample_top_p_reject(x, temperature, top_p, torch.rand(6, generator=gen), rounds=3, block=64)
        keep = search_nucleus(x, temperature, top_p)
        assert bool(keep.gather(1, tok[:, None]).all()), (dtype, temperature, top_p)
x = torch.randint(-4, 4, (6, 300), generator=gen).float()
tok = sample_top_p_reject(x, 1.0, 0.5, torch.rand(6, generator=gen), rounds=3, block=64)
assert bool(search_nucleus(x, 1.0, 0.5).gather(1, tok[:, None]).all())
# the same uniform draws the same token whatever the other rows are
x = (torch.randn(5, 200, generator=gen) * 2).bfloat16()
u = torch.rand(5, generator=gen)
alone = torch.cat([sample_top_p_reject(x[i : i + 1], 0.7, 0.6, u[i : i + 1], block=64) for i in range(5)])
assert torch.equal(alone, sample_top_p_reject(x, 0.7, 0.6, u, block=64))
# many uniforms: each kept token's share is its renormalised probability (the rejected rounds'
# uniforms come from the generator, so this is a chi-square test, not a grid)
x = (torch.randn(1, 24, generator=gen) * 2).bfloat16()
n = 1500
u = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
tok = sample_top_p_reject(x.expand(n, -1).contiguous(), 0.7, 0.6, u, block=8)  # 3 blocks a row
assert_nucleus_shares(tok, x, 0.7, search_nucleus(x, 0.7, 0.6)[0])
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (its interpreter runs on the CPU)")
def test_top_p_rejection_kernel_in_the_triton_interpreter():
    """The rejection draw, run by Triton's interpreter on the CPU: draws inside the nucleus of
    `search_nucleus` (also when most rows fall back to the radix kernel), a row's token
    independent of its batch, and the nucleus' renormalised distribution."""
    run_in_triton_interpreter(_REJECT_CHECK)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (its interpreter runs on the CPU)")
def test_top_p_kernel_in_the_triton_interpreter():
    """The kernel itself, run by Triton's interpreter on the CPU (it reads TRITON_INTERPRET when
    it is imported: hence a process of its own): the nucleus of `search_nucleus`, draws inside
    it, and the nucleus' renormalised distribution on a grid of uniforms."""
    run_in_triton_interpreter(_KERNEL_CHECK)


_FULL_CHECK = """
import torch
from cpx.stages._draws_triton import sample_full

gen = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for temperature in (1.0, 0.7):
        x = (torch.randn(8, 700, generator=gen, dtype=torch.float64) * 3).to(dtype)
        x[0, 100:300] = float("-inf")  # masked logits are never drawn
        u = torch.rand(8, generator=gen)
        for block in (128, 1024):  # several blocks a row (the passes' carries), and one
            tok = sample_full(x, temperature, u, block=block)
            # the token whose float64 CDF interval holds u, up to the float32 rounding of the CDF
            cdf = torch.softmax(x.double() / temperature, -1).cumsum(-1)
            hi = cdf.gather(1, tok[:, None])[:, 0]
            lo = torch.where(tok > 0, cdf.gather(1, (tok - 1).clamp(min=0)[:, None])[:, 0], 0.0)
            assert bool(((lo - 1e-5 <= u) & (u <= hi + 1e-5)).all()), (dtype, temperature, block)
            assert not bool(((tok >= 100) & (tok < 300))[0])
# a grid of uniforms: each token's share is its probability
x = (torch.randn(1, 24, generator=gen) * 2).bfloat16()
n = 500
u = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
tok = sample_full(x.expand(n, -1).contiguous(), 0.7, u, block=8)
share = torch.bincount(tok, minlength=24).double() / n
assert float((share - torch.softmax(x.double() / 0.7, -1)[0]).abs().max()) <= 1.5 / n
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (its interpreter runs on the CPU)")
def test_full_softmax_kernel_in_the_triton_interpreter():
    """The top_p = 1 draw (`sample_full`), run by Triton's interpreter on the CPU: the token
    whose CDF interval holds the uniform, over one block of the row and over several, masked
    logits never drawn, and each token's share on a grid of uniforms its probability."""
    run_in_triton_interpreter(_FULL_CHECK)
