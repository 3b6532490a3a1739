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


@pytest.fixture(scope="session")
def tiny_speed_signs(tmp_path_factory):
    """A generated speed-sign folder small enough to train stages on in seconds (24 train, 8 validation, 8 test scenes
    of 240x180), its boxes beside it in ROOT-boxes; read-only for the tests that share it."""
    from vsaccade.cli import main

    root = tmp_path_factory.mktemp("signs") / "s"
    assert main(["generate", "speed-signs", str(root), "--size", "240x180", "--sign-sides", "16", "40", "--train", "24",
                 "--validation", "8", "--test", "8", "--no-progress"]) == 0
    return root
