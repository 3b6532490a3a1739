#!/usr/bin/env bash
# The speed-signs-polished recipe against the scripts it replaced (benchmarks/speed_signs.sh at 704c464), at small
# scale: 400x300 scenes (120 train, 40 validation, 40 test), 1 thread, every stage's sizes cut down the same way.
# Needs the old code beside this checkout:  git worktree add /tmp/old 704c464
# Usage: bash experiments/speed-signs/equivalence.sh WORKDIR   (about 6 minutes on 2 cores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
old=${OLD:-/tmp/old}
mkdir -p "$1" && cd "$1"
export VSACCADE_OFFLINE=1
[ -d ss ] || vsaccade generate speed-signs ss --size 400x300 --sign-sides 20 60 --train 120 --validation 40 --test 40 --no-progress
if [ ! -d old-ss ]; then  # 704c464 read boxes from root/<split>/boxes.csv
  cp -al ss old-ss
  for s in train validation test; do cp ss-boxes/$s.csv old-ss/$s/boxes.csv; done
fi

# The old scripts, their sizes cut down (speed_signs.sh's steps reader, hard, search, search1, polish).
(
  export PYTHONPATH=$old/src
  B=$old/benchmarks
  vs() { python -c "import sys; from vsaccade.cli import main; sys.exit(main())" "$@"; }
  mkdir -p old
  [ -f old/reader.pt ] || python $B/speed_signs_reader.py --root old-ss --synthetic 300 --epochs 2 --cosine --batch-size 64 --threads 1 --save old/reader.pt
  [ -f old/hard.pt ] || python $B/speed_signs_reader.py --root old-ss --load old/reader.pt --synthetic 200 --centred-decoys 1.0 --epochs 2 --cosine --lr 0.0003 --batch-size 64 --threads 1 --save old/hard.pt
  for s in 0 1; do
    [ -f old/search-s$s/results.json ] || vs train --preset speed-signs-search --set task.root=old-ss --set train.threads=1 --set train.epochs=1 --set train.init_weights=old/hard.pt --set train.seed=$s --no-progress --out old/search-s$s
    [ -f old/search-s$s-polished.pt ] || python $B/speed_signs_polish.py old/search-s$s/best.pt --root old-ss --crops 200 --held-out 100 --epochs 2 --threads 1 --out old/search-s$s-polished.pt
    [ -f old/search-s$s-polished-validation.json ] || vs evaluate old/search-s$s-polished.pt --split validation --no-references --json old/search-s$s-polished-validation.json
  done
)

# The recipe, the same sizes.
args=(--set task.root=ss --set task.boxes=ss-boxes --set train.threads=1
      --stage reader.crops=300 --stage reader.epochs=2 --stage hard.crops=200 --stage hard.epochs=2)
for s in 0 1; do
  args+=(--stage search-s$s.train.epochs=1 --stage polish-s$s.crops=200 --stage polish-s$s.held_out=100 --stage polish-s$s.epochs=2)
done
vsaccade recipe speed-signs-polished --out new --no-progress "${args[@]}"

python "$here/compare_stages.py" --json "$here/equivalence.json"
