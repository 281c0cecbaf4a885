"""ResNet-15, the E2E group's jet-image network (Andrews et al., NIM A 2020; REFERENCE.md).

::

    input (B, C, 125, 125)
    conv0   7x7 stride 2 padding 1, C -> 16, ReLU      (B, 16, 61, 61)
    maxpool 2x2                                        (B, 16, 30, 30)
    layer1  3 residual blocks, 16 channels             (B, 16, 30, 30)
    layer2  1 block 16 -> 32, stride 2, 1x1 shortcut   (B, 32, 15, 15)
    layer3  3 blocks, 32 channels                      (B, 32, 15, 15)
    global max pool                                    (B, 32)   <- features()
    linear  32 -> 1                                    (B,)      <- forward(): the logit

1 + 6 + 2 + 6 = 15 convolutions; 86,241 trainable parameters for 3 input channels. Blocks whose
input and output shapes agree add the identity, so no shortcut weights exist that never train.
No BatchNorm in the original; ``batchnorm=True`` adds it after every convolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ResNet15Config:
    """Everything needed to rebuild the network (saved next to its weights)."""

    in_channels: int = 3
    batchnorm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class ResidualBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, add the shortcut, ReLU (a 1x1 conv shortcut only when shapes change)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.norm1 = _norm(out_ch, batchnorm)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, batchnorm)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride) if (stride != 1 or in_ch != out_ch) else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet15(nn.Module):
    """See the module docstring. ``features()`` is the encoder that pretraining learns."""

    feature_dim = 32

    def __init__(self, in_channels: int = 3, batchnorm: bool = False) -> None:
        super().__init__()
        self.config = ResNet15Config(in_channels, batchnorm)
        self.conv0 = nn.Conv2d(in_channels, 16, 7, stride=2, padding=1)
        self.norm0 = _norm(16, batchnorm)
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(*(ResidualBlock(16, 16, batchnorm=batchnorm) for _ in range(3)))
        self.layer2 = ResidualBlock(16, 32, stride=2, batchnorm=batchnorm)
        self.layer3 = nn.Sequential(*(ResidualBlock(32, 32, batchnorm=batchnorm) for _ in range(3)))
        self.head = nn.Linear(self.feature_dim, 1)

    @classmethod
    def from_config(cls, config: ResNet15Config | dict) -> ResNet15:
        cfg = config if isinstance(config, ResNet15Config) else ResNet15Config(**config)
        return cls(cfg.in_channels, cfg.batchnorm)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 32) encoder output."""
        x = self.pool(torch.relu(self.norm0(self.conv0(x))))  # (B, 16, 30, 30)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 32, 15, 15)
        return torch.amax(x, dim=(2, 3))  # global max pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) logit of 'quark'."""
        return self.head(self.features(x)).squeeze(1)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of everything but the head: what pretraining hands to finetuning."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("head.")]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
