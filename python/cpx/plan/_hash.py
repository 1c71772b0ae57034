"""Canonical JSON and stage hashes (docs/plan-format.md, "hash")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Bump a kind's version when its runner's output changes for the same params: every stage of
# that kind (and everything downstream) then re-hashes and re-runs.
CODE_VERSIONS: dict[str, int] = {
    "generate": 1,
    "dataset": 1,
    "train": 1,
    "sample": 1,
    "represent": 1,
    "scan": 1,
    "analyze": 1,
    "report": 1,
}


def canonical(value: Any) -> str:
    """JSON with sorted keys, no whitespace; floats as `repr` (json's default)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _refs_to_hashes(params: dict[str, Any], refs: Mapping[str, str]) -> dict[str, Any]:
    """Params with every stage id they name replaced by that stage's hash.

    Ids are display names: a stage's hash must not change when an arm or phase is renamed,
    only when the work it depends on changes. Ids appear in params in four places only
    (docs/plan-format.md): a chain's adapters (`model.adapters[].stage`), a train stage's
    `dataset`, a steered stage's `steer.direction.represent`, and analyze's
    `points[].scan|represent`. Rewriting just those keeps hashing fast on plans of thousands
    of stages with long persona lists.
    """

    def ref(value: Any) -> Any:
        return {"stage_hash": refs[value]} if isinstance(value, str) and value in refs else value

    out = dict(params)
    model = out.get("model")
    if isinstance(model, dict) and model.get("adapters"):
        out["model"] = {**model, "adapters": [{**a, "stage": ref(a.get("stage"))} for a in model["adapters"]]}
    if "dataset" in out:
        out["dataset"] = ref(out["dataset"])
    steer = out.get("steer")
    if isinstance(steer, dict) and isinstance(steer.get("direction"), dict):
        out["steer"] = {
            **steer,
            "direction": {**steer["direction"], "represent": ref(steer["direction"].get("represent"))},
        }
    if isinstance(out.get("points"), list):
        out["points"] = [{**p, "scan": ref(p.get("scan")), "represent": ref(p.get("represent"))} for p in out["points"]]
    return out


def _located_by_content(params: dict[str, Any]) -> dict[str, Any]:
    """Params with a local model's folder (`model.base.id` of a `path` ModelRef) left out:
    its `fingerprint` stands for the content, so the same model in another folder (another
    machine) gives the same hashes."""
    model = params.get("model")
    base = model.get("base") if isinstance(model, dict) else None
    if not (
        isinstance(model, dict) and isinstance(base, dict) and base.get("kind") == "path" and base.get("fingerprint")
    ):
        return params
    return {**params, "model": {**model, "base": {k: v for k, v in base.items() if k != "id"}}}


def stage_hash(kind: str, params: dict[str, Any], dep_hashes: Mapping[str, str]) -> str:
    """sha256 over kind, the kind's code version, canonical params (a local model by its
    fingerprint, not its folder) and sorted dep hashes."""
    params = _located_by_content(params)
    body = {
        "kind": kind,
        "version": CODE_VERSIONS[kind],
        "params": _refs_to_hashes(params, dep_hashes) if dep_hashes else params,
        "deps": sorted(dep_hashes.values()),
    }
    return sha256(canonical(body))
