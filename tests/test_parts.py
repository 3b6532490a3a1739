"""The model from parts: the mixture location distribution's exact semantics, the saccader's forward as a short
read with no branch on a config flag, and every preset's model training every parameter it has."""

import ast
import inspect
import textwrap

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal

from vsaccade.config import ModelConfig, ObjectiveConfig
from vsaccade.images import ArrayImage
from vsaccade.model import create_model
from vsaccade.model.locations import CellMixture, mixture_kl
from vsaccade.model.noise import Noise
from vsaccade.model.saccader import VariationalSaccader
from vsaccade.box_supervision import box_supervision
from vsaccade.objective import negative_elbo
from vsaccade.presets import PRESETS


def mixture(generator, batch=2, cells=5) -> CellMixture:
    logits = torch.randn(batch, cells, generator=generator)
    loc, scale = torch.randn(batch, cells, 3, generator=generator), 0.3 + torch.rand(batch, cells, 3, generator=generator)

    def offsets(cell):
        rows = torch.arange(batch)
        return Independent(Normal(loc[rows, cell], scale[rows, cell]), 1)

    return CellMixture(Categorical(logits=logits), offsets)


def test_mixture_kl_estimator_is_unbiased_and_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    q, p = mixture(g), mixture(g)
    cells = q.cells.probs.shape[1]
    # the estimator's expectation over q's cell, exactly: sum_c q(c) [KL_cat + KL_c]
    exact = sum(q.cells.probs[:, c] * mixture_kl(q, p, torch.full((2,), c)) for c in range(cells))
    torch.manual_seed(1)
    values = torch.stack([q.sample() for _ in range(20000)])  # (N, B, 4)
    monte_carlo = torch.stack([q.log_prob(v) - p.log_prob(v) for v in values]).mean(0)
    assert torch.allclose(exact, monte_carlo, rtol=0.05, atol=0.02), (exact, monte_carlo)
    estimates = torch.stack([mixture_kl(q, p, v[:, 0].long()) for v in values[:5000]]).mean(0)
    assert torch.allclose(exact, estimates, rtol=0.05, atol=0.02)


def test_mixture_log_prob_and_entropy_are_those_of_its_samples():
    g = torch.Generator().manual_seed(2)
    q = mixture(g)
    torch.manual_seed(3)
    values = torch.stack([q.sample() for _ in range(20000)])
    assert torch.allclose(-torch.stack([q.log_prob(v) for v in values]).mean(0), q.entropy(), rtol=0.03)
    counts = torch.stack([torch.bincount(values[:, b, 0].long(), minlength=5) for b in range(2)]).float()
    assert torch.allclose(counts / len(values), q.cells.probs, atol=0.015)  # the cell's marginal is the Categorical


def test_mixture_draw_reads_noise_and_its_mode_is_the_likeliest_cell():
    q = mixture(torch.Generator().manual_seed(4))
    cell, a = q.draw(Noise.keyed([1, 2], torch.device("cpu")), sample=False)
    assert torch.equal(cell, q.cells.probs.argmax(-1))
    assert torch.equal(a, q.offsets(cell).mean)
    first = q.draw(Noise.keyed([1, 2], torch.device("cpu")), sample=True)
    again = q.draw(Noise.keyed([1, 2], torch.device("cpu")), sample=True)
    assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_the_saccader_forward_is_short_and_does_not_branch():
    source = textwrap.dedent(inspect.getsource(VariationalSaccader.forward))
    function = ast.parse(source).body[0]
    assert function.end_lineno - function.lineno + 1 <= 40
    branches = [node for node in ast.walk(function) if isinstance(node, (ast.If, ast.IfExp))]
    assert not branches, [ast.unparse(b.test) for b in branches]


def preset_model(name):
    preset = PRESETS[name]
    fields = {**preset["model"], "image_channels": 1, "proxy_channels": 1, "proxy_size": 32, "location_cells": 8,
              "hidden": 32, "proxy_width": 16, "glimpse_width": 16, "glimpse_size": 16}
    heads, labels = [{"name": "label", "num_classes": 3, "kind": "class", "classes": ["a", "none", "b"]}], [0, 1, 2, 1]
    if fields.get("readout") == "count":
        heads = [{"name": "count", "num_classes": 5, "kind": "count"}]
    fields["heads"] = heads
    return create_model(**fields), ModelConfig.from_dict(fields), ObjectiveConfig.from_dict(preset["objective"]), \
        {heads[0]["name"]: torch.tensor(labels)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_one_backward_reaches_every_parameter_of_every_preset(name):
    torch.manual_seed(0)
    model, config, objective, labels = preset_model(name)
    g = torch.Generator().manual_seed(1)
    images = [ArrayImage(torch.rand(1, 120, 100, generator=g)) for _ in range(4)]
    boxes = [torch.tensor([[30.0, 40.0, 50.0, 60.0]])] * 3 + [torch.zeros(0, 4)]
    proxy, mask = torch.rand(4, 1, 32, 32, generator=g), torch.ones(4, 32, 32, dtype=torch.bool)
    noise = Noise.keyed([1, 2, 3, 4], torch.device("cpu"))
    box_z, targets, fitted = box_supervision(images, boxes, config, objective, noise)
    output = model(images, proxy, mask, noise=noise, **({"box_z": box_z} if box_z is not None else {}))
    negative_elbo(output, labels, config.heads, objective, objective.beta, config.estimator, location_targets=targets,
                  fitted=fitted)["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def megapixel_model_and_inputs(seed: int):
    """The megapixel preset's model (eval mode) and two random 120x100 images with their proxies and masks."""
    torch.manual_seed(0)
    model = preset_model("megapixel")[0].eval()
    g = torch.Generator().manual_seed(seed)
    images = [ArrayImage(torch.rand(1, 120, 100, generator=g)) for _ in range(2)]
    return model, images, torch.rand(2, 1, 32, 32, generator=g), torch.ones(2, 32, 32, dtype=torch.bool)


def test_where_the_model_looks_is_a_call_argument():
    """A call's `look` (inhibition rules, centroid offsets) looks as a model whose config says so, same weights."""
    from vsaccade.model.search import Look

    model, images, proxy, mask = megapixel_model_and_inputs(2)
    with torch.no_grad():
        default = model(images, proxy, mask, sample=False)
        asked = model(images, proxy, mask, sample=False, look=Look(inhibit=("cell",), centroid=False))
        model.config = model.config.replace(inhibit="cell", centroid=False)  # what a test-time setting does
        configured = model(images, proxy, mask, sample=False)
    assert torch.equal(asked.z, configured.z) and not torch.equal(asked.z, default.z)


def test_a_window_shift_moves_every_window_by_that_many_cells():
    """model.window_shift (a test-time setting) moves each window's centre by (du, dv) cells from where it would be,
    and a locator without cells refuses it."""
    from vsaccade.config import ConfigError, ModelConfig

    model, images, proxy, mask = megapixel_model_and_inputs(3)
    with torch.no_grad():
        still = model(images, proxy, mask, sample=False)
        model.config = model.config.replace(window_shift=[0.25, -0.5])
        moved = model(images, proxy, mask, sample=False)
    half_cell = model.cell_geometry(images, torch.device("cpu"))[1]  # (B, 2) half a cell in (u, v)
    expected = (still.z[:, 0, 1:] + torch.tensor([0.25, -0.5]) * 2 * half_cell).clamp(-1, 1)
    assert torch.equal(moved.cells[:, 0], still.cells[:, 0])  # the first cell is chosen before any window
    assert torch.allclose(moved.z[:, 0, 1:], expected, atol=1e-6) and not torch.allclose(moved.z, still.z)
    with pytest.raises(ConfigError, match="locator=mixture"):
        ModelConfig(locator="gaussian", window_shift=[0.5, 0.0]).validate()
    with pytest.raises(ConfigError, match="window_shift"):
        ModelConfig(window_shift=[0.5]).validate()


def test_no_function_in_the_package_is_longer_than_sixty_lines():
    from pathlib import Path

    import vsaccade

    long = []
    for path in Path(vsaccade.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long
