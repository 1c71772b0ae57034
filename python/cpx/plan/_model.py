"""Plan and Stage: the in-memory form of plan.json (docs/plan-format.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.plan._values import Values

PLAN_FORMAT = 2  # 2: large shared values stored once, under `values`
STAGE_KINDS = ("generate", "dataset", "train", "sample", "represent", "scan", "analyze", "report")


class PlanError(CpxError):
    """A plan.json that cannot be read or is inconsistent."""


@dataclass(frozen=True)
class Stage:
    id: str
    kind: str
    hash: str
    deps: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy costs seconds on plans of thousands of stages.
        return {
            "id": self.id,
            "kind": self.kind,
            "hash": self.hash,
            "deps": list(self.deps),
            "params": self.params,
            "labels": self.labels,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stage:
        return cls(
            id=d["id"],
            kind=d["kind"],
            hash=d["hash"],
            deps=tuple(d.get("deps", ())),
            params=d.get("params", {}),
            labels=d.get("labels", {}),
        )


@dataclass
class Plan:
    name: str
    spec: dict[str, Any]
    spec_hash: str
    stages: list[Stage]
    # The large values the stages' params share (cpx.plan._values); a stage's params hold the objects.
    values: Values = field(default_factory=Values, repr=False, compare=False)

    def by_id(self) -> dict[str, Stage]:
        return {s.id: s for s in self.stages}

    def to_json(self) -> dict[str, Any]:
        """plan.json's content: each shared value once under `values`, referred to from the stages' params."""
        used: dict[str, Any] = {}
        stages = [{**s.to_json(), "params": self.values.refer(s.params, used)} for s in self.stages]
        return {
            "format": PLAN_FORMAT,
            "name": self.name,
            "spec": self.spec,
            "spec_hash": self.spec_hash,
            "values": used,
            "stages": stages,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write plan.json atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # One stage a line: readable with grep and diff, and written by json's C encoder
        # (indent= switches to the pure-Python one, 10x slower on large plans).
        d = self.to_json()
        head = {k: v for k, v in d.items() if k != "stages"}
        lines = [json.dumps(head)[:-1] + ', "stages": [']
        lines.append(",\n".join(json.dumps(s) for s in d["stages"]))
        lines.append("]}\n")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"{path}: no plan here; run `cpx compile SPEC` first") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PlanError(f"{path}: not a valid plan.json ({e})") from None
        if d.get("format") != PLAN_FORMAT:
            raise PlanError(
                f"{path}: plan format {d.get('format')!r}, this cpx reads {PLAN_FORMAT}; "
                "compile the spec again (`cpx compile SPEC`)"
            )
        # The references are replaced by the one shared object each: nothing is copied per stage.
        values = Values(d.get("values", {}))
        try:
            for s in d["stages"]:
                s["params"] = values.resolve(s.get("params", {}), f"stage {s.get('id')!r}")
        except KeyError as e:
            raise PlanError(f"{path}: {e.args[0]}") from None
        plan = cls(
            name=d["name"],
            spec=d["spec"],
            spec_hash=d["spec_hash"],
            stages=[Stage.from_json(s) for s in d["stages"]],
            values=values,
        )
        plan.check()
        return plan

    def check(self) -> None:
        """Ids unique, kinds known, deps defined and listed before their users."""
        seen: set[str] = set()
        for s in self.stages:
            if s.id in seen:
                raise PlanError(f"stage id {s.id!r} appears twice")
            if s.kind not in STAGE_KINDS:
                raise PlanError(f"stage {s.id!r}: unknown kind {s.kind!r}")
            for d in s.deps:
                if d not in seen:
                    raise PlanError(f"stage {s.id!r}: dependency {d!r} is not defined before it")
            seen.add(s.id)
