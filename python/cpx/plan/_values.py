"""Shared values: large params stored once in plan.json (docs/plan-format.md, "values").

The compiler passes the large values that many stages carry (persona and question sets, the
tiny model's corpus) through `Values.share`; every stage's params then hold that one object.
Written out (plan.json, stage hashes) each occurrence becomes `{"$value": <sha256 of the
value's canonical JSON>}`, so a stage's hash covers the value's content at the cost of one
hash per value, not one per stage. Loaded, the references are replaced by the one shared
object again: `Stage.params` is always the full dict.
"""

from __future__ import annotations

from typing import Any

from cpx.plan._hash import canonical, sha256

REF = "$value"


class Values:
    """Shared values by content hash; an object held here is written as a reference wherever it appears."""

    def __init__(self, by_hash: dict[str, Any] | None = None) -> None:
        self.by_hash: dict[str, Any] = {}
        self._hash_of: dict[int, str] = {}  # id() of each held object (held, so the id stays its own)
        for h, v in (by_hash or {}).items():
            self._hold(h, v)

    def _hold(self, h: str, value: Any) -> None:
        self.by_hash[h] = value
        self._hash_of[id(value)] = h

    def share(self, value: Any) -> Any:
        """The one held object with `value`'s content (held from now on if it is new)."""
        h = sha256(canonical(value))
        if h not in self.by_hash:
            self._hold(h, value)
        return self.by_hash[h]

    def refer(self, value: Any, used: dict[str, Any] | None = None) -> Any:
        """`value` with every held object in it replaced by its reference (a copy; `value` is left
        as it is); `used` gains the values referred to, by hash."""
        if not self._hash_of:
            return value
        h = self._hash_of.get(id(value))
        if h is not None and self.by_hash[h] is value:
            if used is not None:
                used[h] = value
            return {REF: h}
        if isinstance(value, dict):
            return {k: self.refer(v, used) for k, v in value.items()}
        if isinstance(value, list):
            return [self.refer(v, used) for v in value]
        return value

    def resolve(self, value: Any, where: str) -> Any:
        """`value` (JSON just read, changed in place) with every reference replaced by the held object.

        A reference to a value the table lacks is a KeyError naming `where`.
        """
        if isinstance(value, dict):
            if len(value) == 1 and REF in value:
                try:
                    return self.by_hash[value[REF]]
                except (KeyError, TypeError):
                    raise KeyError(f"{where}: refers to value {value[REF]!r}, which the plan's values lack") from None
            for k, v in value.items():
                if isinstance(v, (dict, list)):
                    value[k] = self.resolve(v, where)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (dict, list)):
                    value[i] = self.resolve(v, where)
        return value
