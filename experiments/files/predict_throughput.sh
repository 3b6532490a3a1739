#!/usr/bin/env bash
# vsaccade predict over 1,000 distinct 1500x1500 tiled TIFFs, process start to exit, no overlays, warm page cache:
# earlier code (each NAME=TREE a git worktree) and this checkout with their defaults, alternated, 3 timed runs each
# after one warm-up of each; writes WORKDIR/predict-throughput.json (medians) and prints every run.
# Usage: git worktree add /tmp/old 704c464; git worktree add /tmp/before f88a405
#        VSACCADE_DATA=... bash experiments/files/predict_throughput.sh WORKDIR 704c464=/tmp/old f88a405=/tmp/before
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$1; shift
mkdir -p "$work" && cd "$work"
export VSACCADE_OFFLINE=1
[ -d mp ] || vsaccade generate megapixel mp --train 0 --validation 0 --test 1000 --no-progress
declare -A trees=([this]=$repo)
names=()
for pair in "$@"; do trees[${pair%%=*}]=${pair#*=}; names+=("${pair%%=*}"); done
names+=(this)
run() { rm -f "runs/$1.csv"*; PYTHONPATH=${trees[$2]}/src python -m vsaccade.cli predict megapixel mp/test --no-progress \
          --out "runs/$1.csv" > /dev/null 2>&1; }
rm -rf runs && mkdir runs
for who in "${names[@]}"; do run "warm-$who" "$who"; done
: > runs/seconds.txt
for round in 1 2 3; do
  for who in "${names[@]}"; do
    start=$(date +%s.%N); run "$who-$round" "$who"; end=$(date +%s.%N)
    echo "$who $round $(echo "$end - $start" | bc)" | tee -a runs/seconds.txt
  done
done
python - "$(git -C "$repo" rev-parse --short HEAD)" <<'PY'
import json, statistics, sys
seconds = {}
for line in open("runs/seconds.txt"):
    who, _, value = line.split()
    seconds.setdefault(sys.argv[1] if who == "this" else who, []).append(float(value))
rows = {who: {"seconds, median of 3 [s]": round(statistics.median(v), 2),
              "throughput [images/s]": round(1000 / statistics.median(v), 1)} for who, v in seconds.items()}
json.dump(rows, open("predict-throughput.json", "w"), indent=2)
print(json.dumps(rows, indent=2))
PY
