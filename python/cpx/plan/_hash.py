"""Canonical JSON and stage hashes (docs/plan-format.md, "hash")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cpx.plan._params import PARAMS, ref_paths

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


def _refs_to_hashes(kind: str, params: dict[str, Any], refs: Mapping[str, str]) -> dict[str, Any]:
    """Params with every stage id they name replaced by that stage's hash.

    Ids are display names: a stage's hash must not change when an arm or phase is renamed,
    only when the work it depends on changes. The ids are the kind's `StageRef` fields
    (`cpx.plan._params.ref_paths`, found by walking its params type): only those paths are
    rewritten, which keeps hashing fast on plans of thousands of stages with long persona lists.
    """

    def ref(value: Any) -> Any:
        return {"stage_hash": refs[value]} if isinstance(value, str) and value in refs else value

    def rewrite(value: Any, path: tuple[str, ...]) -> Any:
        if not path:
            return ref(value)
        step, rest = path[0], path[1:]
        if step == "*":
            return [rewrite(x, rest) for x in value] if isinstance(value, list) else value
        if isinstance(value, dict) and step in value:
            return {**value, step: rewrite(value[step], rest)}
        return value

    out = params
    for path in ref_paths(PARAMS[kind]):
        out = rewrite(out, path)
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
        "params": _refs_to_hashes(kind, params, dep_hashes) if dep_hashes else params,
        "deps": sorted(dep_hashes.values()),
    }
    return sha256(canonical(body))
