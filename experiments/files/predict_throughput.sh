#!/usr/bin/env bash
# vsaccade predict over 1,000 distinct 1500x1500 tiled TIFFs, process start to exit, no overlays, warm page cache:
# the code before the pipeline (704c464, a git worktree at $OLD) and this checkout with its defaults, alternated,
# 3 timed runs each after one warm-up of each (docs/results/predict-throughput.json holds one such run's figures).
# Usage: git worktree add /tmp/old 704c464; VSACCADE_DATA=... bash experiments/files/predict_throughput.sh WORKDIR
set -uo pipefail
old_tree=${OLD:-/tmp/old}
mkdir -p "$1" && cd "$1"
export VSACCADE_OFFLINE=1
[ -d mp ] || vsaccade generate megapixel mp --train 0 --validation 0 --test 1000 --no-progress
old() { PYTHONPATH=$old_tree/src python -m vsaccade.cli predict megapixel mp/test --no-progress --out "$1" > /dev/null 2>&1; }
new() { python -m vsaccade.cli predict megapixel mp/test --no-progress --out "$1" > /dev/null 2>&1; }
rm -rf runs && mkdir runs
old runs/warm-old.csv; new runs/warm-new.csv
for round in 1 2 3; do
  for who in old new; do
    start=$(date +%s.%N); $who runs/$who-$round.csv; end=$(date +%s.%N)
    echo "$who $round seconds $(echo "$end - $start" | bc) images/s $(echo "1000 / ($end - $start)" | bc -l | cut -c1-5)"
  done
done
