"""The spec's checks beyond the schema: references between sections, duplicates, layers, each
arm's phases and steering, cycles of phases; and the arm and layer rules the compiler shares."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from cpx.spec._errors import Issue, did_you_mean
from cpx.spec._schema import Arm, Spec
from cpx.spec._yaml import Doc, KeyPath, dotted

RESERVED_ARMS = ("base",)


class Checker:
    """Every cross-reference problem of a (possibly partial) spec, as issues."""

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
        for check in (self._personas, self._markers, self._datasets, self._layers):
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

    def _markers(self) -> None:
        """Two markers with one text would be one marker counted twice."""
        first: dict[str, str] = {}
        for name, text in self.spec.markers.items():
            if text in first:
                self.issues.append(
                    Issue(
                        self.doc.where(("markers", name)),
                        f"markers.{name}",
                        f"marker {name!r} has the same text as marker {first[text]!r} ({text!r})",
                    )
                )
            first.setdefault(text, name)

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
