"""The model's pieces: distributions (KL vs Monte-Carlo), gradients to the coordinates, shape checks."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from vsaccade import create_model
from vsaccade.geometry import proxy_valid_mask
from vsaccade.images import UpsampledImage
from vsaccade.model.locations import GaussianLocations, MixtureLocations
from vsaccade.model.noise import Noise
from vsaccade.objective import negative_elbo
from vsaccade.config import ConfigError, ModelConfig, ObjectiveConfig


def batch_of(count, proxy_size=16, height=400, width=600, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = [UpsampledImage(torch.rand(1, 20, 30, generator=generator), height, width) for _ in range(count)]
    proxy = torch.stack([image.proxy(proxy_size) for image in images])
    mask = torch.stack([proxy_valid_mask(height, width, proxy_size) for _ in images])
    return images, proxy, mask


def randomise(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def test_gaussian_kl_matches_monte_carlo_from_its_own_samples():
    torch.manual_seed(0)
    locations = GaussianLocations(hidden=8, s_min=0.1, s_max=0.3, prior_sees_proxy=True)
    randomise(locations)
    e, h = torch.randn(1, 8).expand(20000, 8), torch.randn(1, 8).expand(20000, 8)
    step = locations(e, h, "posterior", sample=True, noise=Noise.shared(len(e)))
    # Recover the unconstrained sample from z and check it is distributed as q says, and that the KL the
    # module reports equals E_q[log q - log p] over those very samples.
    s, u, v = step.z.double().unbind(-1)
    a = torch.stack([torch.logit((s - 0.1) / 0.2), torch.atanh(u), torch.atanh(v)], -1)
    q, p = locations.distributions(e[:1], h[:1])
    assert torch.allclose(a.mean(0), q.mean[0].double(), atol=0.03)
    assert torch.allclose(a.std(0), q.stddev[0].double(), rtol=0.03)
    monte_carlo = (q.log_prob(a.float()) - p.log_prob(a.float())).mean()
    assert step.kl[0].item() == pytest.approx(monte_carlo.item(), rel=0.05, abs=0.02)


def test_mixture_kl_matches_monte_carlo_from_its_own_samples():
    torch.manual_seed(0)
    cells, n = 3, 20000
    locations = MixtureLocations(hidden=8, feature_width=4, cells=cells, s_min=0.1, s_max=0.3, proxy_prior_weight=1.0)
    randomise(locations)
    features = torch.randn(1, 4, cells, cells).expand(n, -1, -1, -1)
    h = torch.randn(1, 8).expand(n, 8)
    anchor = torch.log_softmax(torch.randn(1, cells * cells), -1).expand(n, -1)
    allowed = torch.ones(n, cells * cells, dtype=torch.bool)
    allowed[:, 0] = False
    centres = torch.zeros(n, cells * cells, 2)
    half = torch.full((n, 2), 0.2)
    keys = locations.cell_keys(features)
    step = locations(features, keys, h, anchor, allowed, centres, half, "posterior", sample=True, noise=Noise.shared(n))
    assert not (step.cell == 0).any(), "a masked cell was chosen"
    # Exact KL of the cell part, plus the offset part averaged over the module's own cell samples.
    from torch.distributions import Categorical
    q_logits = (locations.posterior_cell_logits(keys[:1], h[:1]) + anchor[:1]).masked_fill(~allowed[:1], -1e9)
    p_logits = (locations.prior_logits(h[:1]) + anchor[:1]).masked_fill(~allowed[:1], -1e9)
    cell_kl = kl_divergence(Categorical(logits=q_logits), Categorical(logits=p_logits))
    frequencies = torch.bincount(step.cell, minlength=cells * cells).float() / n
    assert torch.allclose(frequencies, Categorical(logits=q_logits).probs[0], atol=0.015)
    offset_kl = step.kl - cell_kl
    assert offset_kl.min() > -1e-5  # a KL is never negative
    assert step.log_q_cell.exp().mean() > 0


@pytest.mark.parametrize("posterior", ["mixture", "gaussian"])
def test_gradient_reaches_the_coordinates_through_the_glimpses(posterior):
    from vsaccade.model.readers import GlimpseReader

    seen = []

    class RecordingReader(GlimpseReader):  # a part passed in: records the windows it is asked to read
        def forward(self, images, z):
            z.retain_grad()
            seen.append(z)
            return super().forward(images, z)

    torch.manual_seed(0)
    model = create_model("saccader", locator=posterior, proxy_size=16, location_cells=4, glimpse_size=16, hidden=32)
    model.reader = RecordingReader(model.reader.encoder, model.reader.size)
    with torch.no_grad():  # cut the z -> core path, so any gradient on z must come through the glimpse pixels
        for parameter in model.core.embed_z.parameters():
            parameter.zero_()
    images, proxy, mask = batch_of(4)
    output = model(images, proxy.detach(), mask)
    loss = negative_elbo(output, {"label": torch.tensor([1, 2, 3, 4])}, model.config.heads, ObjectiveConfig(beta=0.0), 0.0, "ats")
    loss["loss"].backward()
    grads = torch.stack([z.grad for z in seen], 1)
    assert grads[..., 1:].abs().sum() > 0  # the centre
    assert grads[..., 0].abs().sum() > 0  # and the scale


def test_no_glimpses_control_zeroes_what_the_glimpses_contribute():
    torch.manual_seed(0)
    model = create_model("saccader", reader="none", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32)
    images, proxy, mask = batch_of(2)
    output = model(images, proxy, mask, sample=False)
    bright = [UpsampledImage(torch.ones(1, 20, 30), 400, 600) for _ in range(2)]
    same = model(bright, proxy, mask, sample=False)  # same proxy, different full-resolution pixels
    assert torch.allclose(output.logits["label"], same.logits["label"])


@pytest.mark.parametrize("height, width", [(400, 600), (600, 400), (200, 600)])
def test_edge_padding_repeats_the_nearest_image_pixel_and_hides_what_the_padding_held(height, width):
    torch.manual_seed(0)
    images, proxy, mask = batch_of(2, height=height, width=width)
    model = create_model("saccader", proxy_padding="edge", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32)
    filled = model.proxy_padding(proxy, mask)
    rows, cols = int(mask[0].any(1).sum()), int(mask[0].any(0).sum())
    assert torch.equal(filled[..., :rows, :cols], proxy[..., :rows, :cols])  # the image itself is untouched
    assert torch.equal(filled[..., rows:, :cols], proxy[..., rows - 1 : rows, :cols].expand_as(filled[..., rows:, :cols]))
    assert torch.equal(filled[..., :, cols:], filled[..., :, cols - 1 : cols].expand_as(filled[..., :, cols:]))
    noisy = torch.where(mask[:, None], proxy, torch.rand_like(proxy))  # something else in the padding
    model.eval()
    first, second = model(images, proxy, mask, sample=False), model(images, noisy, mask, sample=False)
    assert torch.equal(first.z, second.z) and torch.equal(first.logits["label"], second.logits["label"])
    zero = create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32).eval()
    # zero padding shows what the padding held: the test above can fail
    assert not torch.equal(zero(images, proxy, mask, sample=False).logits["label"],
                           zero(images, noisy, mask, sample=False).logits["label"])
    zero.config = zero.config.replace(proxy_padding="edge")  # a trained model can change it (no parameters)
    assert torch.equal(zero(images, proxy, mask, sample=False).z, zero(images, noisy, mask, sample=False).z)


def test_shapes_are_checked_at_the_boundary():
    model = create_model("saccader", proxy_size=16, location_cells=4)
    images, proxy, mask = batch_of(2)
    with pytest.raises(ValueError, match=r"proxy must have shape"):
        model(images, proxy[:, :, :8], mask)
    with pytest.raises(ValueError, match="source must be one of"):
        model(images, proxy, mask, source="oracle")


@pytest.mark.parametrize("bad", [{"locator": "beta"}, {"s_min": 0.5, "s_max": 0.2}, {"glimpses": 0}, {"colour": 3},
                                 {"glimpses": "4"}])
def test_bad_model_configs_get_clear_errors(bad):
    with pytest.raises(ConfigError):
        create_model("saccader", **bad)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet9000")


@pytest.mark.parametrize("layout", ["wide", "strided"])
@pytest.mark.parametrize("proxy_size,cells", [(180, 45), (16, 4), (8, 8)])
def test_proxy_encoder_layouts_give_the_cell_grid(layout, proxy_size, cells):
    from vsaccade.model.proxy_encoder import ProxyEncoder

    encoder = ProxyEncoder(1, proxy_size, cells, width=16, hidden=24, layout=layout)
    features, e = encoder(torch.rand(2, 1, proxy_size, proxy_size), torch.ones(2, cells, cells, dtype=torch.bool))
    assert features.shape == (2, 16, cells, cells) and e.shape == (2, 24)


def test_glimpse_heads_reward_reaches_the_cell_scores():
    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpse_heads=True,
                         proxy_encoder="strided", cell_score_width=8)
    randomise(model.locations)
    images, proxy, mask = batch_of(3)
    out = model(images, proxy, mask)
    assert out.glimpse_logits["label"].shape == (3, model.config.glimpses, 10)
    config = ObjectiveConfig(beta=0.0, glimpse_reward_weight=1.0)
    negative_elbo(out, {"label": torch.tensor([1, 2, 3])}, model.config.heads, config, beta=0.0, estimator="ats")["loss"].backward()
    assert model.locations.cell_score.weight.grad.abs().sum() > 0


def test_proxy_centroid_offsets_point_at_the_mass_around_each_cell():
    from vsaccade.model.locations import proxy_centroid_offsets

    proxy = torch.zeros(1, 1, 16, 16)
    proxy[0, 0, 5, 9] = 1.0  # 4 x 4 cells of 4 proxy pixels; this pixel's centre is (x, y) = (9.5, 5.5)
    offsets = proxy_centroid_offsets(proxy, 4).view(4, 4, 2)
    # in half-cells (2 proxy pixels) from each cell's centre: its own cell (row 1, col 2; centre (10, 6)) ...
    assert torch.allclose(offsets[1, 2], torch.tensor([-0.25, -0.25]))
    # ... the cell to its left sees it within its widened window (centre (6, 6)), a far cell sees nothing
    assert torch.allclose(offsets[1, 1], torch.tensor([1.75, -0.25]))
    assert torch.equal(offsets[3, 3], torch.zeros(2))


def test_proxy_centroid_centres_glimpses_on_an_isolated_object():
    # One bright 28 x 28 square in a 1500 x 1500 image; with the centroid the mode glimpse is centred on it
    # to within a few pixels, from the cell's centre it can be off by up to half a cell (16 px).
    pixels = torch.zeros(1, 1500, 1500)
    pixels[:, 610:638, 905:933] = 1.0  # centre (x, y) = (919, 624)
    from vsaccade.images import ArrayImage

    image = ArrayImage(pixels)
    proxy = image.proxy(180)[None]
    mask = torch.ones(1, 180, 180, dtype=torch.bool)
    centres = {}
    for centroid in (False, True):
        torch.manual_seed(0)
        model = create_model("saccader", proxy_size=180, location_cells=45, glimpses=1, glimpse_size=32, s_min=0.0427,
                             s_max=0.0427, anchor_weight=8.0, centroid=centroid, proxy_encoder="strided")
        z = model([image], proxy, mask, sample=False).z[0, 0]
        centres[centroid] = torch.stack([(z[1] + 1) * 750, (z[2] + 1) * 750]).detach()
    errors = {k: float((c - torch.tensor([919.0, 624.0])).abs().max()) for k, c in centres.items()}
    assert errors[True] < 4 < errors[False], errors


def test_glimpse_encoder_pooling_options():
    from vsaccade.model.glimpse_encoder import GlimpseEncoder

    for pool in ("flatten", "mean"):
        assert GlimpseEncoder(1, 32, 16, 24, pool=pool)(torch.rand(5, 1, 32, 32)).shape == (5, 24)
    with pytest.raises(ValueError, match="pooling"):
        GlimpseEncoder(1, 32, 16, 24, pool="max")


def test_window_inhibition_sends_each_glimpse_to_a_new_object():
    # Two bright squares far apart in a 1500 x 1500 image; 64-px windows, 45 x 45 cells (33 px). The large one
    # fills four cells, which outrank the small one's cell. With cell inhibition alone the second glimpse takes a
    # neighbouring cell, whose centroid pulls it back onto the large square; with window inhibition the two
    # glimpses land on the two squares.
    from vsaccade.images import ArrayImage

    pixels = torch.zeros(1, 1500, 1500)
    pixels[:, 300:364, 300:364] = 1.0
    pixels[:, 1000:1020, 1100:1120] = 1.0
    image = ArrayImage(pixels)
    proxy, mask = image.proxy(180)[None], torch.ones(1, 180, 180, dtype=torch.bool)
    squares = torch.tensor([[332.0, 332.0], [1110.0, 1010.0]])
    for window, expected in ((False, 1), (True, 2)):
        torch.manual_seed(0)
        model = create_model("saccader", proxy_size=180, location_cells=45, glimpses=2, glimpse_size=32, s_min=0.0427,
                             s_max=0.0427, anchor_weight=8.0, centroid=True, inhibit="cell+window" if window else "cell",
                             proxy_encoder="strided")
        z = model([image], proxy, mask, sample=False).z[0]
        centres = (z[:, 1:] + 1) * 750
        nearest = torch.cdist(centres, squares).argmin(1)
        assert len(set(nearest.tolist())) == expected, (window, centres)


def test_proxy_attention_learns_where_the_evidence_is_and_anchors_the_posterior():
    # Label 1: a bright 2x2 blob somewhere in a noisy 16x16 proxy; label 0: noise only. Trained with the proxy
    # loss alone, the attention concentrates on the blob's cell, and the mode glimpse goes there.
    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpses=1, glimpse_size=16, hidden=32,
                         proxy_encoder="strided", anchor="attention", anchor_weight=1.0,
                         heads=[{"name": "label", "num_classes": 2, "kind": "class"}])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def scenes(count, generator):
        proxy = 0.3 * torch.rand(count, 1, 16, 16, generator=generator)
        labels = torch.randint(0, 2, (count,), generator=generator)
        cells = torch.randint(0, 16, (count,), generator=generator)
        for i in range(count):
            row, col = divmod(int(cells[i]), 4)
            if labels[i]:
                proxy[i, 0, 4 * row + 1 : 4 * row + 3, 4 * col + 1 : 4 * col + 3] = 1.0
        return proxy, labels, cells

    generator = torch.Generator().manual_seed(1)
    config = ObjectiveConfig(beta=0.0, proxy_loss_weight=1.0)
    for _ in range(150):
        proxy, labels, _ = scenes(32, generator)
        images = [UpsampledImage(p, 160, 160) for p in proxy]
        out = model(images, proxy, torch.ones(32, 16, 16, dtype=torch.bool))
        loss = negative_elbo(out, {"label": labels}, model.config.heads, config, beta=0.0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    proxy, labels, cells = scenes(200, generator)
    with torch.no_grad():
        log_attention, logits = model.anchor.attention(proxy, torch.ones(200, 16, dtype=torch.bool))
        z = model([UpsampledImage(p, 160, 160) for p in proxy], proxy, torch.ones(200, 16, 16, dtype=torch.bool), sample=False).z
    positive = labels == 1
    on_blob = log_attention.exp()[positive].gather(1, cells[positive, None])[:, 0]
    assert (logits["label"].argmax(1) == labels).float().mean() > 0.9
    assert on_blob.mean() > 0.8
    looked_at = ((z[:, 0, 2] + 1) * 2).long().clamp(0, 3) * 4 + ((z[:, 0, 1] + 1) * 2).long().clamp(0, 3)
    assert (looked_at[positive] == cells[positive]).float().mean() > 0.8


@pytest.mark.parametrize("network", ["cell", "strided"])
def test_the_presence_anchor_finds_objects_whose_class_the_proxy_cannot_show(network):
    # Classes none / a / b: a and b draw the same bright blob (which one is illegible on the proxy), none draws
    # nothing. The presence classifier (anchor=presence, background "none") learns from the labels alone that the
    # blob means "not none", and its attention goes to the blob's cell (measured in eval mode: the strided
    # network's batch statistics are the running ones); its probabilities are normalised.
    torch.manual_seed(0)
    heads = [{"name": "label", "num_classes": 3, "kind": "class", "classes": ["a", "b", "none"]}]
    model = create_model("saccader", proxy_size=32, location_cells=4, glimpses=1, glimpse_size=16, hidden=32,
                         proxy_encoder="strided", anchor="presence", anchor_network=network, background="none",
                         heads=heads)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)

    def scenes(count):
        proxy = 0.3 * torch.rand(count, 1, 32, 32, generator=generator)
        labels, cells = torch.randint(0, 3, (count,), generator=generator), torch.randint(0, 16, (count,), generator=generator)
        for i in range(count):
            row, col = divmod(int(cells[i]), 4)
            if labels[i] != 2:
                proxy[i, 0, 8 * row + 3 : 8 * row + 6, 8 * col + 3 : 8 * col + 6] = 1.0
        return proxy, labels, cells

    valid = torch.ones(32, 16, dtype=torch.bool)
    for _ in range(150):
        proxy, labels, _ = scenes(32)
        _, logits = model.anchor.attention(proxy, valid)
        loss = F.cross_entropy(logits["label"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    proxy, labels, cells = scenes(200)
    with torch.no_grad():
        log_attention, logits = model.eval().anchor.attention(proxy, torch.ones(200, 16, dtype=torch.bool))
    assert torch.allclose(logits["label"].exp().sum(1), torch.ones(200), atol=1e-5)
    objects = labels != 2
    assert ((logits["label"].argmax(1) != 2) == objects).float().mean() > 0.9
    assert (log_attention[objects].argmax(1) == cells[objects]).float().mean() > 0.9
    with pytest.raises(ConfigError, match="anchor=presence needs model.background"):
        create_model("saccader", anchor="presence", background="", heads=heads)
    with pytest.raises(ConfigError, match="anchor_network=strided .* needs model.anchor=attention or presence"):
        create_model("saccader", anchor="intensity", anchor_network="strided")


def test_proxy_loss_needs_proxy_attention():
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32)
    images, proxy, mask = batch_of(2)
    out = model(images, proxy, mask)
    with pytest.raises(ValueError, match="anchor=attention"):
        negative_elbo(out, {"label": torch.tensor([1, 2])}, model.config.heads, ObjectiveConfig(proxy_loss_weight=1.0), beta=1.0)
    with pytest.raises(ConfigError, match="mixture"):
        create_model("saccader", locator="gaussian", anchor="attention")


@pytest.mark.parametrize("policy", ["random", "prior", "grid", "mode"])
def test_location_policy_ablations_train_and_look_where_they_say(policy):
    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpses=4, glimpse_size=16, hidden=32,
                         policy=policy)
    images, proxy, mask = batch_of(3)
    out = model(images, proxy, mask)
    parts = negative_elbo(out, {"label": torch.tensor([1, 2, 3])}, model.config.heads, ObjectiveConfig(beta=0.0), beta=0.0)
    parts["loss"].backward()
    assert model.reader.encoder.features[0][0].weight.grad.abs().sum() > 0  # the glimpses are read and learned from
    again = model(images, proxy, mask).z
    if policy == "grid":  # fixed places: a 2x2 grid of windows of side s_max, the same for every image
        expected = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])
        assert torch.allclose(out.z[0, :, 1:], expected) and torch.equal(out.z, again)
        assert torch.allclose(out.z[..., 0], torch.full((3, 4), model.config.s_max))
    elif policy == "mode":  # deterministic, and no score-function term for the argmax cell
        assert torch.equal(out.z, again) and out.log_q_cells is None
    else:  # random or prior: sampled afresh, no KL
        assert not torch.equal(out.z, again) and float(out.kl.abs().sum()) == 0.0
    with pytest.raises(ConfigError, match="policy"):
        create_model("saccader", policy="everywhere")
    with pytest.raises(ConfigError, match="model.location_policy was removed: use model.policy"):
        create_model("saccader", location_policy="random")


def test_location_loss_teaches_the_first_glimpse_which_of_two_blobs_is_the_object():
    # Every proxy holds two 2x2 blobs in different cells: the object (value 1.0) and a decoy (0.6), equally
    # bright to the intensity anchor's eye once noise is added. Trained with the box loss alone (no labels to
    # tell them apart), the mode's first glimpse lands on the object's cell.
    from vsaccade.box_supervision import box_cells

    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpses=2, glimpse_size=16, hidden=32,
                         proxy_encoder="wide", anchor_weight=0.0, heads=[{"name": "label", "num_classes": 2, "kind": "class"}])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def scenes(count, generator):
        proxy = 0.2 * torch.rand(count, 1, 16, 16, generator=generator)
        cells = torch.stack([torch.randperm(16, generator=generator)[:2] for _ in range(count)])
        for i in range(count):
            for k, value in enumerate((1.0, 0.6)):
                row, col = divmod(int(cells[i, k]), 4)
                proxy[i, 0, 4 * row + 1: 4 * row + 3, 4 * col + 1: 4 * col + 3] = value
        boxes = [torch.tensor([[40.0 * (c % 4) + 10, 40.0 * (c // 4) + 10, 40.0 * (c % 4) + 30, 40.0 * (c // 4) + 30]])
                 for c in cells[:, 0].tolist()]
        return proxy, boxes, cells[:, 0]

    generator = torch.Generator().manual_seed(1)
    config = ObjectiveConfig(beta=0.0, location_weight=1.0)
    mask = torch.ones(32, 16, 16, dtype=torch.bool)
    for _ in range(120):
        proxy, boxes, _ = scenes(32, generator)
        images = [UpsampledImage(p, 160, 160) for p in proxy]
        out = model(images, proxy, mask)
        targets = box_cells(images, boxes, 16, 4)
        loss = negative_elbo(out, {"label": torch.zeros(32, dtype=torch.long)}, model.config.heads, config, beta=0.0,
                             location_targets=targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    proxy, _, cells = scenes(200, generator)
    with torch.no_grad():
        z = model([UpsampledImage(p, 160, 160) for p in proxy], proxy, torch.ones(200, 16, 16, dtype=torch.bool), sample=False).z
    looked_at = ((z[:, 0, 2] + 1) * 2).long().clamp(0, 3) * 4 + ((z[:, 0, 1] + 1) * 2).long().clamp(0, 3)
    assert (looked_at == cells).float().mean() > 0.9


def test_any_readout_lets_one_sure_glimpse_decide_and_answers_background_only_when_no_glimpse_sees_an_object():
    from vsaccade.model.classifier import any_object_log_probs

    sure = torch.tensor([8.0, -8.0, -8.0])  # classes (none, a, b): a glimpse sure of none
    sees_b = torch.tensor([-8.0, -8.0, 8.0])
    unsure = torch.tensor([0.0, 0.5, -0.5])
    logits = torch.stack([torch.stack([sure, sure, sees_b, sure]), torch.stack([sure, sure, sure, sure]),
                          torch.stack([unsure, sure, sure, sure])])  # (B=3, T=4, K=3)
    log_p = any_object_log_probs(logits, background=0)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(3), atol=1e-5)
    # one sure glimpse of four decides; none seen: background; a glimpse 69% sure of an object (leaning to a) decides
    assert log_p.argmax(1).tolist() == [2, 0, 1]
    mean_of_glimpses = logits.softmax(-1).mean(1)
    assert mean_of_glimpses[0].argmax() == 0  # what averaging the glimpses would have answered


def test_any_readout_replaces_the_class_head_with_the_glimpse_heads_and_needs_its_background_class(tmp_path):
    heads = [{"name": "sign", "num_classes": 3, "kind": "class", "classes": ["30", "50", "none"]}]
    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpse_heads=True,
                         heads=heads)
    images, proxy, mask = batch_of(2)
    noise = Noise.keyed([1, 2])
    mean = model(images, proxy, mask, noise=noise)
    model.config = model.config.replace(readout="any", background="none")
    anyone = model(images, proxy, mask, noise=Noise.keyed([1, 2]))
    assert torch.equal(mean.z, anyone.z)
    from vsaccade.model.classifier import any_object_log_probs
    assert torch.allclose(anyone.logits["sign"], any_object_log_probs(anyone.glimpse_logits["sign"], 2))
    with pytest.raises(ConfigError, match="model.background set to a class"):
        create_model("saccader", glimpse_heads=True, heads=heads, readout="any", background="nothing")
    with pytest.raises(ConfigError, match="glimpse_heads=true"):
        create_model("saccader", heads=heads, readout="any", background="none")
    # A preset names its background before a folder task names the classes: the config waits, the model does not.
    from vsaccade.config import ModelConfig

    ModelConfig(glimpse_heads=True, readout="any", background="none").validate()  # heads not named yet: no error
    with pytest.raises(ConfigError, match="model.background set to a class"):
        create_model("saccader", glimpse_heads=True, readout="any", background="none")


def test_window_loss_teaches_the_first_glimpse_to_centre_on_the_object_and_fit_its_size():
    # One bright square per proxy, of a random size and anywhere: trained with the box losses alone (cell, then offset
    # and side towards the window twice the box's side around it), the mode's first window moves onto the box's
    # centre from its cell's centre and takes the box's size, which no fixed side could.
    from vsaccade.box_supervision import box_cells, fitted_windows

    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpses=1, glimpse_size=8, hidden=32, s_min=0.05,
                         s_max=0.4, proxy_encoder="wide", anchor_weight=0.0,
                         heads=[{"name": "label", "num_classes": 2, "kind": "class"}])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def scenes(count, generator):  # 160x160 images, 10 px per proxy pixel; boxes of 1-4 proxy pixels
        proxy = 0.1 * torch.rand(count, 1, 16, 16, generator=generator)
        sides = torch.randint(1, 5, (count,), generator=generator)
        corners = torch.stack([torch.randint(0, 17 - int(s), (2,), generator=generator) for s in sides])
        for i in range(count):
            (x, y), s = corners[i].tolist(), int(sides[i])
            proxy[i, 0, y:y + s, x:x + s] = 1.0
        boxes = [torch.tensor([[10.0 * x, 10.0 * y, 10.0 * (x + s), 10.0 * (y + s)]]) for (x, y), s in zip(corners.tolist(), sides.tolist())]
        return proxy, boxes

    def errors(generator):  # mean |centre error| in pixels and mean |log side ratio| of the mode's first window, and
        proxy, boxes = scenes(200, generator)  # the centre error of a window at the centre of the box's cell
        images = [UpsampledImage(p, 160, 160) for p in proxy]
        with torch.no_grad():
            z = model(images, proxy, torch.ones(200, 16, 16, dtype=torch.bool), sample=False).z[:, 0]
        fitted = fitted_windows(images, boxes, 2.0, 0.05, 0.4).z
        centres, sides = (fitted[:, 1:] + 1) * 80, fitted[:, 0]
        cell_centres = (centres // 40 + 0.5) * 40
        return (float(((z[:, 1:] + 1) * 80 - centres).abs().mean()), float(torch.log(z[:, 0] / sides).abs().mean()),
                float((cell_centres - centres).abs().mean()))

    _, side_before, _ = errors(torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(1)
    config = ObjectiveConfig(beta=0.0, location_weight=1.0, box_window_scale=2.0, window_weight=1.0)
    mask = torch.ones(32, 16, 16, dtype=torch.bool)
    for _ in range(150):
        proxy, boxes = scenes(32, generator)
        images = [UpsampledImage(p, 160, 160) for p in proxy]
        out = model(images, proxy, mask)
        loss = negative_elbo(out, {"label": torch.zeros(32, dtype=torch.long)}, model.config.heads, config, beta=0.0,
                             location_targets=box_cells(images, boxes, 16, 4),
                             fitted=fitted_windows(images, boxes, 2.0, 0.05, 0.4))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    centre_after, side_after, cell_centre = errors(torch.Generator().manual_seed(2))
    assert centre_after < 0.4 * cell_centre, (cell_centre, centre_after)  # the offset learned, not just the cell
    assert side_after < 0.3 * side_before, (side_before, side_after)


def test_detached_windows_learn_only_from_the_window_loss_and_kl():
    # With detach_windows the likelihood's gradient reaches the cell choice's and the glimpse reader's parameters
    # but not the offset head's (the windows' offset and side); the window loss's still does.
    from vsaccade.box_supervision import fitted_windows

    def offset_gradient(detach, window_weight):
        torch.manual_seed(0)
        model = create_model("saccader", proxy_size=16, location_cells=4, glimpses=2, glimpse_size=8, hidden=32,
                             s_min=0.05, s_max=0.4, anchor_weight=0.0,
                             window_gradient="detached" if detach else "through",
                             heads=[{"name": "label", "num_classes": 2, "kind": "class"}])
        proxy = torch.rand(4, 1, 16, 16)
        images = [UpsampledImage(p, 160, 160) for p in proxy]
        boxes = [torch.tensor([[20.0, 20.0, 60.0, 60.0]])] * 4
        out = model(images, proxy, torch.ones(4, 16, 16, dtype=torch.bool))
        config = ObjectiveConfig(beta=0.0, box_window_scale=1.0, window_weight=window_weight)
        targets = torch.ones(4, 16, dtype=torch.bool)  # count the window loss whichever cell the first glimpse chose
        loss = negative_elbo(out, {"label": torch.tensor([0, 1, 0, 1])}, model.config.heads, config, beta=0.0,
                             location_targets=targets, fitted=fitted_windows(images, boxes, 1.0, 0.05, 0.4))["loss"]
        loss.backward()
        grad = lambda module: sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
        return grad(model.locations.posterior_offset), grad(model.reader.encoder)

    attached, reader = offset_gradient(False, 0.0)
    assert attached > 0 and reader > 0
    detached, reader = offset_gradient(True, 0.0)
    assert detached == 0 and reader > 0
    assert offset_gradient(True, 1.0)[0] > 0


def test_a_separate_reader_reads_for_the_glimpse_heads_and_leaves_looking_alone():
    # separate_reader: the per-glimpse heads (and so readout=any) read through a glimpse encoder of their own. The
    # readout's gradient reaches it and not the core's encoder (the windows detached, so nothing reaches the encoder
    # through where later glimpses land), and changing it changes what is read but not where the model looks.
    heads = [{"name": "label", "num_classes": 3, "kind": "class", "classes": ["a", "b", "none"]}]
    torch.manual_seed(0)
    model = create_model("saccader", proxy_size=16, location_cells=4, glimpses=3, glimpse_size=8, hidden=32, s_min=0.05,
                         s_max=0.4, glimpse_heads=True, readout="any", background="none", reader="separate", window_gradient="detached",
                         heads=heads)
    proxy = torch.rand(2, 1, 16, 16)
    images = [UpsampledImage(p, 160, 160) for p in proxy]
    mask = torch.ones(2, 16, 16, dtype=torch.bool)
    out = model(images, proxy, mask, sample=False)
    out.logits["label"].sum().backward()
    grad = lambda module: sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
    assert grad(model.reader.separate) > 0 and grad(model.reader.encoder) == 0
    with torch.no_grad():
        for p in model.reader.separate.parameters():
            p.add_(torch.randn_like(p))
        changed = model(images, proxy, mask, sample=False)
    assert torch.equal(changed.z, out.z)
    assert not torch.allclose(changed.logits["label"], out.logits["label"])
    with pytest.raises(ConfigError, match="reader=separate"):
        ModelConfig(reader="separate").validate()


def test_the_offset_prior_sees_the_chosen_cell_only_when_asked():
    # offset_prior_sees_cell: p(offset | cell features, h) instead of p(offset | h). The prior's window (its mode)
    # at two different cells of one feature map then differs in side, and without it the side is the same.
    for sees_cell in (False, True):
        torch.manual_seed(0)
        locations = MixtureLocations(32, 8, 4, 0.1, 0.4, 0.0, prior_sees_cell=sees_cell)
        torch.nn.init.normal_(locations.prior_offset[-1].weight)
        features = torch.randn(1, 8, 4, 4)
        centres, half_cell = torch.zeros(1, 16, 2), torch.full((1, 2), 0.25)
        sides = []
        for cell in (0, 5):
            allowed = torch.zeros(1, 16, dtype=torch.bool)
            allowed[0, cell] = True  # the only cell left: the prior must choose it
            step = locations(features, locations.cell_keys(features), torch.zeros(1, 32), torch.zeros(1, 16), allowed,
                             centres, half_cell, "prior", False, None)
            assert step.cell.item() == cell
            sides.append(step.z[0, 0].item())
        assert (sides[0] != sides[1]) == sees_cell, sides


LOOKING = {"location_cells": 4, "glimpse_size": 16}


@pytest.mark.parametrize("architecture, options", [("saccader", {"locator": "mixture", **LOOKING}),
                                                   ("saccader", {"locator": "gaussian", **LOOKING}),
                                                   ("fullres", {}), ("ats", LOOKING)])
def test_a_prediction_call_without_the_kl_looks_and_answers_the_same(architecture, options):
    """kl=False (predict, evaluate, bench) skips the prior and the KL; where the model looks and what it answers do
    not change, sampled or not."""
    torch.manual_seed(0)
    model = create_model(architecture, proxy_size=16, hidden=32, **options).eval()
    randomise(model)
    images, proxy, mask = batch_of(3)
    for sample in (False, True):
        with torch.no_grad():
            full = model(images, proxy, mask, sample=sample, noise=Noise.keyed([1, 2, 3]))
            lean = model(images, proxy, mask, sample=sample, noise=Noise.keyed([1, 2, 3]), kl=False)
        assert torch.equal(full.z, lean.z)
        assert all(torch.equal(full.logits[k], lean.logits[k]) for k in full.logits)
        assert full.kl is not None
        if architecture == "saccader":
            assert lean.kl is None and (full.kl.abs().sum() > 0 or not sample)


@pytest.mark.parametrize("reach", [0.5, 1.5])
def test_the_offset_reaches_as_many_cells_as_asked(reach):
    # A window moves from its cell's centre by at most `offset_reach` cells (the default half a cell tiles the
    # image; a learned anchor that is right only within its receptive field needs more), and can reach that far.
    from vsaccade.config import ConfigError

    locations = MixtureLocations(hidden=8, feature_width=4, cells=4, s_min=0.1, s_max=0.3, proxy_prior_weight=1.0,
                                 reach=reach)
    centres, half_cell = torch.zeros(2, 16, 2), torch.full((2, 2), 0.25)  # cells of 0.5 in [-1, 1] coordinates
    a = torch.tensor([[0.0, 50.0, -50.0], [0.0, 0.0, 0.0]])
    z = locations.window(torch.tensor([5, 5]), a, centres, half_cell)
    assert torch.allclose(z[0, 1:], torch.tensor([reach * 0.5, -reach * 0.5])) and torch.equal(z[1, 1:], torch.zeros(2))
    assert create_model("saccader", offset_reach=reach).locations.reach == reach
    with pytest.raises(ConfigError, match="offset_reach is in cells"):
        create_model("saccader", offset_reach=0.0)
