"""Learning happens: on a tiny task the model reads the digit from its glimpses and looks at it; the
no-glimpse control, which sees only the proxy, stays far below."""

import json

import pytest

from vsaccade.presets import resolve
from vsaccade.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, needs_mnist_module):
    results = {}
    for name, overrides in (("glimpses", []), ("control", ["model.reader=none"])):
        model, objective, config = resolve("tiny", overrides + ["train.threads=1"])
        results[name] = train(model, objective, config, tmp_path_factory.mktemp(name), progress=False, log=lambda *_: None)
    return results


@pytest.fixture(scope="module")
def needs_mnist_module():
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip("MNIST not available")


def test_model_learns_to_read_and_look(runs):
    test = runs["glimpses"]["test"]
    accuracy = test["model"]["heads"]["digit"]["accuracy"]
    assert accuracy >= 0.6, json.dumps(test["model"])  # chance is 0.1
    assert test["model"]["hit_rate"] >= 3 * test["random_glimpses"]["hit_rate"]


def test_no_glimpse_control_stays_far_below(runs):
    control = runs["control"]["test"]["model"]["heads"]["digit"]["accuracy"]
    looking = runs["glimpses"]["test"]["model"]["heads"]["digit"]["accuracy"]
    assert control <= 0.4 and looking - control >= 0.3, (control, looking)


def test_results_record_the_digit_source_and_settings(runs):
    result = runs["glimpses"]
    assert result["digit_source"]["source"] == "mnist"
    for key in ("glimpses", "glimpse_size", "s_min", "s_max", "pixels_read_fraction"):
        assert key in result["test"]
    assert result["images_seen"] == 6 * 4000
