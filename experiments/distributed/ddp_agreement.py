"""How far 2-process (gloo) and 1-process training end apart (docs/distributed.md's table): the same small run (the
tiny preset, font digits, 1 epoch of N training images in global batches of 32, one thread, deterministic
algorithms: the run tests/training_runs.py's SMALL_RUN names) under torchrun and alone, then the largest absolute
difference of any weight or Adam tensor of the two runs' last.pt.

    python experiments/distributed/ddp_agreement.py --images 640 --set model.locator=gaussian --set train.lr=5e-4
    python experiments/distributed/ddp_agreement.py --images 160          # the mixture posterior after 5 steps
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SMALL_RUN = ["train", "--preset", "tiny", "--digits", "font", "--no-progress", "--set", "train.threads=1",
             "--set", "train.train_size=160", "--set", "train.validation_size=32", "--set", "train.test_size=32",
             "--set", "train.deterministic=true"]
TIMEOUT = 1800  # seconds per run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(fault: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VSACCADE_FAULT"}
    return {**env, "OMP_NUM_THREADS": "1", "VSACCADE_OFFLINE": "1", **({"VSACCADE_FAULT": fault} if fault else {})}


def training_state(run: Path) -> dict:
    """Every tensor that defines where training stands: weights and optimiser state of last.pt."""
    payload = torch.load(Path(run) / "last.pt", weights_only=True)
    state = {f"model.{k}": v for k, v in payload["state_dict"].items()}
    for index, entry in payload["optimizer"]["state"].items():
        state.update({f"optimizer.{index}.{k}": v for k, v in entry.items()})
    return state


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--images", type=int, default=640, help="training images: steps = images / 32")
parser.add_argument("--set", action="append", default=[], help="extra config overrides")
parser.add_argument("--fault", default="", help="VSACCADE_FAULT for both runs, e.g. nan@5 (rank 1 only under torchrun)")
args = parser.parse_args()
run = SMALL_RUN + ["--epochs", "1", "--set", f"train.train_size={args.images}", "--set", "train.validation_size=64",
                   "--set", "train.test_size=64"] + [x for item in args.set for x in ("--set", item)]
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), "-m", "vsaccade.cli"]
    two = subprocess.Popen(torchrun + run + ["--out", str(root / "two")], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=environment(f"{args.fault}:1" if args.fault else ""))
    one = subprocess.run([sys.executable, "-m", "vsaccade.cli", *run, "--out", str(root / "one")], capture_output=True,
                         text=True, timeout=TIMEOUT, env=environment(args.fault))
    assert one.returncode == 0, one.stderr[-2000:]
    output, _ = two.communicate(timeout=TIMEOUT)
    assert two.returncode == 0, f"torchrun exit {two.returncode}:\n{output[-3000:]}"
    a, b = training_state(root / "one"), training_state(root / "two")
    worst = max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point())
    print(f"{args.images // 32} step attempts, {' '.join(args.set) or 'preset settings'}: max abs difference "
          f"{worst[0]:.2g} ({worst[1]})")
