"""Plans: the DAG of content-hashed stages that `cpx compile` writes and `cpx execute` runs."""

from cpx.plan._model import PLAN_FORMAT, STAGE_KINDS, Plan, PlanError, Stage

__all__ = ["PLAN_FORMAT", "STAGE_KINDS", "Plan", "PlanError", "Stage", "compile_file"]


def compile_file(path, overrides=()):  # type: ignore[no-untyped-def]
    """Load a spec file (with `-s` style overrides) and compile it to a Plan."""
    from cpx.plan._compile import compile_spec
    from cpx.spec import load_spec

    return compile_spec(load_spec(path, overrides))
