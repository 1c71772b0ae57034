"""The state one compilation shares across the stage kinds' builders (cpx.plan._compile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpx.plan._hash import stage_hash
from cpx.plan._model import Stage
from cpx.plan._params import Memo, StageParamError, parse_params
from cpx.plan._values import Values
from cpx.spec import Issue, Loaded


def fmt_ckpt(c: float) -> str:
    """A checkpoint fraction as written in ids and checkpoint folders (`format(c, "g")`)."""
    return format(c, "g")


def questions(bank: str, texts: list[str]) -> list[dict[str, str]]:
    """A question bank as params: ids `<bank>00`, `<bank>01`, ... (zero-padded to the same width)."""
    width = max(2, len(str(len(texts) - 1)))
    return [{"id": f"{bank}{i:0{width}d}", "text": t} for i, t in enumerate(texts)]


class Build:
    """One compilation's state: the stages so far (by id and by hash), the memo of work already
    expanded, the issues found, and the spec's values that every stage kind uses."""

    def __init__(self, loaded: Loaded):
        self.L = loaded
        self.s = s = loaded.spec
        self.stages: list[Stage] = []
        self.by_hash: dict[str, Stage] = {}
        self.hash_of: dict[str, str] = {}
        self.issues: list[Issue] = []
        self.memo: dict[tuple[Any, ...], Any] = {}
        self.generated: list[str] = []  # the personas `generate` asks, in name order
        # Persona and question sets and the tiny model's corpus: one object each, stored once.
        self.values = Values()
        self.parsed: Memo = {}  # each shared value and chain parsed once (cpx.plan._params)
        self.model = self._model_ref()
        # Mappings are unordered in the spec's meaning (key order changes no hash): personas and
        # markers appear in params sorted by name.
        self.persona = {n: {"name": n, "prompt": s.personas[n]} for n in sorted(s.personas)}
        self.assistant = s.roles.assistant
        self.eval_q = self.values.share(questions("eval", s.questions.eval))
        self.data_q = self.values.share(questions("data", s.questions.data))
        self.markers = [s.markers[k] for k in sorted(s.markers)]
        self.match = s.match.model_dump()
        self.points: list[dict[str, Any]] = []
        self.analysis_deps: list[str] = []

    def add(
        self, kind: str, sid: str, params: dict[str, Any], deps: list[str], labels: dict[str, Any], join: bool = True
    ) -> str:
        """A stage, or the identical one already emitted (whose `arms` and `seeds` labels then gain
        this one's arm and seed, unless `join` is false: the caller only reads its outputs)."""
        deps = list(dict.fromkeys(deps))
        # The params are the kind's contract: what a runner receives is checked here, once, at compile.
        try:
            parse_params(kind, params, f"stage {sid}", self.parsed)
        except StageParamError:
            if not self.issues:  # else a spec error already found is why, and compile reports it
                raise
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
