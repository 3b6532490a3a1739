"""Checkpoints written before the model was built from parts (vsaccade at 704c464; tests/data/legacy-704c464/make.py
wrote them with that code) load and predict as that code did, and a run it left killed resumes to the weights and
optimiser state of its run never killed. Bitwise on the CPU that wrote them; another CPU's kernels round differently
(seen: 1e-7 in the logits, and up to 4e-3 in a bias after the resumed run's training steps), so the comparisons allow
that: the weights' tolerance, 8e-3, is half of how far the killed run's weights lie from the finished run's (1.6e-2),
so a resume that trained nothing still fails."""

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
        torch.testing.assert_close(got["logits"][head], expected["logits"][head], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["z"], expected["z"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefix, extra", [("", []), ("noglimpse-", ["--no-glimpses"])])
def test_a_legacy_run_killed_mid_epoch_resumes_exactly(tmp_path, prefix, extra):
    """The no-glimpse control's glimpse encoder is no longer built: its (never used) weights and optimiser state are
    dropped on resume, the rest maps onto today's parameters by name and ends as the run never killed did."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(LEGACY / f"{prefix}killed-last.pt", out / "last.pt")
    shutil.copy(LEGACY / f"{prefix}killed-last.pt", out / "best.pt")  # the run's best so far, for its final test
    resumed = run(SMALL_RUN + ["--epochs", "3", "--set", "train.checkpoint_every_steps=2", "--out", str(out),
                               *RUN_SIZES, *extra, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ours = torch.load(out / "last.pt", weights_only=False)
    theirs = torch.load(LEGACY / f"{prefix}uninterrupted-last.pt", weights_only=False)
    reference = {k: v for k, v in upgrade_state_dict(theirs["state_dict"]).items() if k in ours["state_dict"]}
    assert ours["state_dict"].keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(ours["state_dict"][k], reference[k], rtol=0.0, atol=8e-3, msg=k)
    old_index = {name: i for i, name in enumerate(upgrade_state_dict(theirs["state_dict"]))}
    for new_index, name in enumerate(ours["state_dict"]):
        old = theirs["optimizer"]["state"].get(old_index[name])
        assert (old is None) == (new_index not in ours["optimizer"]["state"]), name
        if old is not None:
            for k, v in old.items():
                torch.testing.assert_close(ours["optimizer"]["state"][new_index][k], v, rtol=0.1, atol=1e-3,
                                           msg=f"{name} {k}")
