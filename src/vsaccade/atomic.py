"""Atomic text writes: a temporary file beside the target, renamed into place, so a killed process leaves the old
file or the new one, never half of one (checkpoints have their own: checkpoint.save_checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
