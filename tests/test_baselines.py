"""The baselines in the harness: forward/backward, what they read, training and evaluation through the CLI."""

import json

import pytest
import torch

from vsaccade import create_model
from vsaccade.cli import main
from vsaccade.config import BASELINE_FIELDS, ConfigError, ModelConfig, ObjectiveConfig
from vsaccade.geometry import proxy_valid_mask
from vsaccade.images import ArrayImage
from vsaccade.objective import negative_elbo


def batch(count=3, height=96, width=128):
    images = [ArrayImage(torch.rand(1, height, width)) for _ in range(count)]
    proxy = torch.stack([image.proxy(16) for image in images])
    mask = torch.stack([proxy_valid_mask(height, width, 16) for _ in images])
    return images, proxy, mask


@pytest.mark.parametrize("architecture", ["fullres", "proxy"])
def test_baseline_forward_backward(architecture):
    model = create_model(architecture, proxy_size=16, hidden=32, **({"backbone_stages": 3} if architecture == "fullres" else {}))
    images, proxy, mask = batch()
    out = model(images, proxy, mask)
    assert out.logits["label"].shape == (3, 10) and out.z.shape == (3, 0, 3) and out.kl.shape == (3, 0)
    negative_elbo(out, {"label": torch.tensor([1, 2, 3])}, model.config.heads, ObjectiveConfig(), beta=1.0)["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.reference_sources == () and model.glimpses_per_image == 0


def test_fullres_reads_every_pixel_and_proxy_reads_none():
    fullres = create_model("fullres", proxy_size=16, hidden=32, backbone_stages=3)
    images, proxy, mask = batch(count=1)
    reads = []
    original = images[0].read_region
    images[0].read_region = lambda *args, **kw: reads.append(args) or original(*args, **kw)
    before = images[0].pixels_requested
    fullres(images, proxy, mask)
    assert reads == [(0, 0, 96, 128)] and images[0].pixels_requested - before == 96 * 128
    reads.clear()
    create_model("proxy", proxy_size=16, hidden=32)(images, proxy, mask)
    assert reads == []
    # images of different sizes in one batch: one pass each
    mixed = [ArrayImage(torch.rand(1, 96, 128)), ArrayImage(torch.rand(1, 64, 64))]
    proxy = torch.stack([i.proxy(16) for i in mixed])
    mask = torch.stack([proxy_valid_mask(i.height, i.width, 16) for i in mixed])
    assert fullres(mixed, proxy, mask).logits["label"].shape == (2, 10)


def test_create_model_refuses_two_names():
    with pytest.raises(ValueError, match="architecture"):
        create_model("fullres", architecture="proxy")


def test_baselines_train_and_evaluate_through_the_cli(tmp_path, needs_mnist):
    tiny = ["--preset", "tiny", "--no-progress", "--set", "train.train_size=64", "--set", "train.validation_size=32",
            "--set", "train.test_size=32", "--epochs", "1"]
    read = {}
    for architecture, own in (("fullres", ["--set", "model.backbone_stages=3"]), ("proxy", [])):
        out = tmp_path / architecture
        assert main(["train", "--out", str(out), "--set", f"model.architecture={architecture}"] + tiny + own) == 0
        saved = json.loads((out / "config.json").read_text())["model_config"]
        assert set(saved) == set(BASELINE_FIELDS[architecture])  # its own small config, nothing of the saccader's
        assert main(["evaluate", str(out / "best.pt"), "--limit", "16", "--json", str(tmp_path / "e.json")]) == 0
        result = json.loads((tmp_path / "e.json").read_text())
        assert result["architecture"] == architecture and "random_glimpses" not in result
        read[architecture] = result["pixels_read"]
        summary = json.loads((out / "summary.json").read_text())  # what the results page is made of (results.py)
        assert summary["preset"] == "tiny" and summary["supervision"] == "labels" and summary["seeds"] == [0]
        assert summary["command"].startswith("vsaccade train --out") and summary["pixels_read"] > 0
    assert read["proxy"] == 64 * 64  # the proxy is made from the 64x64 canvas
    assert read["fullres"] == 2 * 64 * 64  # the same proxy (made, unused), and the whole image once


def test_each_baseline_reads_only_the_fields_of_its_small_config():
    import ast
    import inspect

    from vsaccade.model import ats, baselines, ips, resnet

    for module, owners in ((baselines, {"FullResolutionCNN": "fullres", "build_fullres": "fullres",
                                        "ProxyCNN": "proxy", "build_proxy": "proxy"}),
                           (ats, {"AttentionSampling": "ats", "build_ats": "ats"}),
                           (ips, {"IterativePatchSelection": "ips", "build_ips": "ips"}),
                           (resnet, {"ResNetBaseline": "resnet18", "build_resnet18": "resnet18"})):
        for node in ast.parse(inspect.getsource(module)).body:
            if getattr(node, "name", None) in owners:
                read = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                        and (isinstance(n.value, ast.Name) and n.value.id in ("c", "config")
                             or isinstance(n.value, ast.Attribute) and n.value.attr == "config")}
                fields = {f for f in read if f in ModelConfig.__dataclass_fields__}
                assert fields <= set(BASELINE_FIELDS[owners[node.name]]), (node.name, fields - set(BASELINE_FIELDS[owners[node.name]]))
                assert fields or node.name.startswith("build_"), node.name  # the walk found what a model reads


def test_a_baseline_config_is_small_and_refuses_the_saccaders_fields():
    from vsaccade.presets import resolve

    model = resolve("megapixel-500", ["model.architecture=fullres"])[0]  # the preset's saccader fields are dropped
    assert set(model.to_dict()) == set(BASELINE_FIELDS["fullres"]) and model.glimpses == ModelConfig().glimpses
    assert model.proxy_size == resolve("megapixel-500")[0].proxy_size  # the task's fields are kept
    with pytest.raises(ConfigError, match="model.glimpses is not a field of the fullres baseline"):
        resolve("megapixel-500", ["model.architecture=fullres", "model.glimpses=4"])
    ats = resolve("megapixel-500", ["model.architecture=ats", "model.glimpses=10"])[0]
    assert ats.glimpses == 10 and "anchor_weight" not in ats.to_dict()
    # a saved config that still names the saccader's fields (written before baselines had their own) loads
    legacy = {**ModelConfig(glimpses=6).to_dict(), "architecture": "proxy"}
    assert ModelConfig.from_dict(legacy).to_dict() == ModelConfig(architecture="proxy").to_dict()
    with pytest.raises(ConfigError, match="glimpses is not a field of the fullres baseline"):
        create_model("fullres", glimpses=7)  # built by hand: refused as --set would be
    from vsaccade.checkpoint import with_test_time_settings

    with pytest.raises(ConfigError, match="cannot set 'model.inhibit=cell'"):
        with_test_time_settings(create_model("proxy"), ["model.inhibit=cell"])
    import vsaccade

    tiny_image = torch.rand(1, 24, 24)  # smaller than a saccader's default glimpse; a baseline reads no glimpse
    assert vsaccade.predict(create_model("fullres", backbone_stages=2, proxy_size=8), tiny_image).probabilities["label"].shape == (10,)


@pytest.mark.parametrize("architecture", ["resnet18", "resnet18-224"])
def test_resnet18_baselines_have_its_shape_train_and_read_what_they_say(architecture):
    from vsaccade.model.resnet import BasicBlock

    model = create_model(architecture, resnet_width=8, hidden=16)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and [b.body[0].out_channels for b in blocks] == [8, 8, 16, 16, 32, 32, 64, 64]
    images, proxy, mask = batch()
    before = images[0].pixels_requested
    out = model(images, proxy, mask)
    assert out.logits["label"].shape == (3, 10) and out.z.shape == (3, 0, 3) and model.glimpses_per_image == 0
    read = images[0].pixels_requested - before
    assert read == 96 * 128 if architecture == "resnet18" else read > 0
    negative_elbo(out, {"label": torch.tensor([1, 2, 3])}, model.config.heads, ObjectiveConfig(), beta=1.0)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        resized = create_model("resnet18-224", resnet_width=8, hidden=16).eval()
        small, large = ArrayImage(torch.rand(1, 300, 400)), ArrayImage(torch.rand(1, 1200, 1600))
        for image in (small, large):  # the same 224-pixel view whatever the image's size: the same cost
            assert resized.view(image).shape == (1, 224, 224)
