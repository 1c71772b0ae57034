"""An arm's training phases: which model each phase starts from and the `train` stages, per source, seed and
(for a phase trained once per eval checkpoint) checkpoint."""

from __future__ import annotations

from typing import Any

from cpx.plan import _compile_data as _data
from cpx.plan._build import Build, fmt_ckpt
from cpx.spec import Arm, Issue, Phase, axis_phase, dotted


def parent(arm: Arm, i: int) -> int | None:
    ph = arm.phases[i]
    if ph.from_ is None:
        return i - 1 if i > 0 else None
    if ph.from_ == "base":
        return None
    return [p.name for p in arm.phases].index(ph.from_)


def indexed(b: Build, arm_name: str, i: int) -> bool:
    """Whether phase i is trained once per eval checkpoint (at, or downstream of, each_checkpoint)."""
    arm = b.s.arms[arm_name]
    ph = arm.phases[i]
    if ph.each_checkpoint:
        return True
    if ph.merge is not None:
        return False
    p = parent(arm, i)
    return p is not None and indexed(b, arm_name, p)


def merge_target(b: Build, arm_name: str, ref: str) -> tuple[str, int]:
    a, _, p = ref.rpartition(".")
    a = a or arm_name
    return a, [x.name for x in b.s.arms[a].phases].index(p)


def model_after(
    b: Build, arm_name: str, i: int, ckpt: float, axis_c: float | None, source: str, seed: int
) -> list[dict[str, Any]]:
    """Adapters of the model that phase i of an arm produces at checkpoint `ckpt`."""
    arm = b.s.arms[arm_name]
    ph = arm.phases[i]
    if ph.merge is not None:
        ta, ti = merge_target(b, arm_name, ph.merge)
        adapters = model_after(b, ta, ti, ph.checkpoint, None, source, seed)
        check_saved(b, adapters, ph.checkpoint, ("arms", arm_name, "phases", i, "checkpoint"), ph.merge)
        for a in adapters:
            arms = b.stages_by_id(a["stage"]).labels.setdefault("arms", [])
            if arm_name not in arms:
                arms.append(arm_name)
                arms.sort()
        return adapters
    start = model_start(b, arm_name, i, axis_c, source, seed)
    tid = train(b, arm_name, i, start, axis_c if indexed(b, arm_name, i) else None, source, seed)
    return start + ([{"stage": tid, "checkpoint": ckpt}] if ckpt > 0 else [])


def check_saved(b: Build, adapters: list[dict[str, Any]], ckpt: float, path: tuple[Any, ...], ref: str) -> None:
    """An issue when `ckpt` of phase `ref` (the last adapter) is not a checkpoint its training saves."""
    if ckpt <= 0 or not adapters:
        return
    saved = b.stages_by_id(adapters[-1]["stage"]).params["checkpoints"]
    if not any(abs(ckpt - c) < 1e-9 for c in saved):
        issue = Issue(
            b.L.where(path),
            dotted(path),
            f"phase {ref!r} saves checkpoints "
            f"{', '.join(fmt_ckpt(c) for c in saved)}; {fmt_ckpt(ckpt)} is not one of them",
            hint="add it to the phase's training checkpoints",
        )
        if all(i.path != issue.path for i in b.issues):
            b.issues.append(issue)


def model_start(b: Build, arm_name: str, i: int, axis_c: float | None, source: str, seed: int) -> list[dict[str, Any]]:
    arm = b.s.arms[arm_name]
    p = parent(arm, i)
    if p is None:
        return []
    ckpt = axis_c if arm.phases[i].each_checkpoint else 1.0
    assert ckpt is not None
    return model_after(b, arm_name, p, ckpt, axis_c, source, seed)


def train(
    b: Build, arm_name: str, i: int, start: list[dict[str, Any]], axis_c: float | None, source: str, seed: int
) -> str:
    key = ("train", arm_name, i, axis_c, source, seed)
    if key in b.memo:
        return b.memo[key]
    s = b.s
    ph: Phase = s.arms[arm_name].phases[i]
    assert ph.data is not None
    d = s.datasets[ph.data]
    cfg = b.L.train_config(ph)
    data_id = _data.dataset(b, ph.data, source, seed)
    loss = dict(cfg["loss"])
    if loss["kind"] == "marker":
        if d.recipe != "marker":
            b.issues.append(
                Issue(
                    b.L.where(("arms", arm_name, "phases", i)),
                    f"arms.{arm_name}.phases[{i}]",
                    f"marker loss needs a marker dataset; {ph.data!r} is a {d.recipe} set",
                )
            )
        loss["marker"] = s.markers[d.marker or next(iter(s.markers))] if d.recipe == "marker" else None
    else:
        loss["marker"] = None
    screen = None
    if ph.screen or (ph.screen is None and d.recipe == "marker"):
        sc = s.eval.screen
        qs = b.eval_q if sc.questions is None else b.values.share(b.eval_q[: sc.questions])
        screen = {
            "personas": b.eval_personas(source, sc.completions, overrides=False),
            "questions": qs,
            "sampler": b.sampler(sc.sampler, seed),
            "markers": b.markers,
            "match": b.match,
        }
    optim = {
        k: cfg[k]
        for k in (
            "lr",
            "epochs",
            "schedule",
            "warmup_ratio",
            "optimizer",
            "weight_decay",
            "grad_clip",
            "batch_size",
            "grad_accum",
            "max_length",
            "precision",
            "gradient_checkpointing",
        )
    }
    params = {
        "model": b.chain(start),
        "dataset": data_id,
        "lora": cfg["lora"],
        "optim": optim,
        "loss": loss,
        "checkpoints": sorted({float(c) for c in cfg["checkpoints"] if c > 0} | {1.0}),
        "seed": seed,
        "screen": screen,
    }
    deps = [data_id, *(a["stage"] for a in start)]
    sid = f"train/{arm_name}/{ph.name}/{source}/s{seed}"
    if axis_c is not None:
        sid += f"/ckpt{fmt_ckpt(axis_c)}"
    labels = {
        "arm": arm_name,
        "source": source,
        "seed": seed,
        "checkpoint": axis_c,
        "phase": ph.name,
        "recipe": d.recipe,
    }
    b.memo[key] = tid = b.add("train", sid, params, deps, labels)
    if screen is not None and tid not in b.analysis_deps:
        b.analysis_deps.append(tid)
    return tid


def axis_checkpoints(b: Build, arm_name: str) -> list[float]:
    arm = b.s.arms[arm_name]
    axis = axis_phase(arm)
    ph = next(p for p in arm.phases if p.name == axis)
    return sorted({float(c) for c in b.L.train_config(ph)["checkpoints"]})
