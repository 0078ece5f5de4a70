#!/usr/bin/env bash
# On a lent GPU machine (see BENCHMARKS.md): the Triton kernels' tests on the GPU, then the
# loss benchmarks on CUDA for both score regimes. The machine has torch, Triton, numba,
# Lightning and pytest; the peers (pytopk, difftopk, diffsort) travel as wheels in .whl/.
# Writes logs and tables under $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$out/device.txt"
mode="${1:-all}"
if [ "$mode" = all ] || [ "$mode" = tests ]; then
    python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_perturbed_triton.py \
        tests/test_functional.py tests/test_losses.py tests/test_ops.py 2>&1 \
        | tee "$out/tests.txt" | tail -15
fi
if [ "$mode" = all ] || [ "$mode" = bench ]; then
    python3 benchmarks/bench_triton_kernels.py --out "$out/kernels.md" 2>&1 | tail -15
    only='bal_topk|noised|Noised|smooth_kth'
    for regime in normal peaked; do
        python3 benchmarks/bench_losses.py --device cuda --regime "$regime" \
            --sizes 100 1081 10000 100000 --only "$only" --out "$out/losses_$regime.md" \
            2>&1 | tail -12
    done
fi
