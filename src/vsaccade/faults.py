"""Test hooks that make a run fail at a named point, so tests can check what survives a crash.

    VSACCADE_FAULT="point@n[:rank],..."      (never set in normal use)

    step        SIGKILL this process right after optimiser step n (counted from 1 over the whole run)
    epoch       SIGKILL right after epoch n ended and its checkpoints were written
    reader-epoch  the same in a reader stage (reader_stages.fit), after its state was saved
    checkpoint  SIGKILL inside this process's n-th checkpoint write: the temporary file is written, not yet renamed
    nan         the loss of the n-th step attempted (taken or skipped) is NaN (only on `rank`, if one is given)

tests/test_resume.py, test_distributed.py and test_reader_stages.py use them; with the variable unset each hook is one lookup.
"""

from __future__ import annotations

import os
import signal

_checkpoint_writes = 0


def _armed(point: str, count: int, rank: int | None = None) -> bool:
    spec = os.environ.get("VSACCADE_FAULT", "")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rest = item.partition("@")
        number, _, only_rank = rest.partition(":")
        if name == point and number.isdigit() and int(number) == count and (not only_rank or rank is None
                                                                              or int(only_rank) == rank):
            return True
    return False


def kill_if_armed(point: str, count: int) -> None:
    if _armed(point, count):
        os.kill(os.getpid(), signal.SIGKILL)


def inside_checkpoint_write() -> None:
    global _checkpoint_writes
    _checkpoint_writes += 1
    kill_if_armed("checkpoint", _checkpoint_writes)


def nan_loss(step: int, rank: int) -> bool:
    return _armed("nan", step, rank)
