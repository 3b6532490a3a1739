"""Checkpoints round-trip with weights_only and rebuild their model alone; the Python API predicts."""

import numpy as np
import pytest
import torch
from PIL import Image

import vsaccade
from vsaccade.checkpoint import CheckpointError, save_checkpoint
from vsaccade.images import ImageError


def small_model():
    torch.manual_seed(0)
    return vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32,
                                 heads=[{"name": "digit", "num_classes": 10, "kind": "class"}])


def write(model, path):
    save_checkpoint({"model_name": "saccader", "model_config": model.config.to_dict(), "state_dict": model.state_dict()}, path)


def test_round_trip_with_weights_only(tmp_path):
    model = small_model()
    write(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["schema_version"] == 1 and payload["model_name"] == "saccader"
    loaded = vsaccade.load(tmp_path / "m.pt")
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    image = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    a, b = vsaccade.predict(model.eval(), image), vsaccade.predict(loaded, image)
    assert torch.allclose(a.probabilities["digit"], b.probabilities["digit"])
    assert list(tmp_path.iterdir()) == [tmp_path / "m.pt"]  # no temporary file left behind


def test_predict_on_array_and_path(tmp_path):
    model = small_model().eval()
    pixels = (np.random.default_rng(1).random((200, 300)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    from_array = vsaccade.predict(model, pixels)
    from_path = vsaccade.predict(model, tmp_path / "x.png")
    # a file's proxy comes from a vips thumbnail, an array's from area averaging: nearly the same picture
    assert torch.allclose(from_array.probabilities["digit"], from_path.probabilities["digit"], atol=0.01)
    assert from_array.probabilities["digit"].sum().item() == pytest.approx(1.0, abs=1e-5)
    boxes = from_array.boxes
    assert boxes.shape == (model.config.glimpses, 4)
    sides = boxes[:, 2] - boxes[:, 0]
    assert torch.allclose(sides, boxes[:, 3] - boxes[:, 1])  # square windows in source pixels
    assert (sides >= model.config.s_min * 200 - 1e-3).all() and (sides <= model.config.s_max * 200 + 1e-3).all()
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert (centres[:, 0] >= 0).all() and (centres[:, 0] <= 300).all() and (centres[:, 1] <= 200).all()
    sampled = vsaccade.predict(model, pixels, policy="samples:3")
    assert sampled.probabilities["digit"].shape == (10,)


def test_predict_rejects_bad_images(tmp_path):
    model = small_model().eval()
    with pytest.raises(ImageError, match="smaller than one 16x16 glimpse"):
        vsaccade.predict(model, np.zeros((10, 40), np.uint8))
    with pytest.raises(ImageError, match="not found"):
        vsaccade.predict(model, tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageError, match="cannot read image|not a readable image"):
        vsaccade.predict(model, tmp_path / "bad.png")
    with pytest.raises(ImageError, match="NaN"):
        vsaccade.predict(model, np.full((64, 64), np.nan, np.float32))


def test_bad_checkpoints_get_one_line_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable vsaccade checkpoint"):
        vsaccade.load(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        vsaccade.load(tmp_path / "nothing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a vsaccade checkpoint"):
        vsaccade.load(tmp_path / "other.pt")
    model = small_model()
    write(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**payload, "schema_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="schema version 99"):
        vsaccade.load(tmp_path / "future.pt")
    torch.save({**payload, "model_config": {**payload["model_config"], "hidden": 64}}, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not match"):
        vsaccade.load(tmp_path / "mismatch.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        vsaccade.load(tmp_path / "truncated.pt")


def test_export_drops_training_state_and_keeps_the_model(tmp_path):
    from vsaccade.checkpoint import export_checkpoint

    model = small_model()
    optimizer = torch.optim.Adam(model.parameters())
    model(*[[vsaccade.images.ArrayImage(torch.rand(1, 64, 64))], torch.rand(1, 1, 16, 16),
            torch.ones(1, 16, 16, dtype=torch.bool)]).logits["digit"].sum().backward()
    optimizer.step()
    save_checkpoint({"model_name": "saccader", "model_config": model.config.to_dict(), "state_dict": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}, tmp_path / "full.pt")
    export_checkpoint(tmp_path / "full.pt", tmp_path / "slim.pt")
    slim = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert "optimizer" not in slim and "rng" not in slim and slim["schema_version"] == 1
    assert (tmp_path / "slim.pt").stat().st_size < (tmp_path / "full.pt").stat().st_size
    loaded = vsaccade.load(tmp_path / "slim.pt")
    assert all(torch.equal(t, loaded.state_dict()[n]) for n, t in model.state_dict().items())


def test_bundled_checkpoints_load_by_name_and_unknown_names_fail_clearly():
    from vsaccade.checkpoint import bundled_checkpoints

    for name in bundled_checkpoints():
        assert vsaccade.load(name).checkpoint["model_name"] == "saccader"
    with pytest.raises(CheckpointError, match="checkpoint not found: no-such-model .bundled checkpoints"):
        vsaccade.load("no-such-model")


def test_test_time_settings_change_where_it_looks_not_its_weights(tmp_path):
    from vsaccade.checkpoint import export_checkpoint, with_test_time_settings
    from vsaccade.config import ConfigError

    model = small_model()
    write(model, tmp_path / "m.pt")
    export_checkpoint(tmp_path / "m.pt", tmp_path / "w.pt", ["model.inhibit=cell+window"])
    loaded = vsaccade.load(tmp_path / "w.pt")
    assert loaded.config.inhibit == "cell+window" and loaded.checkpoint["test_time_settings"] == {"inhibit": "cell+window"}
    with pytest.raises(ConfigError, match="model.inhibit_window was removed: use model.inhibit=cell"):
        with_test_time_settings(loaded, ["model.inhibit_window=true"])
    assert all(torch.equal(t, loaded.state_dict()[n]) for n, t in model.state_dict().items())
    with pytest.raises(ConfigError, match="cannot set 'model.hidden=8' on a trained model"):
        with_test_time_settings(loaded, ["model.hidden=8"])
    with pytest.raises(ConfigError, match="cannot change readout from 'mean' to 'count'"):
        with_test_time_settings(loaded, ["model.readout=count"])
    with pytest.raises(ConfigError, match="readout=any reads the per-glimpse heads"):
        with_test_time_settings(loaded, ["model.readout=any", "model.background=none"])


def test_a_fitted_readout_any_checkpoint_initialises_a_readout_any_model(tmp_path):
    # the fit-reader stage swaps readout to any on a model built with classifier heads, which it keeps untrained:
    # a model built with readout=any has none, and starts from the rest
    from vsaccade.checkpoint import load_initial_weights

    heads = [{"name": "sign", "num_classes": 3, "kind": "class", "classes": ["30", "50", "none"]}]
    sizes = dict(proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpse_heads=True, heads=heads)
    torch.manual_seed(0)
    fitted = vsaccade.create_model("saccader", **sizes)
    fitted.config = fitted.config.replace(readout="any", background="none")
    write(fitted, tmp_path / "fitted.pt")
    target = vsaccade.create_model("saccader", readout="any", background="none", **sizes)
    kept = [k for k in fitted.state_dict() if not k.startswith("classifier.")]
    assert len(kept) < len(fitted.state_dict()) and set(kept) == set(target.state_dict())
    assert load_initial_weights(target, tmp_path / "fitted.pt") == len(kept)
    assert all(torch.equal(fitted.state_dict()[k], target.state_dict()[k]) for k in kept)
    fitted.config = fitted.config.replace(readout="mean")  # a readout=mean checkpoint's heads are still refused
    write(fitted, tmp_path / "mean.pt")
    with pytest.raises(CheckpointError, match="not a tensor of this model"):
        load_initial_weights(target, tmp_path / "mean.pt")


def test_initial_weights_copy_matching_tensors_and_reject_others(tmp_path):
    from vsaccade.checkpoint import load_initial_weights
    from vsaccade.config import ObjectiveConfig, TrainConfig
    from vsaccade.train import train

    source, target = small_model(), vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16,
                                                          hidden=32, heads=[{"name": "digit", "num_classes": 10, "kind": "class"}])
    # in the names the glimpse encoder had before the model was built from parts: upgraded on load
    encoder = {f"glimpse_encoder.{k}": v for k, v in source.reader.encoder.state_dict().items()}
    torch.save(encoder, tmp_path / "encoder.pt")
    untouched = target.core.state_dict()
    assert load_initial_weights(target, tmp_path / "encoder.pt") == len(encoder)
    assert all(torch.equal(v, target.reader.encoder.state_dict()[k.removeprefix("glimpse_encoder.")]) for k, v in encoder.items())
    assert all(torch.equal(v, target.core.state_dict()[k]) for k, v in untouched.items())  # the rest stays fresh
    write(source, tmp_path / "whole.pt")  # a checkpoint works too
    assert load_initial_weights(target, tmp_path / "whole.pt") == len(source.state_dict())

    torch.save({"glimpse_encoder.nonsense": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a tensor of this model"):
        load_initial_weights(target, tmp_path / "foreign.pt")
    name = next(iter(encoder))
    torch.save({name: torch.zeros(1, 2, 3)}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="has shape"):
        load_initial_weights(target, tmp_path / "shape.pt")
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_initial_weights(target, tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="initial weights not found"):  # before any data is read
        train(source.config, ObjectiveConfig(), TrainConfig(init_weights=str(tmp_path / "missing.pt")), tmp_path / "run",
              progress=False)


def test_the_optimiser_state_of_a_batch_normalised_model_resumes():
    # The presence anchor's strided network keeps batch norm's running statistics in the state dict, beside the
    # parameters the optimiser holds: a killed folder-preset run must resume, not be refused.
    from vsaccade.checkpoint import optimizer_state

    heads = [{"name": "label", "num_classes": 3, "kind": "class", "classes": ["a", "b", "none"]}]
    options = dict(proxy_size=32, location_cells=4, glimpse_size=16, hidden=32, proxy_encoder="strided",
                   anchor="presence", anchor_network="strided", background="none", heads=heads)
    torch.manual_seed(0)
    model = vsaccade.create_model("saccader", **options)
    optimizer = torch.optim.Adam(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    payload = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
    assert any(k.endswith("running_mean") for k in payload["state_dict"])
    fresh = vsaccade.create_model("saccader", **options)
    restored = torch.optim.Adam(fresh.parameters())
    restored.load_state_dict(optimizer_state(payload, fresh))
    for ours, theirs in zip(restored.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_load_applies_test_time_settings_and_refuses_others(tmp_path):
    saved = tmp_path / "m.pt"
    write(small_model(), saved)
    model = vsaccade.load(saved, settings=["model.inhibit=none", "model.proxy_padding=edge"])
    assert (model.config.inhibit, model.config.proxy_padding) == ("none", "edge")
    assert model.checkpoint["test_time_settings"] == {"inhibit": "none", "proxy_padding": "edge"}
    with pytest.raises(vsaccade.ConfigError, match="cannot set 'model.hidden=8' on a trained model"):
        vsaccade.load(saved, settings=["model.hidden=8"])
