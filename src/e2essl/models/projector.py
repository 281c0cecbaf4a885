"""The projector: an MLP on the 32-d ResNet-15 feature, used only during pretraining.

As in Barlow Twins and VICReg: (Linear - BatchNorm1d - ReLU) for every width but the last, then a
Linear; no biases (BatchNorm follows the first layers, and both losses standardise or centre the
output, which makes a bias on the last layer a parameter without a gradient).
Under torchrun the BatchNorm statistics are those of the global batch (:class:`GlobalBatchNorm1d`),
so a distributed step computes exactly what one process would on the same global batch.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as torch_dist
from torch import nn

from e2essl.distributed import Dist, all_reduce_sum


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span every rank's share of the batch (CPU and GPU,
    unlike ``nn.SyncBatchNorm``); a plain BatchNorm1d in a single process or in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1):
            return super().forward(x)
        d = Dist(torch_dist.get_rank(), torch_dist.get_world_size())
        n = all_reduce_sum(torch.tensor(float(x.shape[0]), device=x.device), d)
        mean = all_reduce_sum(x.sum(0), d) / n
        var = all_reduce_sum(((x - mean) ** 2).sum(0), d) / n
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(float(n) - 1, 1.0))
            self.num_batches_tracked.add_(1)
        out = (x - mean) / torch.sqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


def make_projector(in_dim: int, widths: list[int]) -> nn.Sequential:
    """MLP ``in_dim -> widths[0] -> ... -> widths[-1]``."""
    layers: list[nn.Module] = []
    dims = [in_dim, *widths]
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        last = i == len(widths) - 1
        layers.append(nn.Linear(a, b, bias=False))
        if not last:
            layers += [GlobalBatchNorm1d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)
