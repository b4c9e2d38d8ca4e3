#!/bin/bash
# The GPU session's checks in one call (device tool): install, GPU tests, registration-regime
# benchmark with its kernel sweep. Outputs land in $OUT (default bench/results/gpu_run).
#   bash bench/gpu_checks.sh            (wheels for monai/kornia in .whl/, if carried)
OUT=${OUT:-bench/results/gpu_run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/device.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || ln -sfn ../kernels mi/kernels
python3 -c "import torch, triton, mi.kernels; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
timeout ${TEST_S:-170} python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -40
timeout ${BENCH_S:-230} python3 bench/bench_regime.py ${BENCH_ARGS:---sweep} --out "$OUT" 2>"$OUT/bench_regime.log" | tee "$OUT/bench_regime.md"
tail -5 "$OUT/bench_regime.log"
