"""Models: loading (hub id, local path, built-in tiny) and model chains (base + adapters).

Heavy libraries (torch, transformers, peft) are imported inside the functions that need them.
"""

from cpx.models._chain import ChainError, LoraDelta, MergedModel, adapter_folder, lora_scale, read_adapter
from cpx.models._fingerprint import FingerprintError, fingerprint
from cpx.models._load import ModelLoadError, load_model, load_tokenizer, model_dir, render_prompt
from cpx.models._pool import ModelPool
from cpx.models._threads import small_model_threads
from cpx.models._tiny import CHAT_TEMPLATE, TINY_DEFAULTS, build_tiny, tiny_hash, tiny_params

__all__ = [
    "CHAT_TEMPLATE",
    "ChainError",
    "FingerprintError",
    "LoraDelta",
    "MergedModel",
    "ModelLoadError",
    "ModelPool",
    "TINY_DEFAULTS",
    "adapter_folder",
    "build_tiny",
    "fingerprint",
    "load_model",
    "load_tokenizer",
    "lora_scale",
    "model_dir",
    "read_adapter",
    "render_prompt",
    "small_model_threads",
    "tiny_hash",
    "tiny_params",
]
