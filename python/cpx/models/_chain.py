"""Model chains: a base model plus an ordered list of LoRA adapters, merged in memory.

Each adapter is merged with its own scaling (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA:
the original study's merge ignored rsLoRA and left an adapter 5.7x too weak). The weights an
adapter touches are copied once, before the first merge, so unmerging restores the base
bit for bit instead of subtracting (float add/subtract does not round-trip). The copy stays on
the GPU when it leaves at least half of the GPU's memory free (a 7B model's 14 GB on an H200:
copying to and from the CPU took 11-14 s a chain switch), and goes to the CPU otherwise.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpx.models._load import ModelLoadError

_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"


class ChainError(ModelLoadError):
    """A chain or an adapter folder that cannot be merged, with what and where."""


@dataclass(frozen=True)
class LoraDelta:
    """One target module of an adapter: `W += scale * B @ A`."""

    module: str
    A: Any  # torch.Tensor [r, in]
    B: Any  # torch.Tensor [out, r]
    scale: float


def lora_scale(alpha: float, r: int, rslora: bool) -> float:
    """peft's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return float(alpha) / (math.sqrt(r) if rslora else r)


def adapter_folder(adapter: dict[str, Any], inputs: dict[str, Path]) -> Path:
    """Where an AdapterRef's weights live: `<train stage output>/checkpoints/<fraction>/`."""
    stage = adapter.get("stage")
    ckpt = adapter.get("checkpoint")
    if stage not in inputs:
        raise ChainError(
            f"adapter of train stage {stage!r} is not among this stage's inputs ({', '.join(sorted(inputs)) or 'none'})"
        )
    if not isinstance(ckpt, int | float) or isinstance(ckpt, bool) or not 0 < ckpt <= 1:
        raise ChainError(
            f"adapter of {stage!r}: checkpoint must be a fraction in (0, 1], got {ckpt!r} "
            "(checkpoint 0 is the starting model: drop the adapter from the chain)"
        )
    folder = Path(inputs[stage]) / "checkpoints" / format(float(ckpt), "g")
    if not (folder / "adapter_config.json").exists():
        raise ChainError(f"adapter of {stage!r} at checkpoint {ckpt:g}: no adapter in {folder}")
    return folder


def read_adapter(folder: str | os.PathLike[str]) -> list[LoraDelta]:
    """The LoRA deltas of a peft adapter folder (plain LoRA on linear layers only)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ChainError(f"{folder}: cannot read adapter_config.json ({e})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ChainError(f"{folder}: peft_type {cfg.get('peft_type')!r}; only LORA adapters merge")
    for key in ("use_dora", "fan_in_fan_out"):
        if cfg.get(key):
            raise ChainError(f"{folder}: {key}=true is not supported by the chain merge")
    if cfg.get("alpha_pattern"):
        raise ChainError(f"{folder}: alpha_pattern is not supported by the chain merge")
    if cfg.get("modules_to_save"):
        raise ChainError(f"{folder}: modules_to_save is not supported by the chain merge")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        raise ChainError(f"{folder}: no adapter_model.safetensors")
    state = load_file(str(weights))
    alpha, rslora = cfg["lora_alpha"], bool(cfg.get("use_rslora", False))
    deltas = []
    for key in sorted(state):
        if key.endswith(_B):
            continue
        if not key.endswith(_A) or not key.startswith(_PREFIX):
            raise ChainError(f"{folder}: unexpected tensor {key!r} (only lora_A/lora_B weights merge)")
        stem = key[: -len(_A)]
        b_key = stem + _B
        if b_key not in state:
            raise ChainError(f"{folder}: {key!r} has no matching {b_key!r}")
        A, B = state[key], state[b_key]
        r = A.shape[0]  # the actual rank, which rank_pattern may set per module
        if B.shape[1] != r:
            raise ChainError(f"{folder}: {stem}: lora_A rank {r} but lora_B {tuple(B.shape)}")
        deltas.append(LoraDelta(stem[len(_PREFIX) :], A, B, lora_scale(alpha, r, rslora)))
    if len(deltas) * 2 != len(state):
        raise ChainError(f"{folder}: unpaired lora_B tensors")
    if not deltas:
        raise ChainError(f"{folder}: the adapter has no LoRA weights")
    return deltas


class MergedModel:
    """A base model whose linear weights carry merged adapters, restorable bit for bit.

    `merge(deltas)` adds one adapter (in float32, rounded once to the weight's dtype, as peft
    does); `restore()` copies the saved original weights back.
    """

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self._modules = dict(model.named_modules())
        self._backup: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self._device = device

    def backup_device(self, nbytes: int) -> str:
        """Where `nbytes` more of original weights are kept: the model's GPU when that leaves at
        least half of its memory free, else the CPU."""
        import torch

        if not self._device.startswith("cuda"):
            return "cpu"
        free, total = torch.cuda.mem_get_info(torch.device(self._device))
        return self._device if free - nbytes >= total / 2 else "cpu"

    def backups(self) -> dict[str, int]:
        """Bytes of original weights kept, by the device that keeps them."""
        out: dict[str, int] = {}
        for t in self._backup.values():
            out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()
        return out

    def merge(self, deltas: list[LoraDelta], where: str = "adapter") -> None:
        import torch

        for d in deltas:
            self._check(d, where)
        new = {d.module: self._modules[d.module].weight for d in deltas if d.module not in self._backup}
        to = self.backup_device(sum(w.numel() * w.element_size() for w in new.values()))
        with torch.no_grad():
            for name, w in new.items():
                self._backup[name] = w.detach().to(to, copy=True)
            for d in deltas:
                w = self._modules[d.module].weight
                delta = (d.B.to(w.device, torch.float32) @ d.A.to(w.device, torch.float32)) * d.scale
                w.copy_((w.float() + delta).to(w.dtype))
                self._dirty.add(d.module)

    def restore(self) -> None:
        """Put back the original weight of every module an adapter touched."""
        import torch

        with torch.no_grad():
            for name in sorted(self._dirty):
                self._modules[name].weight.copy_(self._backup[name])
        self._dirty.clear()

    def _check(self, d: LoraDelta, where: str) -> None:
        import torch

        mod = self._modules.get(d.module)
        if mod is None:
            raise ChainError(f"{where}: the model has no module {d.module!r}")
        if not isinstance(mod, torch.nn.Linear):
            raise ChainError(f"{where}: {d.module!r} is a {type(mod).__name__}, only nn.Linear merges")
        out_f, in_f = mod.weight.shape
        if tuple(d.A.shape) != (d.A.shape[0], in_f) or tuple(d.B.shape) != (out_f, d.A.shape[0]):
            raise ChainError(
                f"{where}: {d.module!r}: adapter shapes A{tuple(d.A.shape)} B{tuple(d.B.shape)} "
                f"do not fit the weight {tuple(mod.weight.shape)}"
            )
