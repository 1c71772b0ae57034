"""Plan diffs (which stages change between two plans, and which parameter made them change) and views."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cpx.plan._model import Plan, Stage


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaves; lists of named items are keyed by their name or id."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        if not value:
            out[prefix] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list):
        keys = [_item_key(v) for v in value]
        if value and all(k is not None for k in keys) and len(set(keys)) == len(keys):
            for k, v in zip(keys, value, strict=True):
                out.update(flatten(v, f"{prefix}[{k}]"))
        elif value and all(not isinstance(v, (dict, list)) for v in value):
            out[prefix] = value
        else:
            if not value:
                out[prefix] = []
            for i, v in enumerate(value):
                out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def _item_key(v: Any) -> str | None:
    if isinstance(v, dict):
        for k in ("name", "id", "stage"):
            if isinstance(v.get(k), str):
                return v[k]
    return None


@dataclass
class Change:
    id: str
    kind: str
    params: list[tuple[str, Any, Any]] = field(default_factory=list)  # (path, old, new)
    inputs: list[str] = field(default_factory=list)  # changed deps
    causes: list[str] = field(default_factory=list)  # root stages whose params changed


@dataclass
class PlanDiff:
    changed: list[Change]
    added: list[Stage]
    removed: list[Stage]
    renamed: list[tuple[str, str]]
    unchanged: int

    @property
    def empty(self) -> bool:
        return not (self.changed or self.added or self.removed or self.renamed)


_MISSING = "<absent>"


def diff_plans(a: Plan, b: Plan) -> PlanDiff:
    """Stages of `b` compared with `a` by id (and by hash, to spot renamed ids)."""
    ia, ib = a.by_id(), b.by_id()
    hashes_a = {s.hash: s.id for s in a.stages}
    hashes_b = {s.hash: s.id for s in b.stages}
    changes: dict[str, Change] = {}
    added, removed, renamed, unchanged = [], [], [], 0
    for s in b.stages:
        old = ia.get(s.id)
        if old is None:
            if s.hash in hashes_a:
                renamed.append((hashes_a[s.hash], s.id))
            else:
                added.append(s)
            continue
        if old.hash == s.hash:
            unchanged += 1
            continue
        fa, fb = flatten(old.params), flatten(s.params)
        params = [
            (k, fa.get(k, _MISSING), fb.get(k, _MISSING))
            for k in sorted(set(fa) | set(fb))
            if fa.get(k, _MISSING) != fb.get(k, _MISSING) and not _is_dep_ref(fa.get(k), fb.get(k), s)
        ]
        inputs = [d for d in s.deps if d in changes or d not in ia or (d in ib and ia[d].hash != ib[d].hash)]
        if old.kind != s.kind:
            params.insert(0, ("kind", old.kind, s.kind))
        ch = Change(s.id, s.kind, params, inputs)
        if params:
            ch.causes = [s.id]
        for d in inputs:
            for c in changes[d].causes if d in changes else [d]:
                if c not in ch.causes:
                    ch.causes.append(c)
        changes[s.id] = ch
    for s in a.stages:
        if s.id not in ib and s.hash not in hashes_b:
            removed.append(s)
    return PlanDiff(list(changes.values()), added, removed, renamed, unchanged)


def _is_dep_ref(old: Any, new: Any, stage: Stage) -> bool:
    return isinstance(new, str) and new in stage.deps and old == new


def _short(v: Any, limit: int = 50) -> str:
    text = "(absent)" if v == _MISSING else repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_diff(d: PlanDiff, limit: int = 200) -> str:
    """A readable report: a count line, then one line per changed/added/removed stage."""
    lines = [
        f"{len(d.changed)} changed, {len(d.added)} added, {len(d.removed)} removed, "
        f"{len(d.renamed)} renamed, {d.unchanged} unchanged"
    ]
    shown = 0
    for ch in d.changed:
        if shown >= limit:
            break
        shown += 1
        if ch.params:
            what = "; ".join(f"{p}: {_short(o)} -> {_short(n)}" for p, o, n in ch.params[:4])
            if len(ch.params) > 4:
                what += f"; and {len(ch.params) - 4} more"
        else:
            what = "because of " + ", ".join(ch.causes[:3]) + (" ..." if len(ch.causes) > 3 else "")
        lines.append(f"~ {ch.id}  {what}")
    for s in d.added[: max(0, limit - shown)]:
        lines.append(f"+ {s.id}")
    for s in d.removed[: max(0, limit - shown)]:
        lines.append(f"- {s.id}")
    for old, new in d.renamed[: max(0, limit - shown)]:
        lines.append(f"= {old} -> {new} (same work, new id)")
    total = len(d.changed) + len(d.added) + len(d.removed) + len(d.renamed)
    if total > limit:
        lines.append(f"... {total - limit} more")
    return "\n".join(lines)


def mermaid(plan: Plan) -> str:
    """The plan's DAG as a mermaid flowchart."""
    index = {s.id: f"s{i}" for i, s in enumerate(plan.stages)}
    lines = ["flowchart LR"]
    for s in plan.stages:
        label = s.id.replace('"', "'")
        lines.append(f'  {index[s.id]}["{label}"]:::{s.kind}')
    for s in plan.stages:
        for d in s.deps:
            lines.append(f"  {index[d]} --> {index[s.id]}")
    colors = {
        "generate": "#dbeafe",
        "dataset": "#e0e7ff",
        "train": "#fde68a",
        "sample": "#bbf7d0",
        "represent": "#a5f3fc",
        "scan": "#d9f99d",
        "analyze": "#fbcfe8",
        "report": "#e5e7eb",
    }
    for kind, color in colors.items():
        lines.append(f"  classDef {kind} fill:{color}")
    return "\n".join(lines)
