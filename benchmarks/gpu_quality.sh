#!/usr/bin/env bash
# Issue 18's GPU quality check, at most 8 minutes on one H200 from start to end: installs the wheels that
# benchmarks/make_gpu_wheels.sh put in .whl/ (when there), then runs benchmarks/gpu_quality.py, which trains every
# gpu_quick recipe with 2 seeds at once and writes gpu_quality.json, gpu_quality.md and gpu_quality.log to $OUT
# (else benchmarks/out/gpu_quality). Arguments go to gpu_quality.py (--budget, --train-seconds, --work).
#
#   MULTIGEN_COMMIT=<hash> bash benchmarks/gpu_quality.sh   # on the GPU machine, .whl/ in the checkout's root
#   bash benchmarks/gpu_quality.sh --dry-run       # anywhere: the CPU, tiny configs and sizes, no wheels needed
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"  # the wheels of .whl/ (not for a dry run); cd to the checkout
# a last guard over gpu_quality.py's own budget (465 s by default, training stopping at 330 s): it writes its
# files when stopped; 470 s here plus the wheels' install stays under 8 minutes
exec timeout --kill-after=5 "${GPU_QUALITY_LIMIT:-470}" python3 benchmarks/gpu_quality.py \
    --out "${OUT:-benchmarks/out/gpu_quality}" "$@"
