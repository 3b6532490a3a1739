"""Checkpoints written before the model was built from parts (vsaccade at 704c464; tests/data/legacy-704c464/make.py
wrote them with that code) load and predict exactly as that code did, and a run it left killed resumes to the
same weights and optimiser state as its run never killed."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

import vsaccade
from vsaccade.checkpoint import upgrade_state_dict

HERE = Path(__file__).parent
LEGACY = HERE / "data" / "legacy-704c464"
sys.path.insert(0, str(LEGACY))
from make import MODELS, RUN_SIZES, outputs  # noqa: E402

from training_runs import SMALL_RUN, vsaccade as run  # noqa: E402


@pytest.mark.parametrize("name", [*MODELS, "export-test-time"])
def test_a_legacy_checkpoint_predicts_as_before(name):
    expected = torch.load(LEGACY / "expected.pt", weights_only=False)[name]
    got = outputs(vsaccade.load(LEGACY / f"{name}.pt"))
    assert got["logits"].keys() == expected["logits"].keys()
    for head in expected["logits"]:
        assert torch.equal(got["logits"][head], expected["logits"][head]), head
    assert torch.equal(got["z"], expected["z"])


def test_a_legacy_run_killed_mid_epoch_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(LEGACY / "killed-last.pt", out / "last.pt")
    resumed = run(SMALL_RUN + ["--epochs", "3", "--set", "train.checkpoint_every_steps=2", "--out", str(out),
                               *RUN_SIZES, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ours = torch.load(out / "last.pt", weights_only=False)
    theirs = torch.load(LEGACY / "uninterrupted-last.pt", weights_only=False)
    reference = upgrade_state_dict(theirs["state_dict"])
    assert ours["state_dict"].keys() == reference.keys()
    assert all(torch.equal(ours["state_dict"][k], reference[k]) for k in reference)
    for index, state in theirs["optimizer"]["state"].items():
        assert all(torch.equal(ours["optimizer"]["state"][index][k], v) for k, v in state.items())
