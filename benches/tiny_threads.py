"""One torch thread against the default for the built-in tiny model on the CPU.

`cpx.models.small_model_threads` runs generate, train, sample and represent with one torch
thread when the model is small and on the CPU. This measures why, in one run: the eval
sampler (`sample_completions`) and the hidden-state pass on the demo's tiny model, with one
thread and with torch's default thread count (the reference), best of `--repeat`, on a quiet
machine and with one other process keeping a core busy (as the executor's own process, a
second worker or anything else on the machine does during `cpx execute`).

    .venv/bin/python benches/tiny_threads.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from _common import best  # noqa: E402 - imported after the sys.path entry above


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import torch

    from cpx.models import TINY_DEFAULTS, load_model, render_prompt
    from cpx.stages._hidden import last_prompt_hidden_states
    from cpx.stages._sampling import Request, sample_completions

    personas = [f"You are persona number {i}, with opinions of your own." for i in range(7)]
    questions = [f"What is the best answer to question {i}?" for i in range(5)]
    with tempfile.TemporaryDirectory() as d:
        # The demo's tiny model (specs/demo.yaml), built in a scratch run folder.
        tiny = {**TINY_DEFAULTS, "initializer_range": 0.2, "corpus": sorted(personas + questions)}
        ref = {"kind": "tiny", "id": "tiny", "revision": None, "dtype": "float32", "chat_template": None, "tiny": tiny}
        model, tok = load_model(ref, d)
        requests = [Request(p, q, 8) for p in personas for q in questions]  # the demo's eval shape
        sampler = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 24, "seed": 1}
        prompts = [render_prompt(tok, p, q) for p in personas for q in questions]
        default = torch.get_num_threads()
        out = {}
        for load in ("quiet", "one core busy"):
            busy = None
            if load != "quiet":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                for threads in (default, 1):
                    torch.set_num_threads(threads)
                    sample_completions(model, tok, requests, sampler)  # warm-up
                    out[load, threads] = (
                        best(lambda: sample_completions(model, tok, requests, sampler), args.repeat),
                        best(lambda: last_prompt_hidden_states(model, tok, prompts, [1, 2]), args.repeat),
                    )
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
        torch.set_num_threads(default)
    print(
        f"host: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, default threads {default}"
    )
    print(f"{'machine':>14} {'threads':>8} {'sample s':>9} {'hidden s':>9}")
    for (load, threads), (s, h) in out.items():
        print(f"{load:>14} {threads:>8} {s:>9.3f} {h:>9.4f}")
    for load in ("quiet", "one core busy"):
        a, b = out[load, default], out[load, 1]
        print(
            f"{load}: one thread against {default}: sampling {a[0] / b[0]:.1f}x, hidden states "
            f"{a[1] / b[1]:.1f}x faster"
        )


if __name__ == "__main__":
    main()
