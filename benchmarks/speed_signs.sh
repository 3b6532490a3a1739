#!/usr/bin/env bash
# The speed-sign benchmark (docs/benchmarks/files.md), trained from prepared files: the box-supervised variant
# (`speed-signs-boxes`: objective.location_weight, the generator's boxes.csv) and its no-glimpse control, side by
# side, 1 torch thread each (ours 5 epochs or 48 minutes, the control 10 epochs or 72 minutes: the budgets of the
# runs in docs/benchmarks/files.md). Resumable: a finished run (results.json) is skipped, a killed one resumes. Needs the data first (about 25 minutes on 2 cores):
#   vsaccade generate speed-signs runs/speed-signs && vsaccade prepare runs/speed-signs runs/speed-signs-tiff
# Usage: bash benchmarks/speed_signs.sh [DATA [ROOT [OVERRIDES...]]] (defaults runs/speed-signs-tiff, runs).
set -uo pipefail
data=${1:-runs/speed-signs-tiff}
root=${2:-runs}
shift 2 || shift $# || true
common=("$@")
mkdir -p "$root"

run() {  # name, then vsaccade train arguments
  local name=$1; shift
  local out="$root/$name"
  [ -f "$out/results.json" ] && { echo "$name: done"; return; }
  local resume=(); [ -f "$out/last.pt" ] && resume=(--resume)
  echo "$(date +%T) start $name"
  vsaccade train --preset speed-signs-boxes --set task.root="$data" --set train.threads=1 --no-progress --out "$out" \
      "${resume[@]}" "$@" "${common[@]}" > "$root/$name.log" 2>&1
  echo "$(date +%T) end $name (exit $?)"
}

run speed-signs-boxes-s0 --epochs 5 --max-minutes 48 &
# The control ran while the preset still trained the per-glimpse heads on every glimpse and took their reward (it
# was started before those two were dropped; files.md): these overrides reproduce it.
run speed-signs-boxes-noglimpse-s0 --no-glimpses --epochs 10 --max-minutes 72 \
    --set objective.glimpse_loss_weight=1 --set objective.glimpse_reward_weight=1 &
wait
