#!/usr/bin/env bash
# Every trainer a few steps on a ~0.5B random-init Llama on one GPU: tokens/s and peak memory.
#
# Three parts, each under ten minutes on a GPU host without internet access (torch,
# transformers, peft and accelerate installed; vllm for the last two, which skip without it):
# `trainers` (every trainer), `rollouts` (PPO rollouts, HF generate vs vLLM) and `labelers`
# (vllm async/sync vs transformers labeler). PARTS picks some, e.g. `PARTS=trainers bash ...`;
# all three run by default (up to ~18 minutes). Prepare on a machine with the project, once:
#     .venv/bin/python benchmarks/gpu_check.py --save-tokenizer .bench/tokenizer
#     .venv/bin/pip download --no-deps -d .bench/wheels trl datasets   # if the GPU host lacks them
# then run with `.bench/tokenizer` (and `.bench/wheels`) carried:
#     bash benchmarks/gpu_check.sh
# It prints one table (and writes $OUT/gpu_check.json); copy it into benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu-check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
python -c "import trl, datasets" 2>/dev/null || {
    echo "installing trl/datasets from .bench/wheels (offline)"
    pip install --quiet --no-index --find-links .bench/wheels trl datasets 2>&1 | tail -3
}
PARTS=${PARTS:-trainers rollouts labelers}
part() { [[ " $PARTS " == *" $1 "* ]]; }

if part trainers; then
    timeout 540 python benchmarks/gpu_check.py --tokenizer .bench/tokenizer --size 0.5b \
        --steps "${STEPS:-4}" --batch "${BATCH:-8}" --out "$OUT"
fi

# PPO rollouts: HF generate vs a colocated vLLM engine (rollout_engine: vllm), tokens/s on the
# same prompts and random-init 0.5B model, one table; skipped where vllm is not installed.
if ! part rollouts; then
    :
elif python -c "import vllm" 2>/dev/null; then
    timeout 300 python benchmarks/ppo_rollout.py --tokenizer .bench/tokenizer --size 0.5b \
        --prompts "${ROLLOUT_PROMPTS:-64}" --max-new-tokens "${ROLLOUT_TOKENS:-128}" --rounds 2 \
        --gpu-memory-utilization 0.3 --out "$OUT"
else
    echo "ppo rollouts (vllm vs hf generate): skipped, vllm is not installed"
fi

# The labelers: the vllm labeler's async engine (and its sync one) vs the transformers labeler,
# generated tokens/s on one SL-CAI job on the same model (a few minutes more); rows say skipped
# where vllm is missing.
if part labelers; then
    timeout 240 python benchmarks/gpu_check.py --tokenizer .bench/tokenizer --size 0.5b \
        --only labelers --gen "${GEN:-64}" --labeler-prompts "${LABELER_PROMPTS:-64}" --out "$OUT"
fi
