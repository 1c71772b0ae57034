"""Expansion of steer arms and replicate seeds (specs/next_steps.yaml): stages, chains, labels,
which work is shared between seeds and what the steer params name."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cpx.plan import Plan, compile_file
from cpx.spec import SpecError, load_spec

SPECS = Path(__file__).parents[2] / "specs"
NEXT = SPECS / "next_steps.yaml"


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_file(NEXT)


def _adapters(stage) -> list[tuple[str, float]]:
    return [(a["stage"], a["checkpoint"]) for a in stage.params["model"]["adapters"]]


def test_counts_follow_the_design(plan: Plan) -> None:
    spec = load_spec(NEXT).spec
    seeds, sources = len(spec.seeds), len(spec.roles.sources)
    steer = spec.arms["S"].steer
    assert steer is not None
    ckpts = spec.training["convergence"].checkpoints
    assert ckpts is not None
    points = seeds * (1 + sources * (len(ckpts) + len(steer.alphas)))
    kinds = Counter(s.kind for s in plan.stages)
    assert kinds["sample"] == kinds["scan"] == points
    # The base model's hidden states do not depend on the seed: one stage for every seed. The
    # steering directions are arm A's checkpoint-0 hidden states (same chain, same layers).
    assert kinds["represent"] == points - (seeds - 1)
    assert kinds["generate"] == 1  # a fixed generation seed: shared by every replicate
    assert kinds["train"] == seeds * sources * 2  # arm S trains nothing: it merges A's marker


def test_steer_points_name_their_direction_and_strength(plan: Plan) -> None:
    by = plan.by_id()
    spec = load_spec(NEXT).spec
    steer = spec.arms["S"].steer
    assert steer is not None
    for seed in spec.seeds:
        for src in spec.roles.sources:
            marker = f"train/A/marker/{src}/s{seed}"
            direction = f"represent/A/{src}/s{seed}/ckpt0"
            assert _adapters(by[direction]) == [(marker, 1.0)]
            assert "S" in by[marker].labels["arms"]
            assert by[direction].labels["arms"] == ["A"]  # read by arm S, not one of its points
            for alpha in steer.alphas:
                tag = format(alpha, "g")
                for kind in ("sample", "represent"):
                    st = by[f"{kind}/S/{src}/s{seed}/alpha{tag}"]
                    assert _adapters(st) == [(marker, 1.0)]
                    assert st.labels["alpha"] == alpha and st.labels["checkpoint"] is None
                    assert st.params["steer"] == {
                        "layer": steer.layer,
                        "alpha": alpha,
                        "normalize": steer.direction.normalize,
                        "personas": [spec.roles.assistant],
                        "direction": {"represent": direction, "source": src, "assistant": spec.roles.assistant},
                    }
                    assert direction in st.deps
                assert steer.layer in by[f"represent/S/{src}/s{seed}/alpha{tag}"].params["layers"]
    points = [p for p in plan.by_id()["analyze"].params["points"] if p["arm"] == "S"]
    assert len(points) == len(spec.seeds) * len(spec.roles.sources) * len(steer.alphas)
    assert {p["alpha"] for p in points} == set(steer.alphas)


def test_direction_from_base_and_every_persona() -> None:
    plan = compile_file(NEXT, ["arms.S.steer.direction.from=base", "arms.S.steer.personas=all", "arms.S.steer.layer=2"])
    by = plan.by_id()
    st = by["sample/S/villain/s42/alpha1"]
    direction = by[st.params["steer"]["direction"]["represent"]]
    assert _adapters(direction) == []  # the untrained base model's centroids
    assert direction.id == "represent/base/s42"  # the baseline eval's stage, not a second pass
    assert st.params["steer"]["personas"] == [p["name"] for p in st.params["personas"]]


def test_direction_from_another_phase_at_one_of_its_checkpoints() -> None:
    plan = compile_file(NEXT, ["arms.S.steer.direction.from=A.convergence", "arms.S.steer.direction.checkpoint=0.5"])
    by = plan.by_id()
    st = by["sample/S/villain/s43/alpha1"]
    direction = by[st.params["steer"]["direction"]["represent"]]
    # arm A's own eval point at 0.5: the marker, then convergence at half its steps
    assert direction.id == "represent/A/villain/s43/ckpt0.5"
    assert _adapters(direction) == [("train/A/marker/villain/s43", 1.0), ("train/A/convergence/villain/s43", 0.5)]
    assert _adapters(st) == [("train/A/marker/villain/s43", 1.0)]  # the steered model is still arm S's


def test_a_direction_checkpoint_the_phase_does_not_save_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"phase 'A.convergence' saves checkpoints 0.25, 0.5, 0.75, 1; 0.3 is not"):
        compile_file(NEXT, ["arms.S.steer.direction.from=A.convergence", "arms.S.steer.direction.checkpoint=0.3"])


def test_a_steer_arm_without_phases_steers_the_base_model() -> None:
    plan = compile_file(NEXT, ["arms.S.phases=[]"])
    st = plan.by_id()["sample/S/comedian/s43/alpha2"]
    assert _adapters(st) == []
    assert not any(s.kind == "train" and "S" in s.labels["arms"] for s in plan.stages)


def test_seeds_share_only_what_does_not_depend_on_them(plan: Plan) -> None:
    by = plan.by_id()
    gen = by["generate/s42"]
    assert gen.labels["seeds"] == [42, 43, 44]
    for seed in (42, 43, 44):
        d = by[f"dataset/marker/villain/s{seed}"]
        assert d.deps == ("generate/s42",) and d.params["seed"] == seed
        assert by[f"train/A/marker/villain/s{seed}"].params["seed"] == seed
    # A fixed dataset seed shares the datasets too, and with them nothing else.
    fixed = compile_file(NEXT, ["datasets.marker.seed=5"])
    ids = {s.id for s in fixed.stages}
    assert "dataset/marker/villain/s42" in ids and "dataset/marker/villain/s43" not in ids
    assert {"train/A/marker/villain/s42", "train/A/marker/villain/s43"} <= ids


def test_adding_alphas_adds_stages_and_changes_no_other(plan: Plan) -> None:
    more = compile_file(NEXT, ["arms.S.steer.alphas=[0, 0.25, 0.5, 1, 2, 4]"])
    old = {s.id: s.hash for s in plan.stages}
    new = {s.id: s.hash for s in more.stages}
    added = set(new) - set(old)
    assert len(added) == 3 * 3 * 3  # sample, scan, represent per (seed, source)
    assert all("/alpha4" in a for a in added)
    changed = [i for i in old if new.get(i) != old[i]]
    assert changed == ["analyze", "report"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("arms.S.kind=train", "`steer` belongs to steer arms"),
        ("arms.A.kind=steer", "a steer arm needs `steer"),
        ("arms.S.steer.alphas=[1, 1]", "duplicates"),
        ("arms.S.steer.alphas=[]", "empty"),
        ("arms.S.steer.layer=3", "no such layer"),
        ("arms.S.steer.personas=bystanders", "invalid value"),
        ("arms.S.eval_at=marker", "remove eval_at"),
        ("arms.S.phases.0.merge=A.markr", "did you mean 'A.marker'"),
        ("arms.S.steer.direction.from=A.convergnce", "did you mean 'A.convergence'"),
        ("arms.S.steer.direction.checkpoint=0.5", "checkpoint applies to a direction from a phase"),
    ],
)
def test_bad_steer_arms_are_spec_errors(override: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        compile_file(NEXT, [override])
    assert message in str(info.value)
    assert "arms." in str(info.value)


def test_arm_names_do_not_decide_who_owns_a_shared_stage(tmp_path: Path) -> None:
    """With the steer arm's name sorting before the train arm's, the train arm's checkpoint-0
    point still owns the represent stage the steer arm reads its direction from."""
    text = NEXT.read_text().replace("\n  A:\n", "\n  T:\n").replace("merge: A.marker", "merge: T.marker")
    spec = tmp_path / "renamed.yaml"
    spec.write_text(text)
    plan = compile_file(spec)
    by = plan.by_id()
    for src in ("villain", "comedian"):
        direction = by[by[f"sample/S/{src}/s42/alpha1"].params["steer"]["direction"]["represent"]]
        assert direction.id == f"represent/T/{src}/s42/ckpt0"
        assert direction.labels["checkpoint"] == 0.0 and direction.labels["arms"] == ["T"]
        assert "purpose" not in direction.labels
    points = [p for p in by["analyze"].params["points"] if p["arm"] == "T"]
    assert sorted({p["checkpoint"] for p in points}) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_renaming_arms_changes_no_steer_stage_hash(tmp_path: Path, plan: Plan) -> None:
    """A steered stage names its direction stage by id (a display name); its hash uses that
    stage's hash, so renaming the train arm (which renames the direction stage) changes nothing."""
    text = NEXT.read_text().replace("\n  A:\n", "\n  T:\n").replace("merge: A.marker", "merge: T.marker")
    spec = tmp_path / "renamed.yaml"
    spec.write_text(text)
    renamed = compile_file(spec)
    work = {s.hash for s in plan.stages if s.kind not in ("analyze", "report")}
    assert {s.hash for s in renamed.stages if s.kind not in ("analyze", "report")} == work
    assert any(s.params.get("steer") for s in renamed.stages)
