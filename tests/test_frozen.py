"""train.frozen: the named modules are not trained (parameters and batch-norm running statistics stay as loaded);
everything else still trains; an unknown name is a clear error before any step."""

import pytest
import torch

from vsaccade.config import ConfigError
from vsaccade.presets import resolve
from vsaccade.train import freeze, train


def tiny(tmp_path, name, overrides):
    configs = resolve("tiny", ["train.threads=1", "train.train_size=96", "train.validation_size=16",
                               "train.test_size=16", "train.epochs=1", *overrides])
    train(*configs, tmp_path / name, digit_source="font", progress=False, log=lambda *_: None)
    return torch.load(tmp_path / name / "last.pt", weights_only=False)["state_dict"]


def test_frozen_modules_keep_their_weights_while_the_rest_trains(tmp_path):
    start = tiny(tmp_path, "start", [])
    init = f"train.init_weights={tmp_path / 'start' / 'last.pt'}"
    after = tiny(tmp_path, "frozen", [init, "train.frozen=reader,classifier"])
    for name, value in after.items():
        frozen = name.startswith(("reader.", "classifier."))
        assert torch.equal(value, start[name]) == frozen, name
    with pytest.raises(ConfigError, match="train.frozen: this model has no module readr"):
        tiny(tmp_path, "typo", [init, "train.frozen=readr"])


def test_frozen_batch_norm_keeps_its_running_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert freeze(net, "0, 1") == ["0", "1"]
    net.train()(torch.randn(8, 3, 6, 6) * 5 + 3)
    kept = [k for k in before if k.startswith(("0.", "1.")) and not k.endswith("num_batches_tracked")]  # a count only
    assert len(kept) == 6 and all(torch.equal(net.state_dict()[k], before[k]) for k in kept)
    assert not any(p.requires_grad for p in [*net[0].parameters(), *net[1].parameters()])
    assert all(p.requires_grad for p in net[2].parameters())
