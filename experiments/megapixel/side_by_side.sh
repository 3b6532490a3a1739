#!/usr/bin/env bash
# Issue 20's speed contract: 704c464 (a git worktree at $OLD) and this checkout alternated on one machine.
#   training step images/s (megapixel-core, megapixel; 2 threads), 4 rounds;
#   vsaccade bench's 1500 file latency (saccader, batch 1, 1 thread, 20 calls), 2 rounds.
# Usage: git worktree add /tmp/old 704c464; VSACCADE_DATA=... bash experiments/megapixel/side_by_side.sh WORKDIR
# Writes WORKDIR/{old,new}-speed-N.json and WORKDIR/{old,new}-bench-N/bench.json (side-by-side-704c464.json holds
# the figures of one such run).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
old_tree=${OLD:-/tmp/old}
mkdir -p "$1" && cd "$1"
export VSACCADE_OFFLINE=1
old() { PYTHONPATH=$old_tree/src "$@"; }
bench=(bench --sizes 1500 --models saccader --kinds file --threads 1 --repeats 20 --no-memory --no-progress)
for round in 1 2 3 4; do
  old python "$old_tree/benchmarks/megapixel_speed.py" --threads 2 --repeats 5 --json old-speed-$round.json > /dev/null
  python "$here/megapixel_speed.py" --threads 2 --repeats 5 --json new-speed-$round.json > /dev/null
done
for round in 1 2; do
  old python -m vsaccade.cli "${bench[@]}" --out old-bench-$round > /dev/null
  python -m vsaccade.cli "${bench[@]}" --out new-bench-$round > /dev/null
done
