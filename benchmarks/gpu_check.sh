#!/usr/bin/env bash
# The GPU check as one command (see benchmarks/gpu_check.py for the steps and BENCHMARKS.md for
# the figures). Run from the repository root on the GPU machine, in one 600-second device call:
#     bash benchmarks/gpu_check.sh                        # CUDA, --budget 540 s by default
#     bash benchmarks/gpu_check.sh --dry-run --rehearse   # the same steps tiny on CPU, with only the
#                                                         # GPU image's packages (tests run this)
# Optional wheels (benchmarks/gpu_wheels.txt) in .whl/ are installed without dependencies into
# /tmp/site first (not with --dry-run: the local environment has them). Output:
# ${OUT:-/tmp/gpu_check_out}/{setup,compile,parity,train,model,tests}.log, summary.json (rewritten
# after every step) and the built gsplat module; the summary is printed last. A failing step never
# stops the others (a failing preflight stops the run with one line); exit 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
if [ "${1:-}" != "--dry-run" ] && compgen -G ".whl/*.whl" > /dev/null; then
  timeout 120 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/setup.log" 2>&1 \
    || echo "pip install of .whl/*.whl failed (see setup.log)" >&2
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}"
"${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
rc=$?
echo "[gpu_check] summary: $OUT/summary.json" >&2
exit $rc
