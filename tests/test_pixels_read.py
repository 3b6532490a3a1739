"""Pixels read, the one definition (images.LargeImage): the source pixels each request covers at the level it reads,
proxy and margins included, counted by the images; tiles decoded where a file is tiled."""

import math

import pytest
import torch

from vsaccade.geometry import glimpse_boxes, read_level
from vsaccade.images import ArrayImage
from vsaccade.model import create_model
from vsaccade.model.glimpse_sampler import MARGIN


def test_an_in_memory_image_counts_its_clipped_regions_and_a_full_pass_for_its_proxy():
    image = ArrayImage(torch.rand(1, 300, 400))
    image.read_region(-10, 390, 50, 50)  # 40 rows x 10 columns inside the image
    assert image.pixels_requested == 40 * 10
    image.proxy(32)
    assert image.pixels_requested == 40 * 10 + 300 * 400 and image.tiles_decoded == 0


def test_the_saccader_reads_its_proxy_and_each_window_with_its_margin():
    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpses=3)
    image = ArrayImage(torch.rand(1, 600, 800))
    proxy = image.proxy(16)[None]
    out = model([image], proxy, torch.ones(1, 16, 16, dtype=torch.bool), sample=False)
    expected = 600 * 800
    for s, u, v in out.z[0].tolist():
        side, level = s * 600, read_level(s * 600, 16)
        x, y = (u + 1) * 400, (v + 1) * 300
        left, right = (math.floor((x - side / 2) / level) - MARGIN) * level, (math.ceil((x + side / 2) / level) + MARGIN) * level
        top, bottom = (math.floor((y - side / 2) / level) - MARGIN) * level, (math.ceil((y + side / 2) / level) + MARGIN) * level
        expected += (min(bottom, 600) - max(top, 0)) * (min(right, 800) - max(left, 0))
    assert image.pixels_requested == expected
    control = create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, reader="none")
    fresh = ArrayImage(torch.rand(1, 600, 800))
    control([fresh], fresh.proxy(16)[None], torch.ones(1, 16, 16, dtype=torch.bool))
    assert fresh.pixels_requested == 600 * 800  # the proxy, nothing else


def test_a_tiled_pyramid_counts_the_level_read_and_its_tiles(tmp_path):
    pyvips = pytest.importorskip("pyvips")
    from vsaccade.file_images import FileImage
    from vsaccade.prepare import write_pyramidal_tiff

    pixels = (torch.rand(2048, 2048) * 255).to(torch.uint8).numpy()
    write_pyramidal_tiff(pyvips.Image.new_from_memory(pixels.tobytes(), 2048, 2048, 1, "uchar"), tmp_path / "a.tif",
                         compression="deflate")
    image = FileImage(tmp_path / "a.tif", channels=1)
    image.read_region(0, 0, 512, 512, downsample=4)  # from the level of factor 4: 128 x 128 of its pixels
    assert image.pixels_requested == 128 * 128 and image.tiles_decoded == 1
    image.read_region(200, 200, 100, 100)  # full resolution, across the corner of four 256-px tiles
    assert image.pixels_requested == 128 * 128 + 100 * 100 and image.tiles_decoded == 1 + 4
    image.proxy(64)  # a thumbnail of 128 px (2x oversampled) from the smallest level at least that large
    factor = max(f for f, _ in image.pyramid if 2048 // f >= 128)
    assert factor >= 8 and image.pixels_requested == 128 * 128 + 100 * 100 + (2048 // factor) ** 2
