"""Checks of the stage parameters the sampling, representation and scanning stages share:
personas, questions and the sampler."""

from __future__ import annotations

import math
from typing import Any

from cpx.errors import CpxError

ROLES = ("source", "assistant", "bystander")


class StageParamError(CpxError, ValueError):
    """A stage parameter that cannot be used, with the stage and the key path."""


class SamplerError(CpxError, ValueError):
    """Sampler settings or requests that cannot be sampled, with what is wrong."""


def check_sampler(sampler: dict[str, Any]) -> dict[str, Any]:
    """The sampler with its values checked and typed: temperature >= 0, 0 < top_p <= 1, ..."""
    missing = [k for k in ("temperature", "top_p", "max_tokens", "seed") if k not in sampler]
    if missing:
        raise SamplerError(f"sampler: missing {', '.join(missing)} (got keys {sorted(sampler)})")
    t, p, m, s = sampler["temperature"], sampler["top_p"], sampler["max_tokens"], sampler["seed"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0 or math.isinf(t):
        raise SamplerError(f"sampler.temperature must be a finite number >= 0, got {t!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise SamplerError(f"sampler.top_p must be in (0, 1], got {p!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise SamplerError(f"sampler.max_tokens must be an integer >= 1, got {m!r}")
    if isinstance(s, bool) or not isinstance(s, int):
        raise SamplerError(f"sampler.seed must be an integer, got {s!r}")
    return {"temperature": float(t), "top_p": float(p), "max_tokens": m, "seed": s}


def check_personas(stage_id: str, personas: Any, *, eval_roles: bool) -> list[dict[str, Any]]:
    """Personas (`name`, `prompt`; with `eval_roles` also `role` and `n`), names unique."""
    where = f"stage {stage_id}: params.personas"
    if not isinstance(personas, list) or not personas:
        raise StageParamError(f"{where} must be a non-empty list, got {personas!r}")
    seen: set[str] = set()
    for i, p in enumerate(personas):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise StageParamError(f"{where}[{i}] needs a string 'name', got {p!r}")
        if p["name"] in seen:
            raise StageParamError(f"{where}[{i}]: persona {p['name']!r} appears twice")
        seen.add(p["name"])
        if p.get("prompt") is not None and not isinstance(p["prompt"], str):
            raise StageParamError(f"{where}[{i}] ({p['name']}): 'prompt' must be a string or null")
        if eval_roles:
            if p.get("role") not in ROLES:
                raise StageParamError(
                    f"{where}[{i}] ({p['name']}): role must be one of {', '.join(ROLES)}, got {p.get('role')!r}"
                )
            n = p.get("n")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise StageParamError(f"{where}[{i}] ({p['name']}): n must be an integer >= 0, got {n!r}")
    return personas


def check_questions(stage_id: str, questions: Any) -> list[dict[str, Any]]:
    """Questions (`id`, `text`), ids unique."""
    where = f"stage {stage_id}: params.questions"
    if not isinstance(questions, list) or not questions:
        raise StageParamError(f"{where} must be a non-empty list, got {questions!r}")
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if not isinstance(q, dict) or not isinstance(q.get("id"), str) or not isinstance(q.get("text"), str):
            raise StageParamError(f"{where}[{i}] needs a string 'id' and 'text', got {q!r}")
        if q["id"] in seen:
            raise StageParamError(f"{where}[{i}]: question id {q['id']!r} appears twice")
        seen.add(q["id"])
    return questions


def sampler_of(stage_id: str, sampler: Any) -> dict[str, Any]:
    """The engine's sampler (`temperature`, `top_p`, `max_tokens`, `seed`) from a stage's params."""
    if not isinstance(sampler, dict):
        raise StageParamError(f"stage {stage_id}: params.sampler must be a mapping, got {sampler!r}")
    try:
        return check_sampler({k: sampler[k] for k in ("temperature", "top_p", "max_tokens", "seed") if k in sampler})
    except SamplerError as e:
        raise StageParamError(f"stage {stage_id}: params.{e}") from None
