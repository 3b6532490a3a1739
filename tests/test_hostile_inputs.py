"""Hostile inputs (docs/reliability.md): convertible images are converted; everything else gets a one-line error
naming the input and the problem; nothing crashes with a traceback; training scans file datasets first and stops
on a bad file unless --skip-bad; extreme posteriors stay finite; non-finite steps are skipped, then stop the run."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

import vsaccade
from vsaccade.cli import main
from vsaccade.model.locations import MAX_SCALE, MIN_SCALE, as_normal
from vsaccade.presets import resolve
from vsaccade.train import TrainingStopped, train

from hostile_corpus import IMAGE_CASES, make_images, predict_outcomes, tiny_checkpoint

pytest.importorskip("pyvips")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("vsaccade: "), err
    return err


def test_every_corpus_image_is_converted_or_gets_a_one_line_error(tmp_path):
    status, outcomes, stderr = predict_outcomes(tiny_checkpoint(tmp_path / "model.pt"), tmp_path / "corpus")
    assert status == 1 and "Traceback" not in stderr
    for name, (how, expected) in IMAGE_CASES.items():
        got = outcomes.get(name)
        assert got is not None, f"{how}: neither a row nor a message"
        if expected == "converted":
            assert got == "converted", f"{how}: {got}"
        else:
            assert re.search(expected, got) and name in got, f"{how}: {got}"


def test_non_finite_tensors_and_wrong_shapes_get_clear_errors(saved_tiny):
    model = vsaccade.load(saved_tiny)
    for bad, message in ((torch.full((3, 64, 64), math.nan), "NaN or infinite"),
                         (torch.full((3, 64, 64), math.inf), "NaN or infinite"),
                         (torch.zeros(2, 3, 64, 64, 1), "shape|dimensions"),
                         (torch.zeros(3, 8, 8), "smaller than one")):
        with pytest.raises(vsaccade.ImageError, match=message) as caught:
            vsaccade.predict(model, bad)
        assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model.pt")


@pytest.mark.parametrize("argv, message", [
    (["train", "--set", "train.lr=NaN"], "must be finite"),
    (["train", "--set", "train.lr=-1"], "lr must be positive"),
    (["train", "--set", "model.glimpses=0"], "must be positive"),
    (["train", "--set", "model.glimpses=two"], "must be int"),
    (["train", "--set", "model.no_such_field=1"], "unknown ModelConfig field"),
    (["train", "--set", "train.device=tpu"], "device must be"),
    (["train", "--set", "train.precision=fp8"], "precision must be"),
    (["train", "--preset", "no-such-preset"], "unknown preset"),
])
def test_malformed_configs_get_one_line_errors(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert message in one_line_error(capsys)


def test_malformed_checkpoints_get_one_line_errors(tmp_path, capsys, saved_tiny):
    good = saved_tiny.read_bytes()
    cases = {"truncated.pt": good[: len(good) // 2], "random.pt": np.random.default_rng(0).bytes(4000),
             "empty.pt": b"", "text.pt": b'{"model_config": {}}'}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert main(["evaluate", str(tmp_path / name)]) == 2
        assert "checkpoint" in one_line_error(capsys)
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in one_line_error(capsys)


def test_resuming_with_another_model_is_a_clear_error(tmp_path, capsys):
    run = ["train", "--preset", "tiny", "--digits", "font", "--no-progress", "--epochs", "1", "--out", str(tmp_path),
           "--set", "train.train_size=64", "--set", "train.validation_size=16", "--set", "train.test_size=16"]
    assert main(run) == 0
    capsys.readouterr()
    assert main(run + ["--resume", "--set", "model.hidden=48"]) == 2
    assert "another model config" in one_line_error(capsys)


def test_bad_label_files_get_one_line_errors(tmp_path):
    from test_folder_dataset import make_folder

    from vsaccade.data.digits import DataSourceError
    from vsaccade.data.mnist import load_mnist
    from vsaccade.images import ImageError
    from vsaccade.tasks import make_task

    root = make_folder(tmp_path / "data", per_class=2)
    (root / "train" / "boxes.csv").write_text("path,x0,y0,x1,y1\nleft/0.jpg,1,2,three,4\n")
    with pytest.raises(ImageError, match=r"boxes.csv, line 2: expected columns"):
        make_task("folder", "train", root=str(root))
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    (mnist / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                                   + bytes(2 * 784))
    (mnist / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(DataSourceError, match="expected 2 uint8 labels"):
        load_mnist(mnist, "test")


def test_training_scans_files_first_and_skip_bad_leaves_them_out(tmp_path, capsys):
    from test_folder_dataset import make_folder

    root = make_folder(tmp_path / "data", per_class=6, with_none=True)
    jpeg = (root / "train" / "left" / "0.jpg").read_bytes()
    (root / "train" / "left" / "header-only.jpg").write_bytes(jpeg[:200])
    (root / "train" / "left" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # a whole header: opens, then fails
    (root / "train" / "right" / "empty.jpg").write_bytes(b"")
    shutil.copy(make_images(tmp_path / "hostile")["smaller-than-glimpse.png"], root / "train" / "right" / "tiny.png")
    argv = ["train", "--preset", "folder", "--no-progress", "--epochs", "1", "--set", f"task.root={root}",
            "--set", "task.proxy_size=32", "--set", "model.location_cells=8", "--set", "model.glimpse_size=16",
            "--set", "model.glimpses=2", "--set", "model.hidden=32", "--set", "train.batch_size=4",
            "--set", "train.threads=1"]
    assert main(argv + ["--out", str(tmp_path / "stopped")]) == 2
    error = one_line_error(capsys)
    assert "train split" in error and "--skip-bad" in error and "(and 3 more)" in error  # the four files below
    assert main(argv + ["--out", str(tmp_path / "run"), "--skip-bad"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    bad = [path for split in ("train", "validation") for path, _ in config["bad_files"].get(split, [])]
    assert sorted(p.rsplit("/", 1)[-1] for p in bad) == ["empty.jpg", "header-only.jpg", "tiny.png", "truncated.jpg"]


def test_extreme_posteriors_give_finite_locations_and_kl():
    for value in (1e30, -1e30, math.inf, math.nan):
        dist = as_normal(torch.full((4, 6), value))
        assert torch.isfinite(dist.mean).all() and torch.isfinite(dist.stddev).all()
        assert (dist.stddev >= MIN_SCALE).all() and (dist.stddev <= MAX_SCALE).all()
    model = vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpses=3)
    with torch.no_grad():
        for module in model.locations.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.fill_(1e20)
    from vsaccade.images import ArrayImage

    images = [ArrayImage(torch.rand(1, 64, 64)) for _ in range(2)]
    proxy = torch.stack([im.proxy(16) for im in images])
    output = model(images, proxy, torch.ones(2, 16, 16, dtype=torch.bool))
    assert torch.isfinite(output.z).all() and torch.isfinite(output.kl).all()
    assert (output.z[..., 1:].abs() <= 1).all()


def small_tiny(overrides):
    return resolve("tiny", ["train.threads=1", "train.train_size=96", "train.validation_size=16", "train.test_size=16",
                            "train.epochs=1", *overrides])


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VSACCADE_FAULT", "nan@2")
    results = train(*small_tiny([]), tmp_path / "one", digit_source="font", progress=False, log=lambda *_: None)
    assert results["skipped_steps"] == 1 and results["images_seen"] == 2 * 32
    monkeypatch.setenv("VSACCADE_FAULT", "nan@2,nan@3,nan@4")
    with pytest.raises(TrainingStopped, match="3 consecutive steps had a non-finite loss") as stopped:
        train(*small_tiny(["train.max_nonfinite_steps=3", "train.train_size=160"]), tmp_path / "three", digit_source="font", progress=False,
              log=lambda *_: None)
    assert stopped.value.exit_code == 1
    state = torch.load(tmp_path / "three" / "last.pt", weights_only=True)
    assert state["global_step"] == 1 and state["skipped_steps"] == 3


def test_bf16_autocast_trains(tmp_path):
    results = train(*small_tiny(["train.precision=bf16"]), tmp_path, digit_source="font", progress=False,
                    log=lambda *_: None)
    assert results["skipped_steps"] == 0 and math.isfinite(results["test"]["model"]["heads"]["digit"]["accuracy"])
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(metrics["train"]["loss"])
