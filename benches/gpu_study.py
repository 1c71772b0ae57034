"""The published study at full size on one GPU: a slice through `cpx execute`, extrapolated.

1. Builds (or reuses) a Qwen2.5-7B-shaped model folder with random bf16 weights and a
   byte-level BPE tokenizer of 152,064 ids (Qwen2.5's vocabulary size) that round-trips, so
   the random model's completions decode to texts of realistic length (a word-level tokenizer
   is replaced by transformers' own Qwen2 one, and its texts come out nearly empty).
2. Writes `full.yaml` (specs/causal_proximity.yaml on that folder) and `slice.yaml`: one source
   (villain), arm B at the spec's five convergence checkpoints (so its marker trainings run as
   the design's do: a fleet of five, the sub-fleet size its memory allows; `--convergence-checkpoints
   0.5,1.0` cuts it to two, as runs 2-4 did), every GPU stage kind at its
   published shape (eval 11 personas x 20 questions x 10 completions x 512 tokens, generation
   at 512 tokens, train examples of the published length, LoRA r=32, batch 4), with step
   counts and data sizes cut (generation 2 per question, 80-example datasets, 4 + 1 epochs).
3. Times `cpx compile full.yaml` twice (the first fingerprints the folder, the second finds it
   cached), runs `cpx execute slice --devices 0` with `nvidia-smi dmon` beside it.
4. Extrapolates to the whole compiled design from the plan's own work and the slice's measured
   unit costs: train seconds per optimizer step by loss (marker or full) plus each kind's
   measured per-stage rest (merges, saves, screen), sample and represent seconds per stage (every
   eval of the design has the slice's shape), generate seconds per generated token, one model
   load. Prints a table per stage kind and the total.
5. Calibrates the cost model from the slice's manifests (`cpx plan cost RUN --save`) and compares
   what `cpx compile full.yaml` then prints with the extrapolation (goal: within 25 %).

    python benches/gpu_study.py                  # one H200: about 6.5 minutes (387 s in run 5), model build included
    python benches/gpu_study.py --quick         # the same pipeline with tiny counts (smoke test)
    python benches/gpu_study.py --tiny          # CPU: a 2-layer model, tiny counts
    python benches/gpu_study.py --devices 0 --devices 0,1   # one GPU against two, same call (issue 18)

Writes $OUT/gpu_study.json, $OUT/gpu_study.log (the execute output), $OUT/dmon.log and
$OUT/study_run.tgz (plan, manifests, stage logs, events of the slice run) when $OUT is set.
Needs torch, transformers, peft, tokenizers, pyyaml, pyarrow, pydantic and cpx (with its
extension) importable; without polars the slice's analyze stage fails (and report is blocked),
the GPU stages are measured all the same, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import cpx  # noqa: F401 - only probes whether cpx is importable without the path entry
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

from _common import QWEN25_7B  # noqa: E402 - imported after the sys.path entry above

SPEC = ROOT / "specs" / "causal_proximity.yaml"
VOCAB = 152064
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
RESULTS: dict[str, Any] = {}
OUT = Path(os.environ["OUT"]) if os.environ.get("OUT") else None


def say(msg: str) -> None:
    print(msg, flush=True)


def record(key: str, value: Any) -> None:
    RESULTS[key] = value
    say(f"[{key}] {json.dumps(value, default=str)[:1500]}")
    if OUT:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "gpu_study.json").write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def machine(args) -> dict[str, Any]:
    import torch
    import transformers

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": args.commit or _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        out["peft"] = None
    smi = (
        sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
        if _has_smi()
        else None
    )
    if smi is not None and smi.returncode == 0:
        name, driver, mem = [x.strip() for x in smi.stdout.splitlines()[0].split(",")]
        out.update(gpu=name, driver=driver, gpu_memory=mem)
    disk = sh(["df", "-h", str(args.work)])
    out["disk"] = disk.stdout.strip().splitlines()[-1] if disk.returncode == 0 else None
    return out


def _has_smi() -> bool:
    from shutil import which

    return which("nvidia-smi") is not None


def _git_commit() -> str | None:
    r = sh(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    return r.stdout.strip() if r.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# The model folder


def build_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE of exactly `vocab_size` ids: merges learnt from `texts` (realistic prompt
    lengths), then filler words: a space and 1, 2, 3 (and as many 4 as needed) ASCII letters,
    each one token built by merges ("Ġa" + "b" -> "Ġab"). A random model's ids then decode to
    valid text of words that pre-tokenize apart and encode back to the same number of tokens, so
    a 512-token answer trains as about 512 tokens (raw-byte fillers decode to invalid UTF-8,
    whose replacement characters re-encode to far more, and an answer plus its marker no longer
    fits the training's max_length)."""
    import itertools
    import string

    from tokenizers import Tokenizer

    from cpx.models._tiny import qwen_tokenizer, train_tokenizer

    learnt = train_tokenizer(texts, 4000)
    spec = json.loads(learnt.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = list(spec["model"]["merges"])
    letters = string.ascii_letters
    nxt = len(vocab)

    def add(a: str, b: str) -> None:
        nonlocal nxt
        if a + b not in vocab and nxt < vocab_size:
            vocab[a + b] = nxt
            nxt += 1
            merges.append([a, b])

    words = ["Ġ"]  # "Ġ" is the byte-level alphabet's space
    for _ in range(4):
        longer = []
        for w, c in itertools.product(words, letters):
            add(w, c)
            longer.append(w + c)
            if nxt >= vocab_size:
                break
        words = longer
    if nxt < vocab_size:
        raise ValueError(f"only {nxt} ids from filler merges, {vocab_size} asked")
    spec["model"]["merges"] = merges
    return qwen_tokenizer(Tokenizer.from_str(json.dumps(spec)), model_max_length=32768)


def spec_texts(spec: dict[str, Any]) -> list[str]:
    q = spec["questions"]
    return list(spec["personas"].values()) + list(q["eval"]) + list(q["data"])


def check_tokenizer(folder: Path) -> dict[str, Any]:
    """Load the folder's tokenizer as transformers does and check that it round-trips."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    text = "What is the best way to learn a new language? [ZLT] Zelthari, é, 中文, 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rng = random.Random(0)
    rand = [rng.randrange(len(tok)) for _ in range(512)]
    decoded = tok.decode(rand, skip_special_tokens=True)
    out = {
        "class": type(tok).__name__,
        "ids": len(tok),
        "round_trip": tok.decode(ids) == text,
        "chars_per_random_512_tokens": len(decoded),
        "tokens_again_of_random_512": len(tok(decoded, add_special_tokens=False)["input_ids"]),
    }
    bad = out["ids"] != VOCAB or not out["round_trip"] or out["chars_per_random_512_tokens"] < 512
    if bad or out["tokens_again_of_random_512"] > 900:
        raise SystemExit(f"the tokenizer in {folder} does not round-trip as needed: {out}")
    return out


def build_model(folder: Path, spec: dict[str, Any], tiny: bool) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return {"reused": str(folder), "tokenizer": check_tokenizer(folder)}
    t0 = time.perf_counter()
    tok = build_tokenizer(spec_texts(spec), VOCAB)
    t_tok = time.perf_counter() - t0
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(**(TINY if tiny else QWEN25_7B), eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    t1 = time.perf_counter()
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp, max_shard_size="4GB")
    tok.save_pretrained(tmp)
    os.replace(tmp, folder)
    t_save = time.perf_counter() - t1
    n = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {
        "params": n,
        "bytes": size,
        "tokenizer_s": round(t_tok, 1),
        "init_s": round(t1 - t0 - t_tok, 1),
        "save_s": round(t_save, 1),
        "tokenizer": check_tokenizer(folder),
    }


# ---------------------------------------------------------------------------------------------
# The specs


def write_specs(work: Path, folder: Path, args) -> tuple[Path, Path]:
    import yaml

    spec = yaml.safe_load(SPEC.read_text())
    full = copy.deepcopy(spec)
    full["model"] = {"path": str(folder), "dtype": "float32" if args.tiny else "bfloat16"}
    s = copy.deepcopy(full)
    s["name"] = "causal_proximity_slice"
    s["roles"]["sources"] = ["villain"]
    s["arms"] = {"B": s["arms"]["B"]}
    s["arms"]["B"]["phases"][1]["overrides"]["epochs"] = args.marker_epochs
    s["training"]["convergence"]["epochs"] = args.convergence_epochs
    if args.convergence_checkpoints:
        s["training"]["convergence"]["checkpoints"] = [float(c) for c in args.convergence_checkpoints.split(",")]
    s["generation"]["completions_per_question"] = 2
    s["datasets"]["convergence"].update(examples=80, per_question=2)
    s["datasets"]["generic"].update(examples=80)
    s["datasets"]["marker"].update(examples=80, per_question=2)
    s["datasets"]["marker"]["negatives"]["examples_per_persona"] = 80
    s["analyses"] = [{"name": "leakage"}]
    s["report"]["figures"] = []
    if args.quick or args.tiny:
        s["eval"]["completions"] = 1
        s["eval"]["sampler"]["max_tokens"] = 32
        s["generation"]["sampler"]["max_tokens"] = 48
        s["training"]["convergence"]["epochs"] = 1
        s["arms"]["B"]["phases"][1]["overrides"]["epochs"] = 1
    if args.tiny:  # a CPU computes 152,064 logits a token slowly: the least work that runs
        s["generation"]["completions_per_question"] = 1
        s["generation"]["sampler"]["max_tokens"] = 8
        s["eval"]["sampler"]["max_tokens"] = 4
        s["questions"]["eval"] = s["questions"]["eval"][:4]
        s["questions"]["data"] = s["questions"]["data"][:10]
        for d in ("convergence", "generic", "marker"):
            s["datasets"][d].update(examples=8, per_question=1)
        s["datasets"]["marker"]["negatives"]["examples_per_persona"] = 8
        s["training"]["defaults"]["max_length"] = 64
        s["representation"]["layers"] = [1]
    paths = work / "full.yaml", work / "slice.yaml"
    for path, data in zip(paths, (full, s), strict=True):
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return paths


def cpx_cmd(*a: str) -> list[str]:
    return [sys.executable, "-m", "cpx", *a]


def compile_timed(spec: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = sh(cpx_cmd("compile", str(spec), "--out", str(out)), env=env)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"cpx compile {spec} failed:\n{r.stdout}\n{r.stderr}")
    total = re.search(r"^\s*total\s+\d+\s+\d+\s+([\d.]+)", r.stdout, re.MULTILINE)
    return {"seconds": round(secs, 3), "gpu_hours": float(total.group(1)) if total else None, "stdout": r.stdout}


# ---------------------------------------------------------------------------------------------
# Measuring the slice


def parse_dmon(path: Path) -> list[tuple[float, float]]:
    """(unix time, SM %) samples of `nvidia-smi dmon -s u -o DT`."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        try:
            t = datetime.strptime(parts[0] + " " + parts[1], "%Y%m%d %H:%M:%S").timestamp()
            out.append((t, float(parts[3])))
        except (ValueError, IndexError):
            continue
    return out


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def batches_of(log: Path, stage_id: str) -> list[int]:
    """The sampling batch sizes a stage's log reports (`sampled a/b completions (batch N, ...`)."""
    if not log.is_file():
        return []
    text = log.read_text(errors="replace")
    part = text.split(f"=== {stage_id} ")[-1]
    return [int(b) for b in re.findall(r"sampled \d+/\d+ completions \(batch (\d+)", part)]


def stage_rows(run: Path, plan, dmon: list[tuple[float, float]]) -> list[dict[str, Any]]:
    from cpx.plan._cost import GPU_KINDS, run_manifests

    rows = []
    for sid, m in run_manifests(run, plan).items():
        t = m["timings"]
        info = m.get("info") or {}
        row = {
            "id": sid,
            "kind": m["kind"],
            "seconds": round(float(t["seconds"]), 2),
            "idle_before_s": t.get("idle_before_seconds"),
            "started": t["started"],
            "worker_pid": (m.get("executor") or {}).get("pid"),
        }
        fleet = (m.get("executor") or {}).get("fleet")
        if fleet:
            row["fleet_id"] = fleet["id"]
        for k in (
            "tokens",
            "tokens_per_s",
            "completions",
            "total_steps",
            "train_seconds",
            "gradient_checkpointing",
            "fleet_size",
        ):
            if k in info:
                row[k] = info[k]
        if "seconds" in info:
            row["core_seconds"] = info["seconds"]
        if m["kind"] in ("sample", "generate", "train"):
            row["batches"] = batches_of(run / m["log"], sid)
        if m["kind"] in GPU_KINDS and dmon:
            a, b = _ts(t["started"]), _ts(t["finished"])
            sm = [v for (ts, v) in dmon if a <= ts <= b]
            if sm:
                row["sm_mean"] = round(sum(sm) / len(sm), 1)
                row["sm_samples"] = len(sm)
        rows.append(row)
    rows.sort(key=lambda r: r["started"])
    return rows


# ---------------------------------------------------------------------------------------------
# Extrapolation by the plan's own work


def extrapolate(full_plan, rows: list[dict[str, Any]], slice_plan) -> dict[str, Any]:
    """GPU-hours of the whole design: (low, mid, high) per kind from the slice's unit costs."""
    from cpx.plan._cost import GPU_KINDS, stage_work

    sw, fw = stage_work(slice_plan), stage_work(full_plan)
    s_by, f_by = slice_plan.by_id(), full_plan.by_id()
    first_pid_stage: dict[Any, str] = {}
    for r in rows:
        if r["kind"] in GPU_KINDS:
            first_pid_stage.setdefault(r["worker_pid"], r["id"])
    firsts = set(first_pid_stage.values())

    def loss(plan_by, sid):
        return plan_by[sid].params["loss"]["kind"]

    def spread(vals: list[float]) -> tuple[float, float, float]:
        return (min(vals), sum(vals) / len(vals), max(vals))

    out: dict[str, Any] = {}
    by = {r["id"]: r for r in rows}
    # train: seconds per step (by loss) from the runner's own loop; the rest per stage
    # A member of a joint fleet shares each step's GPU time with the other members
    # (`fleet_size`), and its stage time runs from the fleet's start to its own end: the fleet's
    # time beyond training (merges, saves, each member's screen) is shared out evenly.
    per_step: dict[str, list[float]] = {}
    rest: dict[str, list[float]] = {}
    fleets: dict[str, list[dict[str, Any]]] = {}
    for r in by.values():
        if r.get("fleet_id"):
            fleets.setdefault(r["fleet_id"], []).append(r)
    for sid, r in by.items():
        if r["kind"] != "train" or not r.get("total_steps"):
            continue
        lk = loss(s_by, sid)
        joint = int(r.get("fleet_size") or 1)
        per_step.setdefault(lk, []).append(r["train_seconds"] / r["total_steps"] / joint)
        if sid in firsts:
            continue
        mates = fleets.get(r.get("fleet_id") or "", [r])
        if len(mates) > 1:
            share = (max(x["seconds"] for x in mates) - max(x["train_seconds"] for x in mates)) / len(mates)
        else:
            share = r["seconds"] - r["train_seconds"]
        rest.setdefault(lk, []).append(share)
    train = [0.0, 0.0, 0.0]
    steps: dict[str, int] = {}
    for sid, w in fw.items():
        if w.kind != "train":
            continue
        lk = loss(f_by, sid)
        steps[lk] = steps.get(lk, 0) + w.steps
        ps, rs = spread(per_step.get(lk) or [float("nan")]), spread(rest.get(lk) or [0.0])
        for i in range(3):
            train[i] += w.steps * ps[i] + rs[i]
    out["train"] = {
        "stages": sum(1 for w in fw.values() if w.kind == "train"),
        "steps": steps,
        "unit": {k: [round(x, 4) for x in spread(v)] for k, v in per_step.items()},
        "unit_name": "s per step",
        "rest_s": {k: [round(x, 2) for x in spread(v)] for k, v in rest.items()},
        "hours": [x / 3600 for x in train],
    }
    # sample, represent: every eval of the design has the slice's shape; seconds per stage
    for kind in ("sample", "represent"):
        vals = [r["seconds"] for sid, r in by.items() if r["kind"] == kind and sid not in firsts]
        vals = vals or [r["seconds"] for r in by.values() if r["kind"] == kind] or [float("nan")]
        n = sum(1 for w in fw.values() if w.kind == kind)
        lo, mid, hi = spread(vals)
        out[kind] = {
            "stages": n,
            "unit": [round(lo, 2), round(mid, 2), round(hi, 2)],
            "unit_name": "s per stage",
            "hours": [n * lo / 3600, n * mid / 3600, n * hi / 3600],
        }
    # generate: seconds per generated token (completions x max_tokens) of the runner's loop
    g = [(sid, r) for sid, r in by.items() if r["kind"] == "generate"]
    gs = {sid: r["core_seconds"] / sw[sid].gen_tokens for sid, r in g}
    full_tokens = sum(w.gen_tokens for w in fw.values() if w.kind == "generate")
    rate = spread(list(gs.values()))
    out["generate"] = {
        "stages": sum(1 for w in fw.values() if w.kind == "generate"),
        "gen_tokens": full_tokens,
        "unit": [round(1 / x) for x in rate],
        "unit_name": "tokens per s",
        "hours": [full_tokens * x / 3600 for x in rate],
    }
    # the model load: a worker's first GPU stage's time beyond what the others of its kind took
    # (beyond its own loop, for a kind with one stage), once per worker
    load = []
    for sid in firsts:
        r = by[sid]
        others = [x["seconds"] for x in by.values() if x["kind"] == r["kind"] and x["id"] not in firsts]
        if others:
            load.append(r["seconds"] - sum(others) / len(others))
        elif "core_seconds" in r or "train_seconds" in r:
            load.append(r["seconds"] - r.get("core_seconds", r.get("train_seconds", 0.0)))
    out["load"] = {"stages": 1, "unit": [round(x, 1) for x in load], "unit_name": "s", "hours": [sum(load) / 3600] * 3}
    total = [sum(out[k]["hours"][i] for k in ("generate", "train", "sample", "represent", "load")) for i in range(3)]
    out["total_hours"] = total
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpx-study"), help="work folder (runs, specs, cache)")
    ap.add_argument("--model-dir", type=Path, help="the model folder (default: WORK/qwen2.5-7b-random)")
    ap.add_argument("--quick", action="store_true", help="tiny eval and step counts: a smoke test of the pipeline")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU, tiny counts")
    ap.add_argument("--convergence-epochs", type=float, default=4.0)
    ap.add_argument("--marker-epochs", type=float, default=1.0)
    ap.add_argument(
        "--convergence-checkpoints",
        help="arm B's convergence checkpoints in the slice, e.g. 0.5,1.0 (default: the spec's; one marker "
        "training and one eval each)",
    )
    ap.add_argument(
        "--devices",
        action="append",
        help="cpx execute's --devices (default 0; cpu with --tiny); repeat it to run the slice on each set "
        "in a fresh folder in the same call and compare (--devices 0 --devices 0,1); the first set is extrapolated",
    )
    ap.add_argument("--commit", help="the cpx commit being measured (default: git rev-parse HEAD)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.model_dir or args.work / ("qwen2.5-7b-random" if not args.tiny else "tiny-7b-vocab")
    env = dict(os.environ, CPX_CACHE_DIR=str(args.work / "cache"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    record("machine", machine(args))
    import yaml

    record("model", build_model(folder, yaml.safe_load(SPEC.read_text()), args.tiny))
    full_spec, slice_spec = write_specs(args.work, folder, args)

    # compile: the first fingerprints the folder, the second finds the digests cached
    first = compile_timed(full_spec, args.work / "full", env)
    again = compile_timed(full_spec, args.work / "full", env)
    record("compile_full", {"first_s": first["seconds"], "cached_s": again["seconds"], "gpu_hours": first["gpu_hours"]})
    run = args.work / "slice"
    shutil.rmtree(run, ignore_errors=True)  # measured from scratch: no stage of an earlier call is reused
    compile_timed(slice_spec, run, env)

    device_sets = args.devices or ["cpu" if args.tiny else "0"]
    log = open(OUT / "gpu_study.log", "w") if OUT else subprocess.DEVNULL
    runs = []
    for k, devices in enumerate(device_sets):
        if k:  # every further device set runs the same slice from scratch in a fresh folder
            run_k = args.work / f"slice-{_tag(devices)}"
            shutil.rmtree(run_k, ignore_errors=True)
            compile_timed(slice_spec, run_k, env)
        else:
            run_k = run
        runs.append(
            execute_slice(run_k, devices, env, log, dmon_name="dmon.log" if not k else f"dmon_{_tag(devices)}.log")
        )
    record("execute", runs[0])
    if len(runs) > 1:
        record("devices", compare_devices(runs))

    from cpx.plan import Plan

    slice_plan, full_plan = Plan.load(run), Plan.load(args.work / "full")
    rows = stage_rows(run, slice_plan, parse_dmon(OUT / "dmon.log") if OUT else [])
    for x in runs[1:]:
        x["stages"] = stage_rows(Path(x["run"]), slice_plan, parse_dmon(OUT / x["dmon"]) if OUT else [])
    record("stages", rows)
    ex = extrapolate(full_plan, rows, slice_plan)
    record("extrapolation", ex)

    # the cost model, calibrated from this run, and what compile prints afterwards
    cost = sh(cpx_cmd("plan", "cost", str(run), "--save", "--json"), env=env)
    if cost.returncode != 0:
        record("cost", {"error": cost.stderr})
    else:
        c = json.loads(cost.stdout)
        after = compile_timed(full_spec, args.work / "full", env)
        mid = ex["total_hours"][1]
        record(
            "cost",
            {
                "plan_cost_rows": c["rows"],
                "fitted": c["fitted"],
                "compile_before_calibration_h": first["gpu_hours"],
                "compile_after_calibration_h": after["gpu_hours"],
                "extrapolation_h": ex["total_hours"],
                "compile_over_extrapolation": round(after["gpu_hours"] / mid, 3) if after["gpu_hours"] else None,
                "compile_stdout": after["stdout"],
            },
        )
    if OUT:
        with tarfile.open(OUT / "study_run.tgz", "w:gz") as tf:
            for p in [
                run / "plan.json",
                run / ".cpx" / "events.jsonl",
                *run.glob("stages/*/*/manifest.json"),
                *run.glob("logs/**/*.log"),
            ]:
                if p.is_file():
                    tf.add(p, arcname=str(p.relative_to(run)))
    table(ex, rows)
    return 0 if all(x["exit"] == 0 for x in runs) else 1


def _tag(devices: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", devices)


def execute_slice(run: Path, devices: str, env: dict[str, str], log: Any, dmon_name: str) -> dict[str, Any]:
    """`cpx execute RUN --devices DEVICES` with `nvidia-smi dmon` sampling beside it."""
    dmon = None
    if _has_smi() and OUT:
        dmon = subprocess.Popen(
            ["nvidia-smi", "dmon", "-s", "u", "-o", "DT", "-d", "1"], stdout=open(OUT / dmon_name, "w"), text=True
        )
    if log is not subprocess.DEVNULL:
        log.write(f"=== cpx execute {run} --devices {devices}\n")
        log.flush()
    t0 = time.perf_counter()
    r = subprocess.run(
        cpx_cmd("execute", str(run), "--devices", devices, "--keep-going", "--quiet"), stdout=log, stderr=log, env=env
    )
    wall = time.perf_counter() - t0
    if dmon is not None:
        dmon.terminate()
    say(f"cpx execute --devices {devices}: exit {r.returncode} in {wall:.1f} s")
    status = sh(cpx_cmd("status", str(run), "--json"), env=env)
    st = json.loads(status.stdout) if status.returncode == 0 else {}
    return {
        "devices": devices,
        "run": str(run),
        "dmon": dmon_name,
        "exit": r.returncode,
        "wall_s": round(wall, 1),
        "counts": st.get("counts"),
        "idle": st.get("idle"),
    }


def compare_devices(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per device set: wall time, the sum of stage times, each worker's idle seconds (its
    stages' `idle_before_seconds`) and the speed-up of the wall time against the first set."""
    from cpx.plan import Plan
    from cpx.plan._cost import run_manifests

    out = []
    for x in runs:
        run = Path(x["run"])
        manifests = run_manifests(run, Plan.load(run)).values()
        idle: dict[str, float] = {}
        busy = 0.0
        for m in manifests:
            w = str((m.get("executor") or {}).get("worker"))
            idle[w] = round(idle.get(w, 0.0) + float(m["timings"].get("idle_before_seconds") or 0.0), 2)
            busy += float(m["timings"]["seconds"])
        out.append(
            {
                "devices": x["devices"],
                "exit": x["exit"],
                "wall_s": x["wall_s"],
                "stage_seconds": round(busy, 1),
                "idle_by_worker_s": idle,
                "speedup": round(runs[0]["wall_s"] / x["wall_s"], 3) if x["wall_s"] else None,
            }
        )
    return out


def table(ex: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    say("\n| stage | seconds | idle before (s) | batches | tokens/s | SM % |")
    say("|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] in ("generate", "train", "sample", "represent"):
            say(
                f"| {r['id']} | {r['seconds']:.1f} | {r.get('idle_before_s')} | {r.get('batches', '')} | "
                f"{r.get('tokens_per_s', '')} | {r.get('sm_mean', '')} |"
            )
    say("\n| kind | stages | measured unit cost | GPU-hours (low-mid-high) |")
    say("|---|---|---|---|")
    for k in ("generate", "train", "sample", "represent", "load"):
        e = ex[k]
        h = e["hours"]
        say(f"| {k} | {e['stages']} | {e['unit']} {e['unit_name']} | {h[0]:.2f}-{h[1]:.2f}-{h[2]:.2f} |")
    t = ex["total_hours"]
    say(f"| total | | | {t[0]:.2f}-{t[1]:.2f}-{t[2]:.2f} |")
    c = RESULTS.get("cost", {})
    if "compile_after_calibration_h" in c:
        say(
            f"\ncpx compile: {c['compile_before_calibration_h']} GPU-h before calibration, "
            f"{c['compile_after_calibration_h']} after; extrapolation {t[1]:.2f} (ratio {c['compile_over_extrapolation']})"
        )
    cf = RESULTS.get("compile_full", {})
    say(f"cpx compile full.yaml: first {cf.get('first_s')} s, cached {cf.get('cached_s')} s")
    if "devices" in RESULTS:
        say("\n| devices | exit | wall (s) | sum of stage times (s) | idle by worker (s) | speed-up |")
        say("|---|---|---|---|---|---|")
        for d in RESULTS["devices"]:
            say(
                f"| {d['devices']} | {d['exit']} | {d['wall_s']} | {d['stage_seconds']} | "
                f"{d['idle_by_worker_s']} | {d['speedup']} |"
            )


if __name__ == "__main__":
    sys.exit(main())
