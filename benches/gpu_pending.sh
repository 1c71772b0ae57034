#!/usr/bin/env bash
# The GPU measurements that issues 14 and 19 still wait for, on a fresh H200 (about 9 minutes in
# all; two device calls fit the 10-minute limit: `... tests eval`, then `... floor`): the GPU tests (the rotary kernel and the rejection top-p draw bit for bit / in the
# nucleus), the decode engine with and without both, and the training floor against cpx's fleet
# step. Run from the repository root with $OUT set (the device's `run` sets it); each part writes
# its raw output there, and a part that fails does not stop the next:
#
#   OUT=/tmp/out bash benches/gpu_pending.sh [tests] [eval] [floor]    # default: all three
#
# $OUT/tests.log      tests/stages/test_sampling_gpu.py (the switches are set by the tests)
# $OUT/gpu_eval.json  gpu_eval.py: speedup_vs_norope (rotary kernel), tokens_per_s_vs_eval_sampler
#                     of fused_topp (radix) and fused_topp_rej (rejection), with --profile
# $OUT/gpu_floor.json gpu_floor.py --profile: the GEMM ceiling and floor, cpx's fleet step, hours
# $OUT/machine.txt    nvidia-smi and the versions
#
# Then: copy the files into benches/results/ under the card's name, put the tables in
# benches/RESULTS.md, and flip `_decode_step.FUSE_ROPE` / `_draws.TOP_P_DRAW` only if the tests
# passed and the variant is faster.
set -u
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)'
} >"$OUT/machine.txt" 2>&1
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(tests eval floor)
for part in "${parts[@]}"; do
    case "$part" in
    tests) timeout 240 python -m pytest -q -p no:cacheprovider tests/stages/test_sampling_gpu.py >"$OUT/tests.log" 2>&1 ;;
    eval)
        (cd benches && timeout 360 python gpu_eval.py --profile --skip-attention --skip-hidden --baseline-batches 1 \
            --variants fused_norope,fused,fused_topp,fused_topp_rej) >"$OUT/eval_stdout.txt" 2>&1
        ;;
    floor) (cd benches && timeout 300 python gpu_floor.py --profile) >"$OUT/floor_stdout.txt" 2>&1 ;;
    *)
        echo "gpu_pending.sh: unknown part '$part' (tests, eval or floor)" >&2
        exit 2
        ;;
    esac
    echo "$part: exit $?"
done
