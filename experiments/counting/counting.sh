#!/usr/bin/env bash
# Counting in large scenes (docs/benchmarks/counting.md): ours, `fullres`, `proxy` and `fullres` on the 4x-downsampled
# scene, all on 768x768 scenes (K = 6) under one budget (the preset's 25 minutes and 20 epochs, 1 torch thread each,
# every model with the preset's count readout), two runs at a time on a 2-core machine; then ours on 2048x2048
# scenes (K = 12). Resumable: a finished run (results.json) is skipped, a killed one resumes.
# Usage: bash experiments/counting/counting.sh [ROOT [OVERRIDES...]] (default runs/counting); OVERRIDES go to every run,
# e.g. `bash experiments/counting/counting.sh runs/counting-mean --set model.readout=mean`.
set -uo pipefail
root=${1:-runs/counting}
shift || true
common=("$@")
mkdir -p "$root"

run() {  # name, then vsaccade train arguments
  local name=$1; shift
  local out="$root/$name"
  [ -f "$out/results.json" ] && { echo "$name: done"; return; }
  local resume=(); [ -f "$out/last.pt" ] && resume=(--resume)
  echo "$(date +%T) start $name"
  vsaccade train --out "$out" --no-progress --set train.threads=1 "${resume[@]}" "$@" "${common[@]}" > "$root/$name.log" 2>&1
  echo "$(date +%T) end $name (exit $?)"
}

(
  run ours-768 --preset counting-768
  run ours-2048 --preset counting
  # a diagnostic row: the count readout with the first runs' 92-px windows (several units each) and 48-px cells
  run ours-768-wide --preset counting-768 --set model.s_min=0.12 --set model.s_max=0.12 --set model.location_cells=16
) &
(
  run fullres-768 --preset counting-768 --set model.architecture=fullres
  run proxy-768 --preset counting-768 --set model.architecture=proxy
  run fullres-768-downsampled-4 --preset counting-768 --set model.architecture=fullres --set task.downsample=4
) &
wait
