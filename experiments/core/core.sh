#!/usr/bin/env bash
# Reproduces every figure of docs/benchmarks/core.md. Run by hand, in the background, from the repo root:
#   VSACCADE_DATA=/path/holding/mnist nohup experiments/core/core.sh > runs/core.log 2>&1 &
# Each training resumes from its last checkpoint if killed (re-run the script). One seed per run.
set -euo pipefail
export VSACCADE_OFFLINE=${VSACCADE_OFFLINE:-1}
run() { out=$1; shift; [ -f "$out/results.json" ] && { echo "done: $out"; return; }; vsaccade train --out "$out" --resume --no-progress "$@"; }

# Two-Digit Cluttered MNIST, pair task, paper setting (2528x2528, proxy factor d=8), 30 minutes each.
run runs/pair-s0 --preset cluttered-pair --seed 0
run runs/pair-noglimpse-s0 --preset cluttered-pair --seed 0 --no-glimpses --set train.threads=1
run runs/pair-noglimpse-d4-s0 --preset cluttered-pair --seed 0 --no-glimpses --set train.threads=1 --set task.proxy_factor=4
vsaccade evaluate runs/pair-s0/best.pt --split validation --policy samples:8 --no-references
vsaccade evaluate runs/pair-s0/best.pt --policy samples:8 --json runs/pair-s0/test-samples8.json
vsaccade show runs/pair-s0/best.pt --out docs/cluttered-pair.png

# Megapixel MNIST (1500x1500, proxy 180x180), the same model, any accuracy, with its control.
run runs/megapixel-s0 --preset megapixel-core --seed 0 --max-minutes 25 --set train.threads=1
run runs/megapixel-noglimpse-s0 --preset megapixel-core --seed 0 --epochs 9 --max-minutes 12 --no-glimpses
vsaccade show runs/megapixel-s0/best.pt --out docs/megapixel.png --count 3
