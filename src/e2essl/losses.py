"""Joint-embedding losses: stateless functions of the two views' embeddings, computed in float32.

Both take ``z_a, z_b`` of shape (n, D): this process's share of a global batch of N jets. Under
torchrun the batch statistics they need are sums over the global batch, reduced across ranks with
an autograd-aware all-reduce (e2essl.distributed), so loss and gradients equal the single-process
ones on the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2essl.distributed import Dist, all_reduce_sum


@dataclass
class LossTerms:
    """The total loss and its named parts (logged separately)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


def _global_count(z: torch.Tensor, dist: Dist) -> torch.Tensor:
    return all_reduce_sum(torch.tensor(float(z.shape[0]), device=z.device), dist)


def _centred(z: torch.Tensor, n: torch.Tensor, dist: Dist) -> torch.Tensor:
    """z minus its global-batch mean."""
    return z - all_reduce_sum(z.sum(0), dist) / n


def barlow_twins_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, offdiag_weight: float | None = None, dist: Dist | None = None, eps: float = 1e-5
) -> LossTerms:
    """Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021, eq. 1)::

        z_hat = (z - mean_batch(z)) / sqrt(var_batch(z) + eps)      each view separately
        C_ij  = sum_n z_hat_a[n, i] * z_hat_b[n, j] / N               (D, D) cross-correlation
        L     = sum_i (1 - C_ii)^2  +  lambda * sum_{i != j} C_ij^2

    The first term ("on_diagonal") makes the views agree, the second ("off_diagonal") removes
    redundancy between embedding dimensions. ``offdiag_weight`` is lambda; None means 1 / D.
    The loss is invariant to a per-view affine rescaling of the embeddings.
    """
    dist = dist or Dist()
    with torch.autocast(z_a.device.type, enabled=False):
        z_a, z_b = z_a.float(), z_b.float()
        d = z_a.shape[1]
        n = _global_count(z_a, dist)

        def standardise(z: torch.Tensor) -> torch.Tensor:
            centred = _centred(z, n, dist)
            var = all_reduce_sum((centred**2).sum(0), dist) / n  # biased, as BatchNorm in training
            return centred / torch.sqrt(var + eps)

        c = all_reduce_sum(standardise(z_a).T @ standardise(z_b), dist) / n  # (D, D)
        diagonal = torch.diagonal(c)
        on = (1.0 - diagonal).pow(2).sum()
        off = c.pow(2).sum() - diagonal.pow(2).sum()
        weight = 1.0 / d if offdiag_weight is None else offdiag_weight
        return LossTerms(on + weight * off, {"on_diagonal": on.detach(), "off_diagonal": off.detach()})


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    dist: Dist | None = None,
    eps: float = 1e-4,
) -> LossTerms:
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022, eqs. 1-6)::

        invariance  = mean_{n, i} (z_a - z_b)^2
        variance    = [mean_i relu(1 - sqrt(Var z_a_i + eps)) + mean_i relu(1 - sqrt(Var z_b_i + eps))] / 2
        covariance  = sum_{i != j} Cov(z_a)_ij^2 / D  +  sum_{i != j} Cov(z_b)_ij^2 / D
        L           = 25 invariance + 25 variance + 1 covariance

    (unbiased variances and covariances over the batch, as in the paper's code).
    """
    dist = dist or Dist()
    with torch.autocast(z_a.device.type, enabled=False):
        z_a, z_b = z_a.float(), z_b.float()
        d = z_a.shape[1]
        n = _global_count(z_a, dist)
        invariance = all_reduce_sum((z_a - z_b).pow(2).sum(), dist) / (n * d)

        def var_cov(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            centred = _centred(z, n, dist)
            cov = all_reduce_sum(centred.T @ centred, dist) / (n - 1)  # (D, D)
            std = torch.sqrt(torch.diagonal(cov) + eps)
            off = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
            return torch.relu(1.0 - std).mean(), off / d

        var_a, cov_a = var_cov(z_a)
        var_b, cov_b = var_cov(z_b)
        variance = (var_a + var_b) / 2
        covariance = cov_a + cov_b
        loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
        return LossTerms(loss, {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()})
