"""Localisation counts: a hit is a window whose centre is inside an object; an object is covered when a window contains all
of it and is at most COVERAGE_MAX_RATIO times its side."""

import torch

from vsaccade.evaluate import COVERAGE_MAX_RATIO, localisation_counts, windows_contain


def test_windows_contain_whole_boxes_only():
    windows = torch.tensor([[0.0, 0, 100, 100], [50, 50, 70, 70]])
    boxes = torch.tensor([[10.0, 10, 40, 40], [60, 60, 120, 120], [55, 55, 65, 65]])
    assert windows_contain(windows, boxes).tolist() == [[True, False, True], [False, False, True]]


def test_cover_needs_the_whole_object_in_a_window_small_enough():
    box = torch.tensor([[100.0, 100, 140, 140]])  # side 40
    too_large = 40 * COVERAGE_MAX_RATIO + 10
    windows = torch.tensor([[[90.0, 90, 150, 150],                        # contains it, 60 px: covered
                             [110, 110, 130, 130],                        # centre inside, cuts it: not covered
                             [120 - too_large / 2, 120 - too_large / 2,  # contains it but too large: not covered
                              120 + too_large / 2, 120 + too_large / 2]]])
    assert localisation_counts([box], windows) == {"hits": 3, "glimpses": 3, "covered": 1, "objects": 1}
    assert localisation_counts([box], windows[:, 1:]) == {"hits": 2, "glimpses": 2, "covered": 0, "objects": 1}
    assert localisation_counts([torch.zeros(0, 4)], windows) == {"hits": 0, "glimpses": 3, "covered": 0, "objects": 0}


def test_the_log_line_names_hit_rates_only_where_the_split_has_boxes():
    from vsaccade.evaluate import summary_line

    def result(objects):
        scores = {"heads": {"label": {"accuracy": 0.5}}, "hit_rate": 0.0, "coverage": 0.0, "objects": objects}
        return {"model": scores, "random_glimpses": dict(scores)}

    assert "hit" not in summary_line(result(0))  # a user's folder without boxes: no "hit 0%"
    assert summary_line(result(3)).count("hit 0.0%") == 2
    written_before = {"model": {"heads": {"label": {"accuracy": 0.5}}, "hit_rate": 0.0, "coverage": 0.0}}
    assert "hit" not in summary_line(written_before)  # no objects counted and none hit: no boxes
    written_before["model"]["hit_rate"] = 0.25
    assert "hit 25.0%" in summary_line(written_before)
