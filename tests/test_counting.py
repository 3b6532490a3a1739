"""Counting in large scenes with a mini-map proxy: the generator's contract, the count head's metrics,
class-balanced sampling, and training through the CLI with a proxy whose size and channels differ from the scene's."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from vsaccade.cli import main
from vsaccade.config import ConfigError
from vsaccade.images import ArrayImage
from vsaccade.model import create_model
from vsaccade.model.classifier import CountReadout
from vsaccade.evaluate import HeadScores
from vsaccade.tasks import make_task
from vsaccade.tasks.counting import PALETTE, render_unit, unit_side
from vsaccade.train import epoch_order


@pytest.fixture(scope="module")
def task():
    return make_task("counting", "train", scene_size=768, max_targets=6, size=200)


def test_scenes_are_deterministic_and_labels_count_the_targets(task):
    counts = []
    for index in range(40):
        scene, sample = task.scene(index), task[index]
        again = task.scene(index)
        assert np.array_equal(scene.centres, again.centres) and np.array_equal(scene.is_target, again.is_target)
        assert sample.labels["count"] == int(scene.is_target.sum()) <= 6
        assert len(sample.boxes) == sample.labels["count"]
        assert sample.proxy.shape == (1, 64, 64) and sample.image.channels == 3 and sample.image.height == 768
        for x, y in scene.centres * (64 / 768):  # a mini-map dot at every unit, target or not
            assert float(sample.proxy[0, int(y), int(x)]) > 0.5
        counts.append(sample.labels["count"])
    assert len(set(counts)) >= 4  # Poisson(3) counts, not a constant
    other = make_task("counting", "train", scene_size=768, max_targets=6, size=200, seed=1)
    assert not np.array_equal(other.scene(0).centres, task.scene(0).centres)


def test_targets_and_distractors_differ_only_in_fine_detail():
    """Same ink, same outline; the difference is whole at full and half scale and fades at quarter scale (it does not
    vanish: how much a CNN can still read there is measured in docs/benchmarks/counting.md)."""
    d = 32.0
    side = unit_side(d)
    target, alpha_t = render_unit(d, 0.3, PALETTE[0], True, side / 2, side / 2)
    decoy, alpha_d = render_unit(d, 0.3, PALETTE[0], False, side / 2, side / 2)
    assert np.array_equal(alpha_t, alpha_d)
    assert abs(target.mean() - decoy.mean()) < 0.01 * target.mean()

    def difference(scale):
        a, b = (F.avg_pool2d(torch.from_numpy(x)[None], scale, ceil_mode=True) for x in (target, decoy))
        return float((a - b).abs().max())

    assert difference(1) > 0.5 and difference(2) > 0.9 * difference(1) and difference(4) < 0.75 * difference(2)


def test_region_reads_compose_the_same_scene_and_downsampled_scenes_average_it(task):
    image = task[3].image
    whole = image.read_region(0, 0, 768, 768)
    assert torch.equal(image.read_region(100, 200, 150, 120), whole[:, 100:250, 200:320])
    assert torch.equal(image.read_region(-10, -10, 20, 20)[:, :10], torch.zeros(3, 10, 20))  # outside: zero
    small = make_task("counting", "train", scene_size=768, max_targets=6, size=200, downsample=4)
    assert small.image_height == 192 and torch.allclose(small[3].boxes * 4, task[3].boxes)
    assert torch.allclose(small[3].image.read_region(0, 0, 192, 192), F.avg_pool2d(whole[None], 4)[0], atol=1e-6)


def test_class_balanced_order_draws_rare_counts_as_often_as_common_ones(task):
    labels = torch.tensor(task.class_labels())
    weights = 1.0 / torch.bincount(labels).double()[labels]
    drawn = Counter(labels[epoch_order(0, 0, 20000, weights)].tolist())  # 20,000 draws from 200 samples
    frequencies = np.array([drawn[k] for k in sorted(drawn)]) / 20000
    assert frequencies.min() > 0.6 / len(drawn) and frequencies.max() < 1.4 / len(drawn)
    assert epoch_order(0, 0, 50, weights[:50]) == epoch_order(0, 0, 50, weights[:50])


def test_count_heads_report_mean_absolute_error():
    scores = HeadScores([{"name": "count", "num_classes": 4, "kind": "count"}])
    probs = torch.eye(4)[[0, 1, 3, 3]]
    scores.add({"count": probs}, {"count": torch.tensor([0, 2, 1, 3])})
    assert scores.result()["count"] == {"accuracy": 0.5, "mean_absolute_error": 0.75}


def test_trains_with_a_minimap_proxy_and_shows_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "counting-768", "--out", str(out), "--no-progress", "--epochs", "1",
            "--set", "train.train_size=64", "--set", "train.validation_size=16", "--set", "train.test_size=16",
            "--set", "train.threads=1", "--set", "model.glimpses=3", "--set", "model.glimpse_size=32"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model_config"]["proxy_channels"] == 1 and results["model_config"]["image_channels"] == 3
    assert results["model_config"]["proxy_size"] == 64 and results["task"]["proxy_source"].startswith("mini-map")
    assert "mean_absolute_error" in results["test"]["model"]["heads"]["count"]
    assert results["test"]["random_glimpses"]["hit_rate"] < results["test"]["prior_glimpses"]["hit_rate"]
    assert main(["show", str(out / "best.pt"), "--count", "2", "--out", str(tmp_path / "show.png")]) == 0
    assert (tmp_path / "show.png").read_bytes()[:4] == b"\x89PNG"


def test_count_readout_is_a_discretised_gaussian_on_the_summed_glimpse_counts():
    readout = CountReadout(hidden=8, num_classes=7)
    features, mask = torch.randn(5, 4, 8), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]]).bool()
    probs = readout(features, mask).softmax(-1)
    total = (readout.glimpse_counts(features) * mask).sum(1)
    density = Normal(total[:, None], 1.0).log_prob(torch.arange(7.0)).exp()
    assert torch.allclose(probs, density / density.sum(1, keepdim=True), atol=1e-6)
    assert torch.equal(probs.argmax(1), total.round().clamp(max=6).long())  # the summed count, rounded
    # a masked glimpse contributes nothing; an unmasked one moves the count
    changed = features.clone()
    changed[1, 2:] += 10
    assert torch.allclose(readout(changed, mask)[1], readout(features, mask)[1])
    changed[1, 0] += 10
    assert not torch.allclose(readout(changed, mask)[1], readout(features, mask)[1])


@pytest.mark.parametrize("architecture", ["saccader", "fullres", "proxy"])
def test_count_readout_trains_in_every_model_and_needs_a_count_head(architecture):
    count_head = [{"name": "count", "num_classes": 7, "kind": "count"}]
    config = dict(architecture=architecture, heads=count_head, image_channels=3, proxy_size=16, readout="count",
                  hidden=32, **({"location_cells": 4, "glimpses": 3, "glimpse_size": 16} if architecture == "saccader" else {}))
    model = create_model(**config)
    images = [ArrayImage(torch.rand(3, 96, 96)) for _ in range(2)]
    out = model(images, torch.rand(2, 1, 16, 16), torch.ones(2, 16, 16, dtype=torch.bool))
    assert out.logits["count"].shape == (2, 7)
    if architecture == "saccader":  # what each glimpse counted, for `vsaccade show`
        assert out.glimpse_counts["count"].shape == (2, 3) and (out.glimpse_counts["count"] >= 0).all()
    F.cross_entropy(out.logits["count"], torch.tensor([0, 3])).backward()
    counts = model.classifier.counts if architecture == "saccader" else model.heads.counts
    assert counts["count"].per_glimpse.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="needs a count head"):
        create_model(**{**config, "heads": [{"name": "label", "num_classes": 10, "kind": "class"}]})
    with pytest.raises(ConfigError, match="count readout"):
        create_model(**{**config, "architecture": "ats", "location_cells": 4, "glimpses": 3, "glimpse_size": 16})


def test_count_readout_learns_per_glimpse_counts_from_the_total_alone():
    """Four 8x8 glimpses, each holding an object (a bright square) or not; the label is only how many. The readout
    must learn that each object adds one, from the totals."""
    torch.manual_seed(0)

    def batch(n):
        present = torch.rand(n, 4) < 0.5
        glimpses = torch.rand(n, 4, 1, 8, 8) * 0.3
        glimpses[..., 2:6, 2:6] += present[..., None, None, None] * 0.7
        return glimpses, present.sum(1)

    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
    readout = CountReadout(16, 5)
    optimiser = torch.optim.Adam([*encoder.parameters(), *readout.parameters()], 1e-2)
    for _ in range(300):
        glimpses, counts = batch(64)
        loss = F.cross_entropy(readout(encoder(glimpses.flatten(0, 1)).view(64, 4, 16)), counts)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    glimpses, counts = batch(1000)
    with torch.no_grad():
        features = encoder(glimpses.flatten(0, 1)).view(1000, 4, 16)
        accuracy = (readout(features).argmax(1) == counts).float().mean()
        per_glimpse = readout.glimpse_counts(features)
    assert accuracy > 0.95  # chance (always 2) is 37.5%
    present = glimpses[..., 2:6, 2:6].mean((-1, -2, -3)) > 0.5
    assert (per_glimpse[present] - 1).abs().mean() < 0.2 and per_glimpse[~present].mean() < 0.2
