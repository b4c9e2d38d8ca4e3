#!/bin/bash
# The GPU session's checks in one call (device tool), most wanted first: install, GPU tests,
# the registration-regime benchmark with its kernel sweep, Nsight Compute on the
# joint-histogram kernels (bench/ncu_kernels.py; where ncu reads counters), mi.register on CUDA
# with and without its CUDA-graph replay (2-D and 3-D demo pairs), then the general GPU
# benchmark (compat providers included). Outputs land in $OUT (default bench/results/gpu_run):
# 8 files, the device tool's limit (bench_gpu.png is not kept: bench_gpu.csv has its numbers).
#   bash bench/gpu_checks.sh            (device call: carry .whl, timeout_s 600)
# Before it, here: `bash bench/gpu_wheels.sh` puts the wheels of what the device lacks
# (SimpleITK, MONAI, kornia and kornia_rs for its Python 3.12) in .whl/.
# Back here: copy what to keep into bench/results, then `python bench/bench_regime.py --plot`.
# Time limits per part (s): TEST_S (150), BENCH_S (200), NCU_S (60), REG_S (50), GPUBENCH_S
# (120), under the device call's 600 s together. BENCH_ARGS and GPUBENCH_ARGS replace the two
# benchmarks' arguments (defaults: --sweep and the providers not yet timed, with MONAI beside
# them; kornia, the seed and the plain-tf32/ieee rows are in the committed H200 run. G1,G3
# with the peers and the compat drop-ins).
OUT=${OUT:-bench/results/gpu_run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || ln -sfn ../kernels mi/kernels
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch, triton, mi.kernels; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
timeout ${TEST_S:-150} python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py \
  2>&1 | (cat "$OUT/device.txt"; cat) | tee "$OUT/gpu_tests.log" | tail -40
rm -f "$OUT/device.txt"  # (kept at the top of gpu_tests.log)
timeout ${BENCH_S:-200} python3 bench/bench_regime.py ${BENCH_ARGS:---sweep --providers auto,auto-graph,tiled,scatter,span,span-sorted,tiled-tf32x3-fma,monai} --out "$OUT" 2>"$OUT/bench_regime.log" \
  | tee "$OUT/bench_regime.md"
tail -5 "$OUT/bench_regime.log"
timeout ${NCU_S:-60} ncu --clock-control none --profile-from-start off --kernel-name regex:_joint \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy --section WarpStateStats \
  --section InstructionStats python3 bench/ncu_kernels.py > "$OUT/ncu.txt" 2>&1
tail -3 "$OUT/ncu.txt"
timeout ${REG_S:-50} python3 bench/bench_register.py --cases 2d,3d --methods mi,mi-eager --device cuda --repeat 3 \
  --out /tmp/reg 2>&1 | tee "$OUT/bench_gpu.md" | tail -6
timeout ${GPUBENCH_S:-120} python3 bench/bench_gpu.py --out "$OUT" ${GPUBENCH_ARGS:---cases G1,G3 --providers mi,kornia,kornia-compat,monai,monai-compat} 2>&1 | tee -a "$OUT/bench_gpu.md" | tail -12
rm -f "$OUT/bench_gpu.png"
ls "$OUT"
