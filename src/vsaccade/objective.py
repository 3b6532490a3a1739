"""The objective: the negative ELBO of method.md, per image,

    loss = -log p(y | g_1..g_T, x~) + beta * sum_t KL(q(z_t | e, h_{t-1}) || p(z_t | h_{t-1}))
           - reconstruction_weight * mean_t log p(x~ | z_t, h_{t-1})          (optional)

with one reparameterised sample of z. `combine="product"` reproduces the reference code instead:
nll * (beta * KL - reconstruction_weight * log p(x~ | ...)), per sample.

Beside it, loss terms (`Term`), each weighted by one ObjectiveConfig field, each declaring the model outputs
(SaccadeOutput fields) and batch inputs it reads; `Objective.check` refuses, once and before any data is read, a
term whose model does not give what it needs. The method's terms are here:

* `ScoreFunction` (the mixture posterior's discrete cell, estimator "score"): a surrogate
  -(ELBO_i - mean_batch ELBO) * sum_t log q(c_t) (the ELBO_i detached) adds the score-function gradient; it is zero
  in expectation and left out of the reported ELBO.
* `GlimpseLikelihood`, glimpse_loss_weight * mean_t -log p_t(y | g_t) (per-glimpse heads, outside the ELBO): trains
  heads that read each glimpse alone (and, through them, the glimpse encoder).
* `GlimpseReward`, glimpse_reward_weight: a per-step score-function term, -(r_t - mean_batch r_t) * log q(c_t) with
  r_t = log p_t(y | g_t) detached. It credits each cell choice with what its own glimpse showed, instead of
  crediting all T choices with one sequence-level reward: far lower variance, but a biased (myopic) estimate of the
  ELBO's gradient, a shaping reward we name rather than hide.
* `ProxyLikelihood`, proxy_loss_weight * -log p(y | x~) (outside the ELBO) trains the proxy attention classifier
  whose attention is the location anchor (model/proxy_attention.py).
* `AttentionEntropy`, attention_entropy_weight * -mean H(a) (outside the ELBO; "ats"): Attention Sampling's entropy
  regulariser, which keeps its attention from collapsing early (model/ats.py).

Terms that need object boxes are a named variant outside the method, in box_supervision.py.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import ConfigError, ObjectiveConfig


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


# What gives each model output a term may need: the settings named in a refusal.
OUTPUT_SOURCES = {"cell_log_probs": "model.architecture=saccader with model.locator=mixture and model.policy=learned",
                  "cells": "model.architecture=saccader with model.locator=mixture and model.policy=learned",
                  "log_q_cells": "model.architecture=saccader with model.locator=mixture and model.policy=learned",
                  "glimpse_logits": "model.glimpse_heads=true", "box_glimpse_logits": "model.glimpse_heads=true",
                  "proxy_logits": "model.anchor=attention or presence", "attention_entropy": "model.architecture=ats",
                  "reconstruction": "model.decoder=proxy"}


@dataclass
class TermContext:
    """What terms read beside the model's output, for one batch."""

    labels: dict
    heads: list
    batch_mean: object  # (values, dim) -> keepdim mean over the batch (over every rank's samples under torchrun)
    per_sample: torch.Tensor  # (B,) the negative ELBO per sample
    box: object = None  # box_supervision.BoxInputs
    cache: dict = field(default_factory=dict)

    def glimpse_log_likelihood(self, output) -> torch.Tensor:
        """(B, T) log p_t(y | g_t), computed once for the terms that share it."""
        if "glimpse" not in self.cache:
            self.cache["glimpse"] = log_likelihood(output.glimpse_logits, self.labels, self.heads)
        return self.cache["glimpse"]


class Term(abc.ABC):
    """One loss term: `sign * weight * value(output, context)` is added to the loss. `field` is the ObjectiveConfig
    field that weights it; `needs` the SaccadeOutput fields it reads; `inputs` the BoxInputs fields it reads."""

    field, kind, sign = "", "", 1.0
    needs: tuple = ()
    inputs: tuple = ()

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    @abc.abstractmethod
    def value(self, output, context: TermContext) -> torch.Tensor | None:
        """The term's unweighted value (a scalar), or None where it adds nothing to this batch."""

    def missing(self, output, context: TermContext) -> list[str]:
        return [f"the model's {name} ({OUTPUT_SOURCES.get(name, 'a model that gives it')})" for name in self.needs
                if getattr(output, name, None) is None] + \
            [f"the batch's {name}" for name in self.inputs if getattr(context.box, name, None) is None]

    def add_to(self, loss: torch.Tensor, output, context: TermContext) -> torch.Tensor:
        missing = self.missing(output, context)
        if missing:
            raise ValueError(f"objective.{self.field} ({self.kind}) needs {' and '.join(missing)}")
        value = self.value(output, context)
        if value is None:
            return loss
        return loss + self.weight * value if self.sign > 0 else loss - self.weight * value


class ScoreFunction(Term):
    kind = "the mixture posterior's score-function estimator"
    sign = -1.0

    def value(self, output, context):
        if output.log_q_cells is None:  # no sampled cell: the mode, or not the mixture posterior
            return None
        reward = (-context.per_sample).detach()
        return ((reward - context.batch_mean(reward, 0)) * output.log_q_cells.sum(1)).mean()


class GlimpseLikelihood(Term):
    field, kind, sign = "glimpse_loss_weight", "per-glimpse heads", -1.0
    needs = ("glimpse_logits",)

    def value(self, output, context):
        return context.glimpse_log_likelihood(output).mean()


class GlimpseReward(Term):
    field, kind, sign = "glimpse_reward_weight", "per-glimpse heads", -1.0
    needs = ("glimpse_logits",)

    def value(self, output, context):
        reward = context.glimpse_log_likelihood(output)
        if output.log_q_cells is None:
            return None
        reward = reward.detach()
        return ((reward - context.batch_mean(reward, 0)) * output.log_q_cells).sum(1).mean()


class ProxyLikelihood(Term):
    field, kind, sign = "proxy_loss_weight", "proxy attention", -1.0
    needs = ("proxy_logits",)

    def value(self, output, context):
        return log_likelihood(output.proxy_logits, context.labels, context.heads).mean()


class AttentionEntropy(Term):
    field, kind, sign = "attention_entropy_weight", "Attention Sampling's entropy regulariser", -1.0
    needs = ("attention_entropy",)

    def value(self, output, context):
        return output.attention_entropy.mean()


def weighted_terms() -> list[type[Term]]:
    """Every term an ObjectiveConfig field weights, in the order they are added to the loss."""
    from .box_supervision import BoxGlimpse, FirstCellLocation, SearchLocation, WindowFit

    return [GlimpseLikelihood, GlimpseReward, ProxyLikelihood, FirstCellLocation, SearchLocation, WindowFit, BoxGlimpse,
            AttentionEntropy]


class Objective:
    """The negative ELBO plus the terms `config` weights (and the score function under estimator "score")."""

    def __init__(self, config: ObjectiveConfig, estimator: str = "score"):
        self.config = config
        self.terms = ([ScoreFunction()] if estimator == "score" else []) + \
            [term(getattr(config, term.field)) for term in weighted_terms() if getattr(config, term.field)]

    def check(self, outputs: set) -> None:
        """Refuse (one line) a term whose model does not give an output it needs; `outputs` from
        model.registry.model_outputs."""
        for term in self.terms:
            missing = [name for name in term.needs if name not in outputs]
            if missing:
                how = sorted({OUTPUT_SOURCES.get(name, name) for name in missing})
                raise ConfigError(f"objective.{term.field} ({term.kind}) needs the model's {', '.join(missing)}, which "
                                  f"this model does not give: it needs {' and '.join(how)}")

    def __call__(self, output, labels: dict, heads: list[dict], beta: float, batch_mean=local_mean, box=None) -> dict:
        """Loss to minimise (scalar) and its per-sample parts, from a SaccadeOutput. `batch_mean(values, dim)` gives
        the score-function baselines (a keepdim mean over the batch): over all ranks' samples in distributed
        training (distributed.Cluster.mean), so the loss does not depend on how the batch is split."""
        config = self.config
        log_lik = log_likelihood(output.logits, labels, heads)
        kl = output.kl.sum(1)
        recon = output.reconstruction.mean(1) if output.reconstruction is not None else torch.zeros_like(kl)
        variational = beta * kl - config.reconstruction_weight * recon
        per_sample = -log_lik * variational if config.combine == "product" else -log_lik + variational
        loss = per_sample.mean()
        context = TermContext(labels, heads, batch_mean, per_sample, box)
        for term in self.terms:
            loss = term.add_to(loss, output, context)
        return {"loss": loss, "nll": -log_lik.detach(), "kl": kl.detach(), "reconstruction": recon.detach()}


def negative_elbo(output, labels: dict, heads: list[dict], config: ObjectiveConfig, beta: float, estimator: str = "score",
                  batch_mean=local_mean, location_targets: torch.Tensor | None = None, fitted=None) -> dict:
    """`Objective(config, estimator)` applied once. location_targets (B, c^2) bool from `box_cells`: needed with
    location_weight, search_weight and window_weight; fitted (`fitted_windows`): needed with window_weight."""
    from .box_supervision import BoxInputs

    return Objective(config, estimator)(output, labels, heads, beta, batch_mean, BoxInputs(None, location_targets, fitted))
