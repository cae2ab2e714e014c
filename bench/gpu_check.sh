#!/usr/bin/env bash
# One prepared run on a CUDA machine: device tests, core benchmark, image-preset step speed,
# and a store round trip onto the GPU. Writes logs/JSON under $OUT (default bench/results/gpu).
# Usage on a GPU box with the project installed: bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi -L | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout 150 $PY -m pytest tests/core/test_devices.py tests/core/test_flow_basics.py tests/core/test_inverse.py \
  -q -p no:cacheprovider 2>&1 | tee "$OUT/core_tests.log" | tail -3
timeout 60 $PY - <<'PY' 2>&1 | tee "$OUT/store_cuda.log"
import tempfile, torch
from cpflow import CPFlow, FlowConfig
from model_store import ModelStore
flow = CPFlow(FlowConfig(dim=8, blocks=3, hidden=32, depth=3))
x = torch.randn(512, 8) * 2 + 1
flow.set_standardization(x.mean(0), x.std(0)); flow.initialize(x)
store = ModelStore(tempfile.mkdtemp())
store.publish("gpu", flow)
cpu = store.load("gpu", device="cpu").flow; gpu = store.load("gpu", device="cuda").flow
d = (cpu.log_prob(x) - gpu.log_prob(x.cuda()).cpu()).abs().max().item()
z = gpu.transform(x.cuda()); xb, info = gpu.inverse(z)
print({"store_cuda_logprob_maxdiff_vs_cpu": d, "inverse_max_residual": float(info.max_residual),
       "all_converged": bool(info.all_converged)})
PY
timeout 90 $PY bench/images_step_speed.py --preset mnist --device cuda --batch-size 64 \
  2>&1 | tee "$OUT/mnist_step_speed.json"
timeout 180 $PY bench/core_bench.py --device cuda --quick --only logprob,inverse,train,slq \
  2>&1 | tee "$OUT/core_bench_cuda.json"
