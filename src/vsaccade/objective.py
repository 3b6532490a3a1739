"""The objective: the negative ELBO of method.md, per image,

    loss = -log p(y | g_1..g_T, x~) + beta * sum_t KL(q(z_t | e, h_{t-1}) || p(z_t | h_{t-1}))
           - reconstruction_weight * mean_t log p(x~ | z_t, h_{t-1})          (optional)

with one reparameterised sample of z. `combine="product"` reproduces the reference code instead:
nll * (beta * KL - reconstruction_weight * log p(x~ | ...)), per sample.

For the mixture posterior's discrete cell with the "score" estimator, a surrogate term
-(ELBO_i - mean_batch ELBO) * sum_t log q(c_t) (the ELBO_i detached) adds the score-function gradient;
it is zero in expectation and is left out of the reported ELBO.

Per-glimpse terms (need `ModelConfig.glimpse_heads`; both default off, and neither is part of the ELBO):
  * glimpse_loss_weight * mean_t -log p_t(y | g_t): trains heads that read each glimpse alone (and, through
    them, the glimpse encoder);
  * glimpse_reward_weight: a per-step score-function term, -(r_t - mean_batch r_t) * log q(c_t) with
    r_t = log p_t(y | g_t) detached. It credits each cell choice with what its own glimpse showed, instead of
    crediting all T choices with one sequence-level reward: far lower variance, but a biased (myopic)
    estimate of the ELBO's gradient, a shaping reward we name rather than hide.

proxy_loss_weight * -log p(y | x~) (needs `ModelConfig.proxy_attention`, also outside the ELBO) trains the
proxy attention classifier whose attention is the location anchor (model/proxy_attention.py).

attention_entropy_weight * -mean H(a) (outside the ELBO; needs a model that reports `attention_entropy`, i.e. "ats")
is Attention Sampling's entropy regulariser: a positive weight keeps its attention from collapsing early
(model/ats.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ObjectiveConfig


def log_likelihood(logits: dict, labels: dict, heads: list[dict]) -> torch.Tensor:
    """Sum over heads of log p(y_head | ...): logits (B, [T,] classes) -> (B, [T]). Labels (B[, classes])
    broadcast over the optional glimpse axis T."""
    total = 0
    for head in heads:
        head_logits, y = logits[head["name"]], labels[head["name"]]
        if head["kind"] == "multilabel":
            y = y.float()[:, None].expand_as(head_logits) if head_logits.ndim == 3 else y.float()
            total = total - F.binary_cross_entropy_with_logits(head_logits, y, reduction="none").sum(-1)
        else:
            if head_logits.ndim == 3:
                y = y[:, None].expand(head_logits.shape[:2])
                total = total - F.cross_entropy(head_logits.transpose(1, 2), y, reduction="none")
            else:
                total = total - F.cross_entropy(head_logits, y, reduction="none")
    return total


def beta_at(config: ObjectiveConfig, epoch_progress: float) -> float:
    """The KL weight after `epoch_progress` epochs (linear warm-up, then constant)."""
    if config.beta_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch_progress / config.beta_warmup_epochs)


def local_mean(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return values.detach().mean(dim, keepdim=True)


def negative_elbo(output, labels: dict, heads: list[dict], config: ObjectiveConfig, beta: float, estimator: str = "score",
                  batch_mean=local_mean) -> dict:
    """Loss to minimise (scalar) and its per-sample parts, from a SaccadeOutput. `batch_mean(values, dim)` gives
    the score-function baselines (a keepdim mean over the batch): over all ranks' samples in distributed
    training (distributed.Cluster.mean), so the loss does not depend on how the batch is split."""
    log_lik = log_likelihood(output.logits, labels, heads)
    kl = output.kl.sum(1)
    recon = output.reconstruction.mean(1) if output.reconstruction is not None else torch.zeros_like(kl)
    variational = beta * kl - config.reconstruction_weight * recon
    per_sample = -log_lik * variational if config.combine == "product" else -log_lik + variational
    loss = per_sample.mean()
    if estimator == "score" and output.log_q_cells is not None:
        reward = (-per_sample).detach()
        advantage = reward - batch_mean(reward, 0)
        loss = loss - (advantage * output.log_q_cells.sum(1)).mean()
    if output.glimpse_logits is not None and (config.glimpse_loss_weight or config.glimpse_reward_weight):
        glimpse_log_lik = log_likelihood(output.glimpse_logits, labels, heads)  # (B, T)
        loss = loss - config.glimpse_loss_weight * glimpse_log_lik.mean()
        if config.glimpse_reward_weight and output.log_q_cells is not None:
            reward = glimpse_log_lik.detach()
            advantage = reward - batch_mean(reward, 0)
            loss = loss - config.glimpse_reward_weight * (advantage * output.log_q_cells).sum(1).mean()
    elif config.glimpse_loss_weight or config.glimpse_reward_weight:
        raise ValueError("glimpse_loss_weight and glimpse_reward_weight need a model built with glimpse_heads=True")
    if config.proxy_loss_weight:
        if output.proxy_logits is None:
            raise ValueError("proxy_loss_weight needs a model built with proxy_attention=True")
        loss = loss - config.proxy_loss_weight * log_likelihood(output.proxy_logits, labels, heads).mean()
    if config.attention_entropy_weight:
        if output.attention_entropy is None:
            raise ValueError("attention_entropy_weight needs a model that reports attention_entropy (architecture 'ats')")
        loss = loss - config.attention_entropy_weight * output.attention_entropy.mean()
    return {"loss": loss, "nll": -log_lik.detach(), "kl": kl.detach(), "reconstruction": recon.detach()}
