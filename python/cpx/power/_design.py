"""A plan's design as the power calculations see it: how many questions, completions,
sources, checkpoints, steering strengths and seeds each declared analysis gets, and the ICC
of marker hits within a question (from the spec, a previous run, or the default)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cpx.errors import CpxError

DEFAULT_ICC = 0.1
# `--vary` keys and what they set.
VARY_KEYS = ("questions", "completions", "sources", "checkpoints", "seeds", "alphas")
# What an empty `analyses:` list runs (the analyze stage's default), in the spec's names.
DEFAULT_ANALYSES = (
    "leakage",
    "within_source",
    "between_source",
    "pseudo_replication",
    "bystander_vs_assistant",
    "adapter_specificity",
)


class PowerError(CpxError, ValueError):
    """A power setting that cannot be used: a bad `--vary`, an unreadable `from_run`."""


@dataclass(frozen=True)
class Settings:
    """The spec's `power:` section (defaults when it has none)."""

    alpha: float = 0.05
    power: float = 0.8
    icc: float | None = None
    from_run: str | None = None
    base_rate: float = 0.05
    simulations: int = 2000

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Settings:
        p = spec.get("power") or {}
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if p.get(k) is not None})


@dataclass(frozen=True)
class Design:
    """Counts per analysis unit. `sources`, `checkpoints` map a train arm to its number of
    sources and of checkpoints per source; `alphas` a steer arm to its number of strengths."""

    questions: int
    completions: int  # per (persona, question), the assistant's
    bystanders: int
    bystander_completions: int
    seeds: int
    sources: dict[str, int]
    checkpoints: dict[str, int]
    alphas: dict[str, int]
    analyses: tuple[str, ...]
    settings: Settings
    icc: float
    icc_from: str  # where the ICC came from, for the notes
    # Layers each cosine analysis tests (its own `layers` among the representation layers, else
    # all of them), and per steer arm the layers its steering analysis tests (its steered layer
    # too): the tests per source in a Holm family.
    layers: dict[str, int] = field(default_factory=dict)
    steer_layers: dict[str, int] = field(default_factory=dict)
    varied: dict[str, int] = field(default_factory=dict)

    def with_(self, key: str, value: int) -> Design:
        """This design with one `--vary` key set to `value` everywhere it applies."""
        varied = {**self.varied, key: value}
        if key == "questions":
            return replace(self, questions=value, varied=varied)
        if key == "completions":
            return replace(self, completions=value, bystander_completions=value, varied=varied)
        if key == "seeds":
            return replace(self, seeds=value, varied=varied)
        if key == "sources":
            return replace(self, sources={a: value for a in self.sources}, varied=varied)
        if key == "checkpoints":
            return replace(self, checkpoints={a: value for a in self.checkpoints}, varied=varied)
        if key == "alphas":
            return replace(self, alphas={a: value for a in self.alphas}, varied=varied)
        raise PowerError(f"--vary: unknown key {key!r}; known: {', '.join(VARY_KEYS)}")


def parse_vary(items: list[str] | None) -> dict[str, list[int]]:
    """`["questions=20,40,80", ...]` as `{"questions": [20, 40, 80]}`; errors name the item."""
    out: dict[str, list[int]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise PowerError(f"--vary {item!r}: expected KEY=V1,V2,... (e.g. questions=20,40,80)")
        if key not in VARY_KEYS:
            raise PowerError(f"--vary {item!r}: unknown key {key!r}; known: {', '.join(VARY_KEYS)}")
        vals: list[int] = []
        for v in values.split(","):
            try:
                n = int(v.strip())
            except ValueError:
                raise PowerError(f"--vary {item!r}: {v.strip()!r} is not an integer") from None
            if n <= 0:
                raise PowerError(f"--vary {item!r}: {key} must be positive, got {n}")
            vals.append(n)
        out.setdefault(key, []).extend(vals)
    return out


def check_vary(vary: dict[str, list[int]] | None, design: Design | None = None) -> dict[str, list[int]]:
    """`vary` as given to `power_rows`: known keys, positive integers, and (with `design`)
    keys that change something in that design."""
    for key, values in (vary or {}).items():
        if key not in VARY_KEYS:
            raise PowerError(f"vary: unknown key {key!r}; known: {', '.join(VARY_KEYS)}")
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
            raise PowerError(f"vary: {key} needs positive integers, got {values!r}")
        if design is not None:
            empty = {
                "alphas": (design.alphas, "no steer arm"),
                "checkpoints": (design.checkpoints, "no train arm"),
                "sources": (design.sources, "no arm with sources"),
            }.get(key)
            if empty is not None and not empty[0]:
                raise PowerError(f"vary: {key} changes nothing here: the plan has {empty[1]}")
    return dict(vary or {})


def _mode(values: list[int]) -> int:
    return Counter(values).most_common(1)[0][0] if values else 0


def icc_from_run(run: Path) -> float:
    """ICC(1) of `hit` by question in a previous run's marker hits: computed within each
    (arm, source, seed, checkpoint, alpha, persona) cell, so that differences between cells do not
    count as clustering, then averaged weighted by the cell's size; cells with no variation
    (all hits or none) carry no information and are left out; a negative estimate counts as 0."""
    import numpy as np
    import polars as pl

    import cpx.stats

    path = run / "results" / "marker_hits.parquet"
    try:
        hits = pl.read_parquet(path)
    except FileNotFoundError:
        raise PowerError(f"power.from_run: {path}: no such file (is {run} a finished run folder?)") from None
    except Exception as e:  # noqa: BLE001 - polars raises several kinds for a corrupt file
        raise PowerError(f"power.from_run: {path}: cannot read it ({e})") from None
    need = ("question_id", "hit")
    missing = [c for c in need if c not in hits.columns]
    if missing:
        raise PowerError(f"power.from_run: {path}: missing column(s) {missing}")
    cells = [c for c in ("arm", "source", "seed", "checkpoint", "alpha", "persona") if c in hits.columns]
    total = weight = 0.0
    for _, g in hits.group_by(cells) if cells else [((), hits)]:
        y = g["hit"].cast(pl.Float64).to_numpy()
        q = g["question_id"].cast(pl.String).to_numpy()
        if len(np.unique(q)) < 2 or np.ptp(y) == 0:
            continue
        _, codes = np.unique(q, return_inverse=True)
        r = cpx.stats.icc1(y, codes.astype(np.int64))
        if math.isnan(r.statistic):
            continue
        total += max(r.statistic, 0.0) * len(y)
        weight += len(y)
    if weight == 0:
        raise PowerError(
            f"power.from_run: {path}: no (arm, source, seed, checkpoint, alpha, persona) cell has both hits "
            "and misses over two or more questions, so the ICC is undefined; set power.icc"
        )
    return total / weight


def design_of(plan: Any, *, base: str | Path | None = None) -> Design:
    """The design of a compiled plan. `base` is the folder a relative `power.from_run` is
    relative to (the spec's folder; default: the current directory)."""
    spec = plan.spec
    settings = Settings.of(spec)
    samples = [s for s in plan.stages if s.kind == "sample" and s.params.get("personas")]
    questions = _mode([len(s.params.get("questions") or []) for s in samples])
    if not questions:
        questions = len((spec.get("questions") or {}).get("eval") or [])
    asst: list[int] = []
    bys: list[int] = []
    n_bys: list[int] = []
    for s in samples:
        ps = s.params["personas"]
        asst += [int(p["n"]) for p in ps if p.get("role") == "assistant"]
        b = [int(p["n"]) for p in ps if p.get("role") == "bystander"]
        bys += b
        n_bys.append(len(b))
    default_n = int((spec.get("eval") or {}).get("completions") or 1)
    analyze = next((s for s in plan.stages if s.kind == "analyze"), None)
    points = (analyze.params.get("points") or []) if analyze is not None else []
    arms = spec.get("arms") or {}
    srcs: dict[str, set[str]] = {}
    ckpts: dict[tuple[str, str, Any], set[float]] = {}
    for p in points:
        arm, src = p.get("arm"), p.get("source")
        if src is None or arm not in arms:
            continue  # the baseline evaluation of the base model
        srcs.setdefault(arm, set()).add(src)
        if p.get("checkpoint") is not None and (arms[arm].get("kind") or "train") == "train":
            ckpts.setdefault((arm, src, p.get("seed")), set()).add(float(p["checkpoint"]))
    checkpoints: dict[str, int] = {}
    for (arm, _, _), cs in ckpts.items():
        checkpoints[arm] = max(checkpoints.get(arm, 0), len(cs))
    alphas = {
        name: len((a.get("steer") or {}).get("alphas") or []) for name, a in arms.items() if a.get("kind") == "steer"
    }
    names = [a["name"] if isinstance(a, dict) else str(a) for a in spec.get("analyses") or []]
    analyses = tuple(dict.fromkeys(names)) or DEFAULT_ANALYSES
    # Layers each cosine analysis tests: its own `layers` among those the represent stages read
    # (the representation layers; a steer arm's also its steered layer), else all of those.
    rep_layers = set((spec.get("representation") or {}).get("layers") or [])
    own = {a["name"]: a.get("layers") for a in spec.get("analyses") or [] if isinstance(a, dict)}

    def tested(name: str, read: set[Any]) -> int:
        chosen = own.get(name)
        return max(1, len(read if chosen is None else read & set(chosen)))

    layers = {name: tested(name, rep_layers) for name in analyses}
    steer_layers = {
        name: tested("steering", rep_layers | {(a.get("steer") or {}).get("layer")})
        for name, a in arms.items()
        if a.get("kind") == "steer"
    }
    if settings.icc is not None:
        icc, icc_from = settings.icc, "power.icc"
    elif settings.from_run:
        run = Path(settings.from_run)
        if not run.is_absolute():
            run = Path(base if base is not None else ".") / run
        icc, icc_from = icc_from_run(run), f"ICC(1) of marker hits by question in {run}"
    else:
        icc, icc_from = DEFAULT_ICC, "default"
    return Design(
        questions=questions,
        completions=_mode(asst) or default_n,
        bystanders=_mode(n_bys),
        bystander_completions=_mode(bys) or default_n,
        seeds=len(spec.get("seeds") or [None]),
        sources={a: len(s) for a, s in sorted(srcs.items())},
        checkpoints=dict(sorted(checkpoints.items())),
        alphas=alphas,
        analyses=analyses,
        settings=settings,
        icc=icc,
        icc_from=icc_from,
        layers=layers,
        steer_layers=steer_layers,
    )
