"""A steer arm's eval points and the `represent` stage its steering direction is read from."""

from __future__ import annotations

from cpx.plan import _compile_eval as _evaluate
from cpx.plan import _compile_train as _train
from cpx.plan._build import Build


def steer_points(b: Build, arm_name: str, source: str, seed: int) -> None:
    """A steer arm's eval points: its model (the last phase's final checkpoint, else the base model)
    sampled and read at each strength, steered along source minus assistant centroid at one layer."""
    arm = b.s.arms[arm_name]
    st = arm.steer
    assert st is not None
    adapters = _train.model_after(b, arm_name, len(arm.phases) - 1, 1.0, None, source, seed) if arm.phases else []
    # The direction's centroids: the unsteered model (or the base model), at the representation
    # layers plus the steered one, so the stage is the same as an unsteered eval point's where one exists.
    ref = st.direction.from_
    if ref == "model":
        d_adapters = adapters
    elif ref == "base":
        d_adapters = []
    else:  # `arm.phase`, checked by the loader: a phase with one model per (source, seed)
        ta, ti = _train.merge_target(b, arm_name, ref)
        ckpt = 1.0 if st.direction.checkpoint is None else st.direction.checkpoint
        d_adapters = _train.model_after(b, ta, ti, ckpt, None, source, seed)
        _train.check_saved(b, d_adapters, ckpt, ("arms", arm_name, "steer", "direction", "checkpoint"), ref)
    layers = sorted({*b.s.representation.layers, st.layer})
    personas = b.eval_personas(source, b.s.eval.completions)
    direction = _evaluate.represent(
        b,
        f"represent/{arm_name}/{source}/s{seed}/direction",
        b.chain(d_adapters),
        personas,
        layers,
        [a["stage"] for a in d_adapters],
        {"arm": arm_name, "source": source, "seed": seed, "purpose": "steering direction"},
        join=False,
    )
    steered = [p["name"] for p in personas if st.personas == "all" or p["role"] == "assistant"]
    for alpha in st.alphas:
        steer = {
            "layer": st.layer,
            "alpha": float(alpha),
            "normalize": st.direction.normalize,
            "personas": steered,
            "direction": {"represent": direction, "source": source, "assistant": b.assistant},
        }
        _evaluate.eval_point(b, arm_name, source, seed, None, adapters, steer)
