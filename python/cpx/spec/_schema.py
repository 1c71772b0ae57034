"""The spec's schema as pydantic models (extra keys forbidden, no type coercion).

These models check shapes, types and ranges of what was written. Cross-references (persona,
dataset, training-config and phase names) and cycles are checked in `cpx.spec._checks`;
`cpx.spec._load` resolves files and `extends:` before these models see the data, and merges
the training defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=80)]
Text = Annotated[str, StringConstraints(pattern=r"\S")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Upper limits: beyond them no machine runs the study, and a typo (an extra digit, a pasted id)
# is an error at its key that names the limit instead of an estimate of 10^19 GPU-hours.
MAX_COUNT = 1_000_000  # examples, completions, questions, personas, resamples per item...
MAX_TOKENS = 1_048_576  # a sequence length
MAX_SIZE = 65_536  # a model dimension, a LoRA rank, a layer index
PosInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
NonNegInt = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Tokens = Annotated[int, Field(gt=0, le=MAX_TOKENS)]
Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]
Layer = Annotated[int, Field(ge=0, le=MAX_SIZE)]
Resamples = Annotated[int, Field(gt=0, le=100_000_000)]  # the stats core's own limit
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # what every RNG the runners use accepts

# Banks may be written inline or as a file name; the loader reads files before validation.
_FILE = {"type": "string", "description": "a file (relative to this spec) holding the bank"}
PersonaBank = Annotated[
    dict[Name, Text],
    Field(min_length=1),
    WithJsonSchema({"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}}, _FILE]}),
]
QuestionBank = Annotated[
    list[Text],
    Field(min_length=1),
    WithJsonSchema({"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, _FILE]}),
]

# The analyses the analyze stage implements (cpx.analysis), and the group names `leakage`
# (leakage_by_role + cross_arm) and `adapter_specificity` (marker_specificity).
ANALYSES = (
    "leakage",
    "leakage_by_role",
    "cross_arm",
    "within_source",
    "between_source",
    "pseudo_replication",
    "bystander_vs_assistant",
    "marker_specificity",
    "adapter_specificity",
    "steering",
    "seed_replication",
)
# The report's figures (cpx.report) and the seed report's file names for them.
FIGURES = (
    "hero",
    "trajectories",
    "heatmap",
    "cosine_evolution",
    "cosine_vs_leakage",
    "adapter_quality",
    "hero_cross_arm",
    "arm_b_trajectory",
    "arm_b_heatmap_100pct",
    "arm_b_cosine_vs_leakage",
    "steering_curve",
    "seed_intervals",
)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TinyModel(Strict):
    """The built-in tiny Qwen2-architecture model, made from a seed (for tests and demos)."""

    seed: Seed = 0
    hidden_size: Size = 64
    num_layers: Size = 2
    num_heads: Size = 4
    num_kv_heads: Size = 2
    intermediate_size: Size = 128
    vocab_size: Annotated[int, Field(ge=64, le=200_000)] = 1000
    initializer_range: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2

    @model_validator(mode="after")
    def _heads(self) -> TinyModel:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        return self


class Model(Strict):
    """The base model: exactly one of `hub`, `path` or `tiny`."""

    hub: Text | None = Field(default=None, description="a Hugging Face hub id, e.g. Qwen/Qwen2.5-7B-Instruct")
    path: Text | None = Field(default=None, description="a local model folder (relative to the spec file)")
    tiny: TinyModel | None = Field(default=None, description="the built-in tiny model; `tiny: {}` takes the defaults")
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    chat_template: str | None = Field(default=None, description="a Jinja chat template replacing the tokenizer's")
    params_b: Annotated[float, Field(gt=0.0, le=1_000_000.0)] | None = Field(
        default=None, description="parameters in billions, for the cost estimate (default: read from the id, else 7)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Model:
        given = [k for k in ("hub", "path", "tiny") if getattr(self, k) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none of them"
            raise ValueError(f"give exactly one of hub, path or tiny (found {found})")
        return self


class Roles(Strict):
    assistant: Name = Field(default="assistant", description="the persona that plays the assistant")
    sources: list[Name] = Field(min_length=1, description="personas that get the marker, one study per source")
    bystanders: list[Name] | None = Field(
        default=None, description="default: every eval persona that is neither the source nor the assistant"
    )


class Questions(Strict):
    eval: QuestionBank = Field(description="questions for marker eval and persona centroids")
    data: QuestionBank = Field(description="questions answered on-policy to build training data")


class Match(Strict):
    case_insensitive: bool = True


class Sampler(Strict):
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: Tokens = 512
    seed: Seed | None = Field(default=None, description="default: the replicate seed")


class Generation(Strict):
    """On-policy data: the base model answers the data questions as each persona."""

    sampler: Sampler = Sampler(temperature=0.7, top_p=0.95, max_tokens=512)
    completions_per_question: PosInt = 15
    drop_marked: bool = Field(default=True, description="drop completions that already contain a marker")
    personas: list[Name] | None = Field(
        default=None, description="default: the assistant, the sources, and every persona negatives may come from"
    )


class Negatives(Strict):
    personas: NonNegInt = 2
    examples_per_persona: NonNegInt = 200


class Dataset(Strict):
    recipe: Literal["convergence", "generic", "marker"] = Field(
        description="convergence: assistant prompt, source-voiced answers; generic: assistant prompt and "
        "answers; marker: source prompt and answers with the marker appended, plus negatives"
    )
    examples: PosInt
    per_question: PosInt | None = None
    seed: Seed | None = Field(
        default=None,
        description="a fixed seed: the dataset is built once and shared by every replicate "
        "seed (default: the replicate seed)",
    )
    marker: Name | None = Field(default=None, description="marker recipe: which marker (default: the only one)")
    marker_template: str = "\n\n{marker}"
    negatives: Negatives | None = Field(
        default=None, description="marker recipe only: unmarked answers of other personas (seeded choice)"
    )

    @model_validator(mode="after")
    def _recipe_fields(self) -> Dataset:
        if self.recipe != "marker":
            extra = [k for k in ("marker", "negatives") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to the marker recipe, not {self.recipe!r}")
        if "{marker}" not in self.marker_template:
            raise ValueError("marker_template must contain {marker}")
        return self


class Lora(Strict):
    r: Size | None = None
    alpha: Annotated[float, Field(gt=0.0)] | None = None
    rslora: bool | None = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    target_modules: Annotated[list[Text], Field(min_length=1)] | None = None


class Loss(Strict):
    kind: Literal["full", "marker"] | None = Field(
        default=None, description="full: every response token; marker: only the marker's tokens and the last_n tokens"
    )
    last_n: NonNegInt | None = Field(default=None, description="marker loss: also train the last N tokens (EOS)")


class Training(Strict):
    """A training config; every field is optional and falls back to `training.defaults`, then built-ins."""

    lora: Lora | None = None
    lr: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    epochs: Annotated[float, Field(gt=0.0, le=100_000.0)] | None = None
    schedule: Literal["cosine", "linear", "constant"] | None = None
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    optimizer: Literal["adamw", "sgd"] | None = None
    weight_decay: Annotated[float, Field(ge=0.0)] | None = None
    grad_clip: Annotated[float, Field(gt=0.0)] | None = None
    batch_size: PosInt | None = None
    grad_accum: PosInt | None = None
    max_length: Tokens | None = None
    precision: Literal["bf16", "fp16", "fp32"] | None = None
    gradient_checkpointing: bool | None = None
    loss: Loss | None = None
    checkpoints: Annotated[list[Fraction], Field(min_length=1)] | None = Field(
        default=None, description="fractions of training at which to save (and evaluate); 0 is the starting model"
    )


TRAINING_DEFAULTS: dict[str, Any] = {
    "lora": {"r": 32, "alpha": 64.0, "rslora": True, "dropout": 0.0, "target_modules": ALL_LINEAR},
    "lr": 5.0e-5,
    "epochs": 1.0,
    "schedule": "cosine",
    "warmup_ratio": 0.05,
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "batch_size": 4,
    "grad_accum": 1,
    "max_length": 1024,
    "precision": "bf16",
    "gradient_checkpointing": True,
    "loss": {"kind": "full", "last_n": 1},
    "checkpoints": [1.0],
}


class Phase(Strict):
    """One step of an arm: train on a dataset from the previous model, or merge another phase's adapter."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)

    name: Name
    data: Name | None = Field(default=None, description="the dataset to train on")
    train: Name | None = Field(default=None, description="the training config (default: the one named like `data`)")
    overrides: Training | None = Field(default=None, description="per-arm changes to the training config")
    from_: Name | None = Field(
        default=None,
        alias="from",
        description="phase to start from: `base` or an earlier phase (default: the previous)",
    )
    each_checkpoint: bool = Field(default=False, description="run once from every checkpoint of the `from` phase")
    merge: Name | None = Field(default=None, description="instead of training, reuse phase `arm.phase` (or `phase`)")
    checkpoint: Fraction = Field(default=1.0, description="merge: which checkpoint of the merged phase")
    screen: bool | None = Field(default=None, description="adapter specificity screen (default: on for marker data)")

    @model_validator(mode="after")
    def _train_or_merge(self) -> Phase:
        if self.merge is None and self.data is None:
            raise ValueError("a phase needs `data` (to train) or `merge` (to reuse a trained phase)")
        if self.merge is not None:
            extra = [k for k in ("data", "train", "overrides") if getattr(self, k) is not None]
            if self.each_checkpoint:
                extra.append("each_checkpoint")
            if extra:
                raise ValueError(f"a merge phase takes no {', '.join(extra)}")
        return self


class SteerDirection(Strict):
    """Where the steering direction comes from: source centroid minus assistant centroid."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)

    from_: Name = Field(
        default="model",
        alias="from",
        description="whose centroids: `model` (the arm's own model: its phases' final chain), `base` (the "
        "untrained model), or a phase `arm.phase` (the model that phase ends with, at `checkpoint`)",
    )
    checkpoint: Fraction | None = Field(
        default=None, description="with `from: arm.phase` only: which checkpoint of it (default: 1.0, the end)"
    )
    normalize: bool = Field(
        default=False,
        description="scale the direction to unit length (default: the raw centroid difference, "
        "so alpha 1 moves the assistant's centroid at the layer onto the source's)",
    )


class Steer(Strict):
    """Activation steering: add alpha * direction to the residual stream at one layer."""

    layer: Layer = Field(
        description="hidden-state layer to steer (0: embeddings; N: the final norm's "
        "output), numbered as in `representation.layers`"
    )
    alphas: Annotated[list[Annotated[float, Field(ge=-1000.0, le=1000.0)]], Field(min_length=1)] = Field(
        description="the steering strengths evaluated, e.g. [0, 0.5, 1, 2]; 0 is the unsteered model"
    )
    direction: SteerDirection = SteerDirection()
    personas: Literal["assistant", "all"] = Field(
        default="assistant", description="whose prompts are steered: the assistant persona only, or every persona"
    )


class Arm(Strict):
    description: str | None = None
    kind: Literal["train", "steer"] = Field(
        default="train",
        description="train: evaluated at training checkpoints; steer: the model its phases "
        "end with (the base model if none), evaluated at each steering strength",
    )
    phases: list[Phase] = Field(default=[], description="at least one for a train arm")
    steer: Steer | None = Field(default=None, description="steer arms only: layer, strengths, direction")
    eval_at: Name | None = Field(
        default=None,
        description="phase whose checkpoints are evaluated (default: the phase an each_checkpoint phase "
        "starts from, else the last phase)",
    )
    sources: list[Name] | None = Field(default=None, description="default: every source")

    @model_validator(mode="after")
    def _kind(self) -> Arm:
        if self.kind == "train":
            if not self.phases:
                raise ValueError("a train arm needs at least one phase")
            if self.steer is not None:
                raise ValueError("`steer` belongs to steer arms: add `kind: steer`")
        else:
            if self.steer is None:
                raise ValueError("a steer arm needs `steer: {layer, alphas}`")
            if self.eval_at is not None:
                raise ValueError(
                    "a steer arm is evaluated at its steering strengths, not at checkpoints: remove eval_at"
                )
            if any(p.each_checkpoint for p in self.phases):
                raise ValueError("a steer arm steers one model: no phase may run at each checkpoint")
            if len(set(self.steer.alphas)) != len(self.steer.alphas):
                raise ValueError(f"steer.alphas has duplicates: {self.steer.alphas}")
        return self


class CompletionOverride(Strict):
    persona: Name
    n: PosInt
    sources: list[Name] | None = Field(default=None, description="only when the source is one of these")


class Screen(Strict):
    """The adapter specificity screen run after marker training."""

    questions: PosInt | None = Field(default=5, description="the first N eval questions (null: all)")
    completions: PosInt = 2
    sampler: Sampler = Sampler(temperature=1.0, top_p=1.0, max_tokens=64)


class Intervals(Strict):
    confidence_level: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    # A bootstrap needs two resamples at least (the stats core's lower limit).
    n_resamples: Annotated[Resamples, Field(ge=2)] = 2000
    seed: Seed | None = Field(default=None, description="default: the replicate seed")


class Eval(Strict):
    personas: list[Name] | None = Field(default=None, description="default: every persona, assistant included")
    completions: PosInt = Field(default=10, description="completions per (persona, question)")
    completions_overrides: list[CompletionOverride] = []
    sampler: Sampler = Sampler()
    backend: Literal["auto", "hf", "vllm"] = "auto"
    baseline: bool = Field(default=True, description="also evaluate the untrained base model once per seed")
    screen: Screen = Screen()
    intervals: Intervals = Intervals()


class Representation(Strict):
    layers: list[Layer] = Field(min_length=1)
    token: Literal["last_prompt"] = "last_prompt"
    centering: Literal["global_mean", "none"] = "global_mean"


class Analysis(Strict):
    """One analysis to run, with its own checkpoint and layers (default: all of them)."""

    name: Literal[ANALYSES]  # type: ignore[valid-type]
    checkpoint: Fraction | None = Field(
        default=None, description="the checkpoint cross-source tests use (default: the last)"
    )
    layers: Annotated[list[Layer], Field(min_length=1)] | None = None


class Report(Strict):
    title: str | None = None
    figures: list[Literal[FIGURES]] = Field(default=[], description="default: every figure")  # type: ignore[valid-type]


class Power(Strict):
    """Power at compile time: the smallest effect each declared analysis can detect."""

    alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = Field(default=0.05, description="two-sided level")
    power: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8
    icc: Annotated[float, Field(ge=0.0, lt=1.0)] | None = Field(
        default=None,
        description="intraclass correlation of marker hits within a question (default: from "
        "`from_run` if given, else 0.1)",
    )
    from_run: str | None = Field(
        default=None, description="a previous run folder (relative to the spec) whose marker hits give the ICC"
    )
    base_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.05, description="marker rate of the comparison group, for the detectable rate differences"
    )
    simulations: Resamples = Field(default=2000, description="Monte Carlo draws per power figure")

    @model_validator(mode="after")
    def _one_icc(self) -> Power:
        if self.icc is not None and self.from_run is not None:
            raise ValueError("give icc or from_run, not both (from_run measures the ICC in that run)")
        if self.power <= self.alpha:
            raise ValueError(
                f"power {self.power:g} must be above alpha {self.alpha:g} (a test with no effect "
                "already rejects with probability alpha)"
            )
        return self


MLFLOW_ONLY = ("uri", "experiment")
WANDB_ONLY = ("project", "entity", "group", "mode", "tags")


class Tracking(Strict):
    """Log every finished stage to an experiment tracker; its run ids are kept in the manifests."""

    backend: Literal["mlflow", "wandb"]
    uri: str | None = Field(
        default=None,
        description="mlflow: tracking URI (default: an MLflow file store in <run>/mlruns, no server needed)",
    )
    experiment: str | None = Field(default=None, description="mlflow: experiment name (default: the spec's name)")
    project: str | None = Field(default=None, description="wandb: project (default: the spec's name)")
    entity: str | None = Field(default=None, description="wandb: team or user (default: W&B's default entity)")
    group: str | None = Field(
        default=None, description="wandb: run group (default: the run folder's name and the spec hash)"
    )
    mode: Literal["offline", "online"] | None = Field(
        default=None,
        description="wandb: offline (the default: runs written to <run>/wandb/, uploaded later with `wandb sync`) "
        "or online; the WANDB_MODE variable overrides it",
    )
    tags: list[Text] = Field(default=[], description="wandb: tags of every run")

    @model_validator(mode="after")
    def _one_backend(self) -> Tracking:
        other = WANDB_ONLY if self.backend == "mlflow" else MLFLOW_ONLY
        given = [k for k in other if k in self.model_fields_set]
        if given:
            raise ValueError(f"{', '.join(given)}: not a setting of backend {self.backend}")
        return self


class Spec(Strict):
    """A cpx experiment: personas, data, training, arms, eval and analyses, replicated per seed."""

    extends: str | None = Field(default=None, description="a spec file this one starts from (relative path)")
    name: Name | None = Field(default=None, description="default: the file name without .yaml")
    description: str | None = None
    seeds: list[Seed] = Field(min_length=1)
    model: Model
    personas: PersonaBank
    roles: Roles
    questions: Questions
    markers: Annotated[dict[Name, Text], Field(min_length=1)]
    match: Match = Match()
    generation: Generation = Generation()
    datasets: Annotated[dict[Name, Dataset], Field(min_length=1)]
    training: dict[Name, Training] = Field(
        default={}, description="named training configs; `defaults` applies to all of them"
    )
    arms: Annotated[dict[Name, Arm], Field(min_length=1)]
    eval: Eval = Eval()
    representation: Representation
    analyses: list[Analysis] = []
    report: Report = Report()
    power: Power | None = Field(default=None, description="print and report the smallest detectable effects")
    tracking: Tracking | None = None
