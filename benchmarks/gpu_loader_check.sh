#!/usr/bin/env bash
# The input pipeline's GPU check (issue #26), as the one command a lent GPU machine runs: the 79m
# trunk and image stage trained from memory and through the data workers from files
# (`gpu_mfu.py --loader files`), after the plain MFU run it is compared with.
#
# Here, once (wheels the GPU image lacks, for its Python 3.12; versions from requirements.lock):
#     benchmarks/gpu_loader_check.sh --wheels
# On the device (the `device` tool's run): command "bash benchmarks/gpu_loader_check.sh",
# carry [".whl"], timeout_s 570. The log comes back as $OUT/gpu_loader.log.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(simplejpeg zstandard)  # what the loader imports beyond torch, lightning, numpy, pillow, tokenizers
if [[ "${1:-}" == "--wheels" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    pins=()
    for name in "${WHEELS[@]}"; do
        pin=$(grep -i "^${name}==" requirements.lock) || { echo "no pin for $name in requirements.lock" >&2; exit 2; }
        pins+=("$pin")
    done
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${pins[@]}"
    exit 0
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_loader.log"
{
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    echo "cpus: $(nproc)"
    python3 -c "import simplejpeg, zstandard" 2>/dev/null || echo "note: simplejpeg or zstandard missing: run with the wheels (--wheels here, carry .whl)"
    python3 benchmarks/gpu_mfu.py --runs 79m --loader files --stages trunk image20 --steps 30 --warmup 10
} 2>&1 | tee "$log"
