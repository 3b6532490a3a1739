"""Wrappers: choices that change where gradients flow, not which modules exist.

* Window gradients (ModelConfig.window_gradient): whether the glimpses and the core read each window z_t with its
  gradient ("through", the method) or detached ("detached": the window's offset and side then learn only from
  terms on z itself, box supervision's window loss and the KL).
* Cell estimators (ModelConfig.estimator): how the mixture's discrete cell gets a gradient. "score": the glimpse
  features pass unchanged and the objective adds the score-function term; "ats": Attention Sampling's estimator,
  the features scaled by q(c)/stop_gradient(q(c)) (value 1, gradient d log q).
"""

from __future__ import annotations

import torch


def windows_through(z: torch.Tensor) -> torch.Tensor:
    return z


def windows_detached(z: torch.Tensor) -> torch.Tensor:
    return z.detach()


def features_unchanged(features: torch.Tensor, log_q_cell: torch.Tensor | None) -> torch.Tensor:
    return features


def features_attention_weighted(features: torch.Tensor, log_q_cell: torch.Tensor | None) -> torch.Tensor:
    if log_q_cell is None:  # no sampled cell (the mode, or not the mixture posterior)
        return features
    return features * torch.exp(log_q_cell - log_q_cell.detach())[:, None]


WINDOW_GRADIENTS = {"through": windows_through, "detached": windows_detached}  # by ModelConfig.window_gradient
CELL_ESTIMATORS = {"score": features_unchanged, "ats": features_attention_weighted}  # by ModelConfig.estimator
