"""`vsaccade generate megapixel`: Megapixel MNIST as tiled pyramidal TIFFs by majority class, labels and boxes beside
the root; a folder task reads it, boxes from `task.boxes` matched without the extension."""

import csv

import pytest
import torch

pyvips = pytest.importorskip("pyvips")

from vsaccade.file_images import FileImage  # noqa: E402
from vsaccade.tasks import make_task  # noqa: E402
from vsaccade.tasks.megapixel import MegapixelMNIST, write_files  # noqa: E402

OPTIONS = {"canvas_size": 300, "noise_patches": 5, "proxy_scale": 0.2}


def test_megapixel_files_hold_the_lazy_canvases_and_their_four_labels(tmp_path):
    root = write_files(tmp_path / "mp", {"train": 4, "test": 2}, digit_source="font", progress=False, **OPTIONS)
    task = MegapixelMNIST("train", size=4, digit_source="font", **OPTIONS)
    rows = list(csv.DictReader(open(tmp_path / "mp-labels" / "train.csv")))
    assert len(rows) == 4 and not list(root.rglob("*.csv"))  # labels and boxes live beside the root
    for index, row in enumerate(rows):
        scene = task.scene(index)
        labels = task.labels(scene)
        assert row["path"].split("/")[0] == str(labels["majority"])
        assert (int(row["max"]), int(row["top"])) == (labels["max"], labels["top"])
        assert {int(k) for k in row["multi"].split(";")} == set(torch.nonzero(labels["multi"]).flatten().tolist())
        pixels = FileImage(root / "train" / row["path"], channels=1).read_region(0, 0, 300, 300)
        expected = (task.image(scene).render() * 255).round() / 255
        assert torch.allclose(pixels, expected, atol=1e-6)  # lossless, 8 bits
    from vsaccade.config import ConfigError

    with pytest.raises(ConfigError, match="other settings"):  # a rerun may continue, not mix settings
        write_files(tmp_path / "mp", {"train": 4}, seed=1, digit_source="font", progress=False, **OPTIONS)
    folder = make_task("folder", "train", root=str(root), channels=1, proxy_size=60, boxes=str(tmp_path / "mp-boxes"))
    sample = folder[0]
    assert sample.image.height == 300 and len(sample.boxes) == 5  # the five digits' boxes, matched to the .tif


def test_a_boxes_folder_that_is_not_a_folder_is_a_clear_error(tmp_path):
    from vsaccade.images import ImageError

    root = write_files(tmp_path / "mp", {"train": 2}, digit_source="font", progress=False, **OPTIONS)
    with pytest.raises(ImageError, match="task.boxes"):
        make_task("folder", "train", root=str(root), channels=1, boxes=str(tmp_path / "missing"))


def test_the_generate_command_takes_a_size_and_refuses_a_bad_one(tmp_path, capsys):
    from vsaccade.cli import main

    assert main(["generate", "speed-signs", str(tmp_path / "s"), "--size", "400x300", "--sign-sides", "12", "30",
                 "--train", "2", "--test", "1", "--no-progress"]) == 0
    assert len(list((tmp_path / "s").rglob("*.jpg"))) == 3 and (tmp_path / "s-boxes" / "test.csv").exists()
    assert main(["generate", "speed-signs", str(tmp_path / "t"), "--size", "400by300"]) != 0
    assert main(["generate", "speed-signs", str(tmp_path / "t"), "--size", "400x300", "--sign-sides", "40", "400"]) != 0
    err = capsys.readouterr().err
    assert "WIDTHxHEIGHT" in err and "sign sides" in err and "Traceback" not in err


def test_the_megapixel_generator_takes_a_canvas_side(tmp_path, capsys):
    from vsaccade.cli import main

    assert main(["generate", "megapixel", str(tmp_path / "m"), "--size", "240", "--digits", "font", "--train", "0",
                 "--validation", "0", "--test", "1", "--no-progress"]) == 0
    (path,) = (tmp_path / "m" / "test").rglob("*.tif")
    assert (FileImage(path).height, FileImage(path).width) == (240, 240)
    assert main(["generate", "megapixel", str(tmp_path / "n"), "--size", "240x240", "--test", "1"]) != 0
    err = capsys.readouterr().err
    assert "canvas side" in err and "Traceback" not in err
