#!/usr/bin/env bash
# Train the demo model at 256 px on the GPU machine with the minutes a lease has left after the GPU
# check (examples/train_demo.sh with DEVICE=cuda SIZE=256), resumably, writing what it has to $OUT.
#
# Here, once (copies the real data and weights into the git-ignored .gpu_data/, ~39 MB, so that it
# travels with the working tree: name .gpu_data and .whl in the device call's `carry`):
#     bash benchmarks/gpu_train_demo.sh --prepare
# There, in a device call of its own (the tool returns at most 8 files a call; the check uses them):
#     TIME_LIMIT=300 bash benchmarks/gpu_train_demo.sh
#
# Resumable: every stage runs with checkpoint.resume=auto and make_shards resumes finished scenes,
# so a killed run continues where it stopped. Across leases (a fresh machine each time) the stage
# checkpoints come back in $OUT (last.ckpt of the stage in progress, each model.pt so far, when
# under the tool's 16 MiB per file); put them under checkpoints/<stage>/ and carry checkpoints/.
# Needs hydra-core in .whl/ (benchmarks/gpu_wheels.txt). Environment: TIME_LIMIT seconds (default
# 420), SEG_STEPS / SEMANTIC_STEPS / LANG_STEPS (default 3000 / 400 / 400), OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=.gpu_data
if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$DATA/scannet" "$DATA/espnetv2-pascal"
    cp -r ../shared/data/hololens-office "$DATA/" && cp ../shared/data/scannet/scannetv2-labels.combined.tsv "$DATA/scannet/" \
        && cp ../shared/weights/espnetv2-pascal/espnetv2_s_2.0_pascal_256x256.pth "$DATA/espnetv2-pascal/" \
        || { echo "error: ../shared/data or ../shared/weights missing" >&2; exit 2; }
    du -sh "$DATA"
    exit 0
fi
OUT=${OUT:-/tmp/gpu_train_demo_out}
mkdir -p "$OUT"
for f in "$DATA/hololens-office/pose" "$DATA/espnetv2-pascal/espnetv2_s_2.0_pascal_256x256.pth"; do
    [ -e "$f" ] || { echo "error: $f not found: run 'bash benchmarks/gpu_train_demo.sh --prepare' here and carry .gpu_data" >&2; exit 2; }
done
if compgen -G ".whl/*.whl" > /dev/null && [ ! -d /tmp/site ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/train_demo_setup.log" 2>&1
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
timeout "${TIME_LIMIT:-420}" env DEVICE=cuda SIZE=256 WORKERS=8 \
    HOLOLENS="$DATA/hololens-office" ESPNET="$DATA/espnetv2-pascal/espnetv2_s_2.0_pascal_256x256.pth" \
    SCANNET_TSV="$DATA/scannet/scannetv2-labels.combined.tsv" WORK=/tmp/demo_work \
    SEG_STEPS="${SEG_STEPS:-3000}" SEMANTIC_STEPS="${SEMANTIC_STEPS:-400}" LANG_STEPS="${LANG_STEPS:-400}" \
    EXTRA="checkpoint.resume=auto ${EXTRA:-}" bash examples/train_demo.sh 2>&1 | tee "$OUT/train_demo.log"
rc=${PIPESTATUS[0]}
for stage in real_demo_seg real_demo_semantic real_demo_lang; do  # what there is so far, under 16 MiB a file
    for f in model.pt last.ckpt; do
        src="checkpoints/$stage/$f"
        [ -f "$src" ] && [ "$(stat -c %s "$src")" -le 16777216 ] && cp "$src" "$OUT/${stage}_$f"
    done
done
echo "{\"train_demo\": {\"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"finished\": $([ "$rc" = 0 ] && echo true || echo false)}}"
exit "$rc"
