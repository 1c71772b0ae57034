"""Plans: the DAG of content-hashed stages that `cpx compile` writes and `cpx execute` runs."""

from cpx.plan._model import PLAN_FORMAT, STAGE_KINDS, Plan, PlanError, Stage

__all__ = ["PLAN_FORMAT", "STAGE_KINDS", "Plan", "PlanError", "Stage"]
