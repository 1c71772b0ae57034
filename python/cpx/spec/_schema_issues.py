"""Schema errors: pydantic's validation errors as issues at the place each value was written,
and the part of a spec that does validate, for the cross-reference checks."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

import pydantic

from cpx.spec._errors import Issue, did_you_mean, show
from cpx.spec._schema import Arm, Dataset, Spec, Training
from cpx.spec._yaml import Doc, KeyPath, dotted


def _expected_for(err: Any) -> str | None:
    t, ctx = err["type"], err.get("ctx") or {}
    simple = {
        "int_type": "an integer",
        "float_type": "a number",
        "string_type": "a string",
        "bool_type": "true or false",
        "dict_type": "a mapping",
        "list_type": "a list",
        "model_type": "a mapping",
        "int_from_float": "an integer",
        "model_attributes_type": "a mapping",
        "none_required": "null",
        "finite_number": "a finite number",
    }
    if t in simple:
        return simple[t]
    if t == "greater_than":
        return f"a number > {ctx['gt']}"
    if t == "greater_than_equal":
        return f"a number >= {ctx['ge']}"
    if t == "less_than":
        return f"a number < {ctx['lt']}"
    if t == "less_than_equal":
        return f"a number <= {ctx['le']}"
    if t == "too_short":
        return f"at least {ctx.get('min_length')} item(s)"
    if t == "too_long":
        return f"at most {ctx.get('max_length')} item(s)"
    if t == "literal_error":
        return f"one of {ctx.get('expected')}"
    if t == "string_pattern_mismatch":
        if ctx.get("pattern") == r"\S":
            return "non-empty text"
        return "a name: letters, digits, '_', '.', '-', starting with a letter or '_'"
    if t == "string_too_long":
        return f"at most {ctx.get('max_length')} characters"
    return None


def _unwrap(tp: Any) -> list[Any]:
    """The concrete types inside Annotated / Optional / unions."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    return [tp]


def _fields_at(path: KeyPath) -> list[str] | None:
    """Allowed keys of the mapping at `path` in the schema (for did-you-mean on unknown keys)."""
    cands: list[Any] = [Spec]
    for part in path:
        nxt: list[Any] = []
        for c in cands:
            if isinstance(c, type) and issubclass(c, pydantic.BaseModel):
                for name, f in c.model_fields.items():
                    if part in (name, f.alias):
                        nxt.extend(_unwrap(f.annotation))
            else:
                origin, args = typing.get_origin(c), typing.get_args(c)
                if origin is dict and args:
                    nxt.extend(_unwrap(args[1]))
                elif origin is list and args:
                    nxt.extend(_unwrap(args[0]))
        cands = nxt
    for c in cands:
        if isinstance(c, type) and issubclass(c, pydantic.BaseModel):
            return [f.alias or n for n, f in c.model_fields.items()]
    return None


def schema_issues(exc: pydantic.ValidationError, doc: Doc) -> list[Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        cur, path, key_error = doc.data, [], False
        for comp in err["loc"]:
            if isinstance(cur, dict) and comp in cur:
                path.append(comp)
                cur = cur[comp]
            elif isinstance(cur, list) and isinstance(comp, int) and 0 <= comp < len(cur):
                path.append(comp)
                cur = cur[comp]
            elif comp == "[key]":
                key_error = True
        t = err["type"]
        tp = tuple(path)
        if t == "extra_forbidden":
            allowed = _fields_at(tp[:-1]) or []
            issues.append(
                Issue(
                    doc.where(tp, key=True),
                    dotted(tp),
                    f"unknown key {tp[-1]!r}",
                    expected="one of " + ", ".join(allowed) if allowed else None,
                    hint=did_you_mean(tp[-1], allowed),
                )
            )
            continue
        if t == "missing":
            missing = err["loc"][-1]
            issues.append(Issue(doc.where(tp), dotted(tp), f"missing required key {missing!r}"))
            continue
        if key_error:
            issues.append(
                Issue(
                    doc.where(tp, key=True),
                    dotted(tp),
                    "bad key",
                    expected=_expected_for(err),
                    found=show(tp[-1] if tp else None),
                )
            )
            continue
        found = err.get("input")
        hint = None
        if t == "literal_error":
            hint = did_you_mean(found, re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected"))))
        if t in ("value_error", "assertion_error"):
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            issues.append(Issue(doc.where(tp), dotted(tp), msg))
            continue
        blank = t == "string_pattern_mismatch" and isinstance(found, str) and not found.strip()
        if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            message = "out of range"
        elif t == "too_short" or blank:
            message = "empty"
        else:
            message = "wrong type" if t.endswith("_type") else "invalid value"
        expected = _expected_for(err)
        if expected is None:
            message = str(err["msg"])
        issues.append(Issue(doc.where(tp), dotted(tp), message, expected=expected, found=show(found), hint=hint))
    return issues


# ---------------------------------------------------------------- cross-references


def partial(data: dict[str, Any]) -> Spec:
    """A Spec holding only the parts that validate (None elsewhere), so that cross-reference
    checks can still run and every error is reported at once."""
    values: dict[str, Any] = {}
    for name, f in Spec.model_fields.items():
        key = f.alias or name
        if key not in data:
            values[name] = None if f.is_required() else f.get_default(call_default_factory=True)
            continue
        tp: Any = typing.Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        try:
            values[name] = pydantic.TypeAdapter(tp).validate_python(data[key], strict=True)
            continue
        except (pydantic.ValidationError, pydantic.PydanticSchemaGenerationError, TypeError):
            values[name] = None
        entries: dict[str, type[pydantic.BaseModel]] = {"arms": Arm, "datasets": Dataset, "training": Training}
        entry = entries.get(name)
        if entry is not None and isinstance(data[key], dict):
            ok = {}
            for k, v in data[key].items():
                try:
                    ok[k] = entry.model_validate(v)
                except pydantic.ValidationError:
                    pass
            values[name] = ok
    return Spec.model_construct(**values)
