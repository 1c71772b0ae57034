"""The typed params of each stage kind: the contract between the compiler and the runners.

plan.json holds a stage's params as JSON (docs/plan-format.md). Each stage kind has a frozen
params type here (`PARAMS`): the compiler checks every stage it emits against it
(`cpx.plan._build.Build.add`), and the executor parses a stage's params into it once, in the
worker, before the runner starts (`parse_params`; the runner reads `ctx.params`, typed, and
checks nothing the types check). A field's annotation says what it holds; ranges and the
rules between fields are each type's `check`.

Stage ids inside params are `StageRef`s: the hasher finds them by walking the types
(`ref_paths`), and hashes each as the stage's hash, so renaming an arm changes no hash.

Parsing a large shared value (a persona or question set, `cpx.plan._values`) is done once per
object: `parse_params` takes a memo that maps the one shared object to its parsed tuple.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar, Union, dataclass_transform

from cpx.errors import CpxError


P = TypeVar("P", bound="Params")
Memo = dict[tuple[int, Any], tuple[Any, Any]]


class StageParamError(CpxError, ValueError):
    """A stage parameter that cannot be used, with the stage and the key path."""


class SamplerError(CpxError, ValueError):
    """Sampler settings or requests that cannot be sampled, with what is wrong."""


class StageRef(str):
    """A stage id inside params (that stage is also among the deps): hashed as its hash."""

    __slots__ = ()


class InvalidParam(StageParamError):
    """A value a type's `check` refuses: `key` (a path below the checked object, may be "")
    and what is wrong; `parse` prefixes the path from the stage down."""

    def __init__(self, key: str, what: str):
        super().__init__(f"{key} {what}" if key else what)
        self.key, self.what = key, what


def _join(where: str, key: str) -> str:
    if not key:
        return where
    return f"{where}{key}" if key.startswith("[") else f"{where}.{key}"


_MISSING: Any = object()


@dataclass_transform(kw_only_default=True, frozen_default=True)
class Params:
    """Base of the params types: immutable, made with keywords, parsed from JSON by their fields'
    annotations, then `check`ed.

    A subclass declares its fields as annotations, each with a default or without (required); its
    `FIELDS` are the names in order, base classes' first. Not `dataclasses`: a few dozen frozen
    dataclasses cost about 15 ms of import, paid by every `cpx compile` and every worker.
    """

    # Keys left out of `json()` when their value is None (absent and null mean the same).
    OMIT_NONE: ClassVar[tuple[str, ...]] = ()
    # A Mapping field that takes every key no field names (kept flat in JSON), or None: such
    # keys are then an error.
    REST: ClassVar[str | None] = None
    FIELDS: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        names: list[str] = []
        defaults: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            own = vars(klass)
            for name, ann in own.get("__annotations__", {}).items():
                if str(ann).startswith(("ClassVar", "typing.ClassVar")):
                    continue
                if name not in names:
                    names.append(name)
                if name in own:
                    defaults[name] = own[name]
                else:  # declared again without a default: required from here down
                    defaults.pop(name, None)
        cls.FIELDS, cls.DEFAULTS = tuple(names), defaults

    def __init__(self, **kw: Any) -> None:
        cls = type(self)
        unknown = sorted(set(kw) - set(cls.FIELDS))
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}")
        for name in cls.FIELDS:
            v = kw.get(name, cls.DEFAULTS.get(name, _MISSING))
            if v is _MISSING:
                raise TypeError(f"{cls.__name__}: missing field {name!r}")
            object.__setattr__(self, name, v)
        self.check()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.FIELDS)})"

    def check(self) -> None:
        """Ranges and rules between fields; raises `InvalidParam`."""

    @classmethod
    def parse(
        cls: type[P], value: Any, where: str = "params", memo: Memo | None = None, error: type[CpxError] | None = None
    ) -> P:
        """`value` (JSON) as this type; a wrong key, type or value raises `error` (default
        StageParamError) saying where (`where` is the path of `value`) and what."""
        return _parse(cls, value, where, {} if memo is None else memo, error or StageParamError)

    def json(self) -> dict[str, Any]:
        """Back to JSON, as plan.json holds it."""
        out = {}
        for name in self.FIELDS:
            v = getattr(self, name)
            if name == self.REST:
                out.update(v)
            elif not (v is None and name in self.OMIT_NONE):
                out[name] = _to_json(v)
        return out


def _to_json(v: Any) -> Any:
    if isinstance(v, Params):
        return v.json()
    if isinstance(v, tuple):
        return [_to_json(x) for x in v]
    if isinstance(v, StageRef):
        return str(v)
    return v


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a Params type (the module says `from __future__ import annotations`)."""
    hit = _HINTS.get(cls)
    if hit is None:
        hit = _HINTS[cls] = typing.get_type_hints(cls)
    return hit


def _named(value: Any) -> str:
    name = value.get("name") if isinstance(value, Mapping) else None
    return f" ({name})" if isinstance(name, str) else ""


def _optional(tp: Any) -> Any:
    """X for `X | None`, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _parse(tp: Any, v: Any, where: Any, memo: Memo, error: type[CpxError]) -> Any:
    """`v` as annotation `tp`: str, int, float, bool, StageRef, Literal, X | None,
    tuple[X, ...], Mapping[str, Any], Any or a Params type."""
    inner = _optional(tp)
    if inner is not None:
        return None if v is None else _parse(inner, v, where, memo, error)
    if tp is Any:
        return v
    origin = typing.get_origin(tp)
    if origin is Literal:
        if v not in typing.get_args(tp):
            raise error(f"{where} must be one of {', '.join(map(str, typing.get_args(tp)))}, got {v!r}")
        return v
    if tp is str or tp is StageRef:
        if not isinstance(v, str):
            raise error(f"{where} must be a string, got {v!r}")
        return StageRef(v) if tp is StageRef else v
    if tp is bool:
        if not isinstance(v, bool):
            raise error(f"{where} must be true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise error(f"{where} must be an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise error(f"{where} must be a finite number, got {v!r}")
        return float(v)
    if origin is tuple or (isinstance(tp, type) and issubclass(tp, Params)) or origin is Mapping:
        key = (id(v), tp)
        hit = memo.get(key)
        if hit is not None and hit[0] is v:
            return hit[1]
        out = _parse_container(tp, origin, v, where, memo, error)
        memo[key] = (v, out)  # holding `v` keeps its id from being reused
        return out
    raise TypeError(f"{where}: no parser for the annotation {tp!r}")


class _Item:
    """`where[i] (name)` of a list's item, written out only when an error names it (a bank of
    55,000 questions is parsed without formatting 55,000 paths)."""

    __slots__ = ("where", "i", "x")

    def __init__(self, where: Any, i: int, x: Any) -> None:
        self.where, self.i, self.x = where, i, x

    def __format__(self, spec: str) -> str:
        return f"{self.where}[{self.i}]{_named(self.x)}"

    __str__ = __format__  # type: ignore[assignment]


def _parse_container(tp: Any, origin: Any, v: Any, where: Any, memo: Memo, error: type[CpxError]) -> Any:
    if origin is tuple:
        (item, _dots) = typing.get_args(tp)
        if not isinstance(v, list):
            raise error(f"{where} must be a list, got {v!r}")
        if isinstance(item, type) and issubclass(item, Params):  # items are not shared: no memo
            return tuple(_parse_params(item, x, _Item(where, i, x), memo, error) for i, x in enumerate(v))
        return tuple(_parse(item, x, _Item(where, i, x), memo, error) for i, x in enumerate(v))
    if origin is Mapping:
        if not isinstance(v, Mapping):
            raise error(f"{where} must be a mapping, got {v!r}")
        bad = [k for k in v if not isinstance(k, str)]
        if bad:
            raise error(f"{where} keys must be strings, got {bad!r}")
        return v
    return _parse_params(tp, v, where, memo, error)


def _parse_params(tp: type[Params], v: Any, where: Any, memo: Memo, error: type[CpxError]) -> Any:
    if not isinstance(v, Mapping):
        raise error(f"{where} must be a mapping, got {v!r}")
    fields, names = _field_plan(tp)
    if tp.REST is None and not names.issuperset(v):
        unknown = sorted(k for k in v if k not in names)
        raise error(f"{where}: unknown key(s) {unknown}; known: {', '.join(f[0] for f in fields)}")
    kw: dict[str, Any] = {}
    for name, hint, has_default, default in fields:
        if name in v:
            x = v[name]
            # the common case without a call: a string where a string goes
            kw[name] = x if hint is str and type(x) is str else _parse(hint, x, f"{where}.{name}", memo, error)
        elif has_default:
            kw[name] = default
        else:
            raise error(f"{where}: missing key {name!r}")
    if tp.REST is not None:
        kw[tp.REST] = {k: v[k] for k in v if k not in names}
    # As `Params.__init__` makes it, without checking again the keys checked above.
    obj = object.__new__(tp)
    obj.__dict__.update(kw)
    try:
        obj.check()
    except InvalidParam as e:
        raise error(f"{_join(where, e.key)} {e.what}") from None
    return obj


_FIELD_PLANS: dict[type, tuple[tuple[tuple[str, Any, bool, Any], ...], frozenset[str]]] = {}


def _field_plan(tp: type[Params]) -> tuple[tuple[tuple[str, Any, bool, Any], ...], frozenset[str]]:
    """(name, annotation, has a default, the default) of each field parsed from its own key, and
    their names."""
    hit = _FIELD_PLANS.get(tp)
    if hit is None:
        hints = _hints(tp)
        fields = tuple((n, hints[n], n in tp.DEFAULTS, tp.DEFAULTS.get(n)) for n in tp.FIELDS if n != tp.REST)
        hit = _FIELD_PLANS[tp] = (fields, frozenset(f[0] for f in fields))
    return hit


_REF_PATHS: dict[Any, tuple[tuple[str, ...], ...]] = {}


def ref_paths(tp: Any) -> tuple[tuple[str, ...], ...]:
    """The paths of every StageRef in params of type `tp`: field names, and "*" for each item of a
    list. Found by walking the annotations, so a new StageRef field is hashed as a reference
    without touching the hasher."""
    hit = _REF_PATHS.get(tp)
    if hit is None:
        hit = _REF_PATHS[tp] = _walk_refs(tp)
    return hit


def _walk_refs(tp: Any) -> tuple[tuple[str, ...], ...]:
    inner = _optional(tp)
    if inner is not None:
        return ref_paths(inner)
    if tp is StageRef:
        return ((),)
    if typing.get_origin(tp) is tuple:
        return tuple(("*", *p) for p in ref_paths(typing.get_args(tp)[0]))
    if isinstance(tp, type) and issubclass(tp, Params):
        hints = _hints(tp)
        return tuple((name, *p) for name in tp.FIELDS for p in ref_paths(hints[name]))
    return ()


# The tuples `unique` passed last (held, so that their ids stay theirs): stages share their
# persona and question tuples (a shared value is parsed once), and a bank of 55,000 questions
# is then checked once per compile, not once per stage.
_UNIQUE: dict[tuple[int, str], tuple[Any, ...]] = {}


def unique(items: tuple[Any, ...], attr: str, key: str, what: str) -> None:
    """Raise InvalidParam at `key[i]` for the first item whose `attr` an earlier item has."""
    if _UNIQUE.get((id(items), attr)) is items:
        return
    seen: set[Any] = set()
    for i, x in enumerate(items):
        v = getattr(x, attr)
        if v in seen:
            raise InvalidParam(f"{key}[{i}]", f"{what} {v!r} appears twice")
        seen.add(v)
    if len(_UNIQUE) >= 16:
        _UNIQUE.clear()
    _UNIQUE[(id(items), attr)] = items


def nonempty(items: tuple[Any, ...], key: str) -> None:
    if not items:
        raise InvalidParam(key, "must be a non-empty list")


# Shared shapes (docs/plan-format.md, "Shared parameter shapes").


class ModelRef(Params):
    """A base model: from the hub, a local folder (`fingerprint`: its content) or the built-in
    tiny model (`tiny`: its config, read by `cpx.models`)."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("fingerprint",)
    kind: Literal["hub", "path", "tiny"]
    id: str
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    chat_template: str | None = None
    tiny: Mapping[str, Any] | None = None
    fingerprint: str | None = None


class AdapterRef(Params):
    """A train stage's adapter at a checkpoint fraction it saved (> 0)."""

    stage: StageRef
    checkpoint: float

    def check(self) -> None:
        if not 0 < self.checkpoint <= 1:
            raise InvalidParam("checkpoint", f"must be in (0, 1], got {self.checkpoint!r}")


class Chain(Params):
    """A base model and the adapters merged into it, in order."""

    base: ModelRef
    adapters: tuple[AdapterRef, ...] = ()


class Persona(Params):
    name: str
    prompt: str | None = None


class EvalPersona(Params):
    """A persona of an eval: its role in the analysis and how many completions per question."""

    name: str
    prompt: str | None = None
    role: Literal["source", "assistant", "bystander"]
    n: int

    def check(self) -> None:
        if self.n < 0:
            raise InvalidParam("n", f"must be an integer >= 0, got {self.n!r}")


class Question(Params):
    id: str
    text: str


class Sampler(Params):
    """How completions are drawn: temperature >= 0 (0: greedy), the top_p nucleus in (0, 1],
    at most max_tokens new tokens, the seed of the random stream."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int

    def check(self) -> None:
        if self.temperature < 0:
            raise InvalidParam("temperature", f"must be a finite number >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise InvalidParam("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if self.max_tokens < 1:
            raise InvalidParam("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")


class GenerateSampler(Sampler):
    """The generate stage's sampler: also `n` completions per persona and question."""

    n: int

    def check(self) -> None:
        super().check()
        if self.n < 1:
            raise InvalidParam("n", f"must be an integer >= 1, got {self.n!r}")


def coerce(cls: type[P], value: P | Mapping[str, Any], where: str, error: type[CpxError]) -> P:
    """`value` as it is when it is a `cls`, else parsed from a mapping (the engines' entry points
    take either: a stage hands them its typed params, a script or test plain JSON)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise error(f"{where} must be a mapping or a {cls.__name__}, got {value!r}")
    return cls.parse(value, where, error=error)


def as_sampler(sampler: Sampler | Mapping[str, Any]) -> Sampler:
    """A Sampler as it is, or one from a mapping's temperature, top_p, max_tokens and seed
    (other keys, such as generate's `n`, are not the engine's and are left out); a bad value
    raises SamplerError."""
    if isinstance(sampler, Mapping):
        sampler = {k: sampler[k] for k in ("temperature", "top_p", "max_tokens", "seed") if k in sampler}
    return coerce(Sampler, sampler, "sampler", SamplerError)


class Match(Params):
    case_insensitive: bool


class Direction(Params):
    """A steering direction: centroid(source) - centroid(assistant) in a represent stage."""

    represent: StageRef
    source: str
    assistant: str


class Steer(Params):
    """Activation steering: alpha * direction added at hidden-state `layer` to the rows of the
    steered `personas` (docs/plan-format.md, "Steer")."""

    layer: int
    alpha: float
    normalize: bool
    personas: tuple[str, ...]
    direction: Direction

    def check(self) -> None:
        if self.layer < 0:
            raise InvalidParam("layer", f"must be an integer >= 0, got {self.layer!r}")
        nonempty(self.personas, "personas")
        if len(set(self.personas)) != len(self.personas):
            raise InvalidParam("personas", f"has duplicates: {list(self.personas)}")


def _check_steer(steer: Steer | None, personas: tuple[Any, ...]) -> None:
    if steer is None:
        return
    names = [p.name for p in personas]
    unknown = [n for n in steer.personas if n not in names]
    if unknown:
        raise InvalidParam("steer.personas", f"names {unknown} that are not among params.personas {names}")


# The stage kinds (docs/plan-format.md, "Stage kinds: params and outputs").


class GenerateParams(Params):
    model: Chain
    personas: tuple[Persona, ...]
    questions: tuple[Question, ...]
    sampler: GenerateSampler
    markers: tuple[str, ...] = ()
    match: Match | None = None  # how markers match: the spec's `match`, needed with markers

    def check(self) -> None:
        _check_people(self.personas, self.questions)
        if self.markers and self.match is None:
            raise InvalidParam("match", "must be set when markers are")


def _check_people(personas: tuple[Any, ...], questions: tuple[Question, ...]) -> None:
    nonempty(personas, "personas")
    unique(personas, "name", "personas", "persona")
    nonempty(questions, "questions")
    unique(questions, "id", "questions", "question id")


class Negatives(Params):
    personas: int = 0
    examples_per_persona: int = 0


class DatasetParams(Params):
    OMIT_NONE: ClassVar[tuple[str, ...]] = ("marker", "marker_template", "negatives")
    recipe: Literal["convergence", "generic", "marker"]
    source: str
    assistant: Persona
    personas: tuple[Persona, ...] = ()
    examples: int
    per_question: int | None = None
    seed: int
    marker: str | None = None
    marker_template: str | None = None
    negatives: Negatives | None = None

    def check(self) -> None:
        if self.recipe != "marker":
            return
        if not self.marker:
            raise InvalidParam("marker", "must be a non-empty string for the marker recipe")
        if self.marker_template is not None and "{marker}" not in self.marker_template:
            raise InvalidParam("marker_template", f"{self.marker_template!r} has no '{{marker}}' placeholder")
        names = sorted({p.name for p in self.personas} | {self.assistant.name})
        if self.source not in names:
            raise InvalidParam("source", f"{self.source!r} is not among the personas: {', '.join(names)}")


class Lora(Params):
    r: int
    alpha: float
    rslora: bool = False
    dropout: float = 0.0
    target_modules: tuple[str, ...]

    def check(self) -> None:
        if self.r < 1:
            raise InvalidParam("r", f"must be an integer >= 1, got {self.r!r}")
        if not 0 <= self.dropout < 1:
            raise InvalidParam("dropout", f"must be in [0, 1), got {self.dropout!r}")


class Optim(Params):
    lr: float
    epochs: float = 1.0
    schedule: Literal["cosine", "linear", "constant"] = "constant"
    warmup_ratio: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    grad_clip: float | None = None
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int | None = None
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_checkpointing: bool = False

    def check(self) -> None:
        if not self.epochs > 0:
            raise InvalidParam("epochs", f"must be > 0, got {self.epochs!r}")
        for key in ("batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise InvalidParam(key, f"must be an integer >= 1, got {getattr(self, key)!r}")
        if not 0 <= self.warmup_ratio <= 1:
            raise InvalidParam("warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise InvalidParam("grad_clip", f"must be >= 0 (0 or null: no clipping), got {self.grad_clip!r}")
        if self.max_length is not None and self.max_length < 1:
            raise InvalidParam("max_length", f"must be an integer >= 1 or null, got {self.max_length!r}")


class Loss(Params):
    kind: Literal["full", "marker"] = "full"
    marker: str | None = None
    last_n: int = 0

    def check(self) -> None:
        if self.kind == "marker" and not self.marker:
            raise InvalidParam("marker", "must be set when kind is 'marker'")


class Screen(Params):
    """The marker-specificity screen a train stage samples after training."""

    personas: tuple[EvalPersona, ...]
    questions: tuple[Question, ...]
    sampler: Sampler
    markers: tuple[str, ...]
    match: Match

    def check(self) -> None:
        _check_people(self.personas, self.questions)


class TrainParams(Params):
    model: Chain
    dataset: StageRef
    lora: Lora
    optim: Optim
    loss: Loss
    checkpoints: tuple[float, ...]
    seed: int
    screen: Screen | None = None


class SampleParams(Params):
    OMIT_NONE: ClassVar[tuple[str, ...]] = ("steer",)
    model: Chain
    personas: tuple[EvalPersona, ...]
    questions: tuple[Question, ...]
    sampler: Sampler
    backend: Literal["auto", "hf", "vllm"] = "hf"
    steer: Steer | None = None

    def check(self) -> None:
        _check_people(self.personas, self.questions)
        _check_steer(self.steer, self.personas)
        if self.steer is not None and self.backend == "vllm":
            raise InvalidParam("steer", "needs params.backend hf (or auto), got 'vllm'")


class RepresentParams(Params):
    OMIT_NONE: ClassVar[tuple[str, ...]] = ("steer",)
    model: Chain
    personas: tuple[Persona, ...]
    questions: tuple[Question, ...]
    layers: tuple[int, ...]
    token: Literal["last_prompt"] = "last_prompt"
    centering: Literal["global_mean", "none"] = "global_mean"
    steer: Steer | None = None

    def check(self) -> None:
        _check_people(self.personas, self.questions)
        nonempty(self.layers, "layers")
        if len(set(self.layers)) != len(self.layers):
            raise InvalidParam("layers", f"must be distinct integers, got {list(self.layers)}")
        _check_steer(self.steer, self.personas)


class ScanParams(Params):
    markers: tuple[str, ...]
    match: Match
    cluster: Literal["question_id"] = "question_id"
    confidence_level: float
    n_resamples: int
    seed: int

    def check(self) -> None:
        nonempty(self.markers, "markers")
        if not 0 < self.confidence_level < 1:
            raise InvalidParam("confidence_level", f"must be in (0, 1), got {self.confidence_level!r}")
        if self.n_resamples < 1:
            raise InvalidParam("n_resamples", f"must be an integer >= 1, got {self.n_resamples!r}")


class Point(Params):
    """An eval point of the analysis and the stages that hold its data."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("alpha",)
    arm: str
    source: str | None = None
    seed: int
    checkpoint: float | None = None
    alpha: float | None = None
    scan: StageRef
    represent: StageRef


class AnalyzeParams(Params):
    # Each analysis by name with its options, and options for every analysis (any other key):
    # both are `cpx.analysis.Options`'s, which checks them.
    REST: ClassVar[str | None] = "options"
    analyses: tuple[Mapping[str, Any], ...] = ()
    points: tuple[Point, ...] = ()
    options: Mapping[str, Any] = MappingProxyType({})


class ReportParams(Params):
    title: str | None = None
    figures: tuple[str, ...] = ()
    power: Mapping[str, Any] | None = None


PARAMS: dict[str, type[Params]] = {
    "generate": GenerateParams,
    "dataset": DatasetParams,
    "train": TrainParams,
    "sample": SampleParams,
    "represent": RepresentParams,
    "scan": ScanParams,
    "analyze": AnalyzeParams,
    "report": ReportParams,
}


def parse_params(kind: str, params: Any, where: str, memo: Memo | None = None) -> Params:
    """A stage's params (JSON) as its kind's type; `where` names the stage (`stage ID`)."""
    return PARAMS[kind].parse(params, f"{where}: params", memo)
