"""The glimpse sampler reads the right pixels, on any image shape, and is differentiable w.r.t. (s, u, v)."""

import pytest
import torch

from vsaccade.geometry import glimpse_boxes, proxy_valid_mask
from vsaccade.images import ArrayImage, ImageError, UpsampledImage
from vsaccade.model.glimpse_sampler import sample_glimpses


def z_for_window(x0, y0, side, height, width):
    """Latent (s, u, v) of the square window with top-left (x0, y0) and the given side in pixels."""
    return torch.tensor([[side / min(height, width), 2 * (x0 + side / 2) / width - 1, 2 * (y0 + side / 2) / height - 1]],
                        dtype=torch.float64)


@pytest.mark.parametrize("height,width", [(200, 300), (300, 200), (128, 128)])
def test_glimpse_at_known_place_returns_its_pixels(height, width):
    pixels = torch.rand(2, height, width)
    image = ArrayImage(pixels)
    for x0, y0 in [(0, 0), (37, 11), (width - 16, height - 16)]:
        z = z_for_window(x0, y0, 16, height, width)
        glimpse = sample_glimpses([image], z.float(), 16)[0]
        assert torch.allclose(glimpse, pixels[:, y0 : y0 + 16, x0 : x0 + 16], atol=1e-5)
        assert glimpse_boxes(z[0], height, width).tolist() == pytest.approx([x0, y0, x0 + 16, y0 + 16])


def test_large_window_is_read_downsampled_to_block_means():
    pixels = torch.rand(1, 256, 384)
    z = z_for_window(40, 20, 64, 256, 384)  # 64 px window for a 16 px glimpse: read at 4x downsampling
    glimpse = sample_glimpses([ArrayImage(pixels)], z.float(), 16)[0]
    expected = torch.nn.functional.avg_pool2d(pixels[:, 20:84, 40:104][None], 4)[0]
    assert torch.allclose(glimpse, expected, atol=1e-5)


@pytest.mark.parametrize("downsample", [2, 3, 4])
def test_block_means_equal_average_pooling_bit_for_bit(downsample):
    """images._block_mean sums each block in order for speed; its values are F.avg_pool2d's exactly (ragged edges
    zero-padded), and for 2x blocks F.interpolate's area mode's (the file proxies' definition)."""
    from vsaccade.images import _block_mean

    pixels = torch.randint(0, 256, (3, 50, 71)).float() / 255
    padded = torch.nn.functional.pad(pixels, (0, (-71) % downsample, 0, (-50) % downsample))
    assert torch.equal(_block_mean(pixels, downsample), torch.nn.functional.avg_pool2d(padded[None], downsample)[0])
    even = pixels[:, :48, :70]
    area = torch.nn.functional.interpolate(even[None], size=(24, 35), mode="area")[0]
    assert torch.equal(_block_mean(even, 2), area)


def test_outside_the_image_is_black_and_batches_mix_shapes():
    images = [ArrayImage(torch.ones(1, 256, 384)), ArrayImage(torch.ones(1, 64, 64))]
    z = torch.tensor([[0.125, -1.0, -1.0], [0.5, 0.0, 0.0]])  # the first window's centre is the top-left corner
    glimpses = sample_glimpses(images, z, 8)
    assert glimpses.shape == (2, 1, 8, 8)
    assert torch.allclose(glimpses[0, 0, :4, :4], torch.zeros(4, 4)) and torch.allclose(glimpses[0, 0, 4:, 4:], torch.ones(4, 4))
    assert torch.allclose(glimpses[1], torch.ones(1, 8, 8))


def test_upsampled_image_matches_dense_bilinear_upsampling():
    base = torch.rand(1, 20, 30)
    dense = torch.nn.functional.interpolate(base[None], size=(200, 300), mode="bilinear", align_corners=False)[0]
    image = UpsampledImage(base, 200, 300)
    assert torch.allclose(image.read_region(13, 101, 40, 50), dense[:, 13:53, 101:151], atol=1e-5)
    region = image.read_region(-5, 290, 20, 20)
    assert torch.allclose(region[:, 5:, :10], dense[:, :15, 290:], atol=1e-5) and region[:, :5].abs().max() == 0


def test_sampler_gradcheck_float64():
    torch.manual_seed(0)
    image = UpsampledImage(torch.rand(1, 12, 18).double(), 120, 180)  # smooth, so the gradient is well defined
    z = torch.tensor([[0.31, 0.13, -0.27], [0.45, -0.52, 0.4]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: sample_glimpses([image, image], z, 8), (z,), eps=1e-6, atol=1e-5)


def test_proxy_keeps_aspect_and_masks_padding():
    image = ArrayImage(torch.ones(1, 200, 300))
    proxy = image.proxy(30)
    assert proxy.shape == (1, 30, 30)
    assert proxy[:, :20].min() == 1 and proxy[:, 20:].max() == 0
    mask = proxy_valid_mask(200, 300, 30)
    assert mask[:20].all() and not mask[20:].any()


@pytest.mark.parametrize("bad,message", [
    (torch.full((1, 8, 8), float("nan")), "NaN"),
    (torch.rand(2, 3, 4, 5), "shape"),
    (torch.zeros(5, 8, 8), "channels"),
    ([[1, 2]], "numpy array or torch tensor"),
])
def test_bad_arrays_get_clear_errors(bad, message):
    with pytest.raises(ImageError, match=message):
        ArrayImage(bad)
