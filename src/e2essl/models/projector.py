"""The projector: an MLP on the 32-d ResNet-15 feature, used only during pretraining.

As in Barlow Twins: (Linear - BatchNorm1d - ReLU) for every width but the last, then a Linear.
"""

from __future__ import annotations

import itertools

from torch import nn


def make_projector(in_dim: int, widths: list[int]) -> nn.Sequential:
    """MLP ``in_dim -> widths[0] -> ... -> widths[-1]``."""
    layers: list[nn.Module] = []
    dims = [in_dim, *widths]
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        last = i == len(widths) - 1
        layers.append(nn.Linear(a, b, bias=last))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)
