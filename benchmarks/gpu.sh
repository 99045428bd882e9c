#!/usr/bin/env bash
# The one GPU check (issue 16), about 7 minutes on one H200 from start to end: installs the wheels that
# benchmarks/make_gpu_wheels.sh put in .whl/ (when there), then runs benchmarks/gpu.py, which writes gpu.json,
# gpu.md and gpu.log to $OUT (else benchmarks/out/gpu). Arguments go to gpu.py (--budget, --train-seconds, ...).
#
#   MULTIGEN_COMMIT=<hash> bash benchmarks/gpu.sh   # on the GPU machine, .whl/ in the checkout's root (named in
#                                                   # the device tool's carry); the hash names the commit measured
#   bash benchmarks/gpu.sh --dry-run       # anywhere: the CPU, tiny sizes, no wheels needed
#
# With the machine's start, one 15-minute device session holds this script or benchmarks/gpu_quality.sh, not both.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh" "$@"  # the wheels of .whl/ (not for a dry run); cd to the checkout
# a last guard over gpu.py's own budget (450 s by default): it writes its files when stopped
exec timeout --kill-after=10 "${GPU_CHECK_LIMIT:-465}" python3 benchmarks/gpu.py --out "${OUT:-benchmarks/out/gpu}" "$@"
