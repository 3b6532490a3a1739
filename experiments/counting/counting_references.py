"""Model-free references for the counting task (docs/benchmarks/counting.md), from the scene descriptions alone:
the most frequent count, the median's mean absolute error, and the best accuracy / MAE achievable knowing only the
number of units (what a perfect reader of the mini-map knows: targets and distractors look alike there); and the
glimpse-on-target rate of the best policy that cannot tell targets from distractors before it looks: each of the T
glimpses centred on a different unit while units remain, so a scene of n units, k of them targets, gets
min(T, n) * k / n targets hit in expectation (units being exchangeable for such a policy).

    python experiments/counting/counting_references.py --preset counting-768
"""

import argparse
from collections import Counter, defaultdict

from vsaccade import make_task, resolve

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="counting-768")
parser.add_argument("--split", default="test")
args = parser.parse_args()
task = make_task("counting", args.split, **resolve(args.preset)[2].task_options)
scenes = [task.scene(i) for i in range(len(task))]
counts = [s.count for s in scenes]
frequency = Counter(counts)
median = sorted(counts)[len(counts) // 2]
by_units = defaultdict(Counter)
for scene in scenes:
    by_units[len(scene.centres)][scene.count] += 1
best = sum(c.most_common(1)[0][1] for c in by_units.values()) / len(counts)
best_mae = sum(min(sum(abs(k - guess) * n for k, n in c.items()) for guess in range(task.max_targets + 1))
               for c in by_units.values()) / len(counts)
print(f"{args.preset} {args.split} ({len(counts)} scenes): counts {sorted(frequency.items())}")
print(f"most frequent count: {100 * frequency.most_common(1)[0][1] / len(counts):.1f}%; "
      f"MAE of the median ({median}): {sum(abs(k - median) for k in counts) / len(counts):.2f}")
print(f"best from the number of units alone: {100 * best:.1f}%, MAE {best_mae:.2f}")
T = resolve(args.preset)[0].glimpses
blind = sum(min(T, len(s.centres)) * s.count / len(s.centres) for s in scenes if len(s.centres)) / (T * len(scenes))
print(f"glimpse on a target, best policy blind to which unit is a target (T = {T}): {100 * blind:.1f}%")
