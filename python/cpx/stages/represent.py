"""The `represent` stage: persona centroids of last-prompt-token hidden states and their cosines.

For every persona x question, the prompt is rendered with the chat template and the
generation prompt (`cpx.models.render_prompt`, exactly as sampling sees it) and its hidden
state at the last token is read at each of the spec's layers, in one batched, left-padded
pass with forward hooks (`_hidden`). A persona's centroid is the mean over the questions;
`centering: global_mean` subtracts the mean of the stage's personas' centroids (per layer)
before the cosines, `none` does not. With `steer` (`_steer`), α · direction is added at one
layer to the steered personas' rows during the pass (every later layer sees it too).

Outputs (docs/plan-format.md): `centroids.parquet` — labels + `persona, layer, vector`
(the uncentred centroid, list<float32>); `cosines.parquet` — labels + `layer, persona_a,
persona_b, cosine` for every ordered pair of personas (the full matrix, diagonal included).

A separate stage from `sample` on purpose: a change of the eval sampler re-runs sampling only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cpx.stages._context import StageContext

if TYPE_CHECKING:
    from cpx.plan import RepresentParams


def run(ctx: StageContext) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    from cpx.models import render_prompt, small_model_threads
    from cpx.stages._hidden import centroid_cosines, last_prompt_hidden_states
    from cpx.plan import StageParamError
    from cpx.stages._rows import labelled_table, write_parquet
    from cpx.stages._steer import check_model, steer_of

    p: RepresentParams = ctx.params
    sid = ctx.stage.id
    personas, questions, layers = p.personas, p.questions, list(p.layers)
    steer = steer_of(sid, p.steer, ctx.inputs)

    model, tok = ctx.models.get(p.model.json(), ctx.inputs)
    prompts = [render_prompt(tok, per.prompt, q.text) for per in personas for q in questions]
    steering = None
    if steer is not None:
        check_model(sid, steer, model)
        steering = steer.for_prompts([per.name for per in personas for _ in questions])
    t0 = time.perf_counter()
    try:
        with small_model_threads(model, ctx.device):
            hidden = last_prompt_hidden_states(model, tok, prompts, layers, device=ctx.device, steering=steering)
    except ValueError as e:
        raise StageParamError(f"stage {sid}: {e}") from None
    seconds = time.perf_counter() - t0
    n_p, n_q, n_l = len(personas), len(questions), len(layers)
    centroids = hidden.reshape(n_p, n_q, n_l, -1).astype(np.float64).mean(axis=1)
    cos = centroid_cosines(centroids, p.centering)

    names = [per.name for per in personas]
    dim = centroids.shape[-1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(centroids.astype(np.float32).reshape(-1)), dim).cast(
        pa.list_(pa.float32())
    )
    cent_cols = {
        "persona": [n for n in names for _ in layers],
        "layer": [int(layer) for _ in names for layer in layers],
        "vector": vectors,
    }
    cent_schema = {"persona": pa.string(), "layer": pa.int64(), "vector": pa.list_(pa.float32())}
    write_parquet(labelled_table(ctx.labels, cent_cols, cent_schema), ctx.out_dir / "centroids.parquet")

    cos_cols: dict[str, list[Any]] = {"layer": [], "persona_a": [], "persona_b": [], "cosine": []}
    for li, layer in enumerate(layers):
        for a, na in enumerate(names):
            for b, nb in enumerate(names):
                cos_cols["layer"].append(int(layer))
                cos_cols["persona_a"].append(na)
                cos_cols["persona_b"].append(nb)
                cos_cols["cosine"].append(float(cos[li, a, b]))
    cos_schema = {"layer": pa.int64(), "persona_a": pa.string(), "persona_b": pa.string(), "cosine": pa.float64()}
    write_parquet(labelled_table(ctx.labels, cos_cols, cos_schema), ctx.out_dir / "cosines.parquet")
    info = {
        "prompts": len(prompts),
        "layers": [int(x) for x in layers],
        "hidden_size": int(dim),
        "centering": p.centering,
        "seconds": round(seconds, 3),
    }
    if steer is not None:
        info["steer"] = steer.info()
    return info
