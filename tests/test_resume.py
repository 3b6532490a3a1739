"""Exact resume: a run killed with SIGKILL (mid-epoch, between epochs, inside a checkpoint write) or stopped with
SIGTERM, then resumed, ends with bitwise the same weights and optimiser state as a run never interrupted."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from training_runs import SMALL_RUN, environment, training_state, vsaccade

# 3 epochs of 5 steps; last.pt every 2 steps as well as at each epoch's end.
RUN = SMALL_RUN + ["--epochs", "3", "--set", "train.checkpoint_every_steps=2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    done = vsaccade(RUN + ["--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def assert_same_training_state(run, reference):
    ours, theirs = training_state(run), training_state(reference)
    assert ours.keys() == theirs.keys()
    different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not different, f"differs from the uninterrupted run: {different[:5]}"
    assert json.loads((run / "results.json").read_text())["test"] == json.loads((reference / "results.json").read_text())["test"]


# checkpoint@3: the run's 3rd checkpoint write is epoch 1's best.pt (after last.pt at steps 2 and 4), after epoch
# 1's metrics line: the resumed run redoes step 5 and must not log epoch 1 twice.
@pytest.mark.parametrize("fault", ["step@7", "epoch@1", "checkpoint@3"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, fault):
    out = tmp_path / "run"
    killed = vsaccade(RUN + ["--out", str(out)], VSACCADE_FAULT=fault)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert (out / "last.pt").exists() and not (out / "results.json").exists()
    if fault.startswith("checkpoint"):
        assert [p.name.split(".")[0] for p in out.glob("*.tmp")] == ["best"], "killed inside the best.pt write"
    resumed = vsaccade(RUN + ["--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert not list(out.glob("*.tmp")), "an unfinished checkpoint write was left behind"
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert_same_training_state(out, uninterrupted)


def test_sigterm_writes_a_checkpoint_and_resume_is_exact(tmp_path, uninterrupted):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "vsaccade.cli", *RUN, "--out", str(out),
                                "--set", "train.checkpoint_every_steps=0"],  # no periodic checkpoint to fall back on
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment())
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # epoch 1 done: stop inside epoch 2
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    payload = torch.load(out / "last.pt", weights_only=True)
    assert payload["epoch"] >= 1 and not (out / "results.json").exists()
    resumed = vsaccade(RUN + ["--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_training_state(out, uninterrupted)
