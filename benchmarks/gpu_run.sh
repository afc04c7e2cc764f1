#!/usr/bin/env bash
# Item 4 of issue 7 on a lent GPU machine (device tool `run`, carry [".whl"]): installs the carried
# keras/namex/optree wheels (the machine's image has JAX and PyTorch but no Keras), records the GPU,
# runs benchmarks/gpu_bench.py and leaves gpu_bench.json + gpu_bench.log + nvidia_smi.txt in $OUT.
# Extra arguments go to gpu_bench.py (e.g. --variants keras-jax,torch-compile).
set -o pipefail
out="${OUT:-/tmp/gpu_bench_out}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/nvidia_smi.txt"
python3 -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__, 'keras', keras.__version__)" 2>&1 | tee -a "$out/nvidia_smi.txt"
timeout "${GPU_BENCH_TIMEOUT:-460}" python3 benchmarks/gpu_bench.py --device cuda --child_timeout 200 \
    --json "$out/gpu_bench.json" "$@" 2>&1 | tee "$out/gpu_bench.log"
