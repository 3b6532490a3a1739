"""How far 2-process (gloo) and 1-process training end apart (docs/distributed.md's table): the same small run
(tests/training_runs.SMALL_RUN, 1 epoch of N training images in global batches of 32) under torchrun and alone,
then the largest absolute difference of any weight or Adam tensor.

    python benchmarks/ddp_agreement.py --images 640 --set model.locator=gaussian --set train.lr=5e-4
    python benchmarks/ddp_agreement.py --images 160          # the mixture posterior after 5 steps
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_runs import SMALL_RUN, finish, free_port, torchrun, training_state, vsaccade  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--images", type=int, default=640, help="training images: steps = images / 32")
parser.add_argument("--set", action="append", default=[], help="extra config overrides")
parser.add_argument("--fault", default="", help="VSACCADE_FAULT for both runs, e.g. nan@5 (rank 1 only under torchrun)")
args = parser.parse_args()
run = SMALL_RUN + ["--epochs", "1", "--set", f"train.train_size={args.images}", "--set", "train.validation_size=64",
                   "--set", "train.test_size=64"] + [x for item in args.set for x in ("--set", item)]
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    two = torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                   run + ["--out", str(root / "two")], VSACCADE_FAULT=f"{args.fault}:1" if args.fault else "")
    one = vsaccade(run + ["--out", str(root / "one")], VSACCADE_FAULT=args.fault)
    assert one.returncode == 0, one.stderr[-2000:]
    finish(two)
    a, b = training_state(root / "one"), training_state(root / "two")
    worst = max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point())
    print(f"{args.images // 32} step attempts, {' '.join(args.set) or 'preset settings'}: max abs difference "
          f"{worst[0]:.2g} ({worst[1]})")
