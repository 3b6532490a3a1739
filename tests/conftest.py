"""Test environment: offline, MNIST from the shared folder beside the repo, an empty private cache."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ["VSACCADE_OFFLINE"] = "1"
if (SHARED_DATA / "mnist").is_dir():
    os.environ.setdefault("VSACCADE_DATA", str(SHARED_DATA))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VSACCADE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def needs_mnist():
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"MNIST not found at {SHARED_DATA / 'mnist'}")
