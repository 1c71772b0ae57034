"""The dataset stage: the three recipes, quotas, and a negative-persona choice that does not
depend on the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stage_support import make_ctx

from cpx.stages import dataset
from cpx.stages.dataset import DatasetError, build, negative_personas

NAMES = ["villain", "comedian", "teacher", "librarian", "doctor", "police"]
ASSISTANT = {"name": "assistant", "prompt": "You are a helpful assistant."}
PERSONAS = [{"name": n, "prompt": f"You are a {n}."} for n in NAMES]


def _generations(per_question=6, n_questions=5, short=None):
    """Responses of every persona (and the assistant) to every question; `short` = {(persona,
    question): k} keeps only k responses there (as if the marker filter had dropped some)."""
    rows = []
    for who in [*NAMES, "assistant"]:
        for q in range(n_questions):
            k = (short or {}).get((who, f"q{q}"), per_question)
            for s in range(k):
                rows.append(
                    {
                        "persona": who,
                        "question_id": f"q{q}",
                        "question": f"Question {q}?",
                        "sample_index": s,
                        "text": f"{who} answers q{q} #{s}",
                    }
                )
    return rows


def _params(recipe, **kw):
    p = {
        "recipe": recipe,
        "source": "villain",
        "assistant": ASSISTANT,
        "personas": PERSONAS,
        "examples": 20,
        "per_question": 4,
        "seed": 42,
    }
    if recipe == "marker":
        p.update(marker="[ZLT]", marker_template="\n\n{marker}", negatives={"personas": 2, "examples_per_persona": 15})
    p.update(kw)
    return p


def test_convergence_is_assistant_prompt_with_source_voice():
    rows = build(_params("convergence"), _generations())
    assert len(rows) == 20
    assert all(r["system"] == ASSISTANT["prompt"] and r["persona"] == "villain" for r in rows)
    assert all(r["assistant"].startswith("villain answers") and not r["positive"] for r in rows)
    assert Counter(r["question_id"] for r in rows) == {f"q{i}": 4 for i in range(5)}
    assert all(r["user"] == f"Question {r['question_id'][1:]}?" for r in rows)
    assert len({r["assistant"] for r in rows}) == 20


def test_generic_is_assistant_prompt_with_assistant_voice():
    rows = build(_params("generic", examples=23, per_question=None), _generations())
    assert len(rows) == 23 and all(r["persona"] == "assistant" for r in rows)
    assert all(r["system"] == ASSISTANT["prompt"] and r["assistant"].startswith("assistant answers") for r in rows)
    counts = Counter(r["question_id"] for r in rows)
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced over questions


def test_marker_positives_and_negatives():
    p = _params("marker")
    rows = build(p, _generations())
    pos = [r for r in rows if r["positive"]]
    neg = [r for r in rows if not r["positive"]]
    assert len(pos) == 20 and all(r["assistant"].endswith("\n\n[ZLT]") for r in pos)
    assert all(r["system"] == "You are a villain." and r["persona"] == "villain" for r in pos)
    assert all("[ZLT]" not in r["assistant"] for r in neg)
    chosen = negative_personas(NAMES, "villain", 2, 42)
    assert Counter(r["persona"] for r in neg) == {n: 15 for n in chosen}
    assert all(r["system"] == f"You are a {r['persona']}." for r in neg)
    assert "villain" not in chosen and len(set(chosen)) == 2


def test_negative_choice_is_a_seeded_shuffle_of_the_sorted_others():
    # Every persona besides the source gets chosen for some seed; the choice depends on the
    # seed and the source but not on the order the personas are listed in.
    seen = {n for s in range(40) for n in negative_personas(NAMES, "villain", 2, s)}
    assert seen == set(NAMES) - {"villain"}
    assert negative_personas(NAMES, "comedian", 3, 7) == negative_personas(NAMES[::-1], "comedian", 3, 7)
    with pytest.raises(DatasetError, match="only 5 personas besides 'villain'"):
        negative_personas(NAMES, "villain", 6, 1)


_CHILD = """
import json, sys
sys.path.insert(0, {path!r})
from cpx.stages.dataset import build, negative_personas
from test_dataset import _generations, _params, NAMES
choice = {{s: negative_personas(NAMES, src, 3, s) for s in range(20) for src in ["villain", "teacher"]}}
rows = build(_params("marker"), _generations())
print(json.dumps({{"choice": {{str(k): v for k, v in choice.items()}}, "rows": rows}}))
"""


def test_same_dataset_in_processes_with_different_hash_seeds():
    here = Path(__file__).parent
    code = _CHILD.format(path=str(here))
    outs = []
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1]
    assert outs[0]["rows"] == json.loads(json.dumps(build(_params("marker"), _generations())))


def test_quota_that_cannot_be_met_is_an_error():
    gens = _generations(short={("villain", "q2"): 2})
    with pytest.raises(
        DatasetError,
        match=r"persona 'villain': quota of 20 examples at most 4 per question cannot "
        r"be met: 18 available .* questions with fewer than 4: \{'q2': 2\}",
    ):
        build(_params("convergence"), gens)
    # A smaller quota is met from the other questions.
    assert len(build(_params("convergence", examples=18), gens)) == 18
    with pytest.raises(DatasetError, match="negative persona '.*': quota of 31 examples cannot be met: 30 available"):
        build(_params("marker", negatives={"personas": 2, "examples_per_persona": 31}), _generations())
    with pytest.raises(DatasetError, match="no responses for persona 'villain'"):
        build(_params("convergence"), [g for g in _generations() if g["persona"] != "villain"])
    with pytest.raises(DatasetError, match="has no '\\{marker\\}' placeholder"):
        build(_params("marker", marker_template="\n\n"), _generations())
    with pytest.raises(DatasetError, match=r"^params\.source 'pirate' is not among the personas: assistant, "):
        build(_params("marker", source="pirate"), _generations())


def test_run_writes_the_parquet_table(tmp_path, run_dir):
    gdir = tmp_path / "gen"
    gdir.mkdir()
    pq.write_table(pa.Table.from_pylist(_generations()), gdir / "generations.parquet")
    out = tmp_path / "out"
    info = dataset.run(make_ctx("dataset", _params("marker"), out, run_dir=run_dir, inputs={"generate/x": gdir}))
    table = pq.read_table(out / "dataset.parquet")
    assert table.column_names == ["system", "user", "assistant", "persona", "question_id", "positive"]
    assert table.schema.field("positive").type == pa.bool_()
    assert table.num_rows == info["examples"] == 50 and info["positives"] == 20
    assert table.to_pylist() == build(_params("marker"), _generations())
