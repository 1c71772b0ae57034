"""The worker's model pool: one base model and tokenizer kept loaded, adapter chains switched
by merging and restoring in memory (docs/plan-format.md, "Runner interface")."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

from cpx.models._chain import ChainError, MergedModel, adapter_folder, read_adapter
from cpx.models._load import load_model


def _ref_key(ref: dict[str, Any]) -> str:
    return json.dumps(ref, sort_keys=True, separators=(",", ":"))


def _adapter_key(folder: Path) -> tuple[str, int, int]:
    # Path plus size and mtime: a stage re-run in the same temporary folder is a new adapter.
    st = (folder / "adapter_model.safetensors").stat()
    return (str(folder.resolve()), st.st_size, st.st_mtime_ns)


class ModelPool:
    """Keeps one base model loaded on `device` and hands out chains of merged adapters.

    `get(chain, inputs)` returns `(model, tokenizer)` with the chain's adapters merged in
    order; adapters already merged as a prefix of the chain are kept, the rest are undone by
    restoring the base weights exactly. The model is in eval mode with gradients off; a
    caller that changes it (training) must put it back as it found it.
    """

    def __init__(self, device: str = "cpu", run_dir: str | os.PathLike[str] = ".") -> None:
        self.device = device
        self.run_dir = Path(run_dir)
        self._base_key: str | None = None
        self._merged: MergedModel | None = None
        self._tokenizer: Any = None
        self._chain: list[tuple[str, int, int]] = []

    def get(self, chain: dict[str, Any], inputs: dict[str, Path] | None = None):
        base = chain.get("base")
        if not isinstance(base, dict):
            raise ChainError(f"a chain needs a 'base' ModelRef, got {base!r}")
        folders = [adapter_folder(a, inputs or {}) for a in chain.get("adapters", [])]
        keys = [_adapter_key(f) for f in folders]
        self._load_base(base)
        assert self._merged is not None
        n_keep = 0
        while n_keep < min(len(keys), len(self._chain)) and keys[n_keep] == self._chain[n_keep]:
            n_keep += 1
        if n_keep < len(self._chain):
            self._merged.restore()
            self._chain = []
            n_keep = 0
        for folder, key in zip(folders[n_keep:], keys[n_keep:], strict=True):
            try:
                self._merged.merge(read_adapter(folder), where=str(folder))
            except Exception:
                # A half-merged chain must not be mistaken for anything: go back to the base.
                self._merged.restore()
                self._chain = []
                raise
            self._chain.append(key)
        return self._merged.model, self._tokenizer

    def export(self, chain: dict[str, Any], inputs: dict[str, Path] | None, dest: str | os.PathLike[str]) -> Path:
        """Save the chain's merged model and its tokenizer to `dest` (save_pretrained layout)."""
        model, tok = self.get(chain, inputs)
        dest = Path(dest)
        model.save_pretrained(dest)
        tok.save_pretrained(dest)
        return dest

    def release(self) -> None:
        """Drop the loaded model (and free its device memory)."""
        self._merged = None
        self._tokenizer = None
        self._base_key = None
        self._chain = []
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _load_base(self, ref: dict[str, Any]) -> None:
        key = _ref_key(ref)
        if key == self._base_key:
            return
        self.release()
        model, tok = load_model(ref, self.run_dir, self.device)
        model.requires_grad_(False)
        self._merged = MergedModel(model, self.device)
        self._tokenizer = tok
        self._base_key = key
