"""The speed-sign benchmark generator: deterministic scenes, a red-ringed sign inside its box, a folder dataset."""

import pytest
import numpy as np

from vsaccade.tasks.speed_signs import CLASSES, HEIGHT, WIDTH, generate, scene


def test_scenes_are_deterministic_and_the_box_holds_the_sign():
    image, label, box = scene(0, "train", 0)
    again, label_again, box_again = scene(0, "train", 0)
    assert label == label_again and box == box_again and np.array_equal(np.asarray(image), np.asarray(again))
    assert image.size == (WIDTH, HEIGHT) and label in CLASSES[:-1]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    assert 40 * 0.9 <= x1 - x0 <= 120 and 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT
    crop = np.asarray(image.crop((x0, y0, x1, y1))).astype(int)
    red = (crop[..., 0] > 120) & (crop[..., 1] < 90) & (crop[..., 2] < 90)
    assert red.mean() > 0.05  # the ring


def test_the_default_scenes_are_those_of_before_sizes_became_options():
    import hashlib

    # sha256 of the pixels, computed at 704c464, before --size and --sign-sides existed
    expected = {("train", 0): "6e3fbf3b0b7bf1523901c3f38f242c6f214415609fc2cd1aab23024a422cc79b",
                ("test", 5): "3c3836a1344b865b54cc0bd4588a82e40a1a81fe7b0a09d5e61be5fba686548b"}
    for (split, index), digest in expected.items():
        assert hashlib.sha256(scene(0, split, index)[0].tobytes()).hexdigest() == digest


def test_generate_writes_a_resumable_folder_dataset_with_its_boxes_beside_it(tmp_path):
    from vsaccade.tasks.folder import boxes_folder
    from vsaccade.tasks.speed_signs import SceneSize

    size = SceneSize(400, 300, (12, 30))
    root = generate(tmp_path / "signs", {"train": 2}, progress=False, size=size)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert len(files) == 2 and all(f.split("/")[1] in CLASSES for f in files)
    generate(tmp_path / "signs", {"train": 3}, progress=False, size=size)  # continues: only index 2 is new
    assert len(list(root.rglob("*.jpg"))) == 3
    assert sorted(p.name for p in root.rglob("*") if p.is_file() and p.suffix != ".jpg") == []  # images only
    boxes = boxes_folder(root)
    assert (boxes / "train-index.csv").read_text().count("\n") == 4 and (boxes / "train.csv").exists()
    with pytest.raises(ValueError, match="other settings"):
        generate(tmp_path / "signs", {"train": 3}, progress=False)  # the default size: not this folder's


def test_smaller_scenes_scale_their_clutter_and_hold_signs_of_the_sides_asked():
    from vsaccade.tasks.speed_signs import SceneSize

    size = SceneSize(1280, 960, (24, 80))
    boxes = []
    for index in range(12):
        image, label, box = scene(0, "train", index, size)
        assert image.size == (1280, 960)
        if box:
            boxes.append(box)
            assert 24 * 0.9 <= box[2] - box[0] <= 80 and 0 <= box[0] and box[2] <= 1280 and box[3] <= 960
    assert boxes
    with pytest.raises(ValueError, match="sign sides"):
        SceneSize(400, 300, (40, 400))


def test_window_crops_are_deterministic_and_hold_the_sign_in_its_box_near_their_centre():
    from vsaccade.tasks.speed_signs import window_crop

    crops = [window_crop(0, i, 200, 31) for i in range(12)]
    again = window_crop(0, 3, 200, 31)
    assert np.array_equal(again[0], crops[3][0]) and again[1:] == crops[3][1:]
    assert all(crop.shape == (262, 262, 3) and crop.dtype == np.uint8 for crop, _, _ in crops)
    labels = [label for _, label, _ in crops]
    assert set(labels) <= set(CLASSES) and "none" in labels and len(set(labels)) > 2
    for crop, label, box in crops:
        assert (box is None) == (label == "none")
        if box is not None:
            x0, y0, x1, y1 = box
            assert abs((x0 + x1) / 2 - 131) <= 32 and abs((y0 + y1) / 2 - 131) <= 32  # within reach of the centre
            assert 40 * 0.9 <= x1 - x0 <= 120
            inside = crop[int(y0):int(y1), int(x0):int(x1)].astype(int)
            red = (inside[..., 0] > 120) & (inside[..., 1] < 90) & (inside[..., 2] < 90)
            assert red.mean() > 0.05  # the ring


def test_centred_decoys_change_only_the_none_crops_and_only_near_their_centre():
    from vsaccade.tasks.speed_signs import window_crop

    nones = 0
    for i in range(12):
        plain, label, box = window_crop(0, i, 200, 31)
        hard, hard_label, hard_box = window_crop(0, i, 200, 31, centred_decoy=1.0)
        assert (hard_label, hard_box) == (label, box)
        if label != "none":
            assert np.array_equal(hard, plain)
            continue
        nones += 1
        changed = np.abs(hard.astype(int) - plain.astype(int)).max(axis=2) > 40
        ys, xs = np.nonzero(changed)
        assert changed.sum() > 100  # a decoy was pasted (an empty ring's is the least ink)
        centre_y, centre_x = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        assert abs(centre_x - 131) <= 31 + 16 and abs(centre_y - 131) <= 31 + 16  # where a sign would be (+ JPEG blocks)
    assert nones >= 2


def test_the_reader_polish_labels_what_each_glimpse_shows_and_draws_windows_fitted_to_the_sign():
    import torch

    from vsaccade import reader_stages as polish
    box = torch.tensor([100.0, 100.0, 150.0, 150.0])
    windows = torch.tensor([[90.0, 90.0, 300.0, 300.0], [120.0, 120.0, 300.0, 300.0], [400.0, 400.0, 500.0, 500.0]])
    assert polish.labels_of_glimpses(windows, box, 3, 8).tolist() == [3, -1, 8]  # holds, cuts, misses
    assert polish.labels_of_glimpses(windows, None, 8, 8).tolist() == [8, 8, 8]
    signs = 0
    for index in range(8):
        glimpse, label = polish.fitted_crop_glimpse((0, index, 2.5, 0.03, 0.1, 64))
        assert glimpse.shape == (3, 64, 64) and glimpse.dtype == np.uint8 and label in CLASSES
        if label != "none":  # the sign fills about the middle 40% of its glimpse: its ring is there
            signs += 1
            middle = glimpse[:, 16:48, 16:48].astype(int)
            red = (middle[0] > 120) & (middle[1] < 90) & (middle[2] < 90)
            assert red.mean() > 0.03
    assert signs >= 3
