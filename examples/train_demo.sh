#!/usr/bin/env bash
# Reproduce the demo checkpoint (checkpoints/demo/model.pt) on a CPU in about 10 minutes:
# 16 synthetic rooms at 48x48 -> shards with the label stand-in teachers -> both training stages.
set -euo pipefail
cd "$(dirname "$0")/.."
TSV=${SCANNET_TSV:-../shared/data/scannet/scannetv2-labels.combined.tsv}
python data_prep/make_synthetic.py --out data/synthetic --scenes 16 --size 48 --frames 48 --seed 1000 --split-val 0.25 --workers 2
python data_prep/make_shards.py --scenes-root data/synthetic --out data/shards/synthetic --size 48 --clip-length 24 \
    --split train=data/synthetic/splits/train.txt --split val=data/synthetic/splits/val.txt \
    --labels-tsv "$TSV" --teacher label_seg:noise_std=0.05 --teacher label_lang:flip_rate=0.1,blur_sigma=1.5,noise_std=0.02 --workers 2
python train.py experiment=demo_seg logging.wandb_mode=disabled
python train.py experiment=demo_lang logging.wandb_mode=disabled
mkdir -p checkpoints/demo && cp checkpoints/demo_lang/model.pt checkpoints/demo/model.pt
echo "demo checkpoint: checkpoints/demo/model.pt"
