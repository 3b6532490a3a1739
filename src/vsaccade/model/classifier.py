"""Classifiers: p(y | f_1..f_T, h_T), an MLP over the mean glimpse feature and the final state, one head per
label, or for count heads with readout="count" a sum of per-glimpse counts (CountReadout); optional
per-glimpse heads p(y | g_t), linear in f_t, which score what each glimpse alone says; and for class heads with
readout="any", the image's class from those per-glimpse heads (any_object_log_probs)."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..config import ConfigError


def count_heads(heads: list[dict], readout: str) -> set[str]:
    """Names of the heads read out as summed counts (readout="count" applies to count heads only)."""
    if readout != "count":
        return set()
    names = {h["name"] for h in heads if h["kind"] == "count"}
    if not names:
        raise ConfigError("readout=count needs a count head (a counting task); this model's heads are "
                          + ", ".join(f"{h['name']} ({h['kind']})" for h in heads))
    return names


class Classifier(nn.Module):
    def __init__(self, hidden: int, heads: list[dict], readout: str = "mean", read_elsewhere: frozenset = frozenset()):
        """read_elsewhere: heads whose logits another readout gives (AnyObjectReadout); built and then removed, so
        the modules built after keep the initial weights they had when these heads stayed (and went untrained)."""
        super().__init__()
        counted = count_heads(heads, readout)
        mlp_heads = len(heads) > len(counted)
        self.trunk = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(inplace=True)) if mlp_heads else None
        self.heads = nn.ModuleDict({h["name"]: nn.Linear(hidden, h["num_classes"]) for h in heads if h["name"] not in counted})
        self.counts = nn.ModuleDict({h["name"]: CountReadout(hidden, h["num_classes"]) for h in heads if h["name"] in counted})
        for name in read_elsewhere:
            del self.heads[name]
        if not len(self.heads):
            self.trunk = None

    def forward(self, features: torch.Tensor, final_state: torch.Tensor) -> tuple[dict, dict]:
        """features (B, T, hidden), final_state (B, hidden) -> ({head: logits (B, classes)}, {count head: what each
        glimpse counted (B, T)})."""
        counts = {name: head.glimpse_counts(features) for name, head in self.counts.items()}
        logits = {name: self.counts[name].logits(c) for name, c in counts.items()}
        if self.trunk is not None:
            trunk = self.trunk(torch.cat([features.mean(1), final_state], dim=-1))
            logits.update({name: head(trunk) for name, head in self.heads.items()})
        return logits, counts


class GlimpseHeads(nn.Module):
    def __init__(self, hidden: int, heads: list[dict]):
        super().__init__()
        self.heads = nn.ModuleDict({h["name"]: nn.Linear(hidden, h["num_classes"]) for h in heads})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, T, hidden) -> {head: logits (B, T, classes)}."""
        return {name: head(features) for name, head in self.heads.items()}


class CountReadout(nn.Module):
    """p(k | f_1..f_T) for a count head: each glimpse says how many objects it holds, c_t = softplus(a . f_t + b),
    and k follows a Gaussian centred on their sum, discretised to 0..K: logits_k = -(k - sum_t c_t)^2 / (2 sigma^2),
    renormalised by the softmax, sigma learned. The most likely k is the summed count rounded, so a model sure of
    its count is not pushed onto a tie between two classes (a Poisson of rate k is: p(k-1) = p(k)). A sum,
    unlike the mean the Classifier pools, grows with the number of glimpses that see objects; the per-glimpse
    counts are learned from k alone."""

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.per_glimpse = nn.Linear(hidden, 1)
        self.log_precision = nn.Parameter(torch.zeros(()))  # log 1/sigma^2
        self.register_buffer("k", torch.arange(num_classes, dtype=torch.float32), persistent=False)

    def glimpse_counts(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, T) non-negative counts."""
        return F.softplus(self.per_glimpse(features)[..., 0])

    def logits(self, counts: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-glimpse counts (B, T), optional mask (B, T) of glimpses that exist -> logits (B, K + 1)."""
        if mask is not None:
            counts = counts * mask
        total = counts.sum(1, keepdim=True)
        return -0.5 * self.log_precision.clamp(max=8).exp() * (self.k - total) ** 2

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, hidden), optional mask (B, T) of glimpses that exist -> logits (B, K + 1)."""
        return self.logits(self.glimpse_counts(features), mask)


def any_object_log_probs(glimpse_logits: torch.Tensor, background: int) -> torch.Tensor:
    """Per-glimpse logits (B, T, K) -> log p(y) (B, K) for an image holding at most one object, where class
    `background` means none: the image shows no object only if no glimpse sees one, p(bg) = prod_t p_t(bg), and
    otherwise the object's class is the per-glimpse probabilities of each object class summed over glimpses and
    renormalised over the object classes, p(c) = (1 - p(bg)) sum_t p_t(c) / sum_t (1 - p_t(bg)). A glimpse sure it
    sees a 70 decides the answer however many others see background, which a mean over glimpses would dilute."""
    log_p = glimpse_logits.log_softmax(-1)
    log_none = log_p[..., background].sum(1)  # (B,)
    log_some = torch.log(-torch.expm1(log_none.clamp(max=-1e-6)))  # log(1 - p(bg)), finite
    is_object = torch.ones(log_p.shape[-1], dtype=torch.bool, device=log_p.device)
    is_object[background] = False
    log_mass = torch.logsumexp(log_p[..., is_object], dim=-1)  # (B, T) log(1 - p_t(bg))
    log_share = torch.logsumexp(log_p, dim=1) - torch.logsumexp(log_mass, dim=1, keepdim=True)  # (B, K)
    return torch.where(is_object, log_some[:, None] + log_share, log_none[:, None])


class PooledReadout:
    """readout "mean" or "count": the image's logits are the classifier's."""

    def __call__(self, logits: dict, glimpse_logits: dict | None) -> dict:
        return logits


class AnyObjectReadout:
    """readout "any": class heads holding the `background` class are read from the per-glimpse heads
    (any_object_log_probs); other heads keep the classifier's logits."""

    def __init__(self, heads: list[dict], background: str):
        self.background = any_object_heads(heads, background)

    def __call__(self, logits: dict, glimpse_logits: dict | None) -> dict:
        return {**logits, **{name: any_object_log_probs(glimpse_logits[name], index)
                             for name, index in self.background.items()}}


def any_object_heads(heads: list[dict], background: str) -> dict[str, int]:
    """{class head holding the `background` class: that class's index}: the heads readout "any" reads."""
    return {h["name"]: h["classes"].index(background) for h in heads
            if h["kind"] == "class" and background in h.get("classes", ())}


class NoGlimpseHeads(nn.Module):
    """A model without per-glimpse heads: nothing is scored per glimpse."""

    def forward(self, features: torch.Tensor) -> None:
        return None
