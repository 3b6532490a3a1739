"""Helpers for tests that run `vsaccade train` in other processes (plain, killed, under torchrun)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

# A run small enough to repeat many times: the tiny preset, font digits, 160 training images in batches of 32
# (5 steps an epoch), one thread, deterministic algorithms.
SMALL_RUN = ["train", "--preset", "tiny", "--digits", "font", "--no-progress", "--set", "train.threads=1",
             "--set", "train.train_size=160", "--set", "train.validation_size=32", "--set", "train.test_size=32",
             "--set", "train.deterministic=true"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VSACCADE_FAULT"}
    return {**env, "OMP_NUM_THREADS": "1", "VSACCADE_OFFLINE": "1", **extra}


def vsaccade(args: list[str], timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """`python -m vsaccade.cli ARGS` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "vsaccade.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment(**env))


def torchrun(torchrun_args: list[str], args: list[str], timeout: float = 180, **env) -> subprocess.Popen:
    """`torchrun TORCHRUN_ARGS -m vsaccade.cli ARGS`, started (not waited for)."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "vsaccade.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment(**env))


def finish(process: subprocess.Popen, timeout: float = 180) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"timed out after {timeout} s:\n{output[-3000:]}")
    assert process.returncode == 0, f"exit {process.returncode}:\n{output[-3000:]}"
    return output


def training_state(run: Path) -> dict:
    """Every tensor that defines where training stands: weights and optimiser state of last.pt."""
    payload = torch.load(Path(run) / "last.pt", weights_only=True)
    state = {f"model.{k}": v for k, v in payload["state_dict"].items()}
    for index, entry in payload["optimizer"]["state"].items():
        state.update({f"optimizer.{index}.{k}": v for k, v in entry.items()})
    return state
