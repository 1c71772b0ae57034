"""The training LoRA linear: one base `nn.Linear` shared by the members of a fleet, each member's
LoRA (and its frozen parent adapters) applied to its own tokens only.

A fleet packs its members' micro-batches into one row, member m's tokens contiguous
(`Segments`). For a targeted linear, `y = base(x) + scale_m * (x_m A_m^T) B_m^T` on member m's
tokens: one base product over the whole row, then the members' low-rank products as batched
matrix products over the segments padded to the longest (`_SegmentLora`, which keeps no padded
copy of the activations for the backward pass). A member's frozen parents (an arm-B marker's
convergence checkpoint) are extra rank concatenated to its own, with their scale folded in, so
the base weights stay unmerged and shared.

With one member in the row the product is peft's own (`base(x) + B(A(dropout(x))) * scale`),
so a stage trained alone computes what peft computed. `Fleet.add_member` initialises a
member's LoRA as peft does for the same seed (each target's `nn.Linear(in, r)` and `nn.Linear(r, out)`
constructed in module order, then A drawn again with kaiming_uniform(a=sqrt(5)) and B zeroed;
for a bf16 base the weights are rounded to bf16 and kept in float32, as peft's
`autocast_adapter_dtype` does), and `save_member` writes peft's adapter format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpx.models import LoraDelta, lora_scale
from cpx.plan import Lora
from cpx.stages._training import as_lora


class Segments:
    """Which members' tokens the current row holds, in order, and how many each.

    Shared by every `LoraLinear` of a fleet; the trainer sets it before each forward pass.
    """

    def __init__(self) -> None:
        self.members: list[int] = []
        self.counts: list[int] = []
        self.width = 0
        self.index: torch.Tensor | None = None  # flat positions of the tokens in (M * width)
        self.key: tuple[int, ...] = ()

    def set(self, members: Sequence[int], counts: Sequence[int], device: str | torch.device) -> None:
        self.members, self.counts = list(members), list(counts)
        self.key = tuple(self.members)
        self.width = max(self.counts)
        if all(c == self.width for c in self.counts):
            self.index = None
        else:
            index = [m * self.width + t for m, c in enumerate(self.counts) for t in range(c)]
            flat = torch.tensor(index, dtype=torch.long)
            if str(device).startswith("cuda"):
                flat = flat.pin_memory().to(device, non_blocking=True)
            self.index = flat

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, d) -> (members, width, d), zeros after each member's tokens."""
        d = x.shape[-1]
        if self.index is None:
            return x.reshape(len(self.counts), self.width, d)
        out = x.new_zeros(len(self.counts) * self.width, d)
        return out.index_copy_(0, self.index, x).view(len(self.counts), self.width, d)

    def unpadded(self, y: torch.Tensor) -> torch.Tensor:
        """(members, width, d) -> (tokens, d)."""
        flat = y.reshape(-1, y.shape[-1])
        return flat if self.index is None else flat.index_select(0, self.index)


class _SegmentLora(torch.autograd.Function):
    """delta = unpad(bmm(bmm(pad(x), A^T), B^T)) for A (M, R, in), B (M, out, R).

    Saves x (which the base linear saves as well: no extra memory) and the small (M, width, R)
    intermediate; the padded copies of x and of the output gradient exist only inside a call.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, A, B, seg: Segments):
        xa = torch.bmm(seg.padded(x), A.transpose(1, 2))
        y = torch.bmm(xa, B.transpose(1, 2))
        ctx.seg = seg
        ctx.save_for_backward(x, A, B, xa)
        return seg.unpadded(y)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        x, A, B, xa = ctx.saved_tensors
        seg: Segments = ctx.seg
        g = seg.padded(grad.to(xa.dtype))
        gxa = torch.bmm(g, B.to(g.dtype))
        gA = gB = gx = None
        if ctx.needs_input_grad[2]:
            gB = torch.bmm(g.transpose(1, 2), xa).to(B.dtype)
        if ctx.needs_input_grad[1]:
            gA = torch.bmm(gxa.transpose(1, 2), seg.padded(x.to(gxa.dtype))).to(A.dtype)
        if ctx.needs_input_grad[0]:
            gx = seg.unpadded(torch.bmm(gxa, A.to(gxa.dtype))).to(x.dtype)
        return gx, gA, gB, None


class LoraLinear(nn.Module):
    """A frozen `nn.Linear` plus one trainable LoRA per fleet member (and its frozen parents)."""

    def __init__(self, base_layer: nn.Linear, segments: Segments, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.segments = segments
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self.scales: list[float] = []
        # Per member: frozen (A, B * scale) pairs of its parent adapters on this module.
        self.parents: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bypass = False
        self._parent_key: tuple[int, ...] | None = None
        self._parent_stack: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def add_member(self, r: int, scale: float) -> None:
        """Append a member's LoRA, drawn from the global RNG exactly as peft draws it."""
        w = self.base_layer.weight
        a = nn.Linear(self.in_features, r, bias=False)
        b = nn.Linear(r, self.out_features, bias=False)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        nn.init.zeros_(b.weight)
        kept = torch.float32 if w.dtype in (torch.bfloat16, torch.float16) else w.dtype
        for layer, into in ((a, self.lora_A), (b, self.lora_B)):
            into.append(nn.Parameter(layer.weight.detach().to(w.device, w.dtype).to(kept)))
        self.scales.append(scale)
        self.parents.append([])

    def add_parent(self, member: int, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        w = self.base_layer.weight
        self.parents[member].append((A.to(w.device, torch.float32), B.to(w.device, torch.float32) * scale))
        self._parent_key = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.bypass:
            return result
        seg = self.segments
        out_dtype = result.dtype
        A0 = self.lora_A[seg.members[0]]
        # peft casts the input to the LoRA weights' dtype; under autocast that round trip is exact.
        if x.dtype != A0.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(A0.dtype)
        if len(seg.members) == 1:
            m = seg.members[0]
            for A, B in self.parents[m]:
                result = result + nn.functional.linear(nn.functional.linear(x, A), B)
            A, B = self.lora_A[m], self.lora_B[m]
            result = result + nn.functional.linear(nn.functional.linear(self.dropout(x), A), B) * self.scales[m]
            return result.to(out_dtype)
        A, B = self._stacked(seg)
        delta = _SegmentLora.apply(self.dropout(x).reshape(-1, x.shape[-1]), A, B, seg)
        return (result + delta.view(result.shape)).to(out_dtype)

    def _stacked(self, seg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, R, in) and (M, out, R): each active member's own rank, then its parents' (zero
        padded to the widest among the active members; built once per set of members)."""
        own_A = torch.stack([self.lora_A[m] for m in seg.members])
        own_B = torch.stack([self.lora_B[m] * self.scales[m] for m in seg.members])
        if self._parent_key != seg.key:
            self._parent_key, self._parent_stack = seg.key, self._stack_parents(seg.members)
        if self._parent_stack is None:
            return own_A, own_B
        pa, pb = self._parent_stack
        return torch.cat([own_A, pa], 1), torch.cat([own_B, pb], 2)

    def _stack_parents(self, members: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        extra = max(sum(A.shape[0] for A, _ in self.parents[m]) for m in members)
        if not extra:
            return None
        w = self.base_layer.weight
        pa = torch.zeros(len(members), extra, self.in_features, device=w.device)
        pb = torch.zeros(len(members), self.out_features, extra, device=w.device)
        for i, m in enumerate(members):
            at = 0
            for A, B in self.parents[m]:
                pa[i, at : at + A.shape[0]] = A
                pb[i, :, at : at + A.shape[0]] = B
                at += A.shape[0]
        return pa, pb


def _targets(model: nn.Module, lora: Lora) -> list[str]:
    """The names of the linear modules peft would wrap for this config, in peft's order."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = LoraConfig(r=lora.r, target_modules=list(lora.target_modules))
    names = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and check_target_module_exists(cfg, n)
    ]
    if not names:
        raise ValueError(f"target_modules {list(lora.target_modules)!r} match no linear layer of the model")
    return names


class Fleet:
    """The LoRA linears installed in a model for a fleet's members; `detach()` puts the model's
    own modules back."""

    def __init__(self, model: nn.Module, lora: Lora | Mapping[str, Any]) -> None:
        self.model = model
        self.lora = lora = as_lora(lora)
        self.segments = Segments()
        self.names = _targets(model, lora)
        self.modules: dict[str, LoraLinear] = {}
        dropout = lora.dropout
        for name in self.names:
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            wrapped = LoraLinear(getattr(owner, leaf), self.segments, dropout)
            setattr(owner, leaf, wrapped)
            self.modules[name] = wrapped
        self.n_members = 0
        # The model's own attention implementation (what it has outside training).
        self.attention = "sdpa"

    def add_member(self, seed: int, lora: Lora | Mapping[str, Any], parents: Sequence[Sequence[LoraDelta]] = ()) -> int:
        """A new member's LoRA (initialised from `seed` as peft would) and frozen parents."""
        lora = as_lora(lora)
        r = lora.r
        scale = lora_scale(lora.alpha, r, lora.rslora)
        torch.manual_seed(seed)
        for name in self.names:
            self.modules[name].add_member(r, scale)
        m = self.n_members
        self.n_members += 1
        for k, adapter in enumerate(parents):
            for d in adapter:
                if d.module not in self.modules:
                    raise ValueError(
                        f"parent adapter {k + 1} touches {d.module!r}, which this fleet's LoRA does not "
                        "wrap (a frozen parent is applied on the wrapped linears only)"
                    )
                self.modules[d.module].add_parent(m, d.A, d.B, d.scale)
        return m

    def parameters(self, member: int) -> list[nn.Parameter]:
        return [
            p for name in self.names for p in (self.modules[name].lora_A[member], self.modules[name].lora_B[member])
        ]

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member's weights under peft's saved key names."""
        out = {}
        for name in self.names:
            mod = self.modules[name]
            out[f"base_model.model.{name}.lora_A.weight"] = mod.lora_A[member].detach().contiguous()
            out[f"base_model.model.{name}.lora_B.weight"] = mod.lora_B[member].detach().contiguous()
        return out

    def set_bypass(self, on: bool) -> None:
        for mod in self.modules.values():
            mod.bypass = on

    def detach(self) -> None:
        for name, wrapped in self.modules.items():
            parent, _, leaf = name.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            setattr(owner, leaf, wrapped.base_layer)
        self.modules = {}


def peft_config(model: nn.Module, lora: Lora | Mapping[str, Any]):
    """The LoraConfig the train stage's adapters are saved with (what `get_peft_model` saw)."""
    from peft import LoraConfig

    lora = as_lora(lora)
    cfg = LoraConfig(
        r=lora.r,
        # peft annotates alpha as int but scales with it as a number; a spec may write 64.0.
        lora_alpha=lora.alpha,  # type: ignore[arg-type]
        use_rslora=lora.rslora,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    cfg.base_model_name_or_path = model.__dict__.get("name_or_path", None)
    cfg.revision = None
    return cfg


def save_member(fleet: Fleet, member: int, dest: Path, lora: Lora | Mapping[str, Any]) -> None:
    """Write member's adapter in peft's format (adapter_config.json, adapter_model.safetensors)."""
    from safetensors.torch import save_file

    from cpx.stages._training import tidy_adapter_config

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cfg = peft_config(fleet.model, lora)
    cfg.inference_mode = True
    cfg.save_pretrained(str(dest))
    save_file(
        {k: v.cpu() for k, v in fleet.state_dict(member).items()},
        str(dest / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    tidy_adapter_config(dest)
