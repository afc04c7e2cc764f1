#!/usr/bin/env bash
# Issue 25 on a lent GPU machine (device tool `run`, carry [".whl"]): installs the carried
# keras/namex/optree wheels (the image has JAX and PyTorch, not Keras), records the GPU, then runs
# benchmarks/gpu_profile.py: the Keras/JAX train step of CorrFusion-VGG16 (200 px, batch 64, bf16)
# and the torch.compile reference profiled and put in per-op-class tables, and the XLA-flag sweep
# while its budget lasts. Leaves in $OUT: nvidia_smi.txt, profile.log and profile/ (profile.md,
# profile.csv, sweep.csv, profile.json, keras_trace.json.gz, torch_trace.json.gz): 8 files.
# Extra arguments go to gpu_profile.py (e.g. --sweep head_bf16,no_command_buffer --budget_s 200;
# a second call: --sweep_only --sweep ... --base_json <the first call's profile.json, carried>).
set -o pipefail
out="${OUT:-/tmp/gpu_profile_out}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
# KERAS_BACKEND=jax for every python below (the image has no TensorFlow, Keras' default backend)
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/nvidia_smi.txt"
python3 -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__, 'keras', keras.__version__)" 2>&1 | tee -a "$out/nvidia_smi.txt"
timeout "${GPU_PROFILE_TIMEOUT:-450}" python3 benchmarks/gpu_profile.py --device cuda --budget_s 400 \
    --child_timeout 170 --keep_traces --out "$out/profile" "$@" 2>&1 | tee "$out/profile.log"
