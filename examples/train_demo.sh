#!/usr/bin/env bash
# Train the demo model (checkpoints/demo/model.pt) on the real HoloLens office sequence plus
# synthetic rooms, with sensor-depth supervision and the ESPNetv2-PASCAL teacher.
#
#   examples/train_demo.sh                      # CPU, 128x128 (defaults below)
#   DEVICE=cuda SIZE=256 SEG_STEPS=3000 SEMANTIC_STEPS=400 LANG_STEPS=400 examples/train_demo.sh   # one GPU (not run yet)
#
# Environment (all optional):
#   HOLOLENS   the sequence folder (default ../shared/data/hololens-office). Frames >= HOLDOUT
#              (default 208, the last 52 of 260) are never used for training: benchmarks/real.py
#              evaluates on them.
#   ESPNET     espnetv2_s_2.0_pascal_256x256.pth (default under ../shared/weights/espnetv2-pascal/)
#   SIZE       training resolution (default 128); DEVICE cpu | cuda (teachers and trainer)
#   SEG_STEPS, SEMANTIC_STEPS, LANG_STEPS   steps of the three stages (default 1500 / 200 / 200):
#              real_demo_seg (geometry + segmentation field, real + synthetic clips),
#              real_demo_semantic (the semantic branch becomes a class field of the frozen ESPNetv2
#              segmenter, model.semantic.segmenter / fields: classes; its segmentation residual is
#              trained on real clips only) and real_demo_lang (the language field's residual).
#   SYN_SCENES synthetic rooms added for diversity (default 8; 0 = real frames only); WORK data folder (default data)
#   WORKERS    processes for ray casting the rooms and writing shards (default 2)
#   OMP_NUM_THREADS  torch's intra-op threads; default 1 on CPU. The small model's ops are small,
#              and with 2 threads on a 2-core box that is also doing anything else the threads
#              mostly spin: one seg step took ~50 s with 2 threads and ~2 s with 1 (BENCHMARKS.md).
# Run time on the 2-core build box, one torch thread per process (2026-11-30): synthetic rooms 16 s,
# shards 6 min (ESPNetv2 on CPU dominates: two 256x256 passes per keyframe, ~170 real + 320
# synthetic keyframes at SIZE=128), stage 1 1500 steps 54 min (0.47 steps/s), stage 2
# 200 steps 12 min (0.29 steps/s; the frozen ESPNetv2 runs on both context views each step),
# stage 3 200 steps 7 min (0.49 steps/s): about 80 minutes in all. Re-running skips finished shards
# (make_shards resumes). Shards are ~1.5 MB per keyframe (cached teacher features).
set -euo pipefail
cd "$(dirname "$0")/.."
HOLOLENS=${HOLOLENS:-../shared/data/hololens-office}
ESPNET=${ESPNET:-../shared/weights/espnetv2-pascal/espnetv2_s_2.0_pascal_256x256.pth}
TSV=${SCANNET_TSV:-../shared/data/scannet/scannetv2-labels.combined.tsv}
HOLDOUT=${HOLDOUT:-208}
SIZE=${SIZE:-128}
DEVICE=${DEVICE:-cpu}
SEG_STEPS=${SEG_STEPS:-1500}
SEMANTIC_STEPS=${SEMANTIC_STEPS:-200}
LANG_STEPS=${LANG_STEPS:-200}
SYN_SCENES=${SYN_SCENES:-8}
WORK=${WORK:-data}
WORKERS=${WORKERS:-2}
EXTRA=${EXTRA:-}    # extra train.py overrides for both stages (e.g. "data.epoch_length=10")
TRAINER=cpu; [ "$DEVICE" = cuda ] && TRAINER=gpu
[ "$DEVICE" = cpu ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for f in "$HOLOLENS/pose" "$ESPNET" "$TSV"; do
    [ -e "$f" ] || { echo "error: $f not found (set HOLOLENS / ESPNET / SCANNET_TSV)" >&2; exit 2; }
done
start=$(date +%s)
SYN_ARGS=()
if [ "$SYN_SCENES" -gt 0 ]; then
    python data_prep/make_synthetic.py --out "$WORK/real_demo_synthetic" --scenes "$SYN_SCENES" --size "$SIZE" --frames 40 \
        --seed 3000 --split-val 0 --workers "$WORKERS"
    SYN_ARGS=(--scenes-root "$WORK/real_demo_synthetic")
fi
python data_prep/make_shards.py "${SYN_ARGS[@]}" --scene "$HOLOLENS" --frame-range 0 "$HOLDOUT" \
    --out "$WORK/shards/real_demo" --size "$SIZE" --clip-length 24 --labels-tsv "$TSV" \
    --teacher "espnetv2_seg:checkpoint=$ESPNET" --teacher "espnetv2:checkpoint=$ESPNET" --teacher-size 32 32 \
    --teacher-device "$DEVICE" --workers "$WORKERS"
echo "shards: $(( $(date +%s) - start )) s"
# shellcheck disable=SC2086
python train.py experiment=real_demo_seg trainer=$TRAINER data.root="$WORK/shards/real_demo" \
    optim.max_steps="$SEG_STEPS" logging.wandb_mode=disabled $EXTRA
# shellcheck disable=SC2086
python train.py experiment=real_demo_semantic trainer=$TRAINER data.root="$WORK/shards/real_demo" \
    model.semantic.segmenter_checkpoint="$ESPNET" optim.max_steps="$SEMANTIC_STEPS" logging.wandb_mode=disabled $EXTRA
# shellcheck disable=SC2086
python train.py experiment=real_demo_lang trainer=$TRAINER data.root="$WORK/shards/real_demo" \
    optim.max_steps="$LANG_STEPS" logging.wandb_mode=disabled $EXTRA
mkdir -p checkpoints/demo_candidate && cp checkpoints/real_demo_lang/model.pt checkpoints/demo_candidate/model.pt
echo "trained in $(( $(date +%s) - start )) s: checkpoints/demo_candidate/model.pt"
echo "compare: python benchmarks/real.py --candidate checkpoints/demo_candidate/model.pt --candidate checkpoints/demo/model.pt"
