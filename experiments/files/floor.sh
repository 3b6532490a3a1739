#!/usr/bin/env bash
# The inference floor before and after a change (issue 21, item 1): batch-1 latency of the bundled Megapixel model over
# distinct tiled pyramidal TIFFs (one new file per call, the first call apart, 1 thread: `vsaccade bench --checkpoint
# --files`), at 1500x1500 (200 files) and 6000x6000 (120 files), the code before ($BEFORE, a git worktree) and this
# checkout measured back to back in one run; then the golden check: `vsaccade predict --batch-size 1` over the same
# files by both, compared by golden_check.py (classes equal, probabilities within 1e-5, boxes within 0.5 px).
# Usage: git worktree add /tmp/before COMMIT; VSACCADE_DATA=... bash experiments/files/floor.sh WORKDIR
# Writes WORKDIR/floor.json (experiments/files/floor_summary.py).
set -euo pipefail
before=${BEFORE:-/tmp/before}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1" && cd "$1"
export VSACCADE_OFFLINE=1
[ -d mp1500 ] || vsaccade generate megapixel mp1500 --train 0 --validation 0 --test 200 --no-progress
[ -d mp6000 ] || vsaccade generate megapixel mp6000 --size 6000 --train 0 --validation 0 --test 120 --no-progress
for size in 1500 6000; do
  for who in before after; do
    if [ "$who" = before ]; then tree=$before/src; else tree=$repo/src; fi
    PYTHONPATH=$tree python -m vsaccade.cli bench --checkpoint megapixel --files "mp$size/test" --threads 1 \
      --no-progress --out "bench-$who-$size" | tail -1
    rm -f "golden-$who-$size.csv"*
    PYTHONPATH=$tree python -m vsaccade.cli predict megapixel "mp$size/test" --batch-size 1 --no-progress \
      --out "golden-$who-$size.csv" | tail -1
  done
  python "$repo/experiments/files/golden_check.py" "golden-before-$size.csv" "golden-after-$size.csv" \
    --json "golden-$size.json" > /dev/null || echo "golden check FAILED at $size"
done
python "$repo/experiments/files/floor_summary.py" . --before "$(git -C "$before" rev-parse --short HEAD)" \
  --after "$(git -C "$repo" rev-parse --short HEAD)" --out floor.json
