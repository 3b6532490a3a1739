"""Iterative Patch Selection in the harness: its patches tile the image, chunked selection keeps exactly the top M of
exhaustive scoring, memory while selecting is bounded by the chunk, and it trains through the loss."""

import pytest
import torch

from vsaccade import Instrument, create_model
from vsaccade.config import ObjectiveConfig
from vsaccade.geometry import glimpse_boxes, proxy_valid_mask
from vsaccade.images import ArrayImage
from vsaccade.model.ips import IterativePatchSelection, patch_windows
from vsaccade.model.saccader import SaccadeOutput  # noqa: F401
from vsaccade.objective import negative_elbo

CONFIG = dict(architecture="ips", glimpses=3, glimpse_size=16, s_min=0.1, s_max=0.1, hidden=16, glimpse_width=8,
              proxy_size=16, heads=[{"name": "label", "num_classes": 4, "kind": "class"}])


def inputs(height=200, width=300, count=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [ArrayImage(torch.rand(1, height, width, generator=g)) for _ in range(count)]
    proxy = torch.stack([image.proxy(16) for image in images])
    return images, proxy, torch.stack([proxy_valid_mask(height, width, 16)] * count)


def test_patches_tile_the_image_and_stay_inside_it():
    windows = patch_windows(200, 300, 0.1)  # 20-px patches: 10 rows of 15
    assert windows.shape == (150, 3)
    boxes = glimpse_boxes(windows, 200, 300)
    assert boxes[:, :2].min() >= -1e-4 and boxes[:, 2].max() <= 300 + 1e-4 and boxes[:, 3].max() <= 200 + 1e-4
    odd = glimpse_boxes(patch_windows(210, 300, 0.1), 210, 300)  # 21-px patches: the last row and column moved in
    covered = torch.zeros(210, 300, dtype=torch.bool)
    for x0, y0, x1, y1 in odd.round().long().tolist():
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_chunked_selection_keeps_the_top_m_of_exhaustive_scoring():
    torch.manual_seed(0)
    model = IterativePatchSelection(create_model(**CONFIG).config, chunk=7).eval()
    images, _, _ = inputs()
    for image in images:
        windows = patch_windows(image.height, image.width, 0.1)
        with torch.no_grad():
            from vsaccade.model.glimpse_sampler import sample_glimpses

            every = model.encoder(sample_glimpses([image] * len(windows), windows, 16))
            exhaustive = model.pool.score(every[None])[0].topk(3).indices
        assert sorted(model.select(image, windows).tolist()) == sorted(exhaustive.tolist())


def test_memory_while_selecting_is_bounded_by_the_chunk_not_the_image():
    torch.manual_seed(0)
    model = IterativePatchSelection(create_model(**CONFIG).config, chunk=8).eval()
    peaks = {}
    for side in (160, 640):  # 64 and 1,024 patches
        image = inputs(side, side, count=1)[0][0]
        windows = patch_windows(side, side, 0.1 * 160 / side)  # 16-px patches at both sizes
        with Instrument(tensors=True) as instrument:
            model.select(image, windows)
        peaks[side] = instrument.peak_bytes()
    assert peaks[640] < 1.5 * peaks[160]  # 16x the patches, about the same memory


def test_ips_trains_every_parameter_and_reads_its_windows():
    torch.manual_seed(0)
    model = create_model(**CONFIG)
    images, proxy, mask = inputs()
    out = model(images, proxy, mask)
    assert out.logits["label"].shape == (2, 4) and out.z.shape == (2, 3, 3) and out.glimpses.shape == (2, 3, 1, 16, 16)
    negative_elbo(out, {"label": torch.tensor([1, 2])}, model.config.heads, ObjectiveConfig(), beta=1.0)["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert model.training  # selection ran in eval mode and gave the mode back
    whole = create_model(**{**CONFIG, "s_min": 1.0, "s_max": 1.0})  # one patch per square image
    with pytest.raises(ValueError, match="keeps 3 patches"):
        whole(*inputs(40, 40, count=1))
