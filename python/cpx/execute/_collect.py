"""Collection: the stages' tables concatenated into `<run>/results/`, the report copied to `<run>/report/`.

Every file is written beside its final name and renamed into place, so a reader sees the old
table or the new one, never half of one. `results/manifest.json` says which stages (ids and
hashes) each table came from, its row count and its sha256.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from cpx.execute._store import MANIFEST, Store, now_iso, sha256_file, write_json_atomic
from cpx.plan import Plan, Stage

# Where each results table comes from: (stage kind, file in the stage's folder).
RESULT_SOURCES: dict[str, tuple[str, str]] = {
    "completions": ("sample", "completions.parquet"),
    "marker_hits": ("scan", "marker_hits.parquet"),
    "leakage": ("scan", "leakage.parquet"),
    "cosines": ("represent", "cosines.parquet"),
    "screen": ("train", "screen.parquet"),
    "train_log": ("train", "train_log.parquet"),
    "metrics": ("analyze", "metrics.parquet"),
    "stats": ("analyze", "stats.parquet"),
}
# The tables `<run>/results/<name>.parquet` that `cpx.open(run_dir)` offers.
RESULT_TABLES: tuple[str, ...] = tuple(RESULT_SOURCES)
# A train stage's own tables: one copy per stage (its `arms` lists every arm that uses the
# adapter), as the analysis reads them; eval tables get a copy per arm and seed instead.
PER_STAGE = ("screen", "train_log")


def collect_results(plan: Plan, store: Store) -> dict[str, Any]:
    """Write every results table the plan's done stages can fill, and copy the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    results_dir = store.run_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(store.run_dir)
    record: dict[str, Any] = {
        "collected": now_iso(),
        "plan": {"name": plan.name, "spec_hash": plan.spec_hash},
        "tables": {},
    }
    for table, (kind, filename) in RESULT_SOURCES.items():
        stages = [s for s in plan.stages if s.kind == kind]
        target = results_dir / f"{table}.parquet"
        if not stages:
            target.unlink(missing_ok=True)  # a table of an older plan would mislead
            continue
        parts, used, missing = [], [], []
        for s in stages:
            path = store.stage_dir(s) / filename
            if not store.verify(s, checksums=False).done:
                missing.append(s.id)
            elif path.is_file():
                t = _labelled(pq.read_table(path), s.labels)
                parts.extend([t] if table in PER_STAGE else _per_arm(t, s.labels))
                used.append({"id": s.id, "hash": s.hash, **_tracked(store, s)})
            # else: a done stage that does not make this table (a train stage without a screen)
        if not parts:
            target.unlink(missing_ok=True)
            record["tables"][table] = {"rows": 0, "stages": [], "missing": missing}
            continue
        combined = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(combined, tmp)
        os.replace(tmp, target)
        record["tables"][table] = {
            "rows": combined.num_rows,
            "sha256": sha256_file(target),
            "stages": used,
            "missing": missing,
        }
    record["report"] = _copy_report(plan, store)
    write_json_atomic(results_dir / MANIFEST, record)
    return record


def _tracked(store: Store, stage: Stage) -> dict[str, Any]:
    """The tracker run a stage was logged as, for the table's provenance (nothing without one)."""
    t = (store.read_manifest(stage) or {}).get("tracking") or {}
    return {"tracking": {"backend": t["backend"], "run_id": t["run_id"]}} if t.get("run_id") else {}


def _labelled(table, labels: dict[str, Any]):
    """The stage's labels as leading columns where its file lacks them (a train stage's screen
    and log are written without labels; the eval stages' tables carry theirs already)."""
    import pyarrow as pa

    from cpx.stages import label_type

    missing = [k for k in labels if k not in table.column_names]
    if not missing:
        return table
    arrays = [pa.array([labels[k]] * table.num_rows, type=label_type(k, labels[k])) for k in missing]
    return pa.Table.from_arrays([*arrays, *table.columns], names=[*missing, *table.column_names])


def _per_arm(table, labels: dict[str, Any]) -> list:
    """One copy of a stage's rows per arm and per replicate seed that reaches it.

    Identical work reached from two arms is one stage (arm C's checkpoint-0 eval is arm A's),
    labelled with the first arm and listing all in `labels["arms"]`; work that does not depend
    on the seed (the base model's hidden states) lists its seeds in `labels["seeds"]`. In the
    results tables each arm and seed gets the rows, so `WHERE arm = 'C'` sees its whole
    trajectory and `WHERE seed = 43` its baseline.
    """
    import pyarrow as pa

    arms = labels.get("arms") or []
    seeds = labels.get("seeds") or []
    copies = [table]
    # `arms`/`seeds` narrow to the copy's own value, so a reader that expands them (the
    # analysis does) does not count the row twice.
    for one, many, values in (("arm", "arms", arms), ("seed", "seeds", seeds)):
        if len(values) < 2 or one not in table.column_names:
            continue
        out = []
        for t0 in copies:
            for v in values:
                t = t0
                for name, value in ((one, v), (many, [v])):
                    if name in t.column_names:
                        i = t.column_names.index(name)
                        field = t.schema.field(i)
                        t = t.set_column(i, field, pa.array([value] * t.num_rows, type=field.type))
                out.append(t)
        copies = out
    return copies


def _copy_report(plan: Plan, store: Store) -> dict[str, Any] | None:
    reports = [s for s in plan.stages if s.kind == "report"]
    if not reports:
        return None
    stage = reports[-1]
    if not store.verify(stage, checksums=False).done:
        return {"id": stage.id, "hash": stage.hash, "copied": False}
    src = store.stage_dir(stage)
    dest = store.run_dir / "report"
    tmp = store.run_dir / f".report-{uuid.uuid4().hex[:8]}.tmp"
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(MANIFEST))
    old = None
    if dest.exists():
        old = store.run_dir / f".report-old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return {"id": stage.id, "hash": stage.hash, "copied": True}


def _clean_leftovers(run_dir: Path) -> None:
    """Remove collection leftovers of a run killed mid-copy."""
    for p in run_dir.glob(".report-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in (run_dir / "results").glob(".*.tmp"):
        p.unlink(missing_ok=True)
