#!/usr/bin/env bash
# The one GPU check (issue 16), about 7 minutes on one H200 from start to end: installs the wheels that
# benchmarks/make_gpu_wheels.sh put in .whl/ (when there), then runs benchmarks/gpu.py, which writes gpu.json,
# gpu.md and gpu.log to $OUT (else benchmarks/out/gpu). Arguments go to gpu.py (--budget, --train-seconds, ...).
#
#   bash benchmarks/gpu.sh                 # on the GPU machine, with .whl carried beside the checkout
#   bash benchmarks/gpu.sh --dry-run       # anywhere: the CPU, tiny sizes, no wheels needed
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null && [[ " $* " != *" --dry-run "* ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    # the checkout first: the installed copy of this project only lends its entry points (the domain registry)
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# a last guard over gpu.py's own budget (450 s by default): it writes its files when stopped
exec timeout --kill-after=10 "${GPU_CHECK_LIMIT:-465}" python3 benchmarks/gpu.py --out "${OUT:-benchmarks/out/gpu}" "$@"
