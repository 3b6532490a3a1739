"""Folder datasets and `vsaccade prepare`: a small generated folder is converted to tiled pyramidal TIFFs,
trained on through the CLI, and predicted; layout, orientation and boxes survive the conversion."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vsaccade.cli import main
from vsaccade.file_images import FileImage
from vsaccade.tasks import make_task

pyvips = pytest.importorskip("pyvips")


def make_folder(root, per_class=12, size=160, with_none=False):
    """Two classes: a bright square in the top-left or the bottom-right quarter, on dim noise; with_none adds a
    third, `none`, of noise alone (no box)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 4)):
        rows = []
        for label, name in enumerate(("left", "right", "none") if with_none else ("left", "right")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((size, size, 3)) * 60).astype(np.uint8)
                if name != "none":
                    y, x = rng.integers(8, size // 2 - 24, 2) + (size // 2 if label else 0)
                    pixels[y:y + 16, x:x + 16] = 255
                    rows.append({"path": f"{name}/{i}.jpg", "x0": x, "y0": y, "x1": x + 16, "y1": y + 16})
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg", quality=95)
        with open(root / split / "boxes.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "x0", "y0", "x1", "y1"])
            writer.writeheader()
            writer.writerows(rows)
    return root


def test_prepare_keeps_layout_orientation_and_boxes(tmp_path, capsys):
    source = make_folder(tmp_path / "src", per_class=2)
    rotated = Image.fromarray(np.zeros((40, 80, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(source / "train" / "left" / "rotated.jpg", exif=exif)
    (source / "train" / "left" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    status = main(["prepare", str(source), str(tmp_path / "dst"), "--no-progress"])
    assert status == 1 and "broken.png" in capsys.readouterr().err
    assert (tmp_path / "dst" / "train" / "right" / "1.tif").exists()
    upright = FileImage(tmp_path / "dst" / "train" / "left" / "rotated.tif")
    assert (upright.height, upright.width) == (80, 40) and upright.orientation == 1 and not upright.decodes_whole
    with open(tmp_path / "dst" / "train" / "boxes.csv") as handle:
        assert next(csv.DictReader(handle))["path"] == "left/0.tif"
    # running again keeps what exists and converts nothing twice
    assert main(["prepare", str(source), str(tmp_path / "dst"), "--no-progress"]) == 1


def test_folder_task_splits_classes_and_boxes(tmp_path):
    root = make_folder(tmp_path / "data", per_class=10)
    train, validation = make_task("folder", "train", root=str(root)), make_task("folder", "validation", root=str(root))
    assert train.classes == ["left", "right"] and len(train) == 18 and len(validation) == 2  # every 10th held out
    assert not {p for p, _ in train.items} & {p for p, _ in validation.items}
    from vsaccade.train import balancing_weights  # train.balance_classes: each class drawn equally often

    for name in ("0.jpg", "1.jpg"):
        (root / "train" / "left" / name).unlink()
    unbalanced = make_task("folder", "train", root=str(root))
    weights, labels = balancing_weights(unbalanced), torch.tensor(unbalanced.class_labels())
    assert torch.bincount(labels).tolist() == [8, 9] and torch.allclose(weights[labels == 0].sum(), weights[labels == 1].sum())
    sample = make_task("folder", "test", root=str(root), proxy_size=32)[5]
    assert sample.proxy.shape == (3, 32, 32) and sample.labels == {"label": 1} and sample.boxes.shape == (1, 4)
    with pytest.raises(Exception, match="root/<split>/<class>/<image>"):
        make_task("folder", "train", root=str(tmp_path / "nowhere"))


def test_proxy_budget_caps_the_share_of_pixels_the_view_reads(tmp_path):
    # 800x800 JPEGs: a 0.3 view (240 px) is shrunk from the whole image; a budget of 2% lowers it to the largest side
    # whose 2x thumbnail JPEG's 1/8 shrink-on-load still holds (100 px / 2 -> 48), which reads 1.6% of the pixels.
    root = make_folder(tmp_path / "data", per_class=2, size=800)
    assert make_task("folder", "test", root=str(root), proxy_size=0.3).proxy_size == 240
    task = make_task("folder", "test", root=str(root), proxy_size=0.3, proxy_budget=0.02)
    assert task.proxy_size == 48
    image = task[0].image
    assert image.pixels_requested / (800 * 800) <= 0.02 < image.proxy_read_share(task.proxy_size + 8)
    assert make_task("folder", "test", root=str(root), proxy_size=64, proxy_budget=0.02).proxy_size == 48
    with pytest.raises(Exception, match="task.proxy_budget"):
        make_task("folder", "test", root=str(root), proxy_size=0.3, proxy_budget=1.5)


def test_train_and_predict_from_prepared_files(tmp_path, capsys):
    # The folder preset as a user runs it, scaled down: its sizes are formulas of the images' (a 0.2 x 160-px proxy
    # is 32 pixels, one location cell per 8 of them), and its presence anchor needs the class without objects.
    root = make_folder(tmp_path / "src", per_class=12, with_none=True)
    assert main(["prepare", str(root), str(tmp_path / "tiff"), "--no-progress"]) == 0
    run = tmp_path / "run"
    argv = ["train", "--preset", "folder", "--out", str(run), "--no-progress", "--epochs", "2",
            "--set", f"task.root={tmp_path / 'tiff'}", "--set", "task.proxy_size=0.2",
            "--set", "model.glimpse_size=16", "--set", "model.glimpses=2", "--set", "model.hidden=32",
            "--set", "train.batch_size=8", "--set", "train.threads=1"]
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"]["classes"] == ["left", "none", "right"] and results["test"]["samples"] == 12
    assert results["model_config"]["heads"][0]["classes"] == ["left", "none", "right"]
    assert (results["model_config"]["proxy_size"], results["model_config"]["location_cells"]) == (32, 4)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run / "best.pt"), str(tmp_path / "tiff" / "test"), "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"left", "none", "right"} and "label_p_left" in rows[0]
    capsys.readouterr()
    shutil.rmtree(tmp_path / "tiff" / "train" / "none")
    assert main(argv[:4] + [str(tmp_path / "run2")] + argv[5:]) == 2
    assert "model.background" in capsys.readouterr().err


def test_the_box_supervised_speed_sign_preset_trains_on_a_folder_with_boxes(tmp_path, capsys):
    # speed-signs-search: box cells for the first and the later glimpses, windows fitted to the boxes and owned by
    # the window loss (detached), box glimpses, readout=any with the `none` folder as background; scaled down.
    root = make_folder(tmp_path / "data", per_class=8, size=320, with_none=True)
    run = tmp_path / "run"
    argv = ["train", "--preset", "speed-signs-search", "--out", str(run), "--no-progress", "--epochs", "1",
            "--set", f"task.root={root}", "--set", "task.proxy_size=32", "--set", "model.location_cells=8",
            "--set", "model.glimpse_size=16", "--set", "model.hidden=32", "--set", "model.s_min=0.1",
            "--set", "model.s_max=0.3", "--set", "train.batch_size=8", "--set", "train.threads=1"]
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["model_config"]["window_gradient"] == "detached" and results["objective_config"]["search_weight"] == 1.0
    assert results["test"]["samples"] == 12 and results["model_config"]["heads"][0]["classes"] == ["left", "none", "right"]
    for split in ("train", "test"):  # without boxes, box supervision is refused before training
        (root / split / "boxes.csv").unlink()
    assert main(argv[:4] + [str(tmp_path / "run2")] + argv[5:]) == 2
    assert "needs boxes" in capsys.readouterr().err


def test_file_images_survive_pickling_for_dataloader_workers(tmp_path):
    import pickle

    root = make_folder(tmp_path / "data", per_class=2)
    image = FileImage(root / "train" / "left" / "0.jpg")
    before = image.read_region(0, 0, 32, 32)
    copy = pickle.loads(pickle.dumps(image))
    assert torch.equal(copy.read_region(0, 0, 32, 32), before)


@pytest.mark.parametrize("preset", ["folder", "speed-signs"])
def test_label_only_presets_never_read_the_boxes(tmp_path, preset, capsys):
    # Labels only, enforced: the same run with the boxes file deleted gives a bit-identical model (the boxes may
    # only be read to measure hit rates after training).
    root = make_folder(tmp_path / "data", per_class=8, size=320, with_none=True)
    argv = ["train", "--preset", preset, "--no-progress", "--epochs", "2", "--set", f"task.root={root}",
            "--set", "task.proxy_size=32", "--set", "model.location_cells=8", "--set", "model.glimpse_size=16",
            "--set", "model.hidden=32", "--set", "model.s_min=0.1", "--set", "model.s_max=0.3",
            "--set", "train.batch_size=8", "--set", "train.threads=1", "--set", "train.seed=3"]
    assert main(argv + ["--out", str(tmp_path / "with")]) == 0
    for split in ("train", "test"):
        (root / split / "boxes.csv").unlink()
    assert main(argv + ["--out", str(tmp_path / "without")]) == 0
    with_boxes, without = (torch.load(tmp_path / run / "best.pt", weights_only=False)["state_dict"] for run in ("with", "without"))
    assert with_boxes.keys() == without.keys()
    assert all(torch.equal(with_boxes[name], without[name]) for name in with_boxes)
    # Without boxes, the log still says where the model looks: the first glimpse's spread over cells, how often it
    # repeats the last epoch's cell, and (with a proxy attention anchor) what the proxy alone reads.
    epochs = [json.loads(line)["validation"]["model"] for line in (tmp_path / "without" / "metrics.jsonl").read_text().splitlines()]
    assert epochs[0]["hit_rate"] == 0.0 and "first_look_repeat" not in epochs[0]["location"]
    location = epochs[1]["location"]
    assert 0.0 < location["first_look_spread"] <= 1.0 and 0.0 <= location["first_look_repeat"] <= 1.0
    assert location["proxy_heads"]["label"]["accuracy"] >= 0.0  # both presets look through a proxy attention
    assert ("object_or_background" in location["proxy_heads"]["label"]) == (preset == "folder")  # the presence anchor
    if preset == "folder":  # after training, boxes kept elsewhere measure where the glimpses landed
        (tmp_path / "boxes").mkdir()
        make_folder(tmp_path / "again", per_class=8, size=320, with_none=True)
        shutil.copy(tmp_path / "again" / "test" / "boxes.csv", tmp_path / "boxes" / "test.csv")
        assert main(["evaluate", str(tmp_path / "without" / "best.pt"), "--boxes", str(tmp_path / "boxes"),
                     "--no-references", "--json", str(tmp_path / "hits.json")]) == 0
        assert json.loads((tmp_path / "hits.json").read_text())["task"]["boxes"] == str(tmp_path / "boxes" / "test.csv")
        capsys.readouterr()
        assert main(["evaluate", "megapixel", "--boxes", str(tmp_path / "boxes")]) == 2
        assert "--boxes is for folder datasets" in capsys.readouterr().err


def test_dataloader_workers_read_files_without_hanging(tmp_path):
    # A forked worker waited forever on libvips' thread pool, started in the parent by the file scan; workers are
    # spawned now. Run in a subprocess so that a regression fails on the timeout instead of hanging the suite.
    import os
    import subprocess
    import sys

    root = make_folder(tmp_path / "data", per_class=6, with_none=True)
    argv = [sys.executable, "-m", "vsaccade.cli", "train", "--preset", "folder", "--out", str(tmp_path / "run"),
            "--no-progress", "--epochs", "1", "--set", f"task.root={root}", "--set", "task.proxy_size=32",
            "--set", "model.location_cells=8", "--set", "model.glimpse_size=16", "--set", "model.hidden=32",
            "--set", "train.batch_size=4", "--set", "train.threads=1", "--set", "train.num_workers=1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "VSACCADE_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").exists()


def test_training_says_what_each_split_holds_and_warns_of_small_or_unequal_classes(tmp_path):
    from vsaccade.config import TrainConfig
    from vsaccade.train import describe_classes

    root = make_folder(tmp_path / "data", per_class=30, size=80)
    for path in sorted((root / "train" / "right").iterdir())[4:]:  # right: 4 images (none of them held out)
        path.unlink()
    tasks = {split: make_task("folder", split, root=str(root), proxy_size=16) for split in ("train", "validation", "test")}
    lines = []
    describe_classes(tasks, TrainConfig(), lines.append)
    assert lines[0] == "train: 31 images: left 27, right 4"
    assert lines[1] == "validation: 3 images (held out of the training folder): left 3, right 0"
    assert lines[2] == "test: 8 images: left 4, right 4"
    assert "fewer than 20 training images in right (4)" in lines[3]
    assert "7x the training images" in lines[4] and "train.balance_classes=true" in lines[4]
    balanced = []
    describe_classes(tasks, TrainConfig(balance_classes=True), balanced.append)
    assert len(balanced) == 4  # no imbalance warning where the classes are drawn equally


def test_time_left_follows_the_pace_so_far_within_the_budget():
    from vsaccade.train import clock, minutes_left

    assert minutes_left(seconds=60, steps_done=10, steps_left=50) == 5.0
    assert minutes_left(seconds=60, steps_done=10, steps_left=50, budget_left=2.0) == 2.0
    assert minutes_left(seconds=60, steps_done=10, steps_left=50, budget_left=-1.0) == 0.0
    assert (clock(5.0), clock(65.4), clock(600)) == ("5m", "1h05m", "10h00m")
