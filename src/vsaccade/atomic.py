"""Atomic writes: a temporary file beside the target, renamed into place, so a killed process leaves the old
file or the new one, never half of one (checkpoints have their own: checkpoint.save_checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_csv(path, columns: list, rows: list) -> Path:
    """A header and rows (lists) as CSV, atomically."""
    import csv
    import io

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(rows)
    return write_text(path, text.getvalue())


def save_tensors(data, path) -> Path:
    """torch.save, atomically (caches; checkpoints have save_checkpoint, which also fsyncs)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(data, buffer)
    return write_bytes(path, buffer.getvalue())


def cached_tensors(path, make):
    """torch.load(path), else make() saved there atomically (a killed process never leaves half a cache)."""
    import torch

    path = Path(path)
    if path.exists():
        return torch.load(path)
    data = make()
    save_tensors(data, path)
    return data


def cache_name(prefix: str, **inputs) -> str:
    """A cache file's name that changes with everything it is made from (`inputs`, JSON-serialisable)."""
    import hashlib
    import json

    return f"{prefix}-{hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]}.pt"
