"""Synthetic large-image tasks, built from a digit source, each a registered `Task`."""

from .base import TASKS, Batch, Head, Sample, Task, collate, make_task, register_task  # noqa: F401
