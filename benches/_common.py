"""Pieces the benchmarks share. Imported as `_common` (a script's own folder is on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

# Qwen/Qwen2.5-7B-Instruct's shape (the published study's model), built with random weights.
QWEN25_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    use_sliding_window=False,
)


def recorder(results: dict[str, Any], filename: str) -> Callable[[str, Any], None]:
    """`record(key, value)`: keeps the value in `results`, prints it, and rewrites
    $OUT/`filename` with everything recorded so far (a crash still leaves what was measured)."""

    def record(key: str, value: Any) -> None:
        results[key] = value
        print(f"[{key}] {json.dumps(value, default=str)}", flush=True)
        out = os.environ.get("OUT")
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, filename), "w") as f:
                f.write(json.dumps(results, indent=1, default=str) + "\n")

    return record


def best(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` wall-clock timings of `fn()`, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_env(device: str) -> dict[str, Any]:
    """The versions a GPU bench ran with and the device's name (for its JSON's `env`)."""
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
    }
