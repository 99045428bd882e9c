#!/usr/bin/env bash
# (Re)creates .whl/: the wheels benchmarks/gpu.sh and benchmarks/gpu_quality.sh install on a GPU machine that has
# torch, accelerate, einops, scipy, scikit-learn, tensorboard and Triton but no package index. Run here (with a
# package index), from any directory; then carry .whl to the GPU machine (it is ignored by git through
# .git/info/exclude).
#
#   bash benchmarks/make_gpu_wheels.sh            # target: CPython 3.12 on x86-64 Linux
#
# Left out on purpose: av (PyAV, ~36 MB with its FFmpeg; only writing .mp4 needs it, and nothing gpu.sh runs
# does), decord (nothing they run reads video files), and torch/torchvision/transformers (already there).
# omegaconf 2.4 vendors its ANTLR runtime, so antlr4-python3-runtime is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl

target=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux2010_x86_64 -d .whl)
# pure-Python: ours' runtime needs (omegaconf, trimesh, pytorch-msssim) and the video peer with its two helpers
"$PY" -m pip download -q "${target[@]}" \
    omegaconf==2.4.0 trimesh==5.2.0 pytorch-msssim==1.0.0 \
    video-diffusion-pytorch==0.7.0 einops-exts==0.0.4 rotary-embedding-torch==0.9.1
# scikit-image and what it needs beyond numpy/scipy: the photographs of the natural-video source
# (data.source=natural, which benchmarks/gpu_quality.sh trains on)
"$PY" -m pip download -q "${target[@]}" \
    scikit-image==0.26.0 networkx==3.6.1 pillow==13.0.0 imageio==2.38.1 tifffile==2026.3.3 lazy-loader==0.6 \
    packaging==26.4
# this checkout as a wheel: gpu.sh puts the checkout first on PYTHONPATH, so the wheel's job is the entry points
# (the domain registry) and the console scripts
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
ls -l .whl
du -sh .whl
