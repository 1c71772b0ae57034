"""Plans: the DAG of content-hashed stages that `cpx compile` writes and `cpx execute` runs."""

from typing import TYPE_CHECKING

from cpx._lazy import lazy_exports
from cpx.plan._cost import (
    GPU_KINDS,
    CostError,
    calibrate,
    count_done,
    load_calibration,
    gpu_seconds,
    run_manifests,
    save_calibration,
    stage_seconds,
    stage_work,
    work_seconds,
)
from cpx.plan._diff import diff_plans, format_diff, mermaid
from cpx.plan._model import PLAN_FORMAT, STAGE_KINDS, Plan, PlanError, Stage
from cpx.plan._params import (
    PARAMS,
    AdapterRef,
    AnalyzeParams,
    Chain,
    DatasetParams,
    EvalPersona,
    GenerateParams,
    InvalidParam,
    Lora,
    Match,
    ModelRef,
    Negatives,
    Optim,
    Params,
    Persona,
    Question,
    ReportParams,
    RepresentParams,
    Sampler,
    SampleParams,
    SamplerError,
    ScanParams,
    StageParamError,
    StageRef,
    Steer,
    TrainParams,
    as_sampler,
    coerce,
    parse_params,
)

if TYPE_CHECKING:
    from cpx.plan._compile import compile_spec, params_b

# The compiler imports the spec package (pydantic): loaded on first use, not by stage workers.
__getattr__, __dir__ = lazy_exports(__name__, {"compile_spec": "cpx.plan._compile", "params_b": "cpx.plan._compile"})

__all__ = [
    "PARAMS",
    "AdapterRef",
    "AnalyzeParams",
    "Chain",
    "CostError",
    "DatasetParams",
    "EvalPersona",
    "GenerateParams",
    "InvalidParam",
    "Lora",
    "Match",
    "ModelRef",
    "Negatives",
    "Optim",
    "Params",
    "Persona",
    "Question",
    "ReportParams",
    "RepresentParams",
    "SampleParams",
    "Sampler",
    "SamplerError",
    "ScanParams",
    "StageParamError",
    "StageRef",
    "Steer",
    "TrainParams",
    "as_sampler",
    "coerce",
    "parse_params",
    "GPU_KINDS",
    "PLAN_FORMAT",
    "Plan",
    "PlanError",
    "STAGE_KINDS",
    "Stage",
    "calibrate",
    "compile_file",
    "compile_spec",
    "count_done",
    "diff_plans",
    "format_diff",
    "load_calibration",
    "mermaid",
    "params_b",
    "gpu_seconds",
    "run_manifests",
    "save_calibration",
    "stage_seconds",
    "stage_work",
    "work_seconds",
]


def compile_file(path, overrides=()):  # type: ignore[no-untyped-def]
    """Load a spec file (with `-s` style overrides) and compile it to a Plan."""
    from cpx.plan._compile import compile_spec
    from cpx.spec import load_spec

    return compile_spec(load_spec(path, overrides))
