#!/usr/bin/env bash
# The GPU figures of docs/gpu_recipe.md in one prepared run (about 5 minutes on one H100):
# `agent train sft` and `agent train rl` (PPO, GRPO; hf backend) on CUDA in bf16 and on the same
# machine's CPU, through benchmarks/bench_train_devices.py.
#
#   bash scripts/gpu_figures.sh [OUT_DIR]        (default: benchmarks/results/gpu_figures)
#
# On a machine without a package index, carry the dependencies it lacks as wheels in .whl/
# (made where an index is reachable: python scripts/gpu_wheels.py --have PACKAGES.txt); they are
# installed from there first. Everything the run prints also goes to OUT_DIR/log.txt.
set -euo pipefail
out="${1:-benchmarks/results/gpu_figures}"
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
py="${PYTHON:-python3}"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if [ -d .whl ]; then
    "$py" -m pip install -q --no-index --find-links .whl --no-build-isolation -e .
fi
"$py" -c "import torch, transformers, trl; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '| transformers', transformers.__version__, '| trl', trl.__version__)"
export PYTHONUNBUFFERED=1
"$py" benchmarks/bench_train_devices.py --out "$out" "${@:2}"
du -sh "$out"
