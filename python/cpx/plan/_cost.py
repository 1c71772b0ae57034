"""The cost model: GPU-seconds per stage from the stage's work and a device class's measured rates.

Work (`stage_work`, read off the plan alone):

- generate, sample: `gen_tokens` = completions x max_tokens (every row may run to max_tokens);
- train: `train_tokens` = examples x epochs x tokens per example, where tokens per example =
  min(max_length, 64 prompt tokens + 60 % of the generation's max_tokens), plus its marker
  screen's `gen_tokens`; `steps` (optimizer steps) is reported beside it;
- represent: `prompts` (personas x questions);
- dataset, scan, analyze, report run on the CPU and cost no GPU time.

Rates (`Calibration`), per stage kind: a fixed `start_s` (merging the chain's adapters, writing
outputs) plus `rate` seconds per unit of work (a train stage's screen at the sample rate); and one
`load_s` per run for loading the base model into the worker, which keeps it across stages. Each
is scaled by (billions of parameters) / the calibration's own.

A calibration is measured, not guessed: `calibrate(run)` fits it to a run's manifests (each
kind's rate from the runner's own timing of its main loop over its work, its start cost from
the rest of each stage's time, the model load from the worker's first stage), `cpx plan cost
RUN` prints the estimate against what the run took and `--save` stores the fit under
`$CPX_CACHE_DIR/cost/` for its device class (the GPU's name); `cpx compile` then uses the one
for `--device-class` (or `$CPX_DEVICE_CLASS`), else the most recently saved one, else
`BUILTIN`, measured on one H200 by `benches/gpu_study.py` (benches/RESULTS.md).

A member of a training fleet (`info.fleet_size` members trained together) shares the GPU with
the others from the fleet's start to its own end: its seconds and its loop's seconds count
1/fleet_size each (`gpu_seconds`), so a fitted train rate is per member at the run's fleet sizes.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.plan._model import Plan

GPU_KINDS = ("generate", "train", "sample", "represent")
DEVICE_ENV = "CPX_DEVICE_CLASS"
_UNIT = {"generate": "gen_tokens", "sample": "gen_tokens", "train": "train_tokens", "represent": "prompts"}


class CostError(CpxError, ValueError):
    """A calibration or run that cannot be used for the cost model, with the path and why."""


@dataclass
class Work:
    """What one stage asks of the GPU, from its params (see the module's docstring)."""

    kind: str
    gen_tokens: float = 0.0
    train_tokens: float = 0.0
    steps: int = 0
    prompts: int = 0

    def units(self) -> float:
        return float(getattr(self, _UNIT[self.kind])) if self.kind in _UNIT else 0.0


@dataclass
class Calibration:
    """Per-kind `{"start_s", "rate"}` (seconds, seconds per unit), `load_s`, for `params_b`."""

    device: str
    params_b: float
    load_s: float
    kinds: dict[str, dict[str, float]]
    source: str = ""
    created: str = ""
    stages: dict[str, int] = field(default_factory=dict)  # stages each kind was fitted on

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "calibration") -> Calibration:
        try:
            cal = cls(
                device=str(d["device"]),
                params_b=float(d["params_b"]),
                load_s=float(d["load_s"]),
                kinds={k: {"start_s": float(v["start_s"]), "rate": float(v["rate"])} for k, v in d["kinds"].items()},
                source=str(d.get("source", "")),
                created=str(d.get("created", "")),
                stages={k: int(v) for k, v in (d.get("stages") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CostError(f"{where}: not a cost calibration ({type(e).__name__}: {e})") from None
        missing = [k for k in GPU_KINDS if k not in cal.kinds]
        if missing:
            raise CostError(f"{where}: no rates for {', '.join(missing)}")
        return cal


# One NVIDIA H200, Qwen2.5-7B-shaped model (random bf16 weights), `cpx plan cost` of the slice
# benches/gpu_study.py ran on 2026-12-02 (run 5: benches/results/gpu_study_4.json, benches/RESULTS.md).
BUILTIN = Calibration(
    device="NVIDIA H200",
    params_b=7.0,
    load_s=16.0,
    kinds={
        "generate": {"start_s": 0.0, "rate": 4.62e-5},  # 21,700 tokens/s at 880 rows, top_p 0.95
        "sample": {"start_s": 0.03, "rate": 3.00e-5},  # 2,200 rows x 512 tokens in 34 s (fused decode)
        "train": {"start_s": 3.35, "rate": 1.2515e-4},  # per estimated token a member; a fleet of 5
        "represent": {"start_s": 0.0, "rate": 1.94e-3},  # 220 prompts in 0.43 s
    },
    source="built in (benches/gpu_study.py on one H200, 2026-12-02, a fleet of five marker trainings)",
)


def _sampling_tokens(
    personas: list[dict[str, Any]], n_questions: int, sampler: dict[str, Any], n_default: int
) -> float:
    completions = sum(p.get("n", n_default) for p in personas) * n_questions
    return float(completions * sampler["max_tokens"])


def stage_work(plan: Plan) -> dict[str, Work]:
    """Every stage's work, by stage id (CPU kinds: all zero)."""
    by_id = plan.by_id()
    gen_tokens = {s.id: s.params["sampler"]["max_tokens"] for s in plan.stages if s.kind == "generate"}
    out: dict[str, Work] = {}
    for s in plan.stages:
        p = s.params
        w = Work(s.kind)
        if s.kind == "generate":
            w.gen_tokens = _sampling_tokens(p["personas"], len(p["questions"]), p["sampler"], p["sampler"]["n"])
        elif s.kind == "sample":
            w.gen_tokens = _sampling_tokens(p["personas"], len(p["questions"]), p["sampler"], 1)
        elif s.kind == "represent":
            w.prompts = len(p["personas"]) * len(p["questions"])
        elif s.kind == "train":
            dp = by_id[p["dataset"]].params
            examples = dp["examples"]
            if dp["recipe"] == "marker":
                examples += dp["negatives"]["personas"] * dp["negatives"]["examples_per_persona"]
            gen = next((gen_tokens[d] for d in by_id[p["dataset"]].deps if d in gen_tokens), 512)
            optim = p["optim"]
            per_example = min(optim["max_length"], 64 + 0.6 * gen)
            w.train_tokens = examples * optim["epochs"] * per_example
            per_step = max(1, optim.get("batch_size", 1) * optim.get("grad_accum", 1))
            w.steps = math.ceil(examples / per_step) * math.ceil(optim["epochs"])
            if p.get("screen"):
                sc = p["screen"]
                w.gen_tokens = _sampling_tokens(sc["personas"], len(sc["questions"]), sc["sampler"], 1)
        out[s.id] = w
    return out


def _scale(cal: Calibration, params_b: float) -> float:
    return max(params_b, 1e-3) / max(cal.params_b, 1e-3)


def work_seconds(w: Work, cal: Calibration, params_b: float) -> float:
    """A stage's GPU-seconds, the run's one model load not included."""
    if w.kind not in GPU_KINDS:
        return 0.0
    k = cal.kinds[w.kind]
    t = k["start_s"] + k["rate"] * w.units()
    if w.kind == "train":
        t += cal.kinds["sample"]["rate"] * w.gen_tokens
    return t * _scale(cal, params_b)


def stage_seconds(plan: Plan, params_b: float, cal: Calibration | None = None) -> dict[str, float]:
    """Estimated GPU-seconds of every stage (0 for CPU kinds), by stage id. The first GPU stage
    also carries the model load (one worker keeps the model across stages)."""
    cal = cal or BUILTIN
    out = {sid: work_seconds(w, cal, params_b) for sid, w in stage_work(plan).items()}
    first = next((s.id for s in plan.stages if s.kind in GPU_KINDS), None)
    if first is not None:
        out[first] += cal.load_s * _scale(cal, params_b)
    return out


# ---------------------------------------------------------------------------------------------
# Calibration from a run


def _core_seconds(kind: str, info: dict[str, Any]) -> float | None:
    """The runner's own timing of its main loop, where it reports one."""
    key = {"generate": "seconds", "sample": "seconds", "train": "train_seconds"}.get(kind)
    v = info.get(key) if key else None
    return float(v) if isinstance(v, (int, float)) else None


def gpu_seconds(manifest: dict[str, Any]) -> tuple[float, float | None]:
    """A stage's share of the GPU: (its seconds, its main loop's seconds or None), each divided
    by the number of fleet members it trained with (1 outside a fleet)."""
    info = manifest.get("info") or {}
    share = max(1, int(info.get("fleet_size") or 1))
    core = _core_seconds(str(manifest.get("kind")), info)
    return float(manifest["timings"]["seconds"]) / share, None if core is None else core / share


def run_manifests(run_dir: str | os.PathLike[str], plan: Plan) -> dict[str, dict[str, Any]]:
    """The manifests of the plan's stages that are committed in the run, by stage id."""
    root = Path(run_dir) / "stages"
    out = {}
    for s in plan.stages:
        m = root / s.kind / s.hash / "manifest.json"
        if m.is_file():
            try:
                out[s.id] = json.loads(m.read_text())
            except (OSError, ValueError) as e:
                raise CostError(f"{m}: cannot be read ({e})") from None
    return out


def device_class(manifests: dict[str, dict[str, Any]]) -> str:
    """The device the run's GPU-kind stages ran on (one name), e.g. `NVIDIA H200` (or a CPU's)."""
    names = {
        str((m.get("device") or {}).get("name") or (m.get("device") or {}).get("id") or "")
        for m in manifests.values()
        if m.get("kind") in GPU_KINDS
    }
    names.discard("")
    if len(names) != 1:
        raise CostError(
            "the run's GPU stages ran on "
            + (f"several kinds of device ({', '.join(sorted(names))})" if names else "no named device")
            + ": a calibration is for one device class"
        )
    return names.pop()


def calibrate(plan: Plan, manifests: dict[str, dict[str, Any]], params_b: float, source: str = "") -> Calibration:
    """Fit a calibration to a run's manifests (see the module's docstring).

    Per kind: rate = sum of core seconds / sum of units over its stages; start = mean over its
    stages of (seconds - core - the screen at the sample rate), leaving out each worker's first
    stage, whose excess over that mean is the model load (`load_s`, their mean). A kind that
    reports no core time (represent) is fitted with no start cost.
    """
    work = stage_work(plan)
    by_id = plan.by_id()
    gpu = {sid: m for sid, m in manifests.items() if by_id[sid].kind in GPU_KINDS}
    if not gpu:
        raise CostError("the run has no finished GPU stage to calibrate from")
    first: dict[Any, str] = {}
    for sid, m in sorted(gpu.items(), key=lambda kv: kv[1].get("timings", {}).get("started", "")):
        first.setdefault((m.get("executor") or {}).get("pid"), sid)
    firsts = set(first.values())
    kinds: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    order = ["sample", "generate", "represent", "train"]  # train's screen needs the sample rate
    for kind in order:
        ids = [sid for sid in gpu if by_id[sid].kind == kind]
        counts[kind] = len(ids)
        if not ids:
            kinds[kind] = dict(BUILTIN.kinds[kind])
            continue
        shares = {sid: gpu_seconds(gpu[sid]) for sid in ids}
        core = {sid: shares[sid][1] for sid in ids}
        secs = {sid: shares[sid][0] for sid in ids}
        units = sum(work[sid].units() for sid in ids)
        if all(v is not None for v in core.values()) and units > 0:
            rate = sum(core.values()) / units  # type: ignore[arg-type]
            screen = kinds.get("sample", BUILTIN.kinds["sample"])["rate"] if kind == "train" else 0.0
            rest = {sid: secs[sid] - core[sid] - screen * work[sid].gen_tokens for sid in ids}  # type: ignore[operator]
            warm = [v for sid, v in rest.items() if sid not in firsts]
            start = max(0.0, sum(warm) / len(warm)) if warm else 0.0  # else the load takes it all
        else:
            warm_ids = [sid for sid in ids if sid not in firsts] or ids
            wu = sum(work[sid].units() for sid in warm_ids)
            rate = sum(secs[sid] for sid in warm_ids) / wu if wu > 0 else 0.0
            start = 0.0
        kinds[kind] = {"start_s": start, "rate": rate}
    cal = Calibration(device_class(gpu), params_b, 0.0, kinds, source=source, created=_now(), stages=counts)
    loads = [gpu_seconds(gpu[sid])[0] - work_seconds(work[sid], cal, params_b) for sid in firsts]
    cal.load_s = max(0.0, sum(loads) / len(loads))
    return cal


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------------------------
# Saved calibrations


def calibration_dir() -> Path:
    root = os.environ.get("CPX_CACHE_DIR") or Path.home() / ".cache" / "cpx"
    return Path(root) / "cost"


def _slug(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", device).strip("-") or "device"


def save_calibration(cal: Calibration) -> Path:
    where = calibration_dir() / f"{_slug(cal.device)}.json"
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(f".{where.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cal.to_json(), indent=1) + "\n")
    os.replace(tmp, where)
    return where


def load_calibration(device: str | None = None) -> Calibration:
    """The calibration for `device` (or `$CPX_DEVICE_CLASS`); without one, the most recently
    saved; without any, `BUILTIN`. A named device class with no saved calibration is an error
    (unless it is the built-in one's)."""
    device = device or os.environ.get(DEVICE_ENV) or None
    folder = calibration_dir()
    if device is not None:
        path = folder / f"{_slug(device)}.json"
        if path.is_file():
            return _read(path)
        if device == BUILTIN.device:
            return BUILTIN
        have = sorted(repr(_device_in(p)) for p in folder.glob("*.json")) if folder.is_dir() else []
        raise CostError(
            f"no cost calibration for device class {device!r} in {folder}"
            + (f" (there are: {', '.join(have)})" if have else "")
            + "; make one with `cpx plan cost RUN --save` on a run of that device"
        )
    saved = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return _read(saved[-1]) if saved else BUILTIN


def _device_in(path: Path) -> str:
    try:
        return str(json.loads(path.read_text())["device"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.stem


def _read(path: Path) -> Calibration:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CostError(f"{path}: cannot be read ({e})") from None
    cal = Calibration.from_json(data, str(path))
    cal.source = cal.source or str(path)
    return cal


def count_done(run_dir: str | os.PathLike[str], plan: Plan) -> dict[str, bool]:
    """Whether each stage has a manifest in the run's store (`stages/<kind>/<hash>/manifest.json`).

    A quick count for `cpx compile`'s summary; `cpx status` verifies outputs against manifests.
    """
    root = Path(run_dir) / "stages"
    return {s.id: (root / s.kind / s.hash / "manifest.json").is_file() for s in plan.stages}
