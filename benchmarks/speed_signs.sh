#!/usr/bin/env bash
# The speed-sign benchmark (docs/benchmarks/files.md), trained from prepared files, in steps run one after
# the other with 2 torch threads each, every one resumable (a finished step is skipped, a killed run resumes):
#   reader   the glimpse encoder and a head pre-trained on oracle glimpses at the sign: the training split's and
#            60,000 drawn crops (benchmarks/speed_signs_reader.py --synthetic), 8 epochs of cosine-annealed learning
#            rate, saved in the saccader's names;
#   hard     that reader trained 3 more epochs (learning rate 3e-4, cosine) on the training split's glimpses and
#            20,000 drawn crops whose `none` crops all hold a decoy where a sign would be (--centred-decoys 1):
#            the decoys the whole model's glimpses seek;
#   ours     the box-supervised variant (`speed-signs-boxes`: objective.location_weight, the generator's
#            boxes.csv) started from the hard-negative reader (train.init_weights), 10 epochs (its cosine
#            schedule's length, which fits in the 75-minute budget at about 6.5 minutes an epoch);
#   control  its no-glimpse control, 10 epochs or 72 minutes at 1 thread (the run in files.md, which shared the
#            machine with an earlier version of ours);
#   windows  `speed-signs-windows`: ours with the first window's offset and side supervised too (fitted to 2.5x the
#            sign) and the class read by the per-glimpse heads (readout=any), from the same reader, 10 epochs (about
#            8 minutes each with validation, so a 95-minute budget);
#   search   `speed-signs-search`: windows with the window loss owning the windows' offset and side (detached from
#            the likelihood, weight 30) and the later glimpses' cells supervised while the sign is not yet found,
#            from the same reader, 10 epochs, the same budget;
#   search1  the same with train.seed=1 (the second seed);
#   polish   each search run's reader polished (benchmarks/speed_signs_polish.py): a copy of its glimpse encoder read only by
#            the per-glimpse heads (model.reader=separate), trained 3 epochs on its own glimpses of the training
#            scenes and 30,000 drawn crops at windows like its own; where it looks does not change. Then
#            validation and test; files.md reports the one of the two that reads validation best.
# Needs the data first (about 25 minutes on 2 cores):
#   vsaccade generate speed-signs runs/speed-signs && vsaccade prepare runs/speed-signs runs/speed-signs-tiff
# (the generator writes the boxes beside the images, runs/speed-signs-boxes: BOXES, found from DATA by default)
# Usage: bash benchmarks/speed_signs.sh [DATA [ROOT [OVERRIDES...]]] (defaults runs/speed-signs-tiff, runs);
# STEPS="reader hard ours" runs only those steps.
set -uo pipefail
data=${1:-runs/speed-signs-tiff}
root=${2:-runs}
shift 2 || shift $# || true
common=("$@")
boxes=${BOXES:-${data%-tiff}-boxes}
box_args=(); [ -d "$boxes" ] && box_args=(--set task.boxes="$boxes")
script_boxes=(); [ -d "$boxes" ] && script_boxes=(--boxes "$boxes")
steps=${STEPS:-reader hard ours control windows search search1 polish}
here=$(dirname "$0")
mkdir -p "$root"

run() {  # name, preset, then vsaccade train arguments
  local name=$1 preset=$2; shift 2
  local out="$root/$name"
  [ -f "$out/results.json" ] && { echo "$name: done"; return; }
  local resume=(); [ -f "$out/last.pt" ] && resume=(--resume)
  echo "$(date +%T) start $name"
  vsaccade train --preset "$preset" --set task.root="$data" --set train.threads=2 --no-progress --out "$out" \
      "${resume[@]}" "${box_args[@]}" "$@" "${common[@]}" > "$root/$name.log" 2>&1
  echo "$(date +%T) end $name (exit $?)"
}

reader="$root/speed-signs-reader.pt"
if [[ " $steps " == *" reader "* ]]; then
  if [ -f "$reader" ]; then echo "reader: done"; else
    echo "$(date +%T) start reader"
    python "$here/speed_signs_reader.py" --root "$data" "${script_boxes[@]}" --synthetic 60000 --epochs 8 --cosine --batch-size 64 --threads 2 \
        --save "$reader" --json "$root/speed-signs-reader-pretrain.json" > "$root/speed-signs-reader.log" 2>&1
    echo "$(date +%T) end reader (exit $?)"
  fi
fi
hard="$root/speed-signs-reader-hard.pt"
if [[ " $steps " == *" hard "* ]]; then
  if [ -f "$hard" ]; then echo "hard: done"; else
    echo "$(date +%T) start hard"
    python "$here/speed_signs_reader.py" --root "$data" "${script_boxes[@]}" --load "$reader" --synthetic 20000 --centred-decoys 1.0 --epochs 3 \
        --cosine --lr 0.0003 --batch-size 64 --threads 2 --save "$hard" --json "$root/speed-signs-reader-hard.json" \
        > "$root/speed-signs-reader-hard.log" 2>&1
    echo "$(date +%T) end hard (exit $?)"
  fi
fi
if [[ " $steps " == *" ours "* ]]; then
  run speed-signs-boxes-hard-s0 speed-signs-boxes --epochs 10 --max-minutes 75 --set train.init_weights="$hard"
fi
# The control ran while the preset still trained the per-glimpse heads on every glimpse and took their reward (it
# was started before those two were dropped; files.md): these overrides reproduce it.
if [[ " $steps " == *" control "* ]]; then
  run speed-signs-boxes-noglimpse-s0 speed-signs-boxes --no-glimpses --epochs 10 --max-minutes 72 --set train.threads=1 \
      --set objective.glimpse_loss_weight=1 --set objective.glimpse_reward_weight=1
fi
if [[ " $steps " == *" windows "* ]]; then
  run speed-signs-windows-s0 speed-signs-windows --epochs 10 --max-minutes 95 --set train.init_weights="$hard"
fi
if [[ " $steps " == *" search "* ]]; then
  run speed-signs-search-s0 speed-signs-search --epochs 10 --max-minutes 95 --set train.init_weights="$hard"
fi
if [[ " $steps " == *" search1 "* ]]; then
  run speed-signs-search-s1 speed-signs-search --epochs 10 --max-minutes 95 --set train.init_weights="$hard" --set train.seed=1
fi
if [[ " $steps " == *" polish "* ]]; then
  for name in speed-signs-search-s0 speed-signs-search-s1; do
    polished="$root/$name-polished.pt"
    [ -f "$root/$name/best.pt" ] || { echo "polish: $name not trained"; continue; }
    if [ -f "$polished" ]; then echo "polish $name: done"; continue; fi
    echo "$(date +%T) start polish $name"
    python "$here/speed_signs_polish.py" "$root/$name/best.pt" --root "$data" "${script_boxes[@]}" --crops 30000 --held-out 3000 \
        --epochs 3 --threads 2 --out "$polished" --json "$root/$name-polish.json" > "$root/$name-polish.log" 2>&1 &&
      vsaccade evaluate "$polished" --split validation --no-references --json "$root/$name-polished-validation.json" \
        >> "$root/$name-polish.log" 2>&1 &&
      vsaccade evaluate "$polished" --no-references --json "$root/$name-polished-test.json" >> "$root/$name-polish.log" 2>&1
    echo "$(date +%T) end polish $name (exit $?)"
  done
fi
