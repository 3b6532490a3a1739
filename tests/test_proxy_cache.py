"""cached_proxies: a split's proxies read once, as 8 bits, with labels and boxes; later calls read the file alone."""

import pytest
import torch

import vsaccade


def test_proxies_are_cached_once_as_8_bits_with_labels_boxes_and_sizes(tmp_path):
    task = vsaccade.make_task("cluttered", "train", size=12, digit_source="font")
    data = vsaccade.cached_proxies(task, tmp_path / "c" / "train.pt", progress=False)
    assert data["proxy"].dtype == torch.uint8 and data["proxy"].shape == (12, *task[0].proxy.shape)
    assert torch.allclose(data["proxy"][3].float() / 255, task[3].proxy, atol=0.5 / 255)
    head = next(iter(task[0].labels))
    assert data["labels"][head].tolist() == [task[i].labels[head] for i in range(12)]
    assert torch.equal(data["boxes"][5], task[5].boxes) and data["sizes"][0].tolist() == [task[0].image.height, task[0].image.width]

    class Unreadable:
        def __len__(self):
            return 12

        def __getitem__(self, index):
            raise AssertionError("the cache should have been read instead")

    again = vsaccade.cached_proxies(Unreadable(), tmp_path / "c" / "train.pt", progress=False)
    assert torch.equal(again["proxy"], data["proxy"])
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_proxies_outside_0_1_are_refused(tmp_path):
    class Bright:
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise_value = torch.full((1, 4, 4), 2.0)
            return type("S", (), {"proxy": raise_value, "labels": {}, "boxes": torch.zeros(0, 4), "image": None})()

    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        vsaccade.cached_proxies(Bright(), tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()
