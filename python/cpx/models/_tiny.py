"""The built-in tiny model: a Qwen2-architecture causal LM made from a seed, with a byte-level
BPE tokenizer trained on the spec's own texts and a Qwen-style chat template.

It is saved in the `save_pretrained` layout under `<run>/models/<hash>/`, so it is loaded by
the same `from_pretrained` code path as a hub model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Qwen2.5's template without tool calls and without the default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TINY_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1024,
    "initializer_range": 0.2,
    "corpus": [],
}


def tiny_params(tiny: dict[str, Any] | None) -> dict[str, Any]:
    """The tiny model's parameters with defaults filled in (unknown keys are an error)."""
    tiny = dict(tiny or {})
    unknown = set(tiny) - set(TINY_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown tiny-model parameter(s): {', '.join(sorted(unknown))}")
    return {**TINY_DEFAULTS, **tiny}


def tiny_hash(tiny: dict[str, Any] | None) -> str:
    canon = json.dumps(tiny_params(tiny), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Chat-formatted lines make the template's own pieces ("assistant\n", "\n\n") common merges.
    texts = list(corpus) + [f"{IM_START}system\n{t}{IM_END}\n" for t in corpus]
    tok.train_from_iterator(texts, trainer=trainer)
    return qwen_tokenizer(tok, model_max_length=2048)


def qwen_tokenizer(tokenizer_object: Any, model_max_length: int):
    """A `tokenizers.Tokenizer` as a transformers tokenizer with Qwen's special tokens, chat
    template and left padding (the tiny model's and the GPU benchmarks' random models')."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=model_max_length,
    )


def build_tiny(tiny: dict[str, Any] | None, dest: str | os.PathLike[str]) -> Path:
    """Create the tiny model and its tokenizer deterministically and save them to `dest`.

    Written in a temporary folder and renamed into place, so a crash never leaves a partial
    model; if another process finished first, its copy is kept.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    p = tiny_params(tiny)
    if not p["corpus"]:
        raise ValueError("the tiny model needs a non-empty corpus to train its tokenizer on")
    dest = Path(dest)
    if (dest / "config.json").exists():
        return dest
    tokenizer = train_tokenizer(p["corpus"], p["vocab_size"])
    vocab = len(tokenizer)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        num_key_value_heads=p["num_kv_heads"],
        max_position_embeddings=2048,
        initializer_range=p["initializer_range"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )
    # fork_rng keeps the caller's global RNG untouched by the build.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(p["seed"]))
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "cpx_tiny.json").write_text(json.dumps(p, indent=1, sort_keys=True) + "\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dest)
    except OSError:
        # Another worker renamed its identical build into place first.
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
