"""Loading a base model and its tokenizer from a ModelRef (docs/plan-format.md).

Hub ids and local paths go through transformers' `from_pretrained`; the built-in tiny model
is built once into `<run>/models/<hash>/` and then loaded by the same call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.models._tiny import build_tiny, tiny_hash

_DTYPES = ("auto", "bfloat16", "float16", "float32")


class ModelLoadError(CpxError):
    """A model or tokenizer that cannot be loaded, with what was tried."""


def model_dir(ref: dict[str, Any], run_dir: str | os.PathLike[str]) -> str:
    """Where `from_pretrained` reads this model from: a hub id, a local path, or the tiny build."""
    kind = ref.get("kind")
    if kind == "tiny":
        dest = Path(run_dir) / "models" / f"tiny-{tiny_hash(ref.get('tiny'))[:16]}"
        return str(build_tiny(ref.get("tiny"), dest))
    if kind == "path":
        path = Path(ref["id"]).expanduser()
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model path {path} has no config.json")
        return str(path)
    if kind == "hub":
        return str(ref["id"])
    raise ModelLoadError(f"unknown model kind {kind!r}; expected 'hub', 'path' or 'tiny'")


def torch_dtype(name: str, device: str):
    """bf16 on a GPU and float32 on the CPU for "auto"; the named dtype otherwise."""
    import torch

    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; expected one of {', '.join(_DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def _quiet_transformers() -> None:
    """Stage logs are files: transformers' per-shard progress bars only add noise there."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(ref: dict[str, Any], run_dir: str | os.PathLike[str]):
    from transformers import AutoTokenizer

    _quiet_transformers()

    src = model_dir(ref, run_dir)
    tok = AutoTokenizer.from_pretrained(src, revision=ref.get("revision"))
    if ref.get("chat_template"):
        tok.chat_template = ref["chat_template"]
    if tok.chat_template is None:
        raise ModelLoadError(f"{src}: the tokenizer has no chat template; set model.chat_template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(ref: dict[str, Any], run_dir: str | os.PathLike[str], device: str = "cpu"):
    """Load `(model, tokenizer)` for a ModelRef on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    src = model_dir(ref, run_dir)
    tok = load_tokenizer(ref, run_dir)
    model = AutoModelForCausalLM.from_pretrained(
        src, revision=ref.get("revision"), dtype=torch_dtype(ref.get("dtype", "auto"), device)
    )
    model.to(device)  # type: ignore[arg-type]  # transformers' stub types `to` as a decorator over the model
    model.eval()
    return model, tok


def render_prompt(tokenizer, system: str | None, user: str) -> str:
    """The eval prompt: the chat template with the generation prompt, exactly as sampling uses it.

    Training renders the same prefix, so a model sees identical tokens in both.
    """
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
