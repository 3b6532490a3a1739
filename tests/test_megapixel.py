"""Megapixel MNIST: determinism, labels, placement, lazy reads and proxy against a dense reference, occlusion."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsaccade.tasks import make_task
from vsaccade.tasks.digit_pool import tight_box
from vsaccade.tasks.megapixel import (
    DEFAULT_SIZES,
    PATCH,
    MegapixelImage,
    MegapixelMNIST,
    MegapixelScene,
    make_noise_patterns,
)

DATA = Path(__file__).resolve().parents[2] / "shared/data"

pytestmark = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no MNIST copy under {DATA}")


@pytest.fixture(scope="module", autouse=True)
def offline_data():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VSACCADE_DATA", str(DATA))
        patch.setenv("VSACCADE_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def task(offline_data):
    return MegapixelMNIST("test", seed=0, size=20)


@pytest.fixture(scope="module")
def small(offline_data):
    """A 500x500 canvas: noise meets digits in almost every image."""
    return MegapixelMNIST("test", seed=0, size=20, canvas_size=500)


def reference_render(task: MegapixelMNIST, scene: MegapixelScene) -> np.ndarray:
    """Dense canvas straight from the recipe: whole 28x28 patches assigned in draw order."""
    canvas = np.zeros((task.canvas_size, task.canvas_size), np.float32)
    digits = [(task.pool.images[k], p) for k, p in zip(scene.digit_ids, scene.digit_positions)]
    noise = [(task.noise_patterns[k], p) for k, p in zip(scene.noise_ids, scene.noise_positions)]
    for patch, (r, c) in (noise + digits) if scene.noise_first else (digits + noise):
        canvas[r : r + PATCH, c : c + PATCH] = patch
    return canvas


def reference_read(canvas: np.ndarray, top, left, height, width, d) -> np.ndarray:
    """Crop with zeros outside, zero-pad to a multiple of d, mean over d x d blocks."""
    h, w = -(-height // d) * d, -(-width // d) * d
    out = np.zeros((h, w), np.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, canvas.shape[0]), min(left + width, canvas.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = canvas[y0:y1, x0:x1]
    return out.reshape(h // d, d, w // d, d).mean(axis=(1, 3))


def test_interface_and_defaults(task):
    assert [(h.name, h.num_classes, h.kind) for h in task.heads] == [
        ("majority", 10, "class"), ("max", 10, "class"), ("top", 10, "class"), ("multi", 10, "multilabel")]
    assert task.proxy_size == 180 and task.image_height == task.image_width == 1500
    assert DEFAULT_SIZES == {"train": 4500, "validation": 500, "test": 1000}
    assert len(MegapixelMNIST("test")) == 1000
    made = make_task("megapixel", "test", size=3, canvas_size=500)
    assert isinstance(made, MegapixelMNIST) and len(made) == 3 and made.proxy_size == 60
    info = task.describe()
    assert info["name"] == "megapixel" and info["noise_first"] is True and info["size"] == 20
    assert info["digit_source"]["source"] == "mnist" and info["proxy_size"] == 180
    with pytest.raises(IndexError):
        task[20]


def test_determinism(task):
    again = MegapixelMNIST("test", seed=0, size=20)
    for i in (0, 7):
        a, b = task.scene(i), again.scene(i)
        for field in ("digit_ids", "digit_positions", "noise_ids", "noise_positions"):
            assert np.array_equal(getattr(a, field), getattr(b, field))
        assert torch.equal(task[i].proxy, again[i].proxy)
    assert not np.array_equal(task.scene(0).digit_positions, task.scene(1).digit_positions)
    other_seed = MegapixelMNIST("test", seed=1, size=20)
    assert not np.array_equal(task.scene(0).digit_positions, other_seed.scene(0).digit_positions)
    assert not np.array_equal(task.noise_patterns, other_seed.noise_patterns)
    assert np.array_equal(make_noise_patterns(0, "test"), task.noise_patterns)
    assert not np.array_equal(make_noise_patterns(0, "validation"), task.noise_patterns)
    validation = MegapixelMNIST("validation", seed=0, size=5)
    assert not np.array_equal(task.scene(0).digit_positions, validation.scene(0).digit_positions)


def test_noise_patterns(task):
    noise = task.noise_patterns
    assert noise.shape == (50, 28, 28) and noise.dtype == np.float32
    ink = noise[noise > 0]
    assert ink.min() >= 0.8 - 1e-6 and ink.max() < 1
    assert np.allclose(ink * 255, np.round(ink * 255), atol=1e-3)  # uint8 levels, as the public script stores
    assert all(0 < (p > 0).sum() <= 2 * 56 for p in noise)
    assert all(p[0, 0] > 0 or p[0, -1] > 0 for p in noise)  # strokes start at a top corner


def test_labels_and_placement(task, small):
    for t in (task, small):
        n = t.canvas_size
        for i in range(len(t)):
            scene, sample = t.scene(i), t[i]
            classes, pos = scene.digit_classes, scene.digit_positions
            assert np.array_equal(classes, t.pool.labels[scene.digit_ids])
            assert (classes == scene.target).sum() == 3 and (classes[3:] != scene.target).all()
            top = min(range(5), key=lambda k: (pos[k, 0], pos[k, 1]))
            multi = torch.zeros(10)
            multi[list(set(classes.tolist()))] = 1
            assert sample.labels["majority"] == scene.target
            assert sample.labels["max"] == classes.max() and sample.labels["top"] == classes[top]
            assert torch.equal(sample.labels["multi"], multi) and sample.labels["multi"].dtype == torch.float32
            assert pos.min() >= 0 and pos.max() <= n - PATCH
            noise = scene.noise_positions
            assert noise.shape == (50, 2) and noise.min() >= PATCH and noise.max() < n - PATCH
            for a in range(5):
                for b in range(a):
                    assert (np.abs(pos[a] - pos[b]) >= PATCH).any(), "digit boxes overlap"
            boxes = sample.boxes
            assert boxes.shape == (5, 4) and boxes.dtype == torch.float32
            expected = [tight_box(t.pool.images[k], r, c) for k, (r, c) in zip(scene.digit_ids, pos)]
            assert boxes.tolist() == [list(map(float, e)) for e in expected]
            assert (boxes[:, 0] >= torch.tensor(pos[:, 1])).all()
            assert (boxes[:, 3] <= torch.tensor(pos[:, 0] + PATCH)).all()


def test_top_ties_broken_by_smaller_column(task):
    base = task.scene(0)
    positions = np.array([[900, 700], [500, 300], [500, 100], [800, 50], [1000, 1000]])
    classes = np.array([4, 4, 4, 7, 1])
    scene = MegapixelScene(4, base.digit_ids, classes, positions, base.noise_ids, base.noise_positions, True)
    assert MegapixelMNIST.labels(scene)["top"] == 4  # rows 500 tie; column 100 (index 2) wins
    classes = np.array([4, 4, 9, 4, 1])
    scene = MegapixelScene(4, base.digit_ids, classes, positions, base.noise_ids, base.noise_positions, True)
    assert MegapixelMNIST.labels(scene)["top"] == 9


def test_render_and_read_region_match_dense_reference(task, small):
    for t in (task, small):
        n = t.canvas_size
        for i in range(4):
            for noise_first in (True, False):
                t.noise_first = noise_first
                scene = t.scene(i)
                image = t.image(scene)
                dense = reference_render(t, scene)
                assert image.render().shape == (1, n, n)
                assert np.array_equal(image.render()[0].numpy(), dense)
                r, c = scene.digit_positions[0]
                nr, nc = scene.noise_positions[0]
                windows = [
                    (r - 5, c - 7, 40, 33), (nr - 10, nc + 3, 64, 64), (r, c, 28, 28), (n // 2, n // 3, 32, 32),
                    (-10, -20, 64, 64), (n - 30, n - 17, 64, 45), (-5, n - 10, 32, 32), (n + 3, 4, 16, 16),
                    (-40, -40, n + 80, n + 80), (0, 0, n, n),
                ]
                for top, left, h, w in windows:
                    for d in (1, 2, 3):
                        got = image.read_region(int(top), int(left), h, w, d)
                        assert got.shape == (1, -(-h // d), -(-w // d)) and got.dtype == torch.float32
                        want = reference_read(dense, int(top), int(left), h, w, d)
                        assert torch.allclose(got[0], torch.from_numpy(want), atol=1e-6), (i, top, left, h, w, d)
    task.noise_first = small.noise_first = True


def test_proxy_is_area_downsampled_render(task, small):
    for t in (task, small):
        for noise_first in (True, False):
            t.noise_first = noise_first
            for i in range(5):
                sample = t[i]
                assert sample.proxy.shape == (1, t.proxy_size, t.proxy_size)
                dense = sample.image.render()
                want = F.interpolate(dense[None], size=(t.proxy_size,) * 2, mode="area")[0]
                assert (sample.proxy - want).abs().max() < 1e-5
                for size in (97, 32, t.canvas_size, t.canvas_size + 13):  # odd bins, identity, and upsampling
                    want = F.interpolate(dense[None], size=(size, size), mode="area")[0]
                    assert (sample.image.proxy(size) - want).abs().max() < 1e-5, (size, i)
    task.noise_first = small.noise_first = True
    assert task[0].proxy.shape == (1, 180, 180)


def test_occlusion_orders(small):
    overlapping = 0
    for i in range(len(small)):
        small.noise_first = True
        scene = small.scene(i)
        render = small.image(scene).render()[0].numpy()
        for k, (r, c) in zip(scene.digit_ids, scene.digit_positions):  # whole digit boxes intact
            assert np.array_equal(render[r : r + PATCH, c : c + PATCH], small.pool.images[k])
        small.noise_first = False
        scene = small.scene(i)
        render = small.image(scene).render()[0].numpy()
        noise = scene.noise_positions
        for j, (nr, nc) in enumerate(noise):
            if (np.abs(noise[j + 1 :] - noise[j]) < PATCH).all(axis=1).any():
                continue  # a later noise patch covers part of this one; the dense reference test covers that
            pattern = small.noise_patterns[scene.noise_ids[j]]
            for r, c in scene.digit_positions:
                y0, y1, x0, x1 = max(nr, r), min(nr, r) + PATCH, max(nc, c), min(nc, c) + PATCH
                if y1 > y0 and x1 > x0:  # the noise box replaces the digit's pixels, black ones included
                    assert np.array_equal(render[y0:y1, x0:x1], pattern[y0 - nr : y1 - nr, x0 - nc : x1 - nc])
                    overlapping += 1
    small.noise_first = True
    assert overlapping > 0, "no digit was hit by noise; the occlusion check did not run"


def test_sample_is_picklable_and_small(task):
    import pickle

    blob = pickle.dumps(task[0].image)
    assert len(blob) < 1_000_000  # the image carries its own patches, not the digit pool
    image = pickle.loads(blob)
    assert torch.equal(image.read_region(0, 0, 1500, 1500), task[0].image.render())
    assert isinstance(image, MegapixelImage)


def test_timing(task):
    def ms(fn, repeat):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) / repeat * 1e3

    scene = task.scene(3)
    image = task.image(scene)
    timings = {
        "scene": ms(lambda: task.scene(3), 50),
        "sample (__getitem__)": ms(lambda: task[3], 20),
        "proxy 180": ms(lambda: image.proxy(180), 20),
        "dense render": ms(image.render, 10),
        "dense render + area pool": ms(lambda: F.interpolate(image.render()[None], size=(180, 180), mode="area"), 10),
        "read_region 32x32": ms(lambda: image.read_region(700, 700, 32, 32), 200),
        "read_region 64x64": ms(lambda: image.read_region(700, 700, 64, 64), 200),
        "read_region 450x450 /14": ms(lambda: image.read_region(700, 700, 450, 450, 14), 10),
    }
    print("\nMegapixel MNIST timings (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()))
