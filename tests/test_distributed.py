"""torchrun on CPU (gloo): 2 processes train exactly as 1 with the same global batch, evaluate exactly as 1, skip
a step together when one rank's loss is not finite; two nodes meet through c10d rendezvous on 127.0.0.1."""

import json

import pytest

from training_runs import SMALL_RUN, finish, free_port, torchrun, training_state, vsaccade

# 20 step attempts: 640 training images in global batches of 32, one epoch. Step 5's loss is NaN (on rank 1
# only, under torchrun; in the single process, for its whole batch), so both runs skip it together.
# The model is the Gaussian posterior (every draw reparameterised) at lr 5e-4: measured 6.0e-7 apart after 20 steps
# (2.4e-5 at the tiny preset's lr 2e-3, where Adam carries rounding further). With the mixture posterior the runs
# agree to 1.1e-6 after 5 steps but part by ~1e-4 after 20 at either lr: a rounding difference in the summed
# gradients eventually flips one sampled cell (a discrete choice) and the runs then differ by a whole glimpse. The
# test checks the distributed arithmetic; the mixture's rank-independent draws are checked exactly by the
# evaluation test below (docs/distributed.md).
RUN = SMALL_RUN + ["--epochs", "1", "--set", "train.train_size=640", "--set", "train.validation_size=64",
                   "--set", "train.test_size=64", "--set", "model.locator=gaussian",
                   "--set", "train.lr=5e-4"]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    two = torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                   RUN + ["--out", str(root / "two")], VSACCADE_FAULT="nan@5:1")
    one = vsaccade(RUN + ["--out", str(root / "one")], VSACCADE_FAULT="nan@5")
    assert one.returncode == 0, one.stderr[-3000:]
    log = finish(two)
    return root / "one", root / "two", log


def test_two_processes_train_as_one(one_and_two):
    one, two, _ = one_and_two
    a, b = training_state(one), training_state(two)
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst
    config = json.loads((two / "config.json").read_text())
    assert config["processes"] == 2
    for run in (one, two):
        results = json.loads((run / "results.json").read_text())
        assert results["skipped_steps"] == 1 and results["images_seen"] == 19 * 32
        assert results["test"]["samples"] == 64


def test_a_non_finite_step_on_one_rank_is_skipped_by_all(one_and_two):
    _, _, log = one_and_two
    assert "step 5 (epoch 1, step 4) skipped: non-finite loss" in log


def test_two_process_evaluation_equals_one_process(tmp_path):
    """The bundled Megapixel model (mixture posterior, window inhibition), 24 test scenes, two posterior draws each,
    in batches of 5 that split differently across ranks: every figure equal."""
    args = ["evaluate", "megapixel", "--digits", "font", "--limit", "24", "--policy", "samples:2", "--batch-size", "5"]
    single = vsaccade(args + ["--json", str(tmp_path / "one.json")])
    assert single.returncode == 0, single.stderr[-3000:]
    finish(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                    args + ["--json", str(tmp_path / "two.json")]))
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["samples"] == b["samples"] == 24
    # every count and accuracy equal; a float summed in another order (the first look's spread) to 1e-6
    assert flattened(a).keys() == flattened(b).keys()
    for key, value in flattened(a).items():
        assert flattened(b)[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def flattened(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    flat = {}
    for key, value in tree.items():
        flat.update(flattened(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def test_two_nodes_meet_through_c10d_rendezvous(tmp_path):
    port = free_port()
    nodes = [torchrun(["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_id", "vsaccade-test",
                       "--rdzv_endpoint", f"127.0.0.1:{port}"],
                      SMALL_RUN + ["--epochs", "1", "--out", str(tmp_path / "run")]) for _ in range(2)]
    for node in nodes:
        finish(node)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["processes"] == 2 and results["images_seen"] == 160


@pytest.mark.parametrize("variant", ["speed-signs-search", "no-glimpses", "random-glimpses"])
def test_ddp_trains_without_searching_for_unused_parameters(tmp_path, variant):
    """DDP is built without find_unused_parameters: the box-supervised speed-sign model and the no-glimpse control
    train every parameter they have; an ablation that leaves some untrained (uniform glimpses: the location
    posterior is never used) has them frozen, and says so."""
    pytest.importorskip("pyvips")
    from test_folder_dataset import make_folder

    if variant == "speed-signs-search":
        root = make_folder(tmp_path / "data", per_class=8, size=320, with_none=True)
        args = ["train", "--preset", "speed-signs-search", "--no-progress", "--epochs", "1", "--set", f"task.root={root}",
                "--set", "task.proxy_size=32", "--set", "model.location_cells=8", "--set", "model.glimpse_size=16",
                "--set", "model.hidden=32", "--set", "model.s_min=0.1", "--set", "model.s_max=0.3",
                "--set", "train.batch_size=8", "--set", "train.threads=1"]
    else:
        args = SMALL_RUN + ["--epochs", "1"] + (["--no-glimpses"] if variant == "no-glimpses" else
                                                ["--set", "model.policy=random"])
    log = finish(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                          args + ["--out", str(tmp_path / "run")]))
    assert ("frozen" in log) == (variant == "random-glimpses"), log[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["processes"] == 2
