"""Property-based tests (hypothesis): the coordinate maps and config parsing hold for any input, and bad configs
only ever raise ConfigError."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsaccade.config import ConfigError, ModelConfig, ObjectiveConfig, TrainConfig
from vsaccade.geometry import (centre_normalised, centre_pixels, glimpse_boxes, proxy_extent, proxy_valid_mask,
                               read_level)
from vsaccade.presets import resolve

sides = st.integers(1, 200_000)
unit = st.floats(-1, 1)


@given(u=unit, v=unit, height=sides, width=sides)
def test_centre_maps_invert_each_other(u, v, height, width):
    x, y = centre_pixels(torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64), height, width)
    assert 0 <= x <= width and 0 <= y <= height
    back_u, back_v = centre_normalised(x, y, height, width)
    assert float(back_u) == pytest.approx(u, abs=1e-9) and float(back_v) == pytest.approx(v, abs=1e-9)


@given(s=st.floats(0.01, 1), u=unit, v=unit, height=sides, width=sides)
def test_glimpse_boxes_are_squares_of_the_shorter_side_centred_on_uv(s, u, v, height, width):
    z = torch.tensor([s, u, v], dtype=torch.float64)
    x0, y0, x1, y1 = glimpse_boxes(z, height, width).tolist()
    side = s * min(height, width)
    assert x1 - x0 == pytest.approx(side) and y1 - y0 == pytest.approx(side)
    x, y = centre_pixels(z[1], z[2], height, width)
    assert (x0 + x1) / 2 == pytest.approx(float(x)) and (y0 + y1) / 2 == pytest.approx(float(y))


@given(height=sides, width=sides, proxy=st.integers(1, 512))
def test_proxy_extent_keeps_aspect_and_fills_the_longer_side(height, width, proxy):
    rows, cols = proxy_extent(height, width, proxy)
    assert 1 <= rows <= proxy and 1 <= cols <= proxy and max(rows, cols) == proxy
    scale = proxy / max(height, width)  # aspect kept: each side within half a pixel of its exact length, or 1
    assert abs(rows - height * scale) <= 0.5 + 1e-9 or (rows == 1 and height * scale < 1)
    assert abs(cols - width * scale) <= 0.5 + 1e-9 or (cols == 1 and width * scale < 1)
    if proxy <= 128:
        assert int(proxy_valid_mask(height, width, proxy).sum()) == rows * cols


@given(side=st.floats(1, 1e6), size=st.integers(8, 256))
def test_read_level_keeps_a_window_under_two_glimpses_of_read_pixels(side, size):
    level = read_level(side, size)
    assert level >= 1 and side / level < 2 * size  # the glimpse sampler's fixed canvas relies on this
    if side >= size:
        assert side / level >= size * (1 - 1e-6)  # never fewer read pixels than glimpse pixels


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@pytest.mark.parametrize("config_class", [ModelConfig, ObjectiveConfig, TrainConfig])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_plain_data_is_a_valid_config_or_a_config_error(config_class, data):
    names = [f.name for f in dataclasses.fields(config_class)]
    fields = data.draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=6), json_values, max_size=4))
    try:
        config = config_class.from_dict({**config_class().to_dict(), **fields})
    except ConfigError:
        return
    assert config_class.from_dict(config.to_dict()) == config  # what validates round-trips


@settings(max_examples=200, deadline=None)
@given(overrides=st.lists(st.text(max_size=30) | st.sampled_from(
    ["model.glimpses=3", "train.lr=1e-4", "model.heads=5", "train.task_options=[]", "objective.beta=-1",
     "train.seed=true", "model.s_min=0.9", "train.eval_policy=samples:0", "model.rnn=transformer"]), max_size=3))
def test_command_line_overrides_give_configs_or_config_errors(overrides):
    try:
        resolve("tiny", overrides)
    except ConfigError:
        pass
