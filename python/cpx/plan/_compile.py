"""Expansion: a validated spec becomes a plan of content-hashed stages.

Per seed: one `generate` stage, the datasets it feeds, the training phases of every arm for
every source, and at every eval point (arm, source, seed, checkpoint) a `sample`, a `scan` and
a `represent` stage; then one `analyze` and one `report`. A steer arm's eval points are
(arm, source, seed, alpha) instead: its model sampled and read with the `steer` param, whose
direction comes from a `represent` stage of the unsteered (or base) model.

Identical work reached from two arms (same kind, params and inputs) is one stage: the first id
it was reached under is kept, and `labels.arms` lists every arm that uses it. Work that does not
depend on the replicate seed (a fixed generation or dataset seed, the base model's hidden
states) is one stage too, and `labels.seeds` lists the seeds that use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cpx.plan._hash import canonical, sha256, stage_hash
from cpx.plan._model import Plan, Stage
from cpx.plan._values import Values
from cpx.spec import Arm, Issue, Loaded, Phase, SpecError, axis_phase, dotted

_DISPLAY_KEYS = ("name", "description")


def fmt_ckpt(c: float) -> str:
    """A checkpoint fraction as written in ids and checkpoint folders (`format(c, "g")`)."""
    return format(c, "g")


def spec_json(loaded: Loaded) -> dict[str, Any]:
    """The resolved spec as plain JSON (defaults filled in, `extends` applied)."""
    d = loaded.spec.model_dump(mode="json", by_alias=True, exclude={"extends"})
    d["name"] = loaded.name
    power = d.get("power")
    if power and power.get("from_run") and not Path(power["from_run"]).is_absolute():
        # Written relative to the spec; the report stage reads it from the plan, elsewhere.
        power["from_run"] = str((Path(loaded.file).parent / power["from_run"]).resolve())
    return d


def spec_hash(spec: dict[str, Any]) -> str:
    """Hash of the resolved spec; the display name and description do not count."""
    return sha256(canonical({k: v for k, v in spec.items() if k not in _DISPLAY_KEYS}))


class _Compiler:
    def __init__(self, loaded: Loaded):
        self.L = loaded
        self.s = s = loaded.spec
        self.stages: list[Stage] = []
        self.by_hash: dict[str, Stage] = {}
        self.hash_of: dict[str, str] = {}
        self.issues: list[Issue] = []
        self.memo: dict[tuple[Any, ...], Any] = {}
        # Persona and question sets and the tiny model's corpus: one object each, stored once.
        self.values = Values()
        self.model = self._model_ref()
        # Mappings are unordered in the spec's meaning (key order changes no hash): personas and
        # markers appear in params sorted by name.
        self.persona = {n: {"name": n, "prompt": s.personas[n]} for n in sorted(s.personas)}
        self.assistant = s.roles.assistant
        self.eval_q = self.values.share(_questions("eval", s.questions.eval))
        self.data_q = self.values.share(_questions("data", s.questions.data))
        self.markers = [s.markers[k] for k in sorted(s.markers)]
        self.match = s.match.model_dump()
        self.points: list[dict[str, Any]] = []
        self.analysis_deps: list[str] = []

    # ------------------------------------------------------------ stages

    def add(
        self, kind: str, sid: str, params: dict[str, Any], deps: list[str], labels: dict[str, Any], join: bool = True
    ) -> str:
        """A stage, or the identical one already emitted (whose `arms` and `seeds` labels then gain
        this one's arm and seed, unless `join` is false: the caller only reads its outputs)."""
        deps = list(dict.fromkeys(deps))
        # Hashed with each shared value as its reference: its content hash, computed once.
        h = stage_hash(kind, self.values.refer(params), {d: self.hash_of[d] for d in deps})
        old = self.by_hash.get(h)
        if old is not None and not join:
            return old.id
        if old is not None:
            arms = old.labels.setdefault("arms", [])
            if labels.get("arm") is not None and labels["arm"] not in arms:
                arms.append(labels["arm"])
                arms.sort()
            seed = labels.get("seed")
            if seed is not None and old.labels.get("seed") is not None and seed != old.labels["seed"]:
                # Work that does not depend on the replicate seed (fixed-seed data, the base model's
                # hidden states) is one stage; `seeds` lists every seed that uses it.
                seeds = old.labels.setdefault("seeds", [old.labels["seed"]])
                if seed not in seeds:
                    seeds.append(seed)
                    seeds.sort()
            return old.id
        if sid in self.hash_of:  # same display id, different work: keep ids unique
            n = 2
            while f"{sid}~{n}" in self.hash_of:
                n += 1
            sid = f"{sid}~{n}"
        full = {"arm": None, "source": None, "seed": None, "checkpoint": None, **labels}
        if full["arm"] is not None:
            full["arms"] = [full["arm"]]
        stage = Stage(id=sid, kind=kind, hash=h, deps=tuple(deps), params=params, labels=full)
        self.stages.append(stage)
        self.by_hash[h] = stage
        self.hash_of[sid] = h
        return sid

    def _model_ref(self) -> dict[str, Any]:
        m = self.s.model
        ref: dict[str, Any] = {
            "kind": "hub",
            "id": m.hub,
            "revision": m.revision,
            "dtype": m.dtype,
            "chat_template": m.chat_template,
            "tiny": None,
        }
        if m.path is not None:
            from cpx.models import FingerprintError, fingerprint

            p = Path(m.path).expanduser()
            if not p.is_absolute():
                p = (Path(self.L.file).parent / p).resolve()
            ref.update(kind="path", id=str(p))
            try:
                # Stage hashes use the content, not the folder (cpx.plan._hash).
                ref["fingerprint"] = fingerprint(p)
            except FingerprintError as e:
                self.issues.append(Issue(self.L.where(("model", "path")), "model.path", str(e)))
        elif m.tiny is not None:
            s = self.s
            texts = [*s.personas.values(), *s.questions.eval, *s.questions.data, *s.markers.values()]
            ref.update(
                kind="tiny", id="tiny", tiny={**m.tiny.model_dump(), "corpus": self.values.share(sorted(set(texts)))}
            )
        return ref

    def chain(self, adapters: list[dict[str, Any]]) -> dict[str, Any]:
        return {"base": self.model, "adapters": adapters}

    def sampler(self, sampler: Any, seed: int, **extra: Any) -> dict[str, Any]:
        d = sampler.model_dump()
        if d["seed"] is None:
            d["seed"] = seed
        return {**d, **extra}

    def generate(self, seed: int) -> str:
        key = ("generate", seed)
        if key not in self.memo:
            s, g = self.s, self.s.generation
            if g.personas is not None:
                names = sorted({self.assistant, *s.roles.sources, *g.personas})
            else:
                negatives = any(
                    d.recipe == "marker" and (d.negatives is None or d.negatives.personas > 0)
                    for d in s.datasets.values()
                )
                wanted = set(s.personas) if negatives else {self.assistant, *s.roles.sources}
                names = [n for n in self.persona if n in wanted]
            self.generated = names
            params = {
                "model": self.chain([]),
                "personas": self.values.share([self.persona[n] for n in names]),
                "questions": self.data_q,
                "sampler": self.sampler(g.sampler, seed, n=g.completions_per_question),
                "markers": self.markers if g.drop_marked else [],
                "match": self.match,
            }
            self.memo[key] = self.add("generate", f"generate/s{seed}", params, [], {"seed": seed})
        return self.memo[key]

    def dataset(self, name: str, source: str, seed: int) -> str:
        d = self.s.datasets[name]
        if d.recipe == "generic":
            source = self.assistant
        key = ("dataset", name, source, seed)
        if key not in self.memo:
            gen = self.generate(seed)
            params: dict[str, Any] = {
                "recipe": d.recipe,
                "source": source,
                "assistant": self.persona[self.assistant],
                "personas": self.values.share([self.persona[n] for n in self.generated if n != self.assistant]),
                "examples": d.examples,
                "per_question": d.per_question,
                "seed": seed if d.seed is None else d.seed,
            }
            if d.recipe == "marker":
                neg = d.negatives.model_dump() if d.negatives else {"personas": 2, "examples_per_persona": 200}
                params.update(
                    marker=self.s.markers[d.marker or next(iter(self.s.markers))],
                    marker_template=d.marker_template,
                    negatives=neg,
                )
            generic = d.recipe == "generic"
            sid = f"dataset/{name}/s{seed}" if generic else f"dataset/{name}/{source}/s{seed}"
            labels = {"seed": seed, "source": None if generic else source, "recipe": d.recipe, "dataset": name}
            self.memo[key] = self.add("dataset", sid, params, [gen], labels)
        return self.memo[key]

    def eval_personas(self, source: str | None, n_default: int, overrides: bool = True) -> list[dict[str, Any]]:
        s = self.s
        candidates = s.eval.personas or list(self.persona)
        bystanders = s.roles.bystanders
        out = []
        for p in candidates:
            if p == source:
                role = "source"
            elif p == self.assistant:
                role = "assistant"
            elif bystanders is None or p in bystanders:
                role = "bystander"
            else:
                continue
            n = n_default
            if overrides:
                for o in s.eval.completions_overrides:
                    if o.persona == p and (o.sources is None or source in o.sources):
                        n = o.n
            out.append({**self.persona[p], "role": role, "n": n})
        return self.values.share(out)

    def stages_by_id(self, sid: str) -> Stage:
        return self.by_hash[self.hash_of[sid]]

    # ------------------------------------------------------------ arms and phases

    def parent(self, arm: Arm, i: int) -> int | None:
        ph = arm.phases[i]
        if ph.from_ is None:
            return i - 1 if i > 0 else None
        if ph.from_ == "base":
            return None
        return [p.name for p in arm.phases].index(ph.from_)

    def indexed(self, arm_name: str, i: int) -> bool:
        """Whether phase i is trained once per eval checkpoint (at, or downstream of, each_checkpoint)."""
        arm = self.s.arms[arm_name]
        ph = arm.phases[i]
        if ph.each_checkpoint:
            return True
        if ph.merge is not None:
            return False
        p = self.parent(arm, i)
        return p is not None and self.indexed(arm_name, p)

    def merge_target(self, arm_name: str, ref: str) -> tuple[str, int]:
        a, _, p = ref.rpartition(".")
        a = a or arm_name
        return a, [x.name for x in self.s.arms[a].phases].index(p)

    def model_after(
        self, arm_name: str, i: int, ckpt: float, axis_c: float | None, source: str, seed: int
    ) -> list[dict[str, Any]]:
        """Adapters of the model that phase i of an arm produces at checkpoint `ckpt`."""
        arm = self.s.arms[arm_name]
        ph = arm.phases[i]
        if ph.merge is not None:
            ta, ti = self.merge_target(arm_name, ph.merge)
            adapters = self.model_after(ta, ti, ph.checkpoint, None, source, seed)
            self.check_saved(adapters, ph.checkpoint, ("arms", arm_name, "phases", i, "checkpoint"), ph.merge)
            for a in adapters:
                arms = self.stages_by_id(a["stage"]).labels.setdefault("arms", [])
                if arm_name not in arms:
                    arms.append(arm_name)
                    arms.sort()
            return adapters
        start = self.model_start(arm_name, i, axis_c, source, seed)
        train = self.train(arm_name, i, start, axis_c if self.indexed(arm_name, i) else None, source, seed)
        return start + ([{"stage": train, "checkpoint": ckpt}] if ckpt > 0 else [])

    def check_saved(self, adapters: list[dict[str, Any]], ckpt: float, path: tuple[Any, ...], ref: str) -> None:
        """An issue when `ckpt` of phase `ref` (the last adapter) is not a checkpoint its training saves."""
        if ckpt <= 0 or not adapters:
            return
        saved = self.stages_by_id(adapters[-1]["stage"]).params["checkpoints"]
        if not any(abs(ckpt - c) < 1e-9 for c in saved):
            issue = Issue(
                self.L.where(path),
                dotted(path),
                f"phase {ref!r} saves checkpoints "
                f"{', '.join(fmt_ckpt(c) for c in saved)}; {fmt_ckpt(ckpt)} is not one of them",
                hint="add it to the phase's training checkpoints",
            )
            if all(i.path != issue.path for i in self.issues):
                self.issues.append(issue)

    def model_start(self, arm_name: str, i: int, axis_c: float | None, source: str, seed: int) -> list[dict[str, Any]]:
        arm = self.s.arms[arm_name]
        p = self.parent(arm, i)
        if p is None:
            return []
        ckpt = axis_c if arm.phases[i].each_checkpoint else 1.0
        assert ckpt is not None
        return self.model_after(arm_name, p, ckpt, axis_c, source, seed)

    def train(
        self, arm_name: str, i: int, start: list[dict[str, Any]], axis_c: float | None, source: str, seed: int
    ) -> str:
        key = ("train", arm_name, i, axis_c, source, seed)
        if key in self.memo:
            return self.memo[key]
        s = self.s
        ph: Phase = s.arms[arm_name].phases[i]
        assert ph.data is not None
        d = s.datasets[ph.data]
        cfg = self.L.train_config(ph)
        data_id = self.dataset(ph.data, source, seed)
        loss = dict(cfg["loss"])
        if loss["kind"] == "marker":
            if d.recipe != "marker":
                self.issues.append(
                    Issue(
                        self.L.where(("arms", arm_name, "phases", i)),
                        f"arms.{arm_name}.phases[{i}]",
                        f"marker loss needs a marker dataset; {ph.data!r} is a {d.recipe} set",
                    )
                )
            loss["marker"] = s.markers[d.marker or next(iter(s.markers))] if d.recipe == "marker" else None
        else:
            loss["marker"] = None
        screen = None
        if ph.screen or (ph.screen is None and d.recipe == "marker"):
            sc = s.eval.screen
            qs = self.eval_q if sc.questions is None else self.values.share(self.eval_q[: sc.questions])
            screen = {
                "personas": self.eval_personas(source, sc.completions, overrides=False),
                "questions": qs,
                "sampler": self.sampler(sc.sampler, seed),
                "markers": self.markers,
                "match": self.match,
            }
        optim = {
            k: cfg[k]
            for k in (
                "lr",
                "epochs",
                "schedule",
                "warmup_ratio",
                "optimizer",
                "weight_decay",
                "grad_clip",
                "batch_size",
                "grad_accum",
                "max_length",
                "precision",
                "gradient_checkpointing",
            )
        }
        params = {
            "model": self.chain(start),
            "dataset": data_id,
            "lora": cfg["lora"],
            "optim": optim,
            "loss": loss,
            "checkpoints": sorted({float(c) for c in cfg["checkpoints"] if c > 0} | {1.0}),
            "seed": seed,
            "screen": screen,
        }
        deps = [data_id, *(a["stage"] for a in start)]
        sid = f"train/{arm_name}/{ph.name}/{source}/s{seed}"
        if axis_c is not None:
            sid += f"/ckpt{fmt_ckpt(axis_c)}"
        labels = {
            "arm": arm_name,
            "source": source,
            "seed": seed,
            "checkpoint": axis_c,
            "phase": ph.name,
            "recipe": d.recipe,
        }
        self.memo[key] = tid = self.add("train", sid, params, deps, labels)
        if screen is not None and tid not in self.analysis_deps:
            self.analysis_deps.append(tid)
        return tid

    def axis_checkpoints(self, arm_name: str) -> list[float]:
        arm = self.s.arms[arm_name]
        axis = axis_phase(arm)
        ph = next(p for p in arm.phases if p.name == axis)
        return sorted({float(c) for c in self.L.train_config(ph)["checkpoints"]})

    # ------------------------------------------------------------ eval points

    def eval_point(
        self,
        arm: str,
        source: str | None,
        seed: int,
        c: float | None,
        adapters: list[dict[str, Any]],
        steer: dict[str, Any] | None = None,
    ) -> None:
        """The sample, scan and represent stages of one eval point. A steered point (`steer`: the stages'
        `steer` param) is labelled with its strength `alpha` instead of a checkpoint."""
        s = self.s
        if source is None:
            tail = f"{arm}/s{seed}"
        elif steer is not None:
            tail = f"{arm}/{source}/s{seed}/alpha{fmt_ckpt(steer['alpha'])}"
        else:
            assert c is not None, "an eval point of a trained model names its checkpoint"
            tail = f"{arm}/{source}/s{seed}/ckpt{fmt_ckpt(c)}"
        labels: dict[str, Any] = {"arm": arm, "source": source, "seed": seed, "checkpoint": c}
        deps = [a["stage"] for a in adapters]
        extra: dict[str, Any] = {}
        layers = list(s.representation.layers)
        if steer is not None:
            labels["alpha"] = steer["alpha"]
            deps.append(steer["direction"]["represent"])
            extra["steer"] = steer
            layers = sorted({*layers, steer["layer"]})
        chain = self.chain(adapters)
        personas = self.eval_personas(source, s.eval.completions)
        sample = self.add(
            "sample",
            f"sample/{tail}",
            {
                "model": chain,
                "personas": personas,
                "questions": self.eval_q,
                "sampler": self.sampler(s.eval.sampler, seed),
                "backend": s.eval.backend,
                **extra,
            },
            deps,
            labels,
        )
        iv = s.eval.intervals
        scan = self.add(
            "scan",
            f"scan/{tail}",
            {
                "markers": self.markers,
                "match": self.match,
                "cluster": "question_id",
                "confidence_level": iv.confidence_level,
                "n_resamples": iv.n_resamples,
                "seed": seed if iv.seed is None else iv.seed,
            },
            [sample],
            labels,
        )
        represent = self.represent(f"represent/{tail}", chain, personas, layers, deps, labels, extra)
        for sid in (scan, represent):
            if sid not in self.analysis_deps:
                self.analysis_deps.append(sid)
        self.points.append({**labels, "scan": scan, "represent": represent})

    def represent(
        self,
        sid: str,
        chain: dict[str, Any],
        personas: list[dict[str, Any]],
        layers: list[int],
        deps: list[str],
        labels: dict[str, Any],
        extra: dict[str, Any] | None = None,
        join: bool = True,
    ) -> str:
        rep = self.s.representation
        return self.add(
            "represent",
            sid,
            {
                "model": chain,
                "personas": self.values.share([{"name": p["name"], "prompt": p["prompt"]} for p in personas]),
                "questions": self.eval_q,
                "layers": layers,
                "token": rep.token,
                "centering": rep.centering,
                **(extra or {}),
            },
            deps,
            labels,
            join,
        )

    # ------------------------------------------------------------ steer arms

    def steer_points(self, arm_name: str, source: str, seed: int) -> None:
        """A steer arm's eval points: its model (the last phase's final checkpoint, else the base model)
        sampled and read at each strength, steered along source minus assistant centroid at one layer."""
        arm = self.s.arms[arm_name]
        st = arm.steer
        assert st is not None
        adapters = self.model_after(arm_name, len(arm.phases) - 1, 1.0, None, source, seed) if arm.phases else []
        # The direction's centroids: the unsteered model (or the base model), at the representation
        # layers plus the steered one, so the stage is the same as an unsteered eval point's where one exists.
        ref = st.direction.from_
        if ref == "model":
            d_adapters = adapters
        elif ref == "base":
            d_adapters = []
        else:  # `arm.phase`, checked by the loader: a phase with one model per (source, seed)
            ta, ti = self.merge_target(arm_name, ref)
            ckpt = 1.0 if st.direction.checkpoint is None else st.direction.checkpoint
            d_adapters = self.model_after(ta, ti, ckpt, None, source, seed)
            self.check_saved(d_adapters, ckpt, ("arms", arm_name, "steer", "direction", "checkpoint"), ref)
        layers = sorted({*self.s.representation.layers, st.layer})
        personas = self.eval_personas(source, self.s.eval.completions)
        direction = self.represent(
            f"represent/{arm_name}/{source}/s{seed}/direction",
            self.chain(d_adapters),
            personas,
            layers,
            [a["stage"] for a in d_adapters],
            {"arm": arm_name, "source": source, "seed": seed, "purpose": "steering direction"},
            join=False,
        )
        steered = [p["name"] for p in personas if st.personas == "all" or p["role"] == "assistant"]
        for alpha in st.alphas:
            steer = {
                "layer": st.layer,
                "alpha": float(alpha),
                "normalize": st.direction.normalize,
                "personas": steered,
                "direction": {"represent": direction, "source": source, "assistant": self.assistant},
            }
            self.eval_point(arm_name, source, seed, None, adapters, steer)

    def run(self) -> Plan:
        s = self.s
        for seed in s.seeds:
            self.generate(seed)
            if s.eval.baseline:
                self.eval_point("base", None, seed, 0.0, [])
            # Arms in name order: a stage reached from two arms is named after the first to
            # reach it, and the YAML's key order must change no id. Steer arms come after the
            # train arms: a train arm's eval point then owns (and labels) the represent stage
            # that a steer arm reads its direction from, whatever the arms are called.
            for arm_name, arm in sorted(s.arms.items(), key=lambda kv: (kv[1].kind == "steer", kv[0])):
                if arm.kind == "steer":
                    for source in arm.sources or s.roles.sources:
                        self.steer_points(arm_name, source, seed)
                    continue
                last = len(arm.phases) - 1
                axis = axis_phase(arm)
                for source in arm.sources or s.roles.sources:
                    for c in self.axis_checkpoints(arm_name):
                        ckpt = c if arm.phases[last].name == axis else 1.0
                        adapters = self.model_after(arm_name, last, ckpt, c, source, seed)
                        self.eval_point(arm_name, source, seed, c, adapters)
        if self.issues:
            raise SpecError(self.issues)
        analyze = self.add(
            "analyze",
            "analyze",
            {
                "analyses": [a.model_dump(exclude_none=True) for a in s.analyses],
                # Sorted, so that the order arms are written in changes no hash.
                "points": sorted(
                    self.points,
                    key=lambda p: (
                        p["seed"],
                        p["arm"],
                        p["source"] or "",
                        p["checkpoint"] if p["checkpoint"] is not None else -1.0,
                        p.get("alpha", 0.0),
                    ),
                ),
            },
            self.analysis_deps,
            {},
        )
        self.add(
            "report",
            "report",
            {
                "title": s.report.title or self.L.name,
                "figures": s.report.figures,
                # As written (a relative `from_run` stays relative): changing it re-runs the report.
                "power": s.power.model_dump(mode="json") if s.power is not None else None,
            },
            [analyze],
            {},
        )
        spec = spec_json(self.L)
        return Plan(name=self.L.name, spec=spec, spec_hash=spec_hash(spec), stages=self.stages, values=self.values)


def _questions(bank: str, texts: list[str]) -> list[dict[str, str]]:
    width = max(2, len(str(len(texts) - 1)))
    return [{"id": f"{bank}{i:0{width}d}", "text": t} for i, t in enumerate(texts)]


def compile_spec(loaded: Loaded) -> Plan:
    """Expand a loaded spec into a Plan (stages in topological order)."""
    return _Compiler(loaded).run()


def params_b(spec: dict[str, Any]) -> float:
    """The model's size in billions of parameters, for the cost model."""
    m = spec.get("model") or {}
    if m.get("params_b"):
        return float(m["params_b"])
    t = m.get("tiny")
    if t:
        h, layers, inter, vocab = t["hidden_size"], t["num_layers"], t["intermediate_size"], t["vocab_size"]
        return (layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h) / 1e9
    found = re.search(r"(\d+(?:\.\d+)?)\s*[bB]\b", str(m.get("hub") or m.get("path") or ""))
    return float(found.group(1)) if found else 7.0
