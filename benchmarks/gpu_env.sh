# Sourced by benchmarks/gpu.sh and benchmarks/gpu_quality.sh (with their arguments): on a GPU machine without a
# package index, installs the wheels that benchmarks/make_gpu_wheels.sh put in .whl/ (when there, and not for a
# --dry-run) into /tmp/site, and puts the checkout, then /tmp/site, first on PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if compgen -G ".whl/*.whl" > /dev/null && [[ " $* " != *" --dry-run "* ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    # the checkout first: the installed copy of this project only lends its entry points (the domain registry)
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
