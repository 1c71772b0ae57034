"""What the report says about where its numbers came from: the spec and the stage manifests."""

from __future__ import annotations

from collections import Counter
from typing import Any


def _short(v: Any, limit: int = 110) -> str:
    if isinstance(v, dict):
        if "name" in v:
            return str(v["name"])
        inner = ", ".join(
            f"{k}: {_short(x, 40)}" for k, x in v.items() if x is not None and not isinstance(x, (dict, list))
        )
        nested = [k for k, x in v.items() if isinstance(x, (dict, list))]
        s = inner + (("; " if inner else "") + "+ " + ", ".join(nested) if nested else "")
    elif isinstance(v, list):
        names = [_short(x, 30) for x in v[:8]]
        s = f"{len(v)}: " + ", ".join(names) + (", ..." if len(v) > 8 else "")
    else:
        s = str(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _phase(ph: dict[str, Any]) -> str:
    bits = []
    if ph.get("merge"):
        bits.append(f"merged from {ph['merge']}")
    elif ph.get("data"):
        bits.append(f"on {ph['data']}" + (f" with {ph['train']}'s training" if ph.get("train") else ""))
    if ph.get("from"):
        bits.append(f"from {ph['from']}")
    if ph.get("each_checkpoint"):
        bits.append("at each checkpoint")
    if ph.get("overrides"):
        bits.append(
            ", ".join(f"{k} {v}" for k, v in ph["overrides"].items() if v is not None and not isinstance(v, dict))
        )
    return str(ph.get("name")) + (f" ({'; '.join(b for b in bits if b)})" if bits else "")


def _arm(arm: dict[str, Any]) -> str:
    s = " → ".join(_phase(ph) for ph in arm.get("phases") or []) or "the base model"
    if arm.get("kind") == "steer" and arm.get("steer"):
        st = arm["steer"]
        s += f"; steered at layer {st.get('layer')}, alphas {', '.join(f'{a:g}' for a in st.get('alphas') or [])}"
    if arm.get("eval_at"):
        s += f"; evaluated at {arm['eval_at']}'s checkpoints"
    if arm.get("sources"):
        s += f"; sources {', '.join(arm['sources'])}"
    return s


def _sampler(sm: dict[str, Any] | None) -> str:
    sm = sm or {}
    return ", ".join(f"{k} {sm[k]}" for k in ("temperature", "top_p", "max_tokens") if sm.get(k) is not None)


def _eval(spec: dict[str, Any]) -> list[tuple[str, str]]:
    ev = spec.get("eval") or {}
    personas = ev.get("personas") or list(spec.get("personas") or {})
    n_q = len((spec.get("questions") or {}).get("eval") or [])
    k = ev.get("completions")
    rows = [
        (
            "eval",
            f"{n_q} questions × {k} completions × {len(personas)} personas = {n_q * (k or 0) * len(personas)} "
            f"completions per eval point; {_sampler(ev.get('sampler'))}; backend {ev.get('backend')}",
        )
    ]
    if ev.get("completions_overrides"):
        rows.append(("eval overrides", _short(ev["completions_overrides"])))
    if ev.get("screen"):
        sc = ev["screen"]
        rows.append(
            (
                "marker screen",
                f"{sc.get('questions')} questions × {sc.get('completions')} completions per persona; "
                f"{_sampler(sc.get('sampler'))}",
            )
        )
    return rows


def spec_summary(spec: dict[str, Any], stages: list[Any] | None = None) -> list[tuple[str, str]]:
    """(key, summary) pairs: the resolved spec's top-level keys, one line each (the roles, every
    arm with its phases and the eval sizes spelt out), and the number of stages of each kind."""
    rows: list[tuple[str, str]] = []
    for k, v in spec.items():
        if k == "roles" and isinstance(v, dict):
            sources = list(v.get("sources") or [])
            bystanders = v.get("bystanders")
            if bystanders is None:
                bystanders = [p for p in spec.get("personas") or {} if p != v.get("assistant") and p not in sources]
            rows += [
                ("assistant", str(v.get("assistant"))),
                ("sources", ", ".join(sources)),
                ("bystanders", ", ".join(bystanders) or "none"),
            ]
        elif k == "arms" and isinstance(v, dict):
            rows += [(f"arm {name}", _arm(arm)) for name, arm in v.items()]
        elif k == "eval" and isinstance(v, dict):
            rows += _eval(spec)
        elif k == "model" and isinstance(v, dict) and v.get("tiny"):
            tiny = ", ".join(f"{a} {b}" for a, b in v["tiny"].items() if b is not None)
            rows.append(("model", f"the built-in tiny random model ({tiny}); {v.get('dtype')}"))
        elif k == "personas" and isinstance(v, dict):
            rows.append(("personas", f"{len(v)}: {', '.join(v)}"))
        elif k == "questions" and isinstance(v, dict):
            rows.append(("questions", ", ".join(f"{len(q)} {n}" for n, q in v.items() if isinstance(q, list))))
        else:
            rows.append((str(k), _short(v)))
    if stages:
        kinds = Counter(s.kind for s in stages)
        rows.append(("stages", ", ".join(f"{n} {k}" for k, n in kinds.items())))
    return rows


def provenance(
    manifests: list[dict[str, Any]], n_stages: int | None = None, counted: str = "stages"
) -> list[tuple[str, str]]:
    """(item, value) pairs from the stage manifests: commits, package versions, devices,
    GPU-hours and stage-hours, and "N of M <counted>" done."""
    if not manifests:
        return [("stages", "no stage manifests found")]
    commits: Counter[str] = Counter()
    for m in manifests:
        g = m.get("git") or {}
        if g.get("commit"):
            commits[g["commit"][:12] + (" (dirty)" if g.get("dirty") else "")] += 1
    pkgs: dict[str, set[str]] = {}
    for m in manifests:
        for k, v in (m.get("packages") or {}).items():
            pkgs.setdefault(k, set()).add(str(v))
    devices: Counter[str] = Counter()
    gpu_s = total_s = 0.0
    for m in manifests:
        d = m.get("device") or {}
        dev_id = str(d.get("id") or "?")
        devices[f"{d.get('name') or dev_id} ({dev_id.split(':')[0]})"] += 1
        secs = float((m.get("timings") or {}).get("seconds") or 0.0)
        total_s += secs
        if dev_id.startswith("cuda"):
            gpu_s += secs
    hosts = sorted({(m.get("host") or {}).get("name", "?") for m in manifests})
    rows = [
        ("commit", ", ".join(f"{c} ({n} stages)" for c, n in commits.most_common()) or "not recorded"),
        ("packages", ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(pkgs.items())) or "not recorded"),
        ("devices", ", ".join(f"{d}: {n} stages" for d, n in devices.most_common())),
        ("hosts", ", ".join(hosts)),
        ("GPU-hours", f"{gpu_s / 3600:.3f}"),
        ("stage-hours (all devices)", f"{total_s / 3600:.3f}"),
        ("stages done", f"{len(manifests)}" + (f" of {n_stages} {counted}" if n_stages else "")),
    ]
    return rows + tracker_summary(manifests)


_TRACKERS = {"wandb": "W&B", "mlflow": "MLflow"}


def tracked(manifests: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(stage id, tracker, run id or why there is none) for every stage a tracker logged or tried to."""
    out = []
    for m in sorted(manifests, key=lambda m: str(m.get("id"))):
        t = m.get("tracking") or {}
        if t.get("backend"):
            what = t.get("run_id") or f"not logged: {t.get('error', 'no run id')}"
            if t.get("run_id") and t.get("error"):
                what += f" (incomplete: {t['error']})"
            out.append((str(m.get("id")), _TRACKERS.get(t["backend"], t["backend"]), what))
    return out


def tracker_summary(manifests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One provenance row per tracker (where its runs are, how many failed) and, for offline
    W&B runs, how to upload them."""
    rows = []
    entries = [(m.get("tracking") or {}) for m in manifests]
    for backend, name in _TRACKERS.items():
        mine = [t for t in entries if t.get("backend") == backend]
        if not mine:
            continue
        ok = [t for t in mine if t.get("run_id")]
        where = mine[0]
        place = (
            f"project {where.get('project')}, group {where.get('group')}, {where.get('mode')}"
            if backend == "wandb"
            else f"{where.get('uri')}, experiment {where.get('experiment_id')}"
        )
        failed = len(mine) - len(ok)
        rows.append(
            (
                f"{name} runs",
                f"{len(ok)} of {len(mine)} stages ({place})" + (f"; {failed} not logged" if failed else ""),
            )
        )
        if backend == "wandb" and any(t.get("mode") == "offline" for t in ok):
            rows.append(("W&B upload", "from the run folder: wandb sync wandb/offline-run-*"))
    return rows
