#!/bin/bash
# The wheels bench/gpu_checks.sh installs on the device machine, which has torch, Triton,
# pytest(-xdist), numpy, matplotlib, pillow, tqdm, scikit-learn and hypothesis but no network
# and none of these: SimpleITK (mi.registration, the deformable GPU test, bench_register),
# MONAI and kornia (the regime and general GPU benchmarks' peers and compat drop-ins) and
# kornia's kornia_rs. Run it here (PyPI reachable), once per checkout, before the device call:
#   bash bench/gpu_wheels.sh            # -> .whl/ (ignored by git), about 59 MiB
#   NO_SITK=1 bash bench/gpu_wheels.sh  # without SimpleITK (50 MiB of it): 9 MiB
# then name .whl in the device call's carry (64 MiB with the working tree, about 3 MiB):
#   run(command="bash bench/gpu_checks.sh", carry=[".whl"], timeout_s=600)
# The device's python3 is CPython 3.12 on x86_64 Linux (KINDS.md of the device tool); the
# versions are the ones the tests and benchmarks here were written against.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
WANT="monai==1.6.1 kornia==0.9.0 kornia_rs==0.2.0"
[ -n "${NO_SITK:-}" ] || WANT="$WANT SimpleITK==2.5.7"
rm -rf .whl
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $PLATFORMS -d .whl $WANT
ls -l .whl
du -sh .whl
