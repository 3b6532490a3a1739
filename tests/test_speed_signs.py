"""The speed-sign benchmark generator: deterministic scenes, a red-ringed sign inside its box, a folder dataset."""

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


def test_generate_writes_a_resumable_folder_dataset(tmp_path):
    root = generate(tmp_path / "signs", {"train": 2}, progress=False)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert len(files) == 2 and all(f.split("/")[1] in CLASSES for f in files)
    generate(tmp_path / "signs", {"train": 3}, progress=False)  # continues: only index 2 is new
    assert len(list(root.rglob("*.jpg"))) == 3
    assert (root / "train" / "index.csv").read_text().count("\n") == 4


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
