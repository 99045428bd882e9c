#!/usr/bin/env bash
# The one GPU check (issue 16), about 7 minutes on one H200 from start to end: installs the wheels that
# benchmarks/make_gpu_wheels.sh put in .whl/ (when there), then runs benchmarks/gpu.py, which writes gpu.json,
# gpu.md and gpu.log to $OUT (else benchmarks/out/gpu). Arguments go to gpu.py (--budget, --train-seconds, ...).
#
#   bash benchmarks/gpu.sh                 # on the GPU machine, with .whl carried beside the checkout
#   bash benchmarks/gpu.sh --dry-run       # anywhere: the CPU, tiny sizes, no wheels needed
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"  # the wheels of .whl/ (not for a dry run); cd to the checkout
# a last guard over gpu.py's own budget (450 s by default): it writes its files when stopped
exec timeout --kill-after=10 "${GPU_CHECK_LIMIT:-465}" python3 benchmarks/gpu.py --out "${OUT:-benchmarks/out/gpu}" "$@"
