"""An eval point's `sample`, `scan` and `represent` stages."""

from __future__ import annotations

from typing import Any

from cpx.plan._build import Build, fmt_ckpt


def eval_point(
    b: Build,
    arm: str,
    source: str | None,
    seed: int,
    c: float | None,
    adapters: list[dict[str, Any]],
    steer: dict[str, Any] | None = None,
) -> None:
    """The sample, scan and represent stages of one eval point. A steered point (`steer`: the stages'
    `steer` param) is labelled with its strength `alpha` instead of a checkpoint."""
    s = b.s
    if source is None:
        tail = f"{arm}/s{seed}"
    elif steer is not None:
        tail = f"{arm}/{source}/s{seed}/alpha{fmt_ckpt(steer['alpha'])}"
    else:
        assert c is not None, "an eval point of a trained model names its checkpoint"
        tail = f"{arm}/{source}/s{seed}/ckpt{fmt_ckpt(c)}"
    labels: dict[str, Any] = {"arm": arm, "source": source, "seed": seed, "checkpoint": c}
    deps = [a["stage"] for a in adapters]
    extra: dict[str, Any] = {}
    layers = list(s.representation.layers)
    if steer is not None:
        labels["alpha"] = steer["alpha"]
        deps.append(steer["direction"]["represent"])
        extra["steer"] = steer
        layers = sorted({*layers, steer["layer"]})
    chain = b.chain(adapters)
    personas = b.eval_personas(source, s.eval.completions)
    sample = b.add(
        "sample",
        f"sample/{tail}",
        {
            "model": chain,
            "personas": personas,
            "questions": b.eval_q,
            "sampler": b.sampler(s.eval.sampler, seed),
            "backend": s.eval.backend,
            **extra,
        },
        deps,
        labels,
    )
    iv = s.eval.intervals
    scan = b.add(
        "scan",
        f"scan/{tail}",
        {
            "markers": b.markers,
            "match": b.match,
            "cluster": "question_id",
            "confidence_level": iv.confidence_level,
            "n_resamples": iv.n_resamples,
            "seed": seed if iv.seed is None else iv.seed,
        },
        [sample],
        labels,
    )
    rep = represent(b, f"represent/{tail}", chain, personas, layers, deps, labels, extra)
    for sid in (scan, rep):
        if sid not in b.analysis_deps:
            b.analysis_deps.append(sid)
    b.points.append({**labels, "scan": scan, "represent": rep})


def represent(
    b: Build,
    sid: str,
    chain: dict[str, Any],
    personas: list[dict[str, Any]],
    layers: list[int],
    deps: list[str],
    labels: dict[str, Any],
    extra: dict[str, Any] | None = None,
    join: bool = True,
) -> str:
    rep = b.s.representation
    return b.add(
        "represent",
        sid,
        {
            "model": chain,
            "personas": b.values.share([{"name": p["name"], "prompt": p["prompt"]} for p in personas]),
            "questions": b.eval_q,
            "layers": layers,
            "token": rep.token,
            "centering": rep.centering,
            **(extra or {}),
        },
        deps,
        labels,
        join,
    )
