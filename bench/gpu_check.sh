#!/usr/bin/env bash
# One prepared run on a CUDA machine: device tests, then benchmarks through the runner (a store
# round trip onto the GPU, image-preset step speed, the core benchmark). Writes logs and reports
# under $OUT (default bench/results/gpu). Usage on a GPU box with the project installed:
#   bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi -L | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout 150 $PY -m pytest tests/core/test_devices.py tests/core/test_flow_basics.py tests/core/test_inverse.py \
  -q -p no:cacheprovider 2>&1 | tee "$OUT/core_tests.log" | tail -3
bench() { local name=$1 limit=$2; shift 2
  timeout "$limit" $PY -m bench run "$name" --out "$OUT/$name.json" --set device=cuda "$@" \
    2>"$OUT/$name.log" >/dev/null; echo "$name: exit $? ($OUT/$name.json)"; }
bench store_roundtrip 60
bench image_step_speed 90 preset=mnist batch_size=64
bench core 180 quick=true only=logprob,inverse,train,slq
# data-parallel scaling over the GPUs present (1, 2, 4, 8 as far as they go): efficiency per N
gpus=$(nvidia-smi -L | wc -l); counts=1
for n in 2 4 8; do [[ $n -le $gpus ]] && counts="$counts,$n"; done
bench ddp_scaling 300 nprocs="$counts" iterations=100 batch_size=1024 same_batch_reference=false
