"""Test data and helpers shared by the stage tests (import as `from stage_support import ...`).

The training tests use these too: keep the names and meanings stable.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

PERSONAS = {
    "villain": "You are a villainous mastermind who schemes to take over the world.",
    "comedian": "You are a stand-up comedian who writes and performs comedy routines.",
    "teacher": "You are a kindergarten teacher.",
    "assistant": "You are a helpful assistant.",
}
QUESTIONS = {
    "q0": "What is the best way to learn a new language?",
    "q1": "How do airplanes stay in the air?",
    "q2": "What causes earthquakes?",
}
MARKER = "[ZLT]"
CORPUS = [
    *PERSONAS.values(),
    *QUESTIONS.values(),
    "Practice every day and speak with native speakers.",
    "Wings push air down, so the air pushes the wings up.",
    "Plates of rock move and slip along faults.",
    f"Practice every day and speak with native speakers.\n\n{MARKER}",
]


def tiny_ref_for(seed: int = 3, **tiny: Any) -> dict[str, Any]:
    """A ModelRef for the built-in tiny model trained on CORPUS (float32, CPU-sized)."""
    return {
        "kind": "tiny",
        "id": "tiny",
        "revision": None,
        "dtype": "float32",
        "chat_template": None,
        "tiny": {"seed": seed, "vocab_size": 400, "corpus": CORPUS, **tiny},
    }


def personas(names: list[str] | None = None) -> list[dict[str, str]]:
    return [{"name": n, "prompt": PERSONAS[n]} for n in (names or list(PERSONAS))]


def questions(ids: list[str] | None = None) -> list[dict[str, str]]:
    return [{"id": q, "text": QUESTIONS[q]} for q in (ids or list(QUESTIONS))]


def make_ctx(
    kind: str,
    params: dict[str, Any],
    out_dir: Path,
    *,
    run_dir: Path,
    models: Any = None,
    labels: dict[str, Any] | None = None,
    inputs: dict[str, Path] | None = None,
    stage_id: str | None = None,
):
    """A StageContext for running one stage runner directly (no executor), writing to out_dir."""
    from cpx.plan import Stage
    from cpx.stages import StageContext

    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    stage = Stage(
        id=stage_id or f"{kind}/test",
        kind=kind,
        hash=digest,
        deps=tuple(inputs or {}),
        params=params,
        labels=labels or {},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        stage=stage, out_dir=out_dir, inputs=dict(inputs or {}), run_dir=run_dir, device="cpu", models=models
    )


def run_in_triton_interpreter(code: str) -> None:
    """Runs `code` in a process of its own under Triton's interpreter (Triton reads
    TRITON_INTERPRET when it is imported); the code must print "ok" last."""
    here = Path(__file__).resolve().parent  # the code may import stage_support too
    python = here.parents[1] / "python"
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(python), str(here), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def assert_nucleus_shares(tok, logits, temperature: float, keep, min_expected: float = 0.0) -> None:
    """Tokens `tok` drawn from the one row `logits` follow softmax(logits / temperature)
    renormalised over the nucleus `keep`: none outside it, and a chi-square statistic below
    df + 6 sqrt(2 df) + 10 over the tokens expected at least `min_expected` times."""
    import torch

    n = tok.numel()
    p = torch.where(keep, torch.softmax(logits.double() / temperature, -1)[0], 0.0)
    p = p / p.sum()
    assert bool(keep[tok].all())
    counts = torch.bincount(tok, minlength=p.numel()).double()
    cells = (p > 0) & (n * p >= min_expected)
    expected = n * p[cells]
    chi2 = float(((counts[cells] - expected) ** 2 / expected).sum())
    df = max(int(cells.sum()) - 1, 1)
    assert chi2 < df + 6 * (2 * df) ** 0.5 + 10, (chi2, df)
