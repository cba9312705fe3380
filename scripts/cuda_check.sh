#!/bin/sh
# The checks every CUDA change needs, in one go, on a machine with an NVIDIA GPU, torch with
# CUDA and nvcc: build the kernels in place for the GPU's architecture, run the CUDA tests
# (`pytest -m cuda`) and compute-sanitizer's memcheck on the search and aggregate kernels
# (benchmarks/memcheck_search_cuda.py). Logs go to OUTDIR (build.log, pytest.log,
# memcheck.log) with a one-line summary each in OUTDIR/summary.txt; the exit status is 0 only
# when all three pass.
#
#   sh scripts/cuda_check.sh OUTDIR [extra pytest arguments]
#
# The package is imported from the source tree (PYTHONPATH), where the in-place build puts
# the compiled module: without it a test run imports nothing compiled.
set -u
out=${1:?usage: sh scripts/cuda_check.sh OUTDIR [pytest arguments]}
shift
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
if ! command -v nvidia-smi > /dev/null 2>&1; then
    echo "cuda_check: no nvidia-smi here: this needs a machine with an NVIDIA GPU" | tee -a "$summary"
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cores=$(nproc)
arch=${TORCH_CUDA_ARCH_LIST:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1 | sed 's/^/gpu: /' >> "$summary"
start=$(date +%s)
if MAX_JOBS=$cores TORCH_CUDA_ARCH_LIST=$arch python3 setup.py -q build_ext --inplace > "$out/build.log" 2>&1; then
    echo "build: ok for $arch in $(( $(date +%s) - start )) s" >> "$summary"
else
    echo "build: FAILED (build.log)" >> "$summary"
    tail -n 40 "$out/build.log"
    cat "$summary"
    exit 1
fi
start=$(date +%s)
workers=$(( cores > 2 ? cores - 1 : 1 ))
python3 -m pytest -q -m cuda -n "$workers" -p no:cacheprovider tests "$@" > "$out/pytest.log" 2>&1
rc_tests=$?
echo "pytest -m cuda: exit $rc_tests in $(( $(date +%s) - start )) s: $(tail -n 1 "$out/pytest.log")" >> "$summary"
start=$(date +%s)
compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/memcheck_search_cuda.py \
    > "$out/memcheck.log" 2>&1
rc_mem=$?
echo "memcheck: exit $rc_mem in $(( $(date +%s) - start )) s: $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -n 1)" >> "$summary"
cat "$summary"
[ "$rc_tests" -eq 0 ] && [ "$rc_mem" -eq 0 ]
