"""Does the sign's size reach the first window's side? A diagnostic for `objective.window_weight`
(docs/benchmarks/files.md): for images with a sign, the proxy encoder's features at the cell holding the sign's
centre are read from a trained checkpoint, and a ridge regression from them to log(sign side) is fitted on
training images and scored (R^2) on validation. Beside it, the R^2 of the side the model's own posterior gives
the first window at that cell (its mean, from the initial state) against log(box_window_scale x sign side).
High probe R^2 with low model R^2: the features carry the size and the offset head does not use it; both low:
the features do not carry it. It also prints how much the offset posterior's mean varies across images and the
standard deviations of it and of the prior it is held to by the KL, and the gradient norms on the offset head
from one training batch: the window loss's against the rest of the loss's.

    python benchmarks/speed_signs_size_probe.py runs/speed-signs-windows-s0/best.pt --root runs/speed-signs-tiff \
        --train-images 1200 --json runs/speed-signs-size-probe.json

Two step-based checks of why a head that could use the size does not:
  --head-steps N   trains a copy of the offset head alone, on the frozen features (and first state) of the training
                   signs, towards the fitted side (the window loss's side term, batches of 16), and reports the side's
                   R^2 and spread on validation after N steps: can the head fit from these features at all?
  --train-steps N  runs N real training steps from the checkpoint (its objective, a fresh Adam at --lr, gradients
                   clipped at norm 5 as in training), then measures the first window's side again; --variant `head`
                   trains the offset head alone (the features frozen), `prior-sees-cell` rebuilds the model with
                   model.offset_prior_sees_cell (the prior's first layer new), `full` trains everything; --beta
                   replaces the checkpoint's KL weight.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def r_squared(predicted: torch.Tensor, target: torch.Tensor) -> float:
    return float(1 - (target - predicted).square().sum() / (target - target.mean()).square().sum())


def features_at_signs(model, task, count: int, objective) -> dict:
    """Per image with a sign (of the first `count`): the cell features, log sign side, and the model's log side, and
    the offset head's inputs (cell features and first state)."""
    from vsaccade.model.locations import as_normal
    from vsaccade.box_supervision import box_cells, fitted_windows
    from vsaccade.tasks import collate

    c = model.config
    rows, sides, model_sides, fitted_sides, q_means, q_scales, p_scales, inputs = [], [], [], [], [], [], [], []
    with torch.no_grad():
        for start in range(0, min(count, len(task)), 32):
            batch = collate([task[i] for i in range(start, min(start + 32, count, len(task)))])
            keep = torch.tensor([len(b) > 0 for b in batch.boxes])
            if not keep.any():
                continue
            cell_mask = torch.nn.functional.adaptive_max_pool2d(batch.proxy_mask[:, None].float(), c.location_cells)[:, 0] > 0
            features, e = model.proxy_encoder(batch.proxy, cell_mask)
            cell = box_cells(batch.images, [b[:1] for b in batch.boxes], c.proxy_size, c.location_cells).float().argmax(1)
            cell_features = features.flatten(2).gather(2, cell[:, None, None].expand(-1, features.shape[1], 1))[:, :, 0]
            h = model.core.output(model.core.initial(e))
            head_inputs = torch.cat([cell_features, h], -1)
            q = as_normal(model.locations.posterior_offset(head_inputs)).base_dist
            prior_input = head_inputs if c.offset_prior_sees_cell else h
            p = as_normal(model.locations.prior_offset(prior_input)).base_dist
            s = c.s_min + (c.s_max - c.s_min) * torch.sigmoid(q.loc[:, 0])
            fitted = fitted_windows(batch.images, batch.boxes, objective.box_window_scale, c.s_min, c.s_max).z[:, 0]
            side = torch.tensor([float(b[0][2] - b[0][0]) if len(b) else 1.0 for b in batch.boxes])
            rows.append(cell_features[keep]), sides.append(side[keep].log())
            model_sides.append(s[keep].log()), fitted_sides.append(fitted[keep].log())
            q_means.append(q.loc[keep]), q_scales.append(q.scale[keep]), p_scales.append(p.scale[keep])
            inputs.append(head_inputs[keep])
    return {"features": torch.cat(rows), "log_side": torch.cat(sides), "model_log_s": torch.cat(model_sides),
            "fitted_log_s": torch.cat(fitted_sides), "q_mean": torch.cat(q_means), "q_scale": torch.cat(q_scales),
            "p_scale": torch.cat(p_scales), "head_inputs": torch.cat(inputs)}


def offset_head_gradients(model, objective, task, count: int = 32) -> dict:
    """Gradient norms on the offset posterior's head from one training batch of `count` images spread over the split,
    drawn as in training: of the whole loss, of the window loss, of beta * KL, and of the rest (the likelihood,
    through the reparameterised windows into the glimpses)."""
    from vsaccade.model.noise import Noise
    from vsaccade.box_supervision import box_supervision, window_loss
    from vsaccade.objective import negative_elbo
    from vsaccade.tasks import collate

    c = model.config
    model.train()
    batch = collate([task[i] for i in range(0, len(task), max(1, len(task) // count))][:count])
    box_z, targets, fitted = box_supervision(batch.images, batch.boxes, c, objective, Noise.keyed(list(range(len(batch)))))
    out = model(batch.images, batch.proxy, batch.proxy_mask, noise=Noise.keyed(list(range(len(batch)))), box_z=box_z)
    on_box = targets.gather(1, out.cells[:, :1])[:, 0] & fitted.present
    losses = {"total": negative_elbo(out, batch.labels, c.heads, objective, objective.beta, c.estimator,
                                     location_targets=targets, fitted=fitted)["loss"],
              "window": objective.window_weight * window_loss(out.z[:, 0], fitted, on_box).mean(),
              "beta_kl": objective.beta * out.kl.sum(1).mean()}
    gradients = {}
    for name, loss in losses.items():
        model.zero_grad()
        loss.backward(retain_graph=True)
        gradients[name] = torch.cat([p.grad.flatten() for p in model.locations.posterior_offset.parameters()])
    gradients["rest"] = gradients["total"] - gradients["window"] - gradients["beta_kl"]
    model.eval()
    return {name: float(g.norm()) for name, g in gradients.items()}


def fit_head_alone(model, data: dict, steps: int, lr: float) -> dict:
    """A copy of the offset head trained alone on the frozen inputs of the training signs (features_at_signs) towards
    the fitted side (the window loss's side term), scored on the validation signs."""
    import copy

    c = model.config
    x, y = data["train"]["head_inputs"], data["train"]["fitted_log_s"]
    head = copy.deepcopy(model.locations.posterior_offset)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)

    def log_s(inputs):
        return torch.log(c.s_min + (c.s_max - c.s_min) * torch.sigmoid(head(inputs)[:, 0]))

    for _ in range(steps):
        i = torch.randint(0, len(x), (16,), generator=generator)
        loss = (log_s(x[i]) - y[i]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = log_s(data["validation"]["head_inputs"])
    return {"steps": steps, "lr": lr, "side_r2_validation": r_squared(predicted, data["validation"]["fitted_log_s"]),
            "log_s_std_validation": float(predicted.std())}


def train_steps(model, objective, task, steps: int, lr: float, variant: str) -> torch.nn.Module:
    """`steps` training steps as vsaccade train takes them (batches of 16 drawn at random)."""
    from vsaccade.model.noise import Noise
    from vsaccade.box_supervision import box_supervision
    from vsaccade.objective import negative_elbo
    from vsaccade.tasks import collate

    if variant == "prior-sees-cell":
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("locations.prior_offset.0")}
        model = type(model)(model.config.replace(offset_prior_sees_cell=True))
        model.load_state_dict(state, strict=False)
    c = model.config
    if variant == "head":  # the head's inputs detached: only it learns
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.locations.posterior_offset.parameters():
            p.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for step in range(steps):
        index = torch.randint(0, len(task), (16,), generator=generator).tolist()
        batch = collate([task[i] for i in index])
        noise = Noise.keyed([step * 16 + i for i in range(16)])
        box_z, targets, fitted = box_supervision(batch.images, batch.boxes, c, objective, noise)
        out = model(batch.images, batch.proxy, batch.proxy_mask, noise=noise, box_z=box_z)
        loss = negative_elbo(out, batch.labels, c.heads, objective, objective.beta, c.estimator, location_targets=targets,
                             fitted=fitted)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
        optimizer.step()
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", required=True)
    parser.add_argument("--train-images", type=int, default=1200, help="training images read (those with a sign are used)")
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head-steps", type=int, default=0, help="also fit a copy of the offset head alone for N steps")
    parser.add_argument("--train-steps", type=int, default=0, help="measure after N real training steps instead")
    parser.add_argument("--variant", choices=("full", "head", "prior-sees-cell"), default="full")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=None, help="--train-steps with this KL weight instead of the checkpoint's")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from vsaccade.checkpoint import load, read_checkpoint
    from vsaccade.config import ObjectiveConfig
    from vsaccade.tasks import make_task

    torch.set_num_threads(args.threads)
    model = load(args.checkpoint).eval()
    objective = ObjectiveConfig.from_dict(read_checkpoint(Path(args.checkpoint))["objective_config"])
    if not objective.box_window_scale:
        sys.exit("the checkpoint was not trained with objective.box_window_scale: no fitted side to compare with")
    tasks = {split: make_task("folder", split, root=args.root, proxy_size=model.config.proxy_size,
                              channels=model.config.image_channels) for split in ("train", "validation")}
    if args.beta is not None:
        objective = objective.replace(beta=args.beta)
    if args.train_steps:
        model = train_steps(model, objective, tasks["train"], args.train_steps, args.lr, args.variant)
    data = {split: features_at_signs(model, tasks[split], count, objective)
            for split, count in (("train", args.train_images), ("validation", 10 ** 9))}
    x, y = data["train"]["features"], data["train"]["log_side"]
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    design = torch.cat([(x - mean) / scale, torch.ones(len(x), 1)], 1)
    weights = torch.linalg.solve(design.T @ design + args.ridge * torch.eye(design.shape[1]), design.T @ y)
    v = data["validation"]
    predicted = torch.cat([(v["features"] - mean) / scale, torch.ones(len(v["features"]), 1)], 1) @ weights
    result = {"command": "python benchmarks/speed_signs_size_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "train_signs": len(y), "validation_signs": len(v["log_side"]),
              "probe_r2_log_side_validation": r_squared(predicted, v["log_side"]),
              "model_r2_log_s_validation": r_squared(v["model_log_s"], v["fitted_log_s"]),
              "model_log_s_std_validation": float(v["model_log_s"].std()), "fitted_log_s_std_validation": float(v["fitted_log_s"].std()),
              # the offset posterior q(a_s, a_du, a_dv | cell, h_0) and prior p(. | h_0), pre-squashing units: how much
              # q's mean varies across images, and both standard deviations (0.3 at initialisation)
              "q_mean_std_across_images_validation": v["q_mean"].std(0).tolist(),
              "q_scale_mean_validation": v["q_scale"].mean(0).tolist(), "p_scale_mean_validation": v["p_scale"].mean(0).tolist()}
    result["offset_head_gradient_norms_one_training_batch"] = offset_head_gradients(model, objective, tasks["train"])
    if args.head_steps:
        result["offset_head_alone"] = fit_head_alone(model, data, args.head_steps, args.lr)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
