"""The negative ELBO: sum form by default, the reference code's product form as an option, beta warm-up."""

import pytest
import torch
import torch.nn.functional as F

from vsaccade.config import ConfigError, ObjectiveConfig
from vsaccade.model.saccader import SaccadeOutput
from vsaccade.objective import beta_at, negative_elbo

HEADS = [{"name": "digit", "num_classes": 3, "kind": "class"}, {"name": "multi", "num_classes": 2, "kind": "multilabel"}]


def output(log_q=None, reconstruction=None):
    logits = {"digit": torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), "multi": torch.tensor([[3.0, -3.0], [0.0, 0.0]])}
    return SaccadeOutput(logits=logits, z=torch.zeros(2, 2, 3), kl=torch.tensor([[0.5, 0.25], [1.0, 1.0]]),
                         glimpses=torch.zeros(2, 2, 1, 4, 4), log_q_cells=log_q, reconstruction=reconstruction)


LABELS = {"digit": torch.tensor([0, 2]), "multi": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}


def expected_nll():
    out = output()
    ce = F.cross_entropy(out.logits["digit"], LABELS["digit"], reduction="none")
    bce = F.binary_cross_entropy_with_logits(out.logits["multi"], LABELS["multi"], reduction="none").sum(1)
    return ce + bce


def test_sum_form_is_nll_plus_beta_kl():
    parts = negative_elbo(output(), LABELS, HEADS, ObjectiveConfig(beta=2.0), beta=2.0)
    kl = torch.tensor([0.75, 2.0])
    assert torch.allclose(parts["nll"], expected_nll())
    assert parts["loss"].item() == pytest.approx((expected_nll() + 2.0 * kl).mean().item())


def test_product_form_multiplies_per_sample():
    parts = negative_elbo(output(), LABELS, HEADS, ObjectiveConfig(combine="product"), beta=2.0)
    kl = torch.tensor([0.75, 2.0])
    assert parts["loss"].item() == pytest.approx((expected_nll() * 2.0 * kl).mean().item())


def test_reconstruction_enters_with_its_weight():
    recon = torch.tensor([[-4.0, -2.0], [-1.0, -1.0]])
    parts = negative_elbo(output(reconstruction=recon), LABELS, HEADS, ObjectiveConfig(reconstruction_weight=0.5), beta=0.0)
    assert parts["loss"].item() == pytest.approx((expected_nll() + 0.5 * torch.tensor([3.0, 1.0])).mean().item())


def test_score_surrogate_gives_the_cells_a_gradient_without_changing_the_reported_parts():
    log_q = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    with_score = negative_elbo(output(log_q=log_q), LABELS, HEADS, ObjectiveConfig(), beta=1.0, estimator="score")
    plain = negative_elbo(output(), LABELS, HEADS, ObjectiveConfig(), beta=1.0)
    assert torch.allclose(with_score["nll"], plain["nll"]) and torch.allclose(with_score["kl"], plain["kl"])
    with_score["loss"].backward()
    reward = -(expected_nll() + torch.tensor([0.75, 2.0]))
    advantage = reward - reward.mean()
    assert torch.allclose(log_q.grad, -(advantage / 2)[:, None].expand(2, 2))


def test_beta_warm_up_and_bad_configs():
    config = ObjectiveConfig(beta=4.0, beta_warmup_epochs=2.0)
    assert [beta_at(config, e) for e in (0.0, 1.0, 2.0, 5.0)] == [0.0, 2.0, 4.0, 4.0]
    with pytest.raises(ConfigError, match="combine"):
        ObjectiveConfig.from_dict({"combine": "max"})
    with pytest.raises(ConfigError, match="non-negative"):
        ObjectiveConfig.from_dict({"beta": -1.0})


def test_per_glimpse_terms_score_each_glimpse_and_credit_its_own_cell():
    # Two images, two glimpses: image 0 sees its label at step 0 only, image 1 at step 1 only.
    glimpse_logits = {"digit": torch.tensor([[[4.0, 0, 0], [0, 4.0, 0]], [[0, 4.0, 0], [0, 0, 4.0]]]),
                      "multi": torch.zeros(2, 2, 2)}
    log_q = torch.zeros(2, 2, requires_grad=True)
    out = output(log_q=log_q)
    out.glimpse_logits = glimpse_logits
    config = ObjectiveConfig(beta=0.0, glimpse_loss_weight=0.5, glimpse_reward_weight=1.0)
    parts = negative_elbo(out, LABELS, HEADS, config, beta=0.0, estimator="ats")  # "ats": no sequence-level term
    per_glimpse = -(F.cross_entropy(glimpse_logits["digit"].transpose(1, 2), LABELS["digit"][:, None].expand(2, 2),
                                    reduction="none") + 2 * F.binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1)))
    expected = expected_nll().mean() - 0.5 * per_glimpse.mean()
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    parts["loss"].backward()
    advantage = per_glimpse - per_glimpse.mean(0, keepdim=True)
    assert torch.allclose(log_q.grad, -advantage / 2, atol=1e-6)
    # image 0's right glimpse is encouraged (negative gradient on its log q), its wrong one discouraged
    assert log_q.grad[0, 0] < 0 < log_q.grad[0, 1]


def test_per_glimpse_weights_need_glimpse_heads():
    with pytest.raises(ValueError, match="glimpse_heads"):
        negative_elbo(output(), LABELS, HEADS, ObjectiveConfig(glimpse_reward_weight=1.0), beta=0.0)


def test_box_cells_are_the_cells_that_hold_the_box_centres():
    from vsaccade.geometry import cell_centres_normalised, centre_pixels
    from vsaccade.images import UpsampledImage
    from vsaccade.box_supervision import box_cells

    generator = torch.Generator().manual_seed(0)
    image = UpsampledImage(torch.zeros(3, 30, 40), 3000, 4000)  # landscape: the grid's lower rows are padding
    corners = torch.rand(50, 2, generator=generator) * torch.tensor([3900.0, 2900.0])
    boxes = torch.cat([corners, corners + 100], 1)
    u, v = cell_centres_normalised(3000, 4000, 256, 64)
    x, y = centre_pixels(u.flatten(), v.flatten(), 3000, 4000)
    cell_pixels = 4000 / 64
    for box in boxes:
        targets = box_cells([image], [box[None]], 256, 64)[0]
        assert targets.sum() == 1
        cell = int(targets.nonzero())
        assert abs(x[cell] - (box[0] + box[2]) / 2) <= cell_pixels / 2 and abs(y[cell] - (box[1] + box[3]) / 2) <= cell_pixels / 2
    both = box_cells([image, image], [boxes[:2], torch.zeros(0, 4)], 256, 64)
    assert both[0].sum() == 2 and not both[1].any()


def test_location_loss_is_minus_log_q_of_the_box_cells_and_nothing_without_boxes():
    logits = torch.randn(3, 2, 16, requires_grad=True)
    cell_log_probs = logits.log_softmax(-1)
    targets = torch.zeros(3, 16, dtype=torch.bool)
    targets[0, 5] = True
    targets[1, [2, 7]] = True  # two objects: either cell counts
    out = output()
    out = SaccadeOutput(**{**out.__dict__, "logits": {k: v[:1].expand(3, -1) for k, v in out.logits.items()},
                           "kl": torch.zeros(3, 2), "cell_log_probs": cell_log_probs})
    labels = {"digit": torch.tensor([0, 0, 0]), "multi": torch.zeros(3, 2)}
    base = negative_elbo(out, labels, HEADS, ObjectiveConfig(), beta=0.0)["loss"]
    loss = negative_elbo(out, labels, HEADS, ObjectiveConfig(location_weight=2.0), beta=0.0, location_targets=targets)["loss"]
    first = cell_log_probs[:, 0].detach()
    expected = -(first[0, 5] + torch.logsumexp(first[1, [2, 7]], 0)) / 3
    assert (loss - base).item() == pytest.approx(2.0 * expected.item(), rel=1e-5)
    loss.backward()
    assert logits.grad[2].abs().max() == 0 and logits.grad[:, 1].abs().max() == 0  # no box, later steps: untouched
    assert logits.grad[0, 0, 5] < 0  # raising the box cell's logit lowers the loss
    with pytest.raises(ValueError, match="location_weight"):
        negative_elbo(out, labels, HEADS, ObjectiveConfig(location_weight=1.0), beta=0.0)


def test_box_windows_sit_on_the_box_within_the_jitter_and_anywhere_without_one():
    from vsaccade.geometry import centre_pixels
    from vsaccade.images import UpsampledImage
    from vsaccade.model.noise import Noise
    from vsaccade.box_supervision import box_windows

    image = UpsampledImage(torch.zeros(3, 30, 40), 3000, 4000)
    box = torch.tensor([[1000.0, 500.0, 1100.0, 600.0]])
    z = box_windows([image] * 200, [box] * 100 + [torch.zeros(0, 4)] * 100, 0.05, 0.08, 0.5 / 64, Noise.shared(200))
    assert ((z[:, 0] >= 0.05) & (z[:, 0] <= 0.08)).all()
    x, y = centre_pixels(z[:, 1], z[:, 2], 3000, 4000)
    jitter = 0.5 / 64 * 4000
    assert ((x[:100] - 1050).abs() <= jitter + 1e-3).all() and ((y[:100] - 550).abs() <= jitter + 1e-3).all()
    assert (x[:100] - 1050).abs().max() > jitter / 2  # jittered, not always centred
    assert x[100:].std() > 800 and y[100:].std() > 600  # no box: anywhere


def test_box_supervision_needs_the_saccader_its_mixture_and_glimpse_heads(tmp_path):
    from vsaccade.config import ModelConfig, TrainConfig
    from vsaccade.train import train

    with pytest.raises(ConfigError, match="box supervision"):
        train(ModelConfig(architecture="fullres"), ObjectiveConfig(location_weight=1.0), TrainConfig(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="locator=mixture"):
        train(ModelConfig(locator="gaussian"), ObjectiveConfig(location_weight=1.0), TrainConfig(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="glimpse_heads"):
        train(ModelConfig(), ObjectiveConfig(box_glimpse_weight=1.0), TrainConfig(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="locator=mixture"):
        train(ModelConfig(locator="gaussian"), ObjectiveConfig(box_window_scale=2.0, window_weight=1.0), TrainConfig(),
              tmp_path, progress=False)
    with pytest.raises(ConfigError, match="window_gradient=detached"):
        train(ModelConfig(window_gradient="detached"), ObjectiveConfig(), TrainConfig(), tmp_path, progress=False)


def test_fitted_windows_frame_the_box_at_scale_times_its_side_within_the_side_range():
    from vsaccade.geometry import glimpse_boxes
    from vsaccade.images import UpsampledImage
    from vsaccade.box_supervision import fitted_windows

    image = UpsampledImage(torch.zeros(3, 30, 40), 3000, 4000)
    boxes = [torch.tensor([[1000.0, 500.0, 1040.0, 540.0]]), torch.tensor([[0.0, 0.0, 2000.0, 1000.0]]), torch.zeros(0, 4)]
    fitted = fitted_windows([image] * 3, boxes, 2.5, 0.03, 0.1)
    assert fitted.present.tolist() == [True, True, False]
    assert torch.allclose(glimpse_boxes(fitted.z[0], 3000, 4000), torch.tensor([970.0, 470.0, 1070.0, 570.0]), atol=1e-3)
    assert fitted.z[1, 0] == pytest.approx(0.1)  # 2.5 x 2000 px is clamped to s_max
    assert torch.allclose(fitted.side_uv[0], torch.tensor([2 * 100 / 4000, 2 * 100 / 3000]))


def test_box_windows_with_a_scale_vary_around_the_fitted_window_and_keep_the_box_inside():
    from vsaccade.geometry import glimpse_boxes
    from vsaccade.images import UpsampledImage
    from vsaccade.model.noise import Noise
    from vsaccade.box_supervision import FITTED_SIDE_SPREAD, box_windows, fitted_windows

    image = UpsampledImage(torch.zeros(3, 30, 40), 3000, 4000)
    box = torch.tensor([[1000.0, 500.0, 1040.0, 540.0]])
    z = box_windows([image] * 200, [box] * 200, 0.01, 0.2, 0.5 / 64, Noise.shared(200),
                    fitted_windows([image] * 200, [box] * 200, 2.5, 0.01, 0.2))
    fitted_side = fitted_windows([image], [box], 2.5, 0.01, 0.2).z[0, 0]
    ratio = torch.log(z[:, 0] / fitted_side)
    assert ratio.abs().max() <= FITTED_SIDE_SPREAD + 1e-5 and ratio.std() > FITTED_SIDE_SPREAD / 4
    windows = glimpse_boxes(z, 3000, 4000)
    inside = (windows[:, 0] <= 1000) & (windows[:, 1] <= 500) & (windows[:, 2] >= 1040) & (windows[:, 3] >= 540)
    assert inside.all()
    assert (windows[:, 0] + windows[:, 2]).std() > 5  # the centre varies


def test_window_loss_counts_only_where_the_first_cell_holds_the_box_and_is_zero_on_the_fitted_window():
    from vsaccade.box_supervision import FittedWindows, window_loss

    fitted = FittedWindows(torch.tensor([[0.05, 0.0, 0.0], [0.05, 0.5, 0.5], [0.0, 0.0, 0.0]]),
                           torch.tensor([[0.1, 0.1], [0.1, 0.1], [1.0, 1.0]]), torch.tensor([True, True, False]))
    z = torch.tensor([[0.05, 0.0, 0.0], [0.1, 0.55, 0.5], [0.05, 0.3, 0.3]], requires_grad=True)
    loss = window_loss(z, fitted, torch.tensor([True, True, False]))
    assert loss[0] == 0 and loss[2] == 0
    assert loss[1].item() == pytest.approx(0.5 ** 2 + torch.log(torch.tensor(2.0)).item() ** 2, rel=1e-5)
    loss.sum().backward()
    assert z.grad[1, 1] > 0 and z.grad[1, 0] > 0 and z.grad[2].abs().max() == 0  # pulled back towards the fit

    out = SaccadeOutput(**{**output().__dict__, "z": torch.stack([z.detach()[:2], z.detach()[:2]], 1),
                           "cells": torch.tensor([[3, 0], [5, 0]])})
    targets = torch.zeros(2, 16, dtype=torch.bool)
    targets[0, 3] = targets[1, 6] = True  # the second image's first glimpse chose another cell: no window loss
    two = FittedWindows(fitted.z[:2], fitted.side_uv[:2], fitted.present[:2])
    config = ObjectiveConfig(box_window_scale=2.5, window_weight=1.0)
    base = negative_elbo(out, LABELS, HEADS, ObjectiveConfig(), beta=0.0)["loss"]
    assert negative_elbo(out, LABELS, HEADS, config, beta=0.0, location_targets=targets, fitted=two)["loss"] == pytest.approx(base.item())
    targets[1, 5] = True
    with_second = negative_elbo(out, LABELS, HEADS, config, beta=0.0, location_targets=targets, fitted=two)["loss"]
    assert with_second.item() == pytest.approx(base.item() + loss[1].item() / 2, rel=1e-5)
    with pytest.raises(ValueError, match="window_weight"):
        negative_elbo(out, LABELS, HEADS, config, beta=0.0, location_targets=targets)
    with pytest.raises(ConfigError, match="box_window_scale"):
        ObjectiveConfig(window_weight=1.0).validate()


def test_search_loss_trains_later_glimpses_towards_the_box_until_one_holds_it():
    from vsaccade.model.locations import MASKED
    from vsaccade.box_supervision import search_loss

    targets = torch.zeros(3, 4, dtype=torch.bool)
    targets[:, 2] = True
    log_q = torch.log_softmax(torch.zeros(3, 3, 4), -1).clone()
    log_q[2, 2] = torch.log_softmax(torch.tensor([0.0, 0.0, MASKED, 0.0]), -1)  # the box cell inhibited at step 3
    log_q.requires_grad_(True)
    cells = torch.tensor([[0, 2, 1],   # found at step 2: step 2 counts, step 3 does not
                          [2, 0, 1],   # found by the first glimpse: nothing (that is location_weight's)
                          [0, 1, 3]])  # never found: step 2 counts, step 3 cannot reach the box cell
    loss = search_loss(log_q, cells, targets)
    assert loss.tolist() == pytest.approx([torch.log(torch.tensor(4.0)).item(), 0.0, torch.log(torch.tensor(4.0)).item()])
    loss.sum().backward()
    assert log_q.grad[0, 1, 2] < 0 and log_q.grad[0, 2].abs().max() == 0 and log_q.grad[1].abs().max() == 0
    assert log_q.grad[2, 2].abs().max() == 0

    out = SaccadeOutput(**{**output().__dict__, "cell_log_probs": log_q.detach()[:2, :2], "cells": cells[:2, :2]})
    base = negative_elbo(out, LABELS, HEADS, ObjectiveConfig(), beta=0.0)["loss"]
    searched = negative_elbo(out, LABELS, HEADS, ObjectiveConfig(search_weight=2.0), beta=0.0, location_targets=targets[:2])
    assert searched["loss"].item() == pytest.approx(base.item() + 2.0 * torch.log(torch.tensor(4.0)).item() / 2)
    with pytest.raises(ValueError, match="search_weight"):
        negative_elbo(out, LABELS, HEADS, ObjectiveConfig(search_weight=1.0), beta=0.0)
