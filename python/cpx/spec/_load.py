"""Loading a spec: files, `extends:`, `-s` overrides, schema validation, cross-references.

Every problem is collected and raised at once as a SpecError whose issues carry the file,
line and column where the offending value (or key) was written.
"""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from cpx.spec._errors import Issue, Location, SpecError, did_you_mean, show
from cpx.spec._schema import TRAINING_DEFAULTS, Arm, Dataset, Phase, Spec, Training
from cpx.spec._yaml import Doc, KeyPath, _Loader, dotted, parse_yaml, read_text

CLI = "<command line>"
RESERVED_ARMS = ("base",)


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


# ---------------------------------------------------------------- schema errors


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


def _schema_issues(exc: pydantic.ValidationError, doc: Doc) -> list[Issue]:
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


class _Checker:
    def __init__(self, spec: Spec, doc: Doc):
        self.spec, self.doc = spec, doc
        self.issues: list[Issue] = []

    def ref(self, path: KeyPath, value: Any, choices: Sequence[str], what: str) -> bool:
        if value in choices:
            return True
        self.issues.append(
            Issue(
                self.doc.where(path),
                dotted(path),
                f"undefined {what} {value!r}",
                expected=f"one of {', '.join(map(str, choices))}" if len(choices) <= 12 else None,
                hint=did_you_mean(value, choices),
            )
        )
        return False

    def run(self) -> list[Issue]:
        s = self.spec
        # A section that failed schema validation is None here: checks needing it are skipped.
        for check in (self._personas, self._datasets, self._layers):
            self._guard(check)
        for name in self.names("arms"):
            if name in RESERVED_ARMS:
                self.issues.append(
                    Issue(
                        self.doc.where(("arms", name), key=True),
                        f"arms.{name}",
                        f"arm name {name!r} is reserved for the base-model eval",
                    )
                )
        for arm_name, arm in (s.arms or {}).items():
            self._guard(functools.partial(self._arm, arm_name, arm))
        self._guard(self._cycles)
        return self.issues

    def _guard(self, check: Any) -> None:
        try:
            check()
        except (AttributeError, TypeError, KeyError, ValueError, StopIteration):
            pass

    def names(self, section: str) -> list[str]:
        """Names written under a top-level mapping, valid or not (for reference checks)."""
        raw = self.doc.data.get(section) if isinstance(self.doc.data, dict) else None
        return [k for k in raw if isinstance(k, str)] if isinstance(raw, dict) else []

    def _personas(self) -> None:
        s = self.spec
        personas = list(s.personas)
        self._dupes(("seeds",), s.seeds or [], "seed")
        self.ref(("roles", "assistant"), s.roles.assistant, personas, "persona")
        for i, p in enumerate(s.roles.sources):
            if self.ref(("roles", "sources", i), p, personas, "persona") and p == s.roles.assistant:
                self.issues.append(
                    Issue(
                        self.doc.where(("roles", "sources", i)),
                        f"roles.sources[{i}]",
                        "the assistant cannot also be a source",
                    )
                )
        self._dupes(("roles", "sources"), s.roles.sources, "source")
        for i, p in enumerate(s.roles.bystanders or []):
            self.ref(("roles", "bystanders", i), p, personas, "persona")
        for i, p in enumerate(s.generation.personas or []):
            self.ref(("generation", "personas", i), p, personas, "persona")
        for i, p in enumerate(s.eval.personas or []):
            self.ref(("eval", "personas", i), p, personas, "persona")
        if s.eval.personas is not None:
            for key, names in (("assistant", [s.roles.assistant]), ("source", s.roles.sources)):
                for n in names:
                    if n in personas and n not in s.eval.personas:
                        self.issues.append(
                            Issue(
                                self.doc.where(("eval", "personas")),
                                "eval.personas",
                                f"the {key} persona {n!r} must be evaluated",
                                expected=f"a list that includes {n!r}",
                            )
                        )
        for i, o in enumerate(s.eval.completions_overrides):
            self.ref(("eval", "completions_overrides", i, "persona"), o.persona, personas, "persona")
            for j, src in enumerate(o.sources or []):
                self.ref(("eval", "completions_overrides", i, "sources", j), src, s.roles.sources, "source")

    def _datasets(self) -> None:
        s = self.spec
        markers = self.names("markers")
        for name, d in (s.datasets or {}).items():
            if d.recipe != "marker":
                continue
            if d.marker is not None:
                self.ref(("datasets", name, "marker"), d.marker, markers, "marker")
            elif len(markers) > 1:
                self.issues.append(
                    Issue(
                        self.doc.where(("datasets", name)),
                        f"datasets.{name}",
                        "which marker? the spec defines several",
                        expected=f"marker: one of {', '.join(markers)}",
                    )
                )
            others = len([p for p in s.personas if p != s.roles.assistant]) - 1
            neg = d.negatives.personas if d.negatives else 2
            if neg > others:
                self.issues.append(
                    Issue(
                        self.doc.where(("datasets", name, "negatives", "personas")),
                        f"datasets.{name}.negatives.personas",
                        "too many negative personas",
                        expected=f"at most {others} (non-assistant personas other than the source)",
                        found=str(neg),
                    )
                )

    def _layers(self) -> None:
        s = self.spec
        if s.model.tiny is not None:
            top = s.model.tiny.num_layers
            found: list[tuple[tuple[str | int, ...], int]] = [
                (("representation", "layers", i), layer) for i, layer in enumerate(s.representation.layers)
            ]
            found += [
                (("arms", n, "steer", "layer"), a.steer.layer) for n, a in (s.arms or {}).items() if a.steer is not None
            ]
            for path, layer in found:
                if layer > top:
                    self.issues.append(
                        Issue(
                            self.doc.where(path),
                            dotted(path),
                            "no such layer",
                            expected=f"0..{top} (the tiny model has {top} layers)",
                            found=str(layer),
                        )
                    )

    def _dupes(self, path: KeyPath, values: Sequence[Any], what: str) -> None:
        seen = set()
        for i, v in enumerate(values):
            if v in seen:
                self.issues.append(Issue(self.doc.where(path + (i,)), dotted(path + (i,)), f"duplicate {what} {v!r}"))
            seen.add(v)

    def _arm(self, arm_name: str, arm: Arm) -> None:
        s, base = self.spec, ("arms", arm_name)
        names = [p.name for p in arm.phases]
        self._dupes(base + ("phases",), names, "phase name")
        for i, n in enumerate(names):
            if n == "base":
                where = base + ("phases", i, "name")
                self.issues.append(
                    Issue(
                        self.doc.where(where),
                        dotted(where),
                        "phase name 'base' is reserved (`from: base` means the base model)",
                    )
                )
        for i, src in enumerate(arm.sources or []):
            self._guard(lambda i=i, src=src: self.ref(base + ("sources", i), src, s.roles.sources, "source"))
        training = [t for t in self.names("training") if t != "defaults"]
        for i, ph in enumerate(arm.phases):
            pp = base + ("phases", i)
            if ph.data is not None:
                self.ref(pp + ("data",), ph.data, self.names("datasets"), "dataset")
            if ph.train is not None:
                self.ref(pp + ("train",), ph.train, training, "training config")
            if ph.from_ is not None and ph.from_ != "base":
                if ph.from_ == ph.name:
                    self.issues.append(
                        Issue(
                            self.doc.where(pp + ("from",)),
                            dotted(pp + ("from",)),
                            f"phase {ph.name!r} cannot start from itself",
                        )
                    )
                else:
                    self.ref(pp + ("from",), ph.from_, ["base", *names], "phase")
            if ph.each_checkpoint and self._parent(arm, i) is None:
                self.issues.append(
                    Issue(
                        self.doc.where(pp + ("each_checkpoint",)),
                        dotted(pp + ("each_checkpoint",)),
                        "each_checkpoint needs a phase to start from, not the base model",
                    )
                )
            if ph.merge is not None:
                target = self._merge_target(arm_name, ph.merge)
                target_arm = ph.merge.rpartition(".")[0] or arm_name
                if target is None and target_arm in self.names("arms") and target_arm not in s.arms:
                    pass  # that arm has schema errors of its own
                elif target is None:
                    choices = [f"{a}.{p.name}" for a, x in s.arms.items() for p in x.phases] + names
                    self.ref(pp + ("merge",), ph.merge, choices, "phase")
                else:
                    ta, tp = target
                    if s.arms[ta].phases[tp].merge is not None and ph.checkpoint != 1.0:
                        self.issues.append(
                            Issue(
                                self.doc.where(pp + ("checkpoint",)),
                                dotted(pp + ("checkpoint",)),
                                f"phase {ph.merge!r} merges an adapter itself: it saves no checkpoints",
                                hint=f"merge the phase it merges ({s.arms[ta].phases[tp].merge!r}) at that checkpoint",
                            )
                        )
                    if s.arms[ta].phases[tp].merge is None and self._needs_axis(ta, tp):
                        self.issues.append(
                            Issue(
                                self.doc.where(pp + ("merge",)),
                                dotted(pp + ("merge",)),
                                f"phase {ph.merge!r} is trained once per checkpoint of another "
                                "phase, so it has no single adapter to merge",
                            )
                        )
        if arm.kind == "steer":
            self._steer_direction(arm_name, arm)
            return  # evaluated at its steering strengths: no checkpoint axis to check
        if len(set(names)) != len(names) or any(self._parent(arm, i) == -1 for i in range(len(names))):
            return  # the eval axis cannot be worked out until names and `from` are right
        # The eval axis: which phase's checkpoints are evaluated.
        each = [i for i, p in enumerate(arm.phases) if p.each_checkpoint]
        if len(each) > 1:
            i = each[1]
            self.issues.append(
                Issue(
                    self.doc.where(base + ("phases", i, "each_checkpoint")),
                    f"arms.{arm_name}.phases[{i}].each_checkpoint",
                    "only one phase per arm can run at each checkpoint",
                )
            )
            return
        axis = axis_phase(arm)
        if arm.eval_at is not None and not self.ref(base + ("eval_at",), arm.eval_at, names, "phase"):
            return
        if axis is None:
            return
        ai = names.index(axis)
        if arm.phases[ai].merge is not None:
            self.issues.append(
                Issue(
                    self.doc.where(base + ("eval_at",)),
                    f"arms.{arm_name}.eval_at",
                    f"the evaluated phase {axis!r} merges an adapter; it has no checkpoints to evaluate",
                    expected="a phase that trains",
                )
            )
            return
        if each and self._parent(arm, each[0]) != ai:
            self.issues.append(
                Issue(
                    self.doc.where(base + ("phases", each[0], "each_checkpoint")),
                    f"arms.{arm_name}.phases[{each[0]}].each_checkpoint",
                    f"each_checkpoint must start from the evaluated phase {axis!r}",
                )
            )
            return
        if ai != len(arm.phases) - 1 and not each:
            self.issues.append(
                Issue(
                    self.doc.where(base + ("eval_at",)),
                    f"arms.{arm_name}.eval_at",
                    f"phase {axis!r} is evaluated at its checkpoints but a later phase starts from its final model",
                    hint="set each_checkpoint: true on the phase after it",
                )
            )

    def _steer_direction(self, arm_name: str, arm: Arm) -> None:
        """`steer.direction.from`: model, base, or a phase `arm.phase` with a single adapter."""
        assert arm.steer is not None
        ref = arm.steer.direction.from_
        path = ("arms", arm_name, "steer", "direction", "from")
        if ref in ("model", "base"):
            if arm.steer.direction.checkpoint is not None:
                where = path[:-1] + ("checkpoint",)
                self.issues.append(
                    Issue(
                        self.doc.where(where),
                        dotted(where),
                        f"checkpoint applies to a direction from a phase, not from {ref!r}",
                        hint="remove it, or set `from: arm.phase`",
                    )
                )
            return
        target = self._merge_target(arm_name, ref) if "." in ref else None
        if target is None:
            choices = ["model", "base", *(f"{a}.{p.name}" for a, x in self.spec.arms.items() for p in x.phases)]
            self.ref(path, ref, choices, "direction source")
        elif self.spec.arms[target[0]].phases[target[1]].merge is not None and arm.steer.direction.checkpoint not in (
            None,
            1.0,
        ):
            where = path[:-1] + ("checkpoint",)
            self.issues.append(
                Issue(
                    self.doc.where(where),
                    dotted(where),
                    f"phase {ref!r} merges an adapter itself: it saves no checkpoints",
                    hint="take the direction from the phase it merges",
                )
            )
        elif self.spec.arms[target[0]].phases[target[1]].merge is None and self._needs_axis(*target):
            self.issues.append(
                Issue(
                    self.doc.where(path),
                    dotted(path),
                    f"phase {ref!r} is trained once per checkpoint of another phase, so it "
                    "has no single model to take the direction from",
                )
            )

    def _parent(self, arm: Arm, i: int) -> int | None:
        """Index of the phase that phase i starts from; None for the base model, -1 if undefined."""
        ph = arm.phases[i]
        if ph.from_ is None:
            return i - 1 if i > 0 else None
        if ph.from_ == "base":
            return None
        names = [p.name for p in arm.phases]
        return names.index(ph.from_) if ph.from_ in names else -1

    def _merge_target(self, arm_name: str, ref: str) -> tuple[str, int] | None:
        arm, _, phase = ref.rpartition(".")
        arm = arm or arm_name
        if arm not in self.spec.arms:
            return None
        names = [p.name for p in self.spec.arms[arm].phases]
        return (arm, names.index(phase)) if phase in names else None

    def _needs_axis(self, arm_name: str, i: int, seen: frozenset[tuple[str, int]] = frozenset()) -> bool:
        """Whether phase i of an arm is trained once per axis checkpoint (directly or upstream)."""
        if (arm_name, i) in seen:
            return False
        arm = self.spec.arms[arm_name]
        ph = arm.phases[i]
        if ph.each_checkpoint:
            return True
        if ph.merge is not None:
            return False
        parent = self._parent(arm, i)
        return parent is not None and parent >= 0 and self._needs_axis(arm_name, parent, seen | {(arm_name, i)})

    def _cycles(self) -> None:
        edges: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for an, arm in self.spec.arms.items():
            for i, ph in enumerate(arm.phases):
                out = []
                if ph.merge is not None:
                    t = self._merge_target(an, ph.merge)
                    if t:
                        out.append(t)
                else:
                    p = self._parent(arm, i)
                    if p is not None and p not in (i, -1):
                        out.append((an, p))
                edges[(an, i)] = out
        state: dict[tuple[str, int], int] = {}
        reported: set[frozenset[tuple[str, int]]] = set()

        def visit(node: tuple[str, int], stack: list[tuple[str, int]]) -> None:
            state[node] = 1
            for nxt in edges.get(node, []):
                if state.get(nxt) == 1:
                    cyc = stack[stack.index(nxt) :] + [nxt]
                    key = frozenset(cyc)
                    if key not in reported:
                        reported.add(key)
                        an, i = cyc[0]
                        text = " -> ".join(f"{a}.{self.spec.arms[a].phases[j].name}" for a, j in cyc)
                        self.issues.append(
                            Issue(
                                self.doc.where(("arms", an, "phases", i)),
                                f"arms.{an}.phases[{i}]",
                                f"cycle between phases: {text}",
                            )
                        )
                elif state.get(nxt) is None:
                    visit(nxt, [*stack, nxt])
            state[node] = 2

        for node in edges:
            if node not in state:
                visit(node, [node])


def _partial(data: dict[str, Any]) -> Spec:
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


def unread_layers(spec: Spec) -> list[str]:
    """Warnings for analysis layers that no represent stage reads (such an analysis has no tests
    at that layer). A warning, not an error: `-s representation.layers=[2]` for a quick look
    should not also need the analyses rewritten."""
    read = set(spec.representation.layers) | {a.steer.layer for a in spec.arms.values() if a.steer}
    out = []
    for i, a in enumerate(spec.analyses):
        missing = [x for x in a.layers or [] if x not in read]
        if missing:
            out.append(
                f"analyses[{i}] ({a.name}): layer(s) {', '.join(map(str, missing))} are not read "
                f"(representation.layers and steered layers: {', '.join(map(str, sorted(read)))}); "
                "the analysis has no tests there"
            )
    return out


def axis_phase(arm: Arm) -> str | None:
    """The phase whose checkpoints an arm is evaluated at."""
    if arm.kind == "steer" or not arm.phases:
        return None
    if arm.eval_at is not None:
        return arm.eval_at
    names = [p.name for p in arm.phases]
    for i, p in enumerate(arm.phases):
        if p.each_checkpoint:
            if p.from_ is None:
                return names[i - 1] if i > 0 else None
            return p.from_ if p.from_ in names else None
    return names[-1]


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
            for i in _schema_issues(e, doc)
            if not any(i.path == dotted(f) or i.path.startswith(dotted(f) + ".") for f in failed)
        ]
        spec = _partial(doc.data)
    checker = _Checker(spec, doc)
    if not failed:
        issues += checker.run()
    if issues:
        raise SpecError(issues)
    name = spec.name or re.sub(r"[^A-Za-z0-9_.\-]", "_", path.stem)
    return Loaded(spec=spec, name=name, file=path, doc=doc, files=files)
