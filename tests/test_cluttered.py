"""Cluttered MNIST: deterministic per (seed, split, index), labels and boxes obey the recipe."""

import numpy as np
import pytest
import torch

from vsaccade.tasks import collate, make_task
from vsaccade.tasks.cluttered import PAIRS


@pytest.fixture(scope="module")
def pair_task():
    return make_task("cluttered", "train", seed=3, size=50)


def test_deterministic_per_seed_split_index(pair_task, needs_mnist):
    again = make_task("cluttered", "train", seed=3, size=50)
    assert torch.equal(pair_task[7].proxy, again[7].proxy) and pair_task[7].labels == again[7].labels
    assert not torch.equal(pair_task[7].proxy, pair_task[8].proxy)
    other_seed = make_task("cluttered", "train", seed=4, size=50)
    assert not torch.equal(pair_task[7].proxy, other_seed[7].proxy)
    validation = make_task("cluttered", "validation", seed=3, size=50)
    assert not torch.equal(pair_task[7].proxy, validation[7].proxy)


def test_labels_and_boxes_follow_the_recipe(pair_task, needs_mnist):
    sum_task = make_task("cluttered", "train", seed=3, size=50, label="sum")
    for index in range(20):
        canvas, classes, boxes = pair_task.canvas(index)
        assert canvas.shape == (100, 100) and canvas.min() >= 0 and canvas.max() <= 1
        assert PAIRS[pair_task[index].labels["pair"]] == tuple(sorted(classes))
        assert sum_task[index].labels["sum"] == sum(classes)
        sample = pair_task[index]
        assert sample.boxes.shape == (2, 4)
        assert (sample.boxes >= 0).all() and (sample.boxes <= 2528).all()
        for x0, y0, x1, y1 in np.array(boxes):
            assert 0 < x1 - x0 <= 28 and 0 < y1 - y0 <= 28
            assert canvas[y0:y1, x0:x1].max() > 0.5  # ink inside every digit box
    assert len(PAIRS) == 55


def test_paper_setting_image_and_proxy(pair_task, needs_mnist):
    sample = pair_task[0]
    assert (sample.image.height, sample.image.width) == (2528, 2528)
    assert sample.proxy.shape == (1, pair_task.proxy_size, pair_task.proxy_size)
    canvas, _, _ = pair_task.canvas(0)
    dense = torch.nn.functional.interpolate(torch.from_numpy(canvas)[None, None], size=(2528, 2528), mode="bilinear",
                                            align_corners=False)[0]
    assert torch.allclose(sample.image.read_region(1000, 1200, 64, 64), dense[:, 1000:1064, 1200:1264], atol=1e-5)
    batch = collate([pair_task[i] for i in range(4)])
    assert batch.proxy.shape[0] == 4 and batch.labels["pair"].shape == (4,) and batch.proxy_mask.all()


def test_single_digit_variant_and_bad_options(needs_mnist):
    task = make_task("cluttered", "test", label="digit", digits=1, distractors=4, canvas_size=60, image_size=60, size=5)
    assert 0 <= task[0].labels["digit"] <= 9 and task[0].boxes.shape == (1, 4)
    with pytest.raises(ValueError, match="needs 1 digit"):
        make_task("cluttered", "train", label="digit", digits=2)
    with pytest.raises(ValueError, match="unknown cluttered label"):
        make_task("cluttered", "train", label="product")
    with pytest.raises(ValueError, match="unknown task"):
        make_task("imagenet", "train")
    with pytest.raises(IndexError):
        task[5]
