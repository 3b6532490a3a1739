"""The objective: the negative ELBO of method.md, per image,

    loss = -log p(y | g_1..g_T, x~) + beta * sum_t KL(q(z_t | e, h_{t-1}) || p(z_t | h_{t-1}))
           - reconstruction_weight * mean_t log p(x~ | z_t, h_{t-1})          (optional)

with one reparameterised sample of z. `combine="product"` reproduces the reference code instead:
nll * (beta * KL - reconstruction_weight * log p(x~ | ...)), per sample.

For the mixture posterior's discrete cell with the "score" estimator, a surrogate term
-(ELBO_i - mean_batch ELBO) * sum_t log q(c_t) (the ELBO_i detached) adds the score-function gradient;
it is zero in expectation and is left out of the reported ELBO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ObjectiveConfig


def log_likelihood(logits: dict, labels: dict, heads: list[dict]) -> torch.Tensor:
    """Sum over heads of log p(y_head | ...), per sample: (B,)."""
    total = 0
    for head in heads:
        name = head["name"]
        if head["kind"] == "multilabel":
            total = total - F.binary_cross_entropy_with_logits(logits[name], labels[name].float(), reduction="none").sum(-1)
        else:
            total = total - F.cross_entropy(logits[name], labels[name], reduction="none")
    return total


def beta_at(config: ObjectiveConfig, epoch_progress: float) -> float:
    """The KL weight after `epoch_progress` epochs (linear warm-up, then constant)."""
    if config.beta_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch_progress / config.beta_warmup_epochs)


def negative_elbo(output, labels: dict, heads: list[dict], config: ObjectiveConfig, beta: float, estimator: str = "score") -> dict:
    """Loss to minimise (scalar) and its per-sample parts, from a SaccadeOutput."""
    log_lik = log_likelihood(output.logits, labels, heads)
    kl = output.kl.sum(1)
    recon = output.reconstruction.mean(1) if output.reconstruction is not None else torch.zeros_like(kl)
    variational = beta * kl - config.reconstruction_weight * recon
    per_sample = -log_lik * variational if config.combine == "product" else -log_lik + variational
    loss = per_sample.mean()
    if estimator == "score" and output.log_q_cells is not None:
        reward = (-per_sample).detach()
        advantage = reward - reward.mean()
        loss = loss - (advantage * output.log_q_cells.sum(1)).mean()
    return {"loss": loss, "nll": -log_lik.detach(), "kl": kl.detach(), "reconstruction": recon.detach()}
