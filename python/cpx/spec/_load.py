"""Loading a spec: files, `extends:`, `-s` overrides, then the schema (`_schema_issues`) and the
cross-reference checks (`_checks`).

Every problem is collected and raised at once as a SpecError whose issues carry the file,
line and column where the offending value (or key) was written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from cpx.spec._checks import Checker
from cpx.spec._errors import Issue, Location, SpecError, did_you_mean, show
from cpx.spec._schema import TRAINING_DEFAULTS, Phase, Spec
from cpx.spec._schema_issues import partial, schema_issues
from cpx.spec._yaml import Doc, KeyPath, _Loader, dotted, parse_yaml, read_text

CLI = "<command line>"


@dataclass
class Loaded:
    """A validated spec with its positions, and the merged training config of every phase."""

    spec: Spec
    name: str
    file: Path
    doc: Doc
    files: list[Path] = field(default_factory=list)  # the spec and every file it extends

    def where(self, path: KeyPath) -> Location:
        return self.doc.where(path)

    def train_config(self, phase: Phase) -> dict[str, Any]:
        """Built-in defaults ← `training.defaults` ← the phase's config ← the phase's overrides."""
        cfg = _deep_merge({}, TRAINING_DEFAULTS)
        layers = [self.spec.training.get("defaults")]
        layers.append(self.spec.training.get(phase.train or phase.data or ""))
        layers.append(phase.overrides)
        for layer in layers:
            if layer is not None:
                cfg = _deep_merge(cfg, layer.model_dump(exclude_none=True))
        return cfg


# ---------------------------------------------------------------- files and extends


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


def _load_file(path: Path, stack: list[Path], at: Location | None) -> tuple[Doc, list[Path]]:
    text = read_text(path, at)
    doc = parse_yaml(text, str(path))
    if doc.data is None:
        raise SpecError(
            [
                Issue(
                    at or Location(str(path), 1, 1),
                    "",
                    "the spec is empty",
                    expected="a mapping of keys (seeds, model, personas, ...)",
                )
            ]
        )
    if not isinstance(doc.data, dict):
        raise SpecError(
            [Issue(doc.where(()), "", "a spec must be a mapping of keys", expected="a mapping", found=show(doc.data))]
        )
    files = [path]
    parent = doc.data.get("extends")
    if parent is None:
        return doc, files
    where = doc.where(("extends",))
    if not isinstance(parent, str) or not parent.strip():
        raise SpecError([Issue(where, "extends", "bad extends", expected="a file name", found=show(parent))])
    target = Path(os.path.normpath(path.parent / parent))
    if target.resolve() in stack:
        chain = " -> ".join(p.name for p in [*stack, target.resolve()])
        raise SpecError([Issue(where, "extends", f"circular extends: {chain}")])
    if not target.exists():
        near = [p.name for p in target.parent.glob("*.y*ml")] if target.parent.is_dir() else []
        raise SpecError(
            [
                Issue(
                    where,
                    "extends",
                    f"extended spec {parent!r} does not exist",
                    hint=did_you_mean(Path(parent).name, near),
                )
            ]
        )
    base, base_files = _load_file(target, [*stack, target.resolve()], where)
    merged = Doc(_deep_merge(base.data, doc.data), doc.file)
    merged.marks = {**base.marks, **doc.marks}
    merged.key_marks = {**base.key_marks, **doc.key_marks}
    merged.data.pop("extends", None)
    return merged, base_files + files


def _resolve_banks(doc: Doc, issues: list[Issue]) -> list[KeyPath]:
    """Replace bank file names (personas, questions.eval/data) by the file's contents.

    Returns the paths of banks whose file could not be read (already reported)."""
    failed: list[KeyPath] = []
    data = doc.data
    slots: list[tuple[KeyPath, str]] = [(("personas",), "personas")]
    if isinstance(data.get("questions"), dict):
        slots += [(("questions", "eval"), "questions"), (("questions", "data"), "questions")]
    for path, what in slots:
        parent = data
        for p in path[:-1]:
            parent = parent[p]
        value = parent.get(path[-1])
        if not isinstance(value, str):
            continue
        where = doc.where(path)
        base = Path.cwd() if where.file == CLI else Path(where.file).parent
        file = base / value
        try:
            text = read_text(file, where, what=f"{what} bank", shown=value)
        except SpecError as e:
            issues.extend(e.issues)
            failed.append(path)
            continue
        if file.suffix in (".yaml", ".yml", ".json"):
            try:
                sub = parse_yaml(text, str(file))
            except SpecError as e:
                issues.extend(e.issues)
                failed.append(path)
                continue
            parent[path[-1]] = sub.data
            for p, loc in sub.marks.items():
                doc.marks[path + p] = loc
            for p, loc in sub.key_marks.items():
                doc.key_marks[path + p] = loc
        else:
            if what == "personas":
                issues.append(
                    Issue(
                        where,
                        dotted(path),
                        "a persona bank file must be YAML",
                        expected="a .yaml file mapping names to prompts",
                        found=repr(value),
                    )
                )
                failed.append(path)
                continue
            lines: list[str] = []
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    doc.marks[path + (len(lines),)] = Location(str(file), n, 1)
                    lines.append(line.strip())
            doc.marks[path] = Location(str(file), 1, 1)
            parent[path[-1]] = lines
    return failed


def _apply_override(doc: Doc, item: str, issues: list[Issue]) -> None:
    where = Location(f"{CLI} -s {item}")
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        issues.append(Issue(where, "", "bad -s override", expected="KEY=VALUE, e.g. eval.sampler.temperature=0.7"))
        return
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if key.strip() == "extends":
        issues.append(Issue(where, "extends", "extends cannot be set with -s", hint="write it in the spec"))
        return
    parts: list[Any] = key.strip().split(".")
    if any(not p.strip() for p in parts):
        issues.append(
            Issue(
                where, "", f"empty key in {key.strip()!r}", expected="dot-separated keys, e.g. eval.sampler.temperature"
            )
        )
        return
    cur = doc.data
    created: list[tuple[Any, ...]] = []
    path: list[Any] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not re.fullmatch(r"-?\d+", part) or not -len(cur) <= int(part) < len(cur):
                issues.append(
                    Issue(
                        where,
                        dotted(tuple(path)),
                        f"no item {part!r} in this list",
                        expected=f"an index from 0 to {len(cur) - 1}",
                    )
                )
                return
            part = int(part) % len(cur)
        elif not isinstance(cur, dict):
            issues.append(Issue(where, dotted(tuple(path)), f"cannot set {part!r} inside {show(cur)}"))
            return
        path.append(part)
        if last:
            cur[part] = value
        else:
            if isinstance(cur, dict) and not isinstance(cur.get(part), (dict, list)):
                cur[part] = {}
                created.append(tuple(path))
            cur = cur[part]
    n = len(path)
    for table in (doc.marks, doc.key_marks):
        for p in [p for p in table if p[:n] == tuple(path)]:
            del table[p]
    # Whatever the override wrote (the keys it created on the way included) is blamed on it.
    for p in (*created, tuple(path)):
        doc.marks[p] = where
        doc.key_marks[p] = where


# ---------------------------------------------------------------- entry point


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Loaded:
    """Load, resolve and validate a spec file; raise SpecError listing every problem."""
    path = Path(path)
    doc, files = _load_file(path, [path.resolve()], None)
    issues: list[Issue] = []
    for item in overrides:
        _apply_override(doc, item, issues)
    for key in [k for k in doc.data if isinstance(k, str) and k.startswith("x-")]:
        del doc.data[key]  # x-* keys hold YAML anchors for reuse; they are not part of the spec
    failed = _resolve_banks(doc, issues)
    try:
        spec = Spec.model_validate(doc.data)
    except pydantic.ValidationError as e:
        # A bank whose file could not be read was reported already; its value is still a name.
        issues += [
            i
            for i in schema_issues(e, doc)
            if not any(i.path == dotted(f) or i.path.startswith(dotted(f) + ".") for f in failed)
        ]
        spec = partial(doc.data)
    checker = Checker(spec, doc)
    if not failed:
        issues += checker.run()
    if issues:
        raise SpecError(issues)
    name = spec.name or re.sub(r"[^A-Za-z0-9_.\-]", "_", path.stem)
    return Loaded(spec=spec, name=name, file=path, doc=doc, files=files)
